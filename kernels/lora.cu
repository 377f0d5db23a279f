// lora.cu: the LoRA delta of the `cuda` backend as Punica/S-LoRA-style segmented gather matmuls
// (SGMV): for the rows of each segment g (rows of one lane sharing one adapter module),
//   shrink:  h[t, k] = Σ_i A[k, i] · x[t, i]                       (k < rank_g)
//   expand:  y[t, o] += (seg_scale[g] · row_scale[t]) · Σ_k B[o, k] · h[t, k]
// with A = arena[seg_a_off[g] ..] as [rank, in_dim] and B = arena[seg_b_off[g] ..] as
// [out_dim, rank] (row stride rank). The arena holds bf16 (half the bytes to upload and read);
// each weight is widened exactly to f32 (__bfloat162float) and all the math is f32 (x, h, y are
// f32). Contract: kernels/README.md, section lora.cu (names, parameters and launch geometry
// fixed there).
//
//   lpx_lora_shrink  grid (n_seg, max_rank), block 128, static smem 128 B. Block (g, k) returns
//                    when k >= rank_g; otherwise it walks the segment's rows in chunks of 8 and
//                    reads A[k, ·] once per chunk for all of them (thread j reads elements j,
//                    j+128, ...: one 2-byte load each, a warp's loads contiguous).
//   lpx_lora_expand  grid (n_seg, ceil(out_dim/256)), block 256: thread o of block (g, ·) owns
//                    output o for every row of segment g (chunks of 8 rows, B[o, ·] read once
//                    per chunk: 16-byte loads of 8 weights when rank % 8 == 0 and the row is
//                    16-byte aligned, else one weight at a time; the same values either way).
//
// Fixed reduction orders (batch invariance, README "Batch invariance"): whatever the chunk a row
// falls in and however many rows its segment has,
//   shrink: thread j (0..127) computes p_j = fmaf chain over i = j, j+128, j+256, ... < in_dim in
//           increasing order from 0.0f; warp w reduces its 32 partials with __shfl_down_sync at
//           offsets 16, 8, 4, 2, 1 (lane 0's value: the same tree every time), and
//           h = (s_0 + s_1) + (s_2 + s_3) over the 4 warp sums. The order depends only on in_dim.
//   expand: acc = fmaf chain over k = 0 .. rank-1 in order from 0.0f, then
//           y = y + ((seg_scale · row_scale) · acc), each operation rounded separately
//           (__fmul_rn / __fadd_rn: no contraction into an fma). The order depends only on rank
//           (not on which load path read B).
// A row's h and y therefore depend only on its own x, h, y and its segment's module and scales.
// Segments cover disjoint rows (a row is in at most one segment of a lane), so no two blocks
// write the same h or y element; no atomics.
//
// Robustness: metadata is trusted as the host builds it (seg_rows inside the step's rows,
// offsets inside the arena), but a rank above max_rank never indexes past a row of h: shrink
// only runs k < max_rank (the grid) and expand sums k < min(rank, max_rank).
//
// Status: compile-checked in `make test` (scripts/check-kernels.sh: PTX for compute_80/90,
// ptxas for sm_80/90, no warnings or spills) and run on the CPU against references under the
// host emulation of kernels/emu (scripts/emu-kernels.sh); not yet run on a GPU.

#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

#define LORA_CHUNK 8

extern "C" __global__ void __launch_bounds__(128)
    lpx_lora_shrink(const float* __restrict__ x, int x_stride, int x_col, int in_dim,
                    const bf16* __restrict__ arena, const int* __restrict__ seg_start,
                    const int* __restrict__ seg_rows, const long long* __restrict__ seg_a_off,
                    const int* __restrict__ seg_rank, int n_seg, float* __restrict__ h,
                    int max_rank) {
    const int g = blockIdx.x;
    const int k = blockIdx.y;
    if (g >= n_seg || k >= max_rank) return;  // block-uniform
    const int rank = seg_rank[g];
    if (k >= rank) return;  // block-uniform

    __shared__ float part[4][LORA_CHUNK];
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const unsigned short* a =
        reinterpret_cast<const unsigned short*>(arena + seg_a_off[g] + (long long)k * in_dim);
    const int beg = seg_start[g];
    const int end = seg_start[g + 1];

    for (int c = beg; c < end; c += LORA_CHUNK) {
        const int nr = min(LORA_CHUNK, end - c);
        // Missing rows of a short chunk alias the chunk's first row: computed, never stored.
        long long xoff[LORA_CHUNK];
#pragma unroll
        for (int r = 0; r < LORA_CHUNK; ++r) {
            const int t = seg_rows[c + (r < nr ? r : 0)];
            xoff[r] = (long long)t * x_stride + x_col;
        }
        float acc[LORA_CHUNK];
#pragma unroll
        for (int r = 0; r < LORA_CHUNK; ++r) acc[r] = 0.0f;
#pragma unroll 2
        for (int i = tid; i < in_dim; i += 128) {
            const float av = __bfloat162float(__ushort_as_bfloat16(__ldg(a + i)));
#pragma unroll
            for (int r = 0; r < LORA_CHUNK; ++r) acc[r] = fmaf(av, __ldg(x + xoff[r] + i), acc[r]);
        }
#pragma unroll
        for (int r = 0; r < LORA_CHUNK; ++r) {
#pragma unroll
            for (int off = 16; off > 0; off >>= 1)
                acc[r] = __fadd_rn(acc[r], __shfl_down_sync(0xffffffffu, acc[r], off));
        }
        if (lane == 0) {
#pragma unroll
            for (int r = 0; r < LORA_CHUNK; ++r) part[warp][r] = acc[r];
        }
        __syncthreads();
        if (tid < nr) {
            const int t = seg_rows[c + tid];
            const float s = __fadd_rn(__fadd_rn(part[0][tid], part[1][tid]),
                                      __fadd_rn(part[2][tid], part[3][tid]));
            h[(long long)t * max_rank + k] = s;
        }
        __syncthreads();  // part[] is rewritten by the next chunk
    }
}

