// matmul.cu: the dense matmuls of the `cuda` backend, y[rows, out] = x[rows, in] · w[out, in]ᵀ.
//
// Contract: kernels/README.md, section matmul.cu (names, parameters and launch geometry are fixed
// there; backend/cuda launches these kernels exactly so).
//
//   lpx_gemm_bf16  tensor cores. grid (ceil(out/64), ceil(rows/64)), block 128 (4 warps, each a
//                  32 rows x 32 outputs quarter of the 64 x 64 tile), static smem 36 KiB: x (f32,
//                  rounded RNE to bf16 on the way) and w (bf16) in k-tiles of 64, double-buffered,
//                  the next k-tile prefetched into registers while the current one is multiplied.
//   lpx_gemv_bf16  rows <= 8 (decode). grid (ceil(out/64)), block 128: each warp owns 16 outputs
//                  (the mma's A operand, yᵀ = w · xᵀ) and the <= 8 rows as the n = 8 B operand.
//                  w is streamed with coalesced 16-byte cp.async copies into a per-warp ring of
//                  5 stages of 16 outputs x 64 k (up to 10 KiB per warp in flight, static smem
//                  45 KiB per block; ldmatrix gives the A fragments); x is read from global
//                  (L1/L2 resident, one stage ahead) straight into B fragments.
//   lpx_gemm_f32   SIMT, f32 weights. grid (ceil(out/64), ceil(rows/64)), block 256 (16 x 16,
//                  either as blockDim (16,16) or (256): only the flat thread index is used),
//                  4 x 4 outputs per thread, k-tiles of 16 double-buffered in shared memory.
//
// Fixed arithmetic (batch invariance, README "Batch invariance"):
//   bf16 paths: y[t,o] = acc with acc = 0.0f, then for k0 = 0, 16, 32, ... while k0 < in one
//   mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 acc = acc + Σ_{k0<=k<k0+16} bf16(x[t,k])
//   · w[o,k] (k >= in read as zero in both operands). No split-K, no atomics, k-steps strictly
//   increasing; k-steps with k0 >= in are skipped (never issued) in both kernels. The element's
//   result therefore depends only on x[t,·], w[o,·] and `in`: not on rows, out, the tile it lands
//   in, its position inside the mma (m or n side) or the other rows. gemm (D[m=t][n=o], x as A)
//   and gemv (D[m=o][n=t], w as A) feed the same 16 exact bf16 x bf16 products at the same k
//   positions into the same accumulator chain, so they give bitwise the same y (this relies on
//   the tensor core computing each D element by one function of C and the k-indexed products,
//   whichever operand is A: products of bf16 are exact in f32 and commutative).
//   f32 path: y[t,o] = one fmaf chain acc = fmaf(x[t,k], w[o,k], acc) for k = 0 .. in-1 from
//   acc = 0.0f, never touching k >= in.
//
// Loads: 16-byte vector loads only when aligned (in % 8 == 0 and x, w 16-byte aligned for the
// bf16 kernels; in % 4 == 0 and 16-byte aligned x, w for gemm_f32), otherwise a bounds-checked
// scalar path with the same arithmetic. Every load and store is bounds-checked (rows, out, in).
// rows > 8 passed to lpx_gemv_bf16 (a host bug) computes only the first 8 rows (never out of
// bounds).
//
// Status: compile-checked in `make test` (scripts/check-kernels.sh: PTX for compute_80/90,
// ptxas for sm_80/90, no warnings or spills) and run on the CPU against references under the
// host emulation of kernels/emu (scripts/emu-kernels.sh); not yet run on a GPU.

#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

// Two floats rounded RNE to bf16, `lo` in the low 16 bits (the lower k / lower address).
static __device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    const uint32_t l = __bfloat16_as_ushort(__float2bfloat16_rn(lo));
    const uint32_t h = __bfloat16_as_ushort(__float2bfloat16_rn(hi));
    return l | (h << 16);
}

