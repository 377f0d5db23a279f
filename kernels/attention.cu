// attention.cu: the paged bf16 KV cache's write (lpx_kv_write) and causal grouped-query
// attention over it (lpx_attention). Contract: kernels/README.md "attention.cu"; semantics:
// Backend::kv_write / Backend::attention_paged in src/backend/mod.rs (reference.rs and
// kv_store.rs are the spec).
//
// ---------------------------------------------------------------------------------------------
// lpx_kv_write: grid (ceil(kv_dim/256), rows), block 256. k_cache[slot*kv_dim + j] =
// __float2bfloat16_rn(k[t*k_stride + k_col + j]), the same for V; a row whose slot is
// >= num_slots is skipped. No arithmetic besides the rounding: batch invariant. (Two rows
// mapping to the same slot race, as they would on any parallel backend; the host never maps
// two rows of a step to one slot.)
//
// ---------------------------------------------------------------------------------------------
// lpx_attention: grid (n_heads, rows), block 128 (4 warps), smem 0 (static, ~36 KiB).
// Block (h, t) computes query head h of row t, reading KV head h / (n_heads / n_kv_heads) of
// the keys lo..=pos (pos = row_pos[t]; lo = 0 when window <= 0, else max(0, pos + 1 - window))
// of sequence row_seq[t], at the slots its block table gives.
//
// NaN rows (as kv_store.rs attn_row): the head's head_dim outputs are NaN when row_seq[t] >=
// n_seqs, when pos / block_size + 1 > max_blocks, or when any block id of the table's first
// pos / block_size + 1 entries is 0xFFFFFFFF or >= num_blocks (all of them, as the reference
// checks, not only those of lo..=pos). Arguments the host validates (head_dim even and <= 256,
// n_heads a multiple of n_kv_heads > 0, block_size > 0) also give a NaN head instead of an
// out-of-bounds access when violated. Every cache read is therefore inside
// [0, num_blocks * block_size * kv_dim).
//
// Arithmetic, one fixed order per (row, head) (batch invariance):
//   * Keys are consumed in chunks of CHUNK = 32 positions: chunk c covers positions
//     lo + 32c .. lo + 32c + 31 (the last one cut at pos). The chunk grid starts at lo and
//     depends on nothing else.
//   * Score of key k (chunk-local index, 0..31): 4 threads (a quad, tid = 4k + j, j = 0..3)
//     each sum the pairs i = j, j+4, j+8, ... < head_dim/2 in that order as one fmaf chain
//     starting at 0: part = fmaf(q[2i], k[2i], part); part = fmaf(q[2i+1], k[2i+1], part)
//     (q f32, k the bf16 widened exactly); then dot = (p0 + p1) + (p2 + p3) (shfl_xor 1, then 2;
//     IEEE addition is commutative, so every lane of the quad holds the same bits);
//     s = dot * scale. Positions past pos get s = -inf and weight 0.
//   * Softmax step per chunk (computed identically and redundantly by every warp, lane l <->
//     key l): m_c = max of the 32 scores (xor-butterfly of fmaxf: exact, order-free), m_new =
//     fmaxf(m_run, m_c); with m_use = (m_new == -inf) ? 0 : m_new, p_l = expf(s_l - m_use)
//     (0 past pos), alpha = expf(m_run - m_use); sum_c = xor-butterfly sum of the 32 p_l
//     (offsets 16, 8, 4, 2, 1; every lane ends with the same bits); l_run = l_run * alpha +
//     sum_c; m_run = m_new. (m_use keeps an all -inf chunk from producing exp(-inf + inf) = NaN
//     where the reference's global max would give finite weights; an all -inf row still ends as
//     0/0 = NaN, and NaN / +inf scores give NaN as in the reference.)
//   * Weighted V: the head_dim/2 dim pairs are split over NG = 128 / P thread groups of P =
//     round_up(head_dim/2, 32) threads (NG = 4, 2, 1, 1 for head_dim <= 64, <= 128, <= 192,
//     <= 256); group g owns keys k = g, g+NG, g+2NG, ... of every chunk. Per chunk:
//     acc = acc * alpha, then acc = fmaf(p_k, v_k[d], acc) over its keys in increasing k (keys
//     past pos skipped). At the end the group partials are added in group order
//     ((a_0 + a_1) + a_2) + a_3 and out = acc / l_run.
//   Everything above depends only on head_dim, scale, lo and pos: never on rows, n_heads, the
//   grid or the other rows. The choice of load path below (16-byte vectors when head_dim % 8 == 0
//   and both cache pointers are 16-byte aligned, else 4- or 2-byte loads) only moves bytes.
//
// Data movement: each chunk's 32 K and V rows of the KV head (bf16) are copied into shared
// tiles (row stride rs words, rs = 4 mod 8, so the quads' 4-byte reads hit 32 distinct banks);
// every key is read from global memory once per (row, head) block. On the 16-byte path the
// loads of chunk c+1 are issued into registers before chunk c is computed (software pipeline),
// so a decode row's chunk loop is not one global round trip per chunk.
//
// Contract notes: (1) grid.y = rows, so one launch handles at most 65535 rows (CUDA's grid.y
// limit); the host must split larger steps. (2) window <= 0 means no window; Backend's
// `Some(0)` (counts as 1) must be passed as 1. (3) Only lpx_attention's own per-(row, head)
// order is fixed; a split-context decode kernel (more blocks for one long sequence) would need
// its own name in kernels/README.md.
//
// Status: compile-checked (nvcc 13.0 --ptx for compute_80/compute_90, ptxas -v for sm_80/sm_90:
// no spills) and tested against double-precision loops of the op spec in a CPU emulation of the
// CUDA thread model (one std::thread per CUDA thread, std::barrier for __syncthreads and warp
// shuffles, ThreadSanitizer-clean), but, in the session that wrote it, never run on a GPU.

