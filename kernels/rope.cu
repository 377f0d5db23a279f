// rope.cu: rotary position embedding, HF "rotate_half" convention, in place on a strided view
// (lpx_rope). Contract: kernels/README.md "rope.cu"; semantics: Backend::rope in
// src/backend/mod.rs (reference.rs is the spec).
//
// For row t, head h, i < head_dim/2: theta = (float)row_pos[t] * inv_freq[i] (one f32 product),
// sincosf(theta) (full-range sincosf: no --use_fast_math), (x1, x2) = (x[i], x[i+half]),
// x[i] = x1*c - x2*s, x[i+half] = x2*c + x1*s.
//
// Launch geometry (fixed by the contract): grid (rows, n_heads), block min(128, head_dim/2)
// rounded up to 32; each thread handles pairs i = threadIdx.x, + blockDim.x, ... so any block
// size covers the head. No reductions: every output element is a function of its own two inputs,
// its position and its frequency, hence batch invariant. Row offsets are (long long).
//
// Note: sincosf's exact large-argument reduction (|theta| > ~1e5, i.e. positions past ~100k for
// inv_freq[0] = 1) uses a small local array: ptxas reports a 32-byte stack frame on sm_90 (not a
// spill).
//
// Status: compile-checked (nvcc 13.0 --ptx for compute_80/compute_90, ptxas -v for sm_80/sm_90:
// no spills) and tested against double-precision loops of the op spec in a CPU emulation of the
// CUDA thread model (one std::thread per CUDA thread, std::barrier for __syncthreads and warp
// shuffles, ThreadSanitizer-clean), but, in the session that wrote it, never run on a GPU.

extern "C" __global__ void __launch_bounds__(128) lpx_rope(float* __restrict__ x, int rows,
                                                           int stride, int col, int n_heads,
                                                           int head_dim,
                                                           const unsigned* __restrict__ row_pos,
                                                           const float* __restrict__ inv_freq) {
    const int t = blockIdx.x;
    const int h = blockIdx.y;
    if (t >= rows || h >= n_heads || head_dim <= 0) {
        return;
    }
    const int half = head_dim / 2;
    float* v = x + (long long)t * stride + col + (long long)h * head_dim;
    const float pos = (float)row_pos[t];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float theta = pos * inv_freq[i];
        float s, c;
        sincosf(theta, &s, &c);
        const float x1 = v[i];
        const float x2 = v[i + half];
        v[i] = x1 * c - x2 * s;
        v[i + half] = x2 * c + x1 * s;
    }
}
