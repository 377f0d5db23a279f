// test_norm.cpp: kernels/norm.cu (lpx_rms_norm, lpx_head_rms_norm) in the host emulation.
// Checks: the f64 reference of Backend::rms_norm / head_rms_norm (reference.rs) within 2e-5
// relative; bitwise, a host f32 replay of the documented order (thread-strided fmaf chains over
// a block of 256 / 128, shfl_down trees, 1/sqrtf: every step IEEE-exact, so the replay is the
// GPU's value too); batch invariance (each row alone vs in the batch, bitwise); every output
// written (poison) and nothing else touched (head norm: columns outside the heads unchanged).
#include "check.h"

extern "C" void lpx_rms_norm(const float*, const float*, float*, int, int, float);
extern "C" void lpx_head_rms_norm(float*, int, int, int, int, int, const float*, float);

// Launch geometry of kernels/README.md.
static void rms_norm(const float* x, const float* w, float* out, int rows, int dim, float eps) {
    if (rows == 0) return;
    dim3 g, b;
    g.x = rows;
    b.x = 256;
    emu_launch(g, b, [&] { lpx_rms_norm(x, w, out, rows, dim, eps); });
}
static void head_rms_norm(float* x, int rows, int stride, int col, int n_heads, int head_dim,
                          const float* w, float eps) {
    if (rows == 0 || n_heads == 0) return;
    dim3 g, b;
    g.x = rows;
    g.y = n_heads;
    b.x = 128;
    emu_launch(g, b, [&] { lpx_head_rms_norm(x, rows, stride, col, n_heads, head_dim, w, eps); });
}

// The documented order for `n` values and a block of `bs` threads.
static float replay_r(const float* v, int n, int bs, float eps) {
    std::vector<float> part(bs, 0.f);
    for (int i = 0; i < bs; ++i)
        for (int j = i; j < n; j += bs) part[i] = fmaf(v[j], v[j], part[i]);
    auto warp_tree = [](float* l) {
        for (int off = 16; off > 0; off >>= 1)
            for (int i = 0; i < 32; ++i) l[i] = i + off < 32 ? l[i] + l[i + off] : l[i] + l[i];
        return l[0];
    };
    float ws[32] = {0};
    for (int w = 0; w < bs / 32; ++w) ws[w] = warp_tree(&part[32 * w]);
    const float ss = warp_tree(ws);
    return 1.0f / sqrtf(ss / (float)n + eps);
}

static double ref_r(const float* v, int n, float eps) {
    double ss = 0;
    for (int j = 0; j < n; ++j) ss += (double)v[j] * v[j];
    return 1.0 / sqrt(ss / n + eps);
}

static void test_rms(int rows, int dim, float scale) {
    const float eps = 1e-6f;
    Buf<float> x(rows * dim), w(dim), out(rows * dim);
    for (size_t i = 0; i < x.n; ++i) x[i] = rnd() * scale;
    for (int j = 0; j < dim; ++j) w[j] = rnd(0.5f, 1.5f);
    poison(out);
    rms_norm(x.p, w.p, out.p, rows, dim, eps);
    int bad = 0, badbits = 0, unwritten = 0;
    for (int t = 0; t < rows; ++t) {
        const float* xr = x.p + (size_t)t * dim;
        const double r = ref_r(xr, dim, eps);
        const float rr = replay_r(xr, dim, 256, eps);
        for (int j = 0; j < dim; ++j) {
            const float got = out[(size_t)t * dim + j];
            unwritten += is_poison(got);
            bad += !close(got, xr[j] * r * w[j], 2e-5);
            badbits += !same_bits(got, (xr[j] * rr) * w[j]);
        }
    }
    CHECK(unwritten == 0 && bad == 0 && badbits == 0,
          "rms_norm rows %d dim %d: %d unwritten, %d off the f64 reference, %d off the replay",
          rows, dim, unwritten, bad, badbits);
    // Batch invariance: every row alone (grid 1) bitwise equal to its value in the batch.
    int diff = 0;
    for (int t = 0; t < rows; t += max(1, rows / 4)) {
        Buf<float> x1(dim), o1(dim);
        std::copy(x.p + (size_t)t * dim, x.p + (size_t)(t + 1) * dim, x1.p);
        poison(o1);
        rms_norm(x1.p, w.p, o1.p, 1, dim, eps);
        for (int j = 0; j < dim; ++j) diff += !same_bits(o1[j], out[(size_t)t * dim + j]);
    }
    CHECK(diff == 0, "rms_norm rows %d dim %d: %d values differ alone vs in the batch", rows, dim, diff);
}

static void test_head(int rows, int stride, int col, int n_heads, int head_dim) {
    const float eps = 1e-5f;
    Buf<float> x(rows * stride), w(head_dim);
    for (size_t i = 0; i < x.n; ++i) x[i] = rnd(-3.f, 3.f);
    for (int j = 0; j < head_dim; ++j) w[j] = rnd(0.5f, 1.5f);
    std::vector<float> x0(x.p, x.p + x.n);
    head_rms_norm(x.p, rows, stride, col, n_heads, head_dim, w.p, eps);
    int bad = 0, badbits = 0, touched = 0;
    for (int t = 0; t < rows; ++t)
        for (int i = 0; i < stride; ++i) {
            const size_t e = (size_t)t * stride + i;
            const int hcol = i - col;
            if (hcol < 0 || hcol >= n_heads * head_dim) {
                touched += !same_bits(x[e], x0[e]);
                continue;
            }
            const int h = hcol / head_dim, j = hcol % head_dim;
            const float* v = x0.data() + (size_t)t * stride + col + (size_t)h * head_dim;
            bad += !close(x[e], v[j] * ref_r(v, head_dim, eps) * w[j], 2e-5);
            badbits += !same_bits(x[e], (v[j] * replay_r(v, head_dim, 128, eps)) * w[j]);
        }
    CHECK(bad == 0 && badbits == 0 && touched == 0,
          "head_rms_norm rows %d stride %d col %d heads %d hd %d: %d off f64, %d off replay, %d outside touched",
          rows, stride, col, n_heads, head_dim, bad, badbits, touched);
    // Batch invariance: the last row alone, at another column offset and stride.
    const int t = rows - 1;
    const int stride1 = n_heads * head_dim + 3;
    Buf<float> x1(stride1);
    std::copy(x0.data() + (size_t)t * stride + col, x0.data() + (size_t)t * stride + col + n_heads * head_dim, x1.p + 3);
    head_rms_norm(x1.p, 1, stride1, 3, n_heads, head_dim, w.p, eps);
    int diff = 0;
    for (int i = 0; i < n_heads * head_dim; ++i) diff += !same_bits(x1[3 + i], x[(size_t)t * stride + col + i]);
    CHECK(diff == 0, "head_rms_norm: %d values differ alone vs in the batch", diff);
}

int main() {
    test_rms(1, 1, 1.f);
    test_rms(3, 37, 1.f);
    test_rms(5, 256, 4.f);
    test_rms(4, 576, 0.01f);
    test_rms(9, 1000, 1.f);
    test_rms(2, 2049, 1e3f);
    test_head(1, 64, 0, 1, 64);
    test_head(3, 200, 7, 3, 64);
    test_head(4, 2 * 128 + 5, 5, 2, 128);
    test_head(2, 3 * 40, 0, 3, 40);
    test_head(3, 300, 11, 1, 257);
    return finish("norm");
}