#include <cuda_bf16.h>
#include <stdint.h>

#define LPX_ATT_THREADS 128
// Keys per chunk; equal to the warp size (lane l of every warp holds key l's weight).
#define LPX_ATT_CHUNK 32
#define LPX_ATT_MAX_HD 256
// Words (bf16 pairs) per tile row for head_dim 256: 128 + 4 padding (rs = 4 mod 8).
#define LPX_ATT_MAX_RS 132
// 16-byte vectors per thread per tile on the 16-byte path: 32 keys * 256 / 8 / 128 threads.
#define LPX_ATT_VPT (LPX_ATT_CHUNK * LPX_ATT_MAX_HD / 8 / LPX_ATT_THREADS)

extern "C" __global__ void __launch_bounds__(256) lpx_kv_write(
    __nv_bfloat16* __restrict__ k_cache, __nv_bfloat16* __restrict__ v_cache, long long num_slots,
    int kv_dim, const float* __restrict__ k, int k_stride, int k_col, const float* __restrict__ v,
    int v_stride, int v_col, const unsigned* __restrict__ slot_mapping, int rows) {
    const int t = blockIdx.y;
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= rows || j >= kv_dim) {
        return;
    }
    const unsigned slot = slot_mapping[t];
    if ((long long)slot >= num_slots) {
        return;
    }
    const long long dst = (long long)slot * kv_dim + j;
    k_cache[dst] = __float2bfloat16_rn(k[(long long)t * k_stride + k_col + j]);
    v_cache[dst] = __float2bfloat16_rn(v[(long long)t * v_stride + v_col + j]);
}