static __device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices from shared memory: matrix i is addressed by lanes 8i..8i+7 (one row
// each), register i of every lane receives row lane/4, columns 2*(lane%4)+{0,1} of matrix i.
static __device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p))
                 : "memory");
}

// c = c + A·B for one m16n8k16 tile: a[0..3] = {a0a1, a2a3, a4a5, a6a7}, b[0..1] = {b0b1, b2b3}
// in the PTX fragment layouts (groupID g = lane>>2, tig = lane%4): A rows g / g+8, k 2tig+{0,1}
// (a0a1 row g, a2a3 row g+8, a4a5 row g k+8, a6a7 row g+8 k+8); B k 2tig+{0,1} (b0b1) and +8
// (b2b3), column g; C c0c1 row g cols 2tig+{0,1}, c2c3 row g+8.
static __device__ __forceinline__ void mma_bf16_16816(float c[4], const uint32_t a[4],
                                                      const uint32_t b0, const uint32_t b1) {
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four consecutive f32 of a row, p = &row[k], columns >= in read as zero. VEC: one 16-byte load
// (the caller guarantees alignment and that the four columns are all in or all out, e.g. in % 4
// == 0 with k % 4 == 0); otherwise bounds-checked scalar loads.
template <bool VEC>
static __device__ __forceinline__ float4 load_f32x4(const float* __restrict__ p, int k, int in) {
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (VEC) {
        if (k < in) v = __ldg(reinterpret_cast<const float4*>(p));
    } else {
        if (k < in) v.x = __ldg(p);
        if (k + 1 < in) v.y = __ldg(p + 1);
        if (k + 2 < in) v.z = __ldg(p + 2);
        if (k + 3 < in) v.w = __ldg(p + 3);
    }
    return v;
}

// ---------------------------------------------------------------------------------------------
// lpx_gemm_bf16
// ---------------------------------------------------------------------------------------------

#define GB_BM 64
#define GB_BN 64
#define GB_BK 64
// Row pitch of the shared tiles in bf16: 72 = 144 bytes, 16-byte aligned rows; the 8 row
// addresses of an ldmatrix phase land on banks 4r..4r+3 (144/4 = 36 ≡ 4 mod 32): conflict-free.
#define GB_LD (GB_BK + 8)

// One k-tile of the operands as staged in registers: x 64 rows x 64 k f32 (8 float4 per
// thread), w 64 outputs x 64 k bf16 (4 x 8 bf16 per thread).
struct GemmStage {
    float4 x[8];
    uint4 w[4];
};

template <bool VEC>
static __device__ __forceinline__ void gemm_bf16_load(GemmStage& st, const float* __restrict__ x,
                                                      const bf16* __restrict__ w, int rows,
                                                      int out, int in, int t0, int o0, int k0) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int idx = tid + i * 128;
        const int r = idx >> 4;
        const int c = (idx & 15) * 4;
        const int t = t0 + r;
        const int k = k0 + c;
        // VEC: in % 8 == 0 and k % 4 == 0, so the four columns are all in or all out.
        st.x[i] = t < rows ? load_f32x4<VEC>(x + (long long)t * in + k, k, in)
                           : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    const unsigned short* wu = reinterpret_cast<const unsigned short*>(w);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int idx = tid + i * 128;
        const int r = idx >> 3;
        const int c = (idx & 7) * 8;
        const int o = o0 + r;
        const int k = k0 + c;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (o < out) {
            const long long base = (long long)o * in + k;
            if (VEC) {
                // in % 8 == 0 and k % 8 == 0: the eight columns are all in or all out.
                if (k < in) v = __ldg(reinterpret_cast<const uint4*>(w + base));
            } else {
                uint32_t e[8];
#pragma unroll
                for (int q = 0; q < 8; ++q) e[q] = (k + q < in) ? (uint32_t)__ldg(wu + base + q) : 0u;
                v.x = e[0] | (e[1] << 16);
                v.y = e[2] | (e[3] << 16);
                v.z = e[4] | (e[5] << 16);
                v.w = e[6] | (e[7] << 16);
            }
        }
        st.w[i] = v;
    }
}