// At least 4 blocks per SM: the 16-byte path keeps 8 weights x 8 rows of h loads in flight,
// which left alone takes 80 registers on sm_80 (3 blocks of 256); 64 fit without spills.
extern "C" __global__ void __launch_bounds__(256, 4)
    lpx_lora_expand(const float* __restrict__ h, int max_rank, const bf16* __restrict__ arena,
                    const int* __restrict__ seg_start, const int* __restrict__ seg_rows,
                    const long long* __restrict__ seg_b_off, const int* __restrict__ seg_rank,
                    const float* __restrict__ seg_scale, const float* __restrict__ row_scale,
                    float* __restrict__ y, int y_stride, int y_col, int out_dim, int n_seg) {
    const int g = blockIdx.x;
    const int o = blockIdx.y * 256 + threadIdx.x;
    // No barrier in this kernel: threads past out_dim may leave.
    if (g >= n_seg || o >= out_dim) return;
    const int rank = seg_rank[g] > 0 ? seg_rank[g] : 0;
    const int kn = rank < max_rank ? rank : max_rank;
    const unsigned short* b =
        reinterpret_cast<const unsigned short*>(arena + seg_b_off[g] + (long long)o * rank);
    // 16-byte loads only when every one is aligned: a row of rank % 8 == 0 weights that starts
    // on 16 bytes (then the next rows do too).
    const bool vec = (rank & 7) == 0 && (reinterpret_cast<uintptr_t>(b) & 15) == 0;
    const float sg = seg_scale[g];
    const int beg = seg_start[g];
    const int end = seg_start[g + 1];

    for (int c = beg; c < end; c += LORA_CHUNK) {
        const int nr = min(LORA_CHUNK, end - c);
        // Missing rows of a short chunk alias the chunk's first row: computed, never stored.
        long long hoff[LORA_CHUNK];
#pragma unroll
        for (int r = 0; r < LORA_CHUNK; ++r) {
            const int t = seg_rows[c + (r < nr ? r : 0)];
            hoff[r] = (long long)t * max_rank;
        }
        float acc[LORA_CHUNK];
#pragma unroll
        for (int r = 0; r < LORA_CHUNK; ++r) acc[r] = 0.0f;
        int kk = 0;
        if (vec) {
            for (; kk + 8 <= kn; kk += 8) {
                const uint4 v = __ldg(reinterpret_cast<const uint4*>(b + kk));
                const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int q = 0; q < 8; ++q) {
                    const unsigned short u = (unsigned short)(w[q >> 1] >> (16 * (q & 1)));
                    const float bv = __bfloat162float(__ushort_as_bfloat16(u));
#pragma unroll
                    for (int r = 0; r < LORA_CHUNK; ++r)
                        acc[r] = fmaf(bv, __ldg(h + hoff[r] + kk + q), acc[r]);
                }
            }
        }
        for (; kk < kn; ++kk) {
            const float bv = __bfloat162float(__ushort_as_bfloat16(__ldg(b + kk)));
#pragma unroll
            for (int r = 0; r < LORA_CHUNK; ++r) acc[r] = fmaf(bv, __ldg(h + hoff[r] + kk), acc[r]);
        }
#pragma unroll
        for (int r = 0; r < LORA_CHUNK; ++r) {
            if (r < nr) {
                const int t = seg_rows[c + r];
                float* yp = y + (long long)t * y_stride + y_col + o;
                const float s = __fmul_rn(sg, row_scale[t]);
                *yp = __fadd_rn(*yp, __fmul_rn(s, acc[r]));
            }
        }
    }
}
