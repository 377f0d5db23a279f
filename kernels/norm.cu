// norm.cu: RMSNorm of whole rows (lpx_rms_norm) and of every head of a strided view in place
// (lpx_head_rms_norm, Qwen3's q/k norm). Contract: kernels/README.md "norm.cu"; semantics:
// Backend::rms_norm / Backend::head_rms_norm in src/backend/mod.rs (reference.rs is the spec).
//
// Launch geometry (fixed by the contract):
//   lpx_rms_norm       grid (rows),          block 256, smem 0
//   lpx_head_rms_norm  grid (rows, n_heads), block 128, smem 0
//
// Reduction order (batch invariance): one block per row (per (row, head)). Thread i sums
// x[j]^2 for j = i, i + blockDim, i + 2*blockDim, ... in that order (one fmaf chain starting at
// 0), then the blockDim partials are combined by one fixed tree: within each warp a shfl_down
// tree (offsets 16, 8, 4, 2, 1; lane 0 keeps the sum), then warp 0 combines the warp sums the
// same way (warp w's sum at lane w, absent warps 0). The order depends only on dim (head_dim)
// and the fixed block size, never on rows, n_heads or the grid, so a row's bits do not depend on
// the other rows. r = 1/sqrtf(ss/dim + eps) (IEEE division and sqrtf: no --use_fast_math; the
// README writes rsqrt for the head norm, 1/sqrtf is the correctly rounded value of the same
// expression), out = (x * r) * w.
//
// Offsets: row t's data starts at (long long)t * stride (or * dim), so buffers of more than
// 2^31 elements are addressed correctly.
//
// Status: compile-checked in `make test` (scripts/check-kernels.sh: PTX for compute_80/90,
// ptxas for sm_80/90, no warnings or spills) and run on the CPU against references under the
// host emulation of kernels/emu (scripts/emu-kernels.sh); not yet run on a GPU.

// The sum of v over the block (every thread passes its partial); the result is valid in every
// thread. blockDim.x must be a multiple of 32 and at most 1024. `red` holds 32 floats.
__device__ __forceinline__ float block_sum_fixed(float v, float* red) {
    const unsigned lane = threadIdx.x & 31u;
    const unsigned warp = threadIdx.x >> 5;
    const unsigned nwarps = blockDim.x >> 5;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        v += __shfl_down_sync(0xffffffffu, v, off);
    }
    if (lane == 0) {
        red[warp] = v;
    }
    __syncthreads();
    if (warp == 0) {
        float w = lane < nwarps ? red[lane] : 0.0f;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            w += __shfl_down_sync(0xffffffffu, w, off);
        }
        if (lane == 0) {
            red[32] = w;
        }
    }
    __syncthreads();
    return red[32];
}

// 1/sqrt(mean(v[j]^2) + eps) over the n values of v: each thread an fmaf chain over its strided
// j in order, then block_sum_fixed; the same order for every row. `red` holds 33 floats.
__device__ __forceinline__ float rms_scale(const float* v, int n, float eps, float* red) {
    float ss = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float a = v[j];
        ss = fmaf(a, a, ss);
    }
    ss = block_sum_fixed(ss, red);
    return 1.0f / sqrtf(ss / (float)n + eps);
}

extern "C" __global__ void __launch_bounds__(256) lpx_rms_norm(const float* __restrict__ x,
                                                               const float* __restrict__ w,
                                                               float* __restrict__ out, int rows,
                                                               int dim, float eps) {
    __shared__ float red[33];
    const int t = blockIdx.x;
    if (t >= rows || dim <= 0) {
        return;
    }
    const float* xr = x + (long long)t * dim;
    float* orow = out + (long long)t * dim;
    const float r = rms_scale(xr, dim, eps, red);
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        orow[j] = (xr[j] * r) * w[j];
    }
}

extern "C" __global__ void __launch_bounds__(128) lpx_head_rms_norm(float* __restrict__ x,
                                                                    int rows, int stride,
                                                                    int col, int n_heads,
                                                                    int head_dim,
                                                                    const float* __restrict__ w,
                                                                    float eps) {
    __shared__ float red[33];
    const int t = blockIdx.x;
    const int h = blockIdx.y;
    if (t >= rows || h >= n_heads || head_dim <= 0) {
        return;
    }
    float* v = x + (long long)t * stride + col + (long long)h * head_dim;
    const float r = rms_scale(v, head_dim, eps, red);
    // Each element is read and written by the same thread, after the block-wide sum (which
    // ends in a __syncthreads), so the in-place update never races with a read.
    for (int j = threadIdx.x; j < head_dim; j += blockDim.x) {
        v[j] = (v[j] * r) * w[j];
    }
}