static __device__ __forceinline__ void gemm_bf16_store(const GemmStage& st,
                                                       bf16 (*sx)[GB_LD], bf16 (*sw)[GB_LD]) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int idx = tid + i * 128;
        const int r = idx >> 4;
        const int c = (idx & 15) * 4;
        uint2 p;
        p.x = pack_bf16x2(st.x[i].x, st.x[i].y);
        p.y = pack_bf16x2(st.x[i].z, st.x[i].w);
        *reinterpret_cast<uint2*>(&sx[r][c]) = p;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int idx = tid + i * 128;
        const int r = idx >> 3;
        const int c = (idx & 7) * 8;
        *reinterpret_cast<uint4*>(&sw[r][c]) = st.w[i];
    }
}

template <bool VEC>
static __device__ __forceinline__ void gemm_bf16_tile(const float* __restrict__ x,
                                                      const bf16* __restrict__ w,
                                                      float* __restrict__ y, int rows, int out,
                                                      int in, bf16 (*sx)[GB_BM][GB_LD],
                                                      bf16 (*sw)[GB_BN][GB_LD]) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int t0 = blockIdx.y * GB_BM;
    const int o0 = blockIdx.x * GB_BN;
    const int wm = (warp >> 1) * 32;  // warp's rows inside the tile
    const int wn = (warp & 1) * 32;   // warp's outputs inside the tile

    float acc[2][4][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[mi][ni][q] = 0.0f;

    const int ktiles = (in + GB_BK - 1) / GB_BK;
    GemmStage st;
    if (ktiles > 0) {
        gemm_bf16_load<VEC>(st, x, w, rows, out, in, t0, o0, 0);
        gemm_bf16_store(st, sx[0], sw[0]);
    }
    __syncthreads();

    // ldmatrix lane addressing. A (x tile, [row][k]): matrices (rows 0-7, k 0-7), (rows 8-15,
    // k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15) -> a0a1, a2a3, a4a5, a6a7.
    const int a_row = lane & 15;
    const int a_col = (lane >> 4) * 8;
    // B (w tile, [out][k] = column-major k x n): matrices (n 0-7, k 0-7), (n 0-7, k 8-15),
    // (n 8-15, k 0-7), (n 8-15, k 8-15) -> b0b1, b2b3 of n-tile 0, then of n-tile 1.
    const int b_row = (lane & 7) + ((lane >> 4) << 3);
    const int b_col = ((lane >> 3) & 1) * 8;

    for (int kt = 0; kt < ktiles; ++kt) {
        const int cur = kt & 1;
        const bool more = kt + 1 < ktiles;
        if (more) gemm_bf16_load<VEC>(st, x, w, rows, out, in, t0, o0, (kt + 1) * GB_BK);
#pragma unroll
        for (int ks = 0; ks < GB_BK / 16; ++ks) {
            // Block-uniform: k-steps entirely past `in` are not issued (same as lpx_gemv_bf16).
            if (kt * GB_BK + ks * 16 < in) {
                uint32_t a[2][4];
                uint32_t b[4][2];
#pragma unroll
                for (int mi = 0; mi < 2; ++mi)
                    ldmatrix_x4(a[mi], &sx[cur][wm + mi * 16 + a_row][ks * 16 + a_col]);
#pragma unroll
                for (int nj = 0; nj < 2; ++nj) {
                    uint32_t r[4];
                    ldmatrix_x4(r, &sw[cur][wn + nj * 16 + b_row][ks * 16 + b_col]);
                    b[2 * nj][0] = r[0];
                    b[2 * nj][1] = r[1];
                    b[2 * nj + 1][0] = r[2];
                    b[2 * nj + 1][1] = r[3];
                }
#pragma unroll
                for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                    for (int ni = 0; ni < 4; ++ni)
                        mma_bf16_16816(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
            }
        }
        // The other buffer was last read in iteration kt-1, which ended with a barrier.
        if (more) gemm_bf16_store(st, sx[cur ^ 1], sw[cur ^ 1]);
        __syncthreads();
    }

    // Epilogue: c0c1 at (row g, outputs 2tig, 2tig+1), c2c3 at row g+8.
    const int g = lane >> 2;
    const int tig = lane & 3;
    const bool pair_ok = (out % 2 == 0) && ((reinterpret_cast<uintptr_t>(y) & 7) == 0);
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
        for (int hrow = 0; hrow < 2; ++hrow) {
            const int t = t0 + wm + mi * 16 + g + hrow * 8;
            if (t >= rows) continue;
            float* yr = y + (long long)t * out;
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                const int o = o0 + wn + ni * 8 + tig * 2;
                const float v0 = acc[mi][ni][hrow * 2];
                const float v1 = acc[mi][ni][hrow * 2 + 1];
                if (pair_ok && o + 1 < out) {
                    *reinterpret_cast<float2*>(yr + o) = make_float2(v0, v1);
                } else {
                    if (o < out) yr[o] = v0;
                    if (o + 1 < out) yr[o + 1] = v1;
                }
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(128)
    lpx_gemm_bf16(const float* __restrict__ x, const bf16* __restrict__ w, float* __restrict__ y,
                  int rows, int out, int in) {
    __shared__ __align__(16) bf16 sx[2][GB_BM][GB_LD];
    __shared__ __align__(16) bf16 sw[2][GB_BN][GB_LD];
    const bool vec = (in % 8 == 0) && ((reinterpret_cast<uintptr_t>(x) & 15) == 0) &&
                     ((reinterpret_cast<uintptr_t>(w) & 15) == 0);
    if (vec)
        gemm_bf16_tile<true>(x, w, y, rows, out, in, sx, sw);
    else
        gemm_bf16_tile<false>(x, w, y, rows, out, in, sx, sw);
}

// ---------------------------------------------------------------------------------------------
// lpx_gemv_bf16
// ---------------------------------------------------------------------------------------------

#define GV_S 4                 // k-steps of 16 per stage: 64 k, 2 KiB of w per warp
#define GV_BK (GV_S * 16)
#define GV_NST 5               // stages in a warp's ring: up to 5 x 2 KiB of w in flight per warp
// Row pitch of a stage in bf16: 72 = 144 bytes (16-byte aligned rows; the 8 row addresses of an
// ldmatrix phase land on banks 4r..4r+3: conflict-free). 4 warps x 5 stages x 16 x 72 x 2 bytes
// = 45 KiB of static shared memory.
#define GV_LD (GV_BK + 8)

// 16 bytes global -> shared, asynchronously; `valid == false` writes 16 zero bytes and reads
// nothing (src-size 0; `g` must still be a valid address).
static __device__ __forceinline__ void cp_async16(void* s, const void* g, bool valid) {
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :
                 : "r"(smem_addr(s)), "l"(g), "r"(n)
                 : "memory");
}

static __device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most GV_NST - 1 of this thread's committed groups are still pending.
static __device__ __forceinline__ void cp_async_wait_ring() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(GV_NST - 1) : "memory");
}

