// sampling.cu: the device helpers around sampling; lpx_gather_rows copies the rows whose logits
// are read back (the last token of each sequence) into a compact buffer. Contract:
// kernels/README.md "sampling.cu"; semantics: Backend::gather_rows in src/backend/mod.rs
// (reference.rs gather_rows is the spec).
//
// out[k*dim + j] = x[rows[k]*dim + j]; a row index >= x_rows gives a NaN row (as the reference).
// Launch geometry (fixed by the contract): grid (ceil(dim/256), n), block 256, one element per
// thread. No reductions (a copy), so batch invariant. Offsets are (long long).
//
// Status: compile-checked (nvcc 13.0 --ptx for compute_80/compute_90, ptxas -v for sm_80/sm_90:
// no spills) and tested against double-precision loops of the op spec in a CPU emulation of the
// CUDA thread model (one std::thread per CUDA thread, std::barrier for __syncthreads and warp
// shuffles, ThreadSanitizer-clean), but, in the session that wrote it, never run on a GPU.

extern "C" __global__ void __launch_bounds__(256) lpx_gather_rows(const float* __restrict__ x,
                                                                  int dim,
                                                                  const unsigned* __restrict__ rows,
                                                                  float* __restrict__ out, int n,
                                                                  long long x_rows) {
    const int k = blockIdx.y;
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n || j >= dim) {
        return;
    }
    const unsigned r = rows[k];
    out[(long long)k * dim + j] =
        (long long)r < x_rows ? x[(long long)r * dim + j] : __int_as_float(0x7fc00000);
}