namespace {

__device__ __forceinline__ float lo_bf16(unsigned w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float hi_bf16(unsigned w) { return __uint_as_float(w & 0xffff0000u); }

// Shared state of one (row, head) block.
struct Tiles {
    unsigned k[LPX_ATT_CHUNK * LPX_ATT_MAX_RS];
    unsigned v[LPX_ATT_CHUNK * LPX_ATT_MAX_RS];
    float q[LPX_ATT_MAX_HD];
    float2 red[LPX_ATT_THREADS];
    // Element offset of each key's K/V head row in the cache (-1: past pos), double-buffered by
    // chunk parity.
    long long slot[2][LPX_ATT_CHUNK];
    float s[LPX_ATT_CHUNK];
};

// The element offsets of chunk `c`'s keys (threads 0..31 write one each).
__device__ __forceinline__ void chunk_slots(Tiles& sm, long long c, long long nch, long long lo,
                                            long long pos, const unsigned* table, int block_size,
                                            long long kv_dim, long long head_off) {
    const int tid = threadIdx.x;
    if (c < nch && tid < LPX_ATT_CHUNK) {
        const long long p = lo + c * LPX_ATT_CHUNK + tid;
        long long off = -1;
        if (p <= pos) {
            // p <= pos < 2^32 and the table entries 0..pos/block_size were checked < num_blocks.
            const unsigned pu = (unsigned)p;
            const unsigned bs = (unsigned)block_size;
            const unsigned blk = table[pu / bs];
            off = ((long long)blk * block_size + (long long)(pu % bs)) * kv_dim + head_off;
        }
        sm.slot[c & 1][tid] = off;
    }
}

// Copies chunk keys' K and V head rows into the tiles with loads of type V (2 or 4 bytes), for
// the paths without 16-byte alignment. Keys past pos get zeros.
template <typename V>
__device__ __forceinline__ void load_tiles_direct(Tiles& sm, const long long* slot,
                                                  const __nv_bfloat16* __restrict__ kc,
                                                  const __nv_bfloat16* __restrict__ vc, int hd,
                                                  int rs) {
    constexpr int E = (int)(sizeof(V) / 2);
    const int U = hd / E;
    const int kstep = LPX_ATT_THREADS / U;
    const int ustep = LPX_ATT_THREADS - kstep * U;
    int k = threadIdx.x / U;
    int u = threadIdx.x - k * U;
    while (k < LPX_ATT_CHUNK) {
        const long long off = slot[k];
        V kv = 0;
        V vv = 0;
        if (off >= 0) {
            kv = *reinterpret_cast<const V*>(kc + off + (long long)u * E);
            vv = *reinterpret_cast<const V*>(vc + off + (long long)u * E);
        }
        *reinterpret_cast<V*>(reinterpret_cast<char*>(sm.k + k * rs) + u * sizeof(V)) = kv;
        *reinterpret_cast<V*>(reinterpret_cast<char*>(sm.v + k * rs) + u * sizeof(V)) = vv;
        u += ustep;
        k += kstep;
        if (u >= U) {
            u -= U;
            ++k;
        }
    }
}

// The 16-byte path's register stage: vector i of this thread is (key k_i, vector u_i) of the
// chunk, e = threadIdx.x + 128 i, k_i = e / U, u_i = e % U (U = hd / 8 <= 32 vectors per row).
struct Stage {
    uint4 k[LPX_ATT_VPT];
    uint4 v[LPX_ATT_VPT];
};

__device__ __forceinline__ void stage_load(Stage& st, const long long* slot,
                                           const __nv_bfloat16* __restrict__ kc,
                                           const __nv_bfloat16* __restrict__ vc, int U) {
    const int kstep = LPX_ATT_THREADS / U;
    const int ustep = LPX_ATT_THREADS - kstep * U;
    int k = threadIdx.x / U;
    int u = threadIdx.x - k * U;
#pragma unroll
    for (int i = 0; i < LPX_ATT_VPT; ++i) {
        st.k[i] = make_uint4(0u, 0u, 0u, 0u);
        st.v[i] = make_uint4(0u, 0u, 0u, 0u);
        if (k < LPX_ATT_CHUNK) {
            const long long off = slot[k];
            if (off >= 0) {
                st.k[i] = __ldg(reinterpret_cast<const uint4*>(kc + off) + u);
                st.v[i] = __ldg(reinterpret_cast<const uint4*>(vc + off) + u);
            }
        }
        u += ustep;
        k += kstep;
        if (u >= U) {
            u -= U;
            ++k;
        }
    }
}

__device__ __forceinline__ void stage_store(const Stage& st, Tiles& sm, int U, int rs) {
    const int kstep = LPX_ATT_THREADS / U;
    const int ustep = LPX_ATT_THREADS - kstep * U;
    int k = threadIdx.x / U;
    int u = threadIdx.x - k * U;
#pragma unroll
    for (int i = 0; i < LPX_ATT_VPT; ++i) {
        if (k < LPX_ATT_CHUNK) {
            reinterpret_cast<uint4*>(sm.k + k * rs)[u] = st.k[i];
            reinterpret_cast<uint4*>(sm.v + k * rs)[u] = st.v[i];
        }
        u += ustep;
        k += kstep;
        if (u >= U) {
            u -= U;
            ++k;
        }
    }
}

// The chunk loop of one (row, head) block (see the header for the order). VEC16: the 16-byte
// pipelined path; otherwise `word_loads` selects 4-byte (true) or 2-byte loads.
template <bool VEC16>
__device__ __forceinline__ void attend(Tiles& sm, const __nv_bfloat16* __restrict__ kc,
                                       const __nv_bfloat16* __restrict__ vc, bool word_loads,
                                       const unsigned* table, int block_size, long long kv_dim,
                                       long long head_off, int hd, long long lo, long long pos,
                                       float scale, float* __restrict__ orow) {
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int hp = hd / 2;
    // Tile row stride in words: hp rounded up to 4 (16-byte rows), then made = 4 mod 8.
    int rs = (hp + 3) & ~3;
    if ((rs & 7) == 0) {
        rs += 4;
    }
    const int U = hd / 8;
    const long long nch = (pos - lo) / LPX_ATT_CHUNK + 1;

    // Score mapping: quad j of key ks.
    const int ks = tid >> 2;
    const int j = tid & 3;
    // Weighted-V mapping: group g of NG, pair pi of the group.
    const int P = (hp + 31) & ~31;
    const int NG = LPX_ATT_THREADS / P;
    const int g = tid / P;
    const int pi = tid - g * P;
    const bool pv_active = g < NG && pi < hp;

    chunk_slots(sm, 0, nch, lo, pos, table, block_size, kv_dim, head_off);
    chunk_slots(sm, 1, nch, lo, pos, table, block_size, kv_dim, head_off);
    __syncthreads();  // q and the first two chunks' slots

    Stage st;
    if (VEC16) {
        stage_load(st, sm.slot[0], kc, vc, U);
    }

    float m_run = -INFINITY;
    float l_run = 0.0f;
    float acc0 = 0.0f;
    float acc1 = 0.0f;

    for (long long c = 0; c < nch; ++c) {
        const int nvalid = (int)min((long long)LPX_ATT_CHUNK, pos + 1 - (lo + c * LPX_ATT_CHUNK));
        __syncthreads();  // the previous chunk's readers of the tiles and scores are done
        if (VEC16) {
            stage_store(st, sm, U, rs);
        } else if (word_loads) {
            load_tiles_direct<unsigned>(sm, sm.slot[c & 1], kc, vc, hd, rs);
        } else {
            load_tiles_direct<unsigned short>(sm, sm.slot[c & 1], kc, vc, hd, rs);
        }
        __syncthreads();  // tiles of chunk c (and slots of chunk c + 1) visible
        if (VEC16 && c + 1 < nch) {
            stage_load(st, sm.slot[(c + 1) & 1], kc, vc, U);
        }
        // slot[c & 1] was last read before the barrier above; chunk c + 2 may reuse it.
        chunk_slots(sm, c + 2, nch, lo, pos, table, block_size, kv_dim, head_off);

        // Scores.
        {
            const unsigned* kr = sm.k + ks * rs;
            const float2* q2 = reinterpret_cast<const float2*>(sm.q);
            float part = 0.0f;
            for (int i = j; i < hp; i += 4) {
                const unsigned w = kr[i];
                const float2 qq = q2[i];
                part = fmaf(qq.x, lo_bf16(w), part);
                part = fmaf(qq.y, hi_bf16(w), part);
            }
            part += __shfl_xor_sync(0xffffffffu, part, 1);
            part += __shfl_xor_sync(0xffffffffu, part, 2);
            if (j == 0) {
                sm.s[ks] = ks < nvalid ? part * scale : -INFINITY;
            }
        }
        __syncthreads();  // scores visible

        // Softmax step (every warp the same).
        const float s = sm.s[lane];
        float mc = s;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            mc = fmaxf(mc, __shfl_xor_sync(0xffffffffu, mc, off));
        }
        const float m_new = fmaxf(m_run, mc);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        const float p = lane < nvalid ? expf(s - m_use) : 0.0f;
        float psum = p;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            psum += __shfl_xor_sync(0xffffffffu, psum, off);
        }
        const float alpha = expf(m_run - m_use);
        l_run = fmaf(l_run, alpha, psum);
        m_run = m_new;

        // Weighted V. The loop bounds are warp-uniform (groups are whole warps), so every lane
        // takes part in the shuffles.
        if (g < NG) {
            acc0 *= alpha;
            acc1 *= alpha;
            for (int k = g; k < LPX_ATT_CHUNK; k += NG) {
                const float pk = __shfl_sync(0xffffffffu, p, k);
                if (k < nvalid && pi < hp) {
                    const unsigned w = sm.v[k * rs + pi];
                    acc0 = fmaf(pk, lo_bf16(w), acc0);
                    acc1 = fmaf(pk, hi_bf16(w), acc1);
                }
            }
        }
    }