// Fills one stage: w rows ob .. ob+15, columns kb .. kb+63 (zeros past `out` / `in`). Chunk
// c = j*32 + lane is row c/8, columns (c%8)*8 .. +8: one instruction covers 4 rows x 128 bytes.
// VEC: cp.async (in flight until the ring's wait); otherwise bounds-checked scalar loads stored
// synchronously.
template <bool VEC>
static __device__ __forceinline__ void gemv_issue(bf16 (*stage)[GV_LD], const bf16* __restrict__ w,
                                                  int out, int in, int ob, int kb) {
    const int lane = threadIdx.x & 31;
    const unsigned short* wu = reinterpret_cast<const unsigned short*>(w);
#pragma unroll
    for (int j = 0; j < GV_BK * 16 / 8 / 32; ++j) {
        const int c = j * 32 + lane;
        const int row = c >> 3;
        const int col = (c & 7) * 8;
        const int o = ob + row;
        const int k = kb + col;
        if (VEC) {
            // in % 8 == 0 and k % 8 == 0: the eight columns are all in or all out.
            const bool valid = o < out && k < in;
            cp_async16(&stage[row][col], valid ? w + ((long long)o * in + k) : w, valid);
        } else {
            uint32_t e[8];
            const long long base = (long long)o * in + k;
#pragma unroll
            for (int q = 0; q < 8; ++q)
                e[q] = (o < out && k + q < in) ? (uint32_t)__ldg(wu + base + q) : 0u;
            *reinterpret_cast<uint4*>(&stage[row][col]) =
                make_uint4(e[0] | (e[1] << 16), e[2] | (e[3] << 16), e[4] | (e[5] << 16),
                           e[6] | (e[7] << 16));
        }
    }
}

