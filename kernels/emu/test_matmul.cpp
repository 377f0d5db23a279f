// test_matmul.cpp: kernels/matmul.cu (lpx_gemm_bf16, lpx_gemv_bf16, lpx_gemm_f32) in the host
// emulation (ldmatrix / mma.m16n8k16 / cp.async modelled from the PTX ISA fragment layouts;
// cp.async copies land at the latest moment the wait allows). Checks:
//   * gemm_bf16 against f64 sums of the exact bf16(x)·w products (relative to Σ|products|);
//   * gemv_bf16 (rows <= 8) bitwise equal to gemm_bf16, and every sub-batch of gemm_bf16
//     bitwise equal to the full batch (batch invariance across grids);
//   * gemm_f32 bitwise against a host fmaf chain over k (the contract's order), with blockDim
//     (16,16) and (256);
//   * every output written (poison), nothing past y written (ASan: nothing read past x / w);
//   * the vector paths (in % 8 == 0, aligned) and the scalar paths (odd in, x or w misaligned).
// The mma model rounds once from double: the real tensor core's accumulation is not modelled.
#include "check.h"

extern "C" void lpx_gemm_bf16(const float*, const bf16*, float*, int, int, int);
extern "C" void lpx_gemv_bf16(const float*, const bf16*, float*, int, int, int);
extern "C" void lpx_gemm_f32(const float*, const float*, float*, int, int, int);

// Launch geometry of kernels/README.md.
static void gemm_bf16(const float* x, const bf16* w, float* y, int rows, int out, int in) {
    if (rows == 0 || out == 0) return;
    dim3 g, b;
    g.x = cdiv(out, 64);
    g.y = cdiv(rows, 64);
    b.x = 128;
    emu_launch(g, b, [&] { lpx_gemm_bf16(x, w, y, rows, out, in); });
}
static void gemv_bf16(const float* x, const bf16* w, float* y, int rows, int out, int in) {
    if (rows == 0 || out == 0) return;
    dim3 g, b;
    g.x = cdiv(out, 64);
    b.x = 128;
    emu_launch(g, b, [&] { lpx_gemv_bf16(x, w, y, rows, out, in); });
}
static void gemm_f32(const float* x, const float* w, float* y, int rows, int out, int in, bool twod) {
    if (rows == 0 || out == 0) return;
    dim3 g, b;
    g.x = cdiv(out, 64);
    g.y = cdiv(rows, 64);
    if (twod) {
        b.x = 16;
        b.y = 16;
    } else {
        b.x = 256;
    }
    emu_launch(g, b, [&] { lpx_gemm_f32(x, w, y, rows, out, in); });
}

static void test_bf16(int rows, int out, int in, int xoff, int woff) {
    Buf<float> x((size_t)rows * in, xoff), y((size_t)rows * out);
    Buf<bf16> w((size_t)out * in, woff);
    for (size_t i = 0; i < x.n; ++i) x[i] = rnd();
    for (size_t i = 0; i < w.n; ++i) w[i] = to_bf16(rnd());
    poison(y);
    gemm_bf16(x.p, w.p, y.p, rows, out, in);
    double maxerr = 0;
    int unwritten = 0;
    for (int t = 0; t < rows; ++t)
        for (int o = 0; o < out; ++o) {
            double s = 0, sa = 0;
            for (int k = 0; k < in; ++k) {
                const double p = (double)bf16f(ref_bf16(x[(size_t)t * in + k])) * bf16f(w[(size_t)o * in + k].v);
                s += p;
                sa += fabs(p);
            }
            const float got = y[(size_t)t * out + o];
            unwritten += is_poison(got);
            maxerr = max(maxerr, fabs(s - got) / (1e-30 + sa));
        }
    CHECK(unwritten == 0 && maxerr < 1e-6, "gemm_bf16 %dx%dx%d xoff %d woff %d: %d unwritten, err %g",
          rows, out, in, xoff, woff, unwritten, maxerr);
    // Sub-batches of <= 8 rows through gemm and gemv, bitwise equal to the full batch.
    for (int r0 = 0; r0 < rows; r0 += max(1, rows / 3)) {
        const int n = min(rows - r0, 8);
        Buf<float> xs((size_t)n * in, xoff), ys((size_t)n * out), yv((size_t)n * out);
        std::copy(x.p + (size_t)r0 * in, x.p + (size_t)(r0 + n) * in, xs.p);
        poison(ys);
        poison(yv);
        gemm_bf16(xs.p, w.p, ys.p, n, out, in);
        gemv_bf16(xs.p, w.p, yv.p, n, out, in);
        int bad = 0, badv = 0;
        for (size_t i = 0; i < (size_t)n * out; ++i) {
            bad += !same_bits(ys[i], y[(size_t)r0 * out + i]);
            badv += !same_bits(yv[i], y[(size_t)r0 * out + i]);
        }
        CHECK(bad == 0, "gemm_bf16 rows %d..%d alone differ from the batch (%d) %dx%dx%d", r0, r0 + n, bad, rows, out, in);
        CHECK(badv == 0, "gemv_bf16 rows %d..%d differ from gemm (%d) %dx%dx%d xoff %d woff %d", r0, r0 + n, badv, rows, out, in, xoff, woff);
    }
}

static void test_f32(int rows, int out, int in, int off, bool twod) {
    Buf<float> x((size_t)rows * in, off), w((size_t)out * in, off), y((size_t)rows * out);
    for (size_t i = 0; i < x.n; ++i) x[i] = rnd();
    for (size_t i = 0; i < w.n; ++i) w[i] = rnd();
    poison(y);
    gemm_f32(x.p, w.p, y.p, rows, out, in, twod);
    int bad = 0;
    for (int t = 0; t < rows; ++t)
        for (int o = 0; o < out; ++o) {
            float acc = 0.0f;
            for (int k = 0; k < in; ++k) acc = fmaf(x[(size_t)t * in + k], w[(size_t)o * in + k], acc);
            bad += !same_bits(acc, y[(size_t)t * out + o]);
        }
    CHECK(bad == 0, "gemm_f32 %dx%dx%d off %d %s: %d outputs differ from the fmaf chain", rows, out, in, off,
          twod ? "16x16" : "256", bad);
}

int main() {
    // bf16: vector path (in % 8 == 0, aligned) and scalar paths (odd in, misaligned x or w)
    test_bf16(1, 1, 1, 0, 0);
    test_bf16(3, 70, 37, 0, 0);
    test_bf16(8, 64, 128, 0, 0);
    test_bf16(5, 130, 200, 0, 0);
    test_bf16(5, 130, 200, 1, 0);
    test_bf16(5, 130, 200, 0, 1);
    test_bf16(70, 67, 136, 0, 0);
    test_bf16(65, 129, 72, 0, 0);
    test_bf16(9, 33, 300, 0, 0);
    test_bf16(2, 16, 264, 0, 0);
    test_bf16(4, 20, 0, 0, 0);
    test_bf16(130, 8, 24, 0, 0);
    test_bf16(7, 100, 21, 3, 5);
    test_bf16(8, 70, 1000, 0, 0);
    test_bf16(3, 17, 712, 0, 0);
    test_bf16(6, 80, 999, 0, 0);
    test_bf16(1, 64, 392, 0, 1);
    // f32
    test_f32(1, 1, 1, 0, false);
    test_f32(3, 70, 37, 0, true);
    test_f32(70, 67, 136, 0, false);
    test_f32(65, 129, 40, 1, true);
    test_f32(9, 33, 300, 0, true);
    test_f32(4, 5, 0, 0, false);
    return finish("matmul");
}