    // Group partials in group order, then the normalisation.
    if (NG > 1) {
        if (g > 0 && pv_active) {
            sm.red[tid] = make_float2(acc0, acc1);
        }
        __syncthreads();
        if (g == 0 && pv_active) {
            for (int gg = 1; gg < NG; ++gg) {
                const float2 r = sm.red[gg * P + pi];
                acc0 += r.x;
                acc1 += r.y;
            }
        }
    }
    if (g == 0 && pv_active) {
        orow[2 * pi] = acc0 / l_run;
        orow[2 * pi + 1] = acc1 / l_run;
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(LPX_ATT_THREADS) lpx_attention(
    const float* __restrict__ q, int q_stride, int q_col, int rows, int n_heads, int n_kv_heads,
    int head_dim, const __nv_bfloat16* __restrict__ k_cache,
    const __nv_bfloat16* __restrict__ v_cache, long long num_blocks, int block_size,
    const unsigned* __restrict__ row_seq, const unsigned* __restrict__ row_pos,
    const unsigned* __restrict__ block_tables, int max_blocks, int n_seqs, int window,
    float scale, float* __restrict__ out) {
    __shared__ __align__(16) Tiles sm;
    const int h = blockIdx.x;
    const int t = blockIdx.y;
    if (h >= n_heads || t >= rows || head_dim <= 0) {
        return;
    }
    const int tid = threadIdx.x;
    float* orow = out + (long long)t * n_heads * head_dim + (long long)h * head_dim;

    // Block-uniform checks first (every thread computes the same), then the block table.
    const long long seq = row_seq[t];
    const long long pos = row_pos[t];
    bool bad = head_dim > LPX_ATT_MAX_HD || (head_dim & 1) != 0 || n_kv_heads <= 0 ||
               n_heads % n_kv_heads != 0 || block_size <= 0 || seq >= n_seqs;
    const long long nblk = bad ? 0 : pos / block_size + 1;
    bad = bad || nblk > max_blocks;
    const unsigned* table = block_tables + (bad ? 0 : seq * (long long)max_blocks);
    int bad_blk = 0;
    if (!bad) {
        for (long long b = tid; b < nblk; b += LPX_ATT_THREADS) {
            const unsigned id = table[b];
            bad_blk |= (id == 0xffffffffu || (long long)id >= num_blocks) ? 1 : 0;
        }
    }
    if (bad || __syncthreads_or(bad_blk)) {
        for (int d = tid; d < head_dim; d += LPX_ATT_THREADS) {
            orow[d] = __int_as_float(0x7fc00000);
        }
        return;
    }

    const int group = n_heads / n_kv_heads;
    const int kvh = h / group;
    const long long kv_dim = (long long)n_kv_heads * head_dim;
    const long long head_off = (long long)kvh * head_dim;
    long long lo = 0;
    if (window > 0) {
        lo = pos + 1 - window;
        if (lo < 0) {
            lo = 0;
        }
    }
    const float* qh = q + (long long)t * q_stride + q_col + (long long)h * head_dim;
    for (int d = tid; d < head_dim; d += LPX_ATT_THREADS) {
        sm.q[d] = qh[d];
    }
    // (made visible by the first barrier in attend)

    const uintptr_t align = (uintptr_t)k_cache | (uintptr_t)v_cache;
    if (head_dim % 8 == 0 && (align & 15) == 0) {
        attend<true>(sm, k_cache, v_cache, true, table, block_size, kv_dim, head_off, head_dim, lo,
                     pos, scale, orow);
    } else {
        attend<false>(sm, k_cache, v_cache, (align & 3) == 0, table, block_size, kv_dim, head_off,
                      head_dim, lo, pos, scale, orow);
    }
}