// B fragment sources of one stage: lane (g, tig) holds row g, columns k0+2tig+{0,1} and
// k0+8+2tig+{0,1} of each k-step (zeros for rows >= nrows and columns >= in).
struct GemvX {
    float2 v[GV_S][2];
};

template <bool VEC>
static __device__ __forceinline__ void gemv_load_x(GemvX& xf, const float* __restrict__ x,
                                                   int nrows, int in, int kb) {
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2;
    const int tig = lane & 3;
    const float* xr = x + (long long)g * in;
#pragma unroll
    for (int s = 0; s < GV_S; ++s) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            const int k = kb + s * 16 + hf * 8 + tig * 2;
            float2 v = make_float2(0.f, 0.f);
            if (g < nrows) {
                if (VEC) {
                    // in a multiple of 8 and k even: both columns in or both out.
                    if (k < in) v = __ldg(reinterpret_cast<const float2*>(xr + k));
                } else {
                    if (k < in) v.x = __ldg(xr + k);
                    if (k + 1 < in) v.y = __ldg(xr + k + 1);
                }
            }
            xf.v[s][hf] = v;
        }
    }
}

// One warp: outputs ob .. ob+15 for rows 0 .. nrows-1, w streamed through a ring of GV_NST
// stages (cp.async groups: one committed per stage slot, empty ones included, so that group
// b is stage b and waiting for "at most GV_NST-1 pending" at iteration b means stage b landed).
template <bool VEC>
static __device__ __forceinline__ void gemv_warp(const float* __restrict__ x,
                                                 const bf16* __restrict__ w,
                                                 float* __restrict__ y, int nrows, int out,
                                                 int in, int ob, bf16 (*ring)[16][GV_LD]) {
    const int lane = threadIdx.x & 31;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int nb = (in + GV_BK - 1) / GV_BK;
    // A fragment addressing into a stage (rows = outputs, columns = k), as in lpx_gemm_bf16.
    const int a_row = lane & 15;
    const int a_col = (lane >> 4) * 8;

#pragma unroll
    for (int s = 0; s < GV_NST; ++s) {
        if (s < nb) gemv_issue<VEC>(ring[s], w, out, in, ob, s * GV_BK);
        cp_async_commit();
    }
    GemvX xf;
    if (nb > 0) gemv_load_x<VEC>(xf, x, nrows, in, 0);
    for (int b = 0; b < nb; ++b) {
        cp_async_wait_ring();  // this lane's part of stage b has landed
        __syncwarp();          // ... and every other lane's part is visible
        uint32_t xb[GV_S][2];
#pragma unroll
        for (int s = 0; s < GV_S; ++s) {
            xb[s][0] = pack_bf16x2(xf.v[s][0].x, xf.v[s][0].y);
            xb[s][1] = pack_bf16x2(xf.v[s][1].x, xf.v[s][1].y);
        }
        if (b + 1 < nb) gemv_load_x<VEC>(xf, x, nrows, in, (b + 1) * GV_BK);
        bf16 (*stage)[GV_LD] = ring[b % GV_NST];
#pragma unroll
        for (int s = 0; s < GV_S; ++s) {
            // Warp-uniform: k-steps entirely past `in` are not issued (same as lpx_gemm_bf16).
            if (b * GV_BK + s * 16 < in) {
                uint32_t a[4];
                ldmatrix_x4(a, &stage[a_row][s * 16 + a_col]);
                mma_bf16_16816(acc, a, xb[s][0], xb[s][1]);
            }
        }
        __syncwarp();  // every lane has read this stage before it is refilled
        if (b + GV_NST < nb) gemv_issue<VEC>(stage, w, out, in, ob, (b + GV_NST) * GV_BK);
        cp_async_commit();
    }

    // D[m = output][n = row]: c0 (output g, row 2tig), c1 (g, 2tig+1), c2 (g+8, 2tig),
    // c3 (g+8, 2tig+1).
    const int g = lane >> 2;
    const int tig = lane & 3;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        const int o = ob + g + (q >> 1) * 8;
        const int t = tig * 2 + (q & 1);
        if (o < out && t < nrows) y[(long long)t * out + o] = acc[q];
    }
}

