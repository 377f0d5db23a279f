// embedding.cu: token embedding lookup from an f32 or bf16 table (lpx_embedding_f32,
// lpx_embedding_bf16). Contract: kernels/README.md "embedding.cu"; semantics:
// Backend::embedding_gather in src/backend/mod.rs (reference.rs is the spec).
//
// out[t*hidden + j] = table[ids[t]*hidden + j] (bf16 widened exactly: a bf16 is the top half of
// an f32); an id >= table_rows gives a NaN row (the reference's answer for an id outside the
// table). Launch geometry (fixed by the contract): grid (ceil(hidden/256), n), block 256, one
// element per thread. No reductions (a copy), so batch invariant. Table and output offsets are
// (long long): tables of more than 2^31 elements work.
//
// Status: compile-checked (nvcc 13.0 --ptx for compute_80/compute_90, ptxas -v for sm_80/sm_90:
// no spills) and tested against double-precision loops of the op spec in a CPU emulation of the
// CUDA thread model (one std::thread per CUDA thread, std::barrier for __syncthreads and warp
// shuffles, ThreadSanitizer-clean), but, in the session that wrote it, never run on a GPU.

#include <cuda_bf16.h>

extern "C" __global__ void __launch_bounds__(256) lpx_embedding_f32(const float* __restrict__ table,
                                                                    long long table_rows,
                                                                    const unsigned* __restrict__ ids,
                                                                    float* __restrict__ out, int n,
                                                                    int hidden) {
    const int t = blockIdx.y;
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n || j >= hidden) {
        return;
    }
    const unsigned id = ids[t];
    out[(long long)t * hidden + j] =
        (long long)id < table_rows ? table[(long long)id * hidden + j] : __int_as_float(0x7fc00000);
}

extern "C" __global__ void __launch_bounds__(256) lpx_embedding_bf16(
    const __nv_bfloat16* __restrict__ table, long long table_rows, const unsigned* __restrict__ ids,
    float* __restrict__ out, int n, int hidden) {
    const int t = blockIdx.y;
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n || j >= hidden) {
        return;
    }
    const unsigned id = ids[t];
    out[(long long)t * hidden + j] = (long long)id < table_rows
                                         ? __bfloat162float(table[(long long)id * hidden + j])
                                         : __int_as_float(0x7fc00000);
}