extern "C" __global__ void __launch_bounds__(128)
    lpx_gemv_bf16(const float* __restrict__ x, const bf16* __restrict__ w, float* __restrict__ y,
                  int rows, int out, int in) {
    __shared__ __align__(16) bf16 ring[4][GV_NST][16][GV_LD];
    const int warp = threadIdx.x >> 5;
    const int ob = blockIdx.x * 64 + warp * 16;
    // No block-level barrier below: a warp with nothing to do may leave.
    if (ob >= out) return;
    const int nrows = rows < 8 ? rows : 8;
    const bool vec = (in % 8 == 0) && ((reinterpret_cast<uintptr_t>(x) & 15) == 0) &&
                     ((reinterpret_cast<uintptr_t>(w) & 15) == 0);
    if (vec)
        gemv_warp<true>(x, w, y, nrows, out, in, ob, ring[warp]);
    else
        gemv_warp<false>(x, w, y, nrows, out, in, ob, ring[warp]);
}

// ---------------------------------------------------------------------------------------------
// lpx_gemm_f32
// ---------------------------------------------------------------------------------------------

#define GF_BK 16
// [k][row] / [k][out] tiles, pitch 68 floats (16-byte aligned float4 reads of 4 rows/outputs).
#define GF_LD 68

template <bool VEC>
static __device__ __forceinline__ void gemm_f32_load(float4& xv, float4& wv,
                                                     const float* __restrict__ x,
                                                     const float* __restrict__ w, int rows,
                                                     int out, int in, int t0, int o0, int k0,
                                                     int tid) {
    const int r = tid >> 2;        // 0..63
    const int c = (tid & 3) * 4;   // 0, 4, 8, 12
    const int k = k0 + c;
    const int t = t0 + r;
    const int o = o0 + r;
    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
    xv = t < rows ? load_f32x4<VEC>(x + (long long)t * in + k, k, in) : zero;
    wv = o < out ? load_f32x4<VEC>(w + (long long)o * in + k, k, in) : zero;
}

static __device__ __forceinline__ void gemm_f32_store(const float4& xv, const float4& wv,
                                                      float (*sx)[GF_LD], float (*sw)[GF_LD],
                                                      int tid) {
    const int r = tid >> 2;
    const int c = (tid & 3) * 4;
    sx[c + 0][r] = xv.x;
    sx[c + 1][r] = xv.y;
    sx[c + 2][r] = xv.z;
    sx[c + 3][r] = xv.w;
    sw[c + 0][r] = wv.x;
    sw[c + 1][r] = wv.y;
    sw[c + 2][r] = wv.z;
    sw[c + 3][r] = wv.w;
}

// One k: acc[i][j] = fmaf(x[row i, k], w[output j, k], acc[i][j]).
static __device__ __forceinline__ void gemm_f32_row(float acc[4], float a, const float4& b) {
    acc[0] = fmaf(a, b.x, acc[0]);
    acc[1] = fmaf(a, b.y, acc[1]);
    acc[2] = fmaf(a, b.z, acc[2]);
    acc[3] = fmaf(a, b.w, acc[3]);
}

static __device__ __forceinline__ void gemm_f32_step(float acc[4][4], const float4& a,
                                                     const float4& b) {
    gemm_f32_row(acc[0], a.x, b);
    gemm_f32_row(acc[1], a.y, b);
    gemm_f32_row(acc[2], a.z, b);
    gemm_f32_row(acc[3], a.w, b);
}

template <bool VEC>
static __device__ __forceinline__ void gemm_f32_tile(const float* __restrict__ x,
                                                     const float* __restrict__ w,
                                                     float* __restrict__ y, int rows, int out,
                                                     int in, float (*sx)[GF_BK][GF_LD],
                                                     float (*sw)[GF_BK][GF_LD]) {
    // Only the flat index is used, so blockDim (16,16) and (256) launch the same kernel.
    const int tid = threadIdx.x + threadIdx.y * blockDim.x;
    const int tx = tid & 15;   // outputs tx*4 .. +4
    const int ty = tid >> 4;   // rows ty*4 .. +4
    const int t0 = blockIdx.y * 64;
    const int o0 = blockIdx.x * 64;

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    const int ktiles = (in + GF_BK - 1) / GF_BK;
    float4 xv, wv;
    if (ktiles > 0) {
        gemm_f32_load<VEC>(xv, wv, x, w, rows, out, in, t0, o0, 0, tid);
        gemm_f32_store(xv, wv, sx[0], sw[0], tid);
    }
    __syncthreads();
    for (int kt = 0; kt < ktiles; ++kt) {
        const int cur = kt & 1;
        const bool more = kt + 1 < ktiles;
        if (more) gemm_f32_load<VEC>(xv, wv, x, w, rows, out, in, t0, o0, (kt + 1) * GF_BK, tid);
        const int kn = in - kt * GF_BK;  // > 0
        if (kn >= GF_BK) {
#pragma unroll
            for (int kk = 0; kk < GF_BK; ++kk) {
                gemm_f32_step(acc, *reinterpret_cast<const float4*>(&sx[cur][kk][ty * 4]),
                              *reinterpret_cast<const float4*>(&sw[cur][kk][tx * 4]));
            }
        } else {
            // The last, partial k-tile: the chain stops at k = in - 1 (no zero terms added).
            for (int kk = 0; kk < kn; ++kk) {
                gemm_f32_step(acc, *reinterpret_cast<const float4*>(&sx[cur][kk][ty * 4]),
                              *reinterpret_cast<const float4*>(&sw[cur][kk][tx * 4]));
            }
        }
        if (more) gemm_f32_store(xv, wv, sx[cur ^ 1], sw[cur ^ 1], tid);
        __syncthreads();
    }

    const bool quad_ok = (out % 4 == 0) && ((reinterpret_cast<uintptr_t>(y) & 15) == 0);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int t = t0 + ty * 4 + i;
        if (t >= rows) continue;
        float* yr = y + (long long)t * out;
        const int o = o0 + tx * 4;
        if (quad_ok && o + 3 < out) {
            *reinterpret_cast<float4*>(yr + o) = make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if (o + j < out) yr[o + j] = acc[i][j];
        }
    }
}

extern "C" __global__ void __launch_bounds__(256, 2)
    lpx_gemm_f32(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
                 int rows, int out, int in) {
    __shared__ __align__(16) float sx[2][GF_BK][GF_LD];
    __shared__ __align__(16) float sw[2][GF_BK][GF_LD];
    const bool vec = (in % 4 == 0) && ((reinterpret_cast<uintptr_t>(x) & 15) == 0) &&
                     ((reinterpret_cast<uintptr_t>(w) & 15) == 0);
    if (vec)
        gemm_f32_tile<true>(x, w, y, rows, out, in, sx, sw);
    else
        gemm_f32_tile<false>(x, w, y, rows, out, in, sx, sw);
}
