// test_rope.cpp: kernels/rope.cu (lpx_rope) in the host emulation. Checks: the f64 reference of
// Backend::rope (reference.rs: theta the f32 product, cos/sin in double) within 1e-5 of the
// head's scale (device sincosf may differ by an ulp from glibc's); columns outside the heads
// untouched; batch invariance (a row alone, at another stride/column, bitwise).
#include "check.h"

extern "C" void lpx_rope(float*, int, int, int, int, int, const unsigned*, const float*);

// Launch geometry of kernels/README.md: grid (rows, n_heads), block min(128, head_dim/2)
// rounded up to 32.
static void rope(float* x, int rows, int stride, int col, int n_heads, int head_dim,
                 const unsigned* pos, const float* inv_freq) {
    if (rows == 0 || n_heads == 0) return;
    dim3 g, b;
    g.x = rows;
    g.y = n_heads;
    b.x = (min(128, head_dim / 2) + 31) / 32 * 32;
    emu_launch(g, b, [&] { lpx_rope(x, rows, stride, col, n_heads, head_dim, pos, inv_freq); });
}

static void test_rope(int rows, int stride, int col, int n_heads, int head_dim, unsigned max_pos) {
    const int half = head_dim / 2;
    Buf<float> x(rows * stride), inv(half);
    Buf<unsigned> pos(rows);
    for (size_t i = 0; i < x.n; ++i) x[i] = rnd(-2.f, 2.f);
    for (int i = 0; i < half; ++i) inv[i] = (float)pow(10000.0, -2.0 * i / head_dim);
    for (int t = 0; t < rows; ++t) pos[t] = t == 0 ? 0 : (unsigned)rndi(0, (int)max_pos);
    std::vector<float> x0(x.p, x.p + x.n);
    rope(x.p, rows, stride, col, n_heads, head_dim, pos.p, inv.p);
    int bad = 0, touched = 0;
    for (int t = 0; t < rows; ++t)
        for (int c = 0; c < stride; ++c) {
            const size_t e = (size_t)t * stride + c;
            const int hc = c - col;
            if (hc < 0 || hc >= n_heads * head_dim) {
                touched += !same_bits(x[e], x0[e]);
                continue;
            }
            const int h = hc / head_dim, i = hc % head_dim;
            const float* v = x0.data() + (size_t)t * stride + col + (size_t)h * head_dim;
            const int ii = i % half;
            const double ang = (double)((float)pos[t] * inv[ii]);
            const double x1 = v[ii], x2 = v[ii + half];
            const double want = i < half ? x1 * cos(ang) - x2 * sin(ang) : x2 * cos(ang) + x1 * sin(ang);
            bad += !close(x[e], want, 1e-5, 1e-5 * 2.0);
        }
    CHECK(bad == 0 && touched == 0, "rope rows %d stride %d col %d heads %d hd %d: %d off f64, %d outside touched",
          rows, stride, col, n_heads, head_dim, bad, touched);
    const int t = rows - 1, w = n_heads * head_dim;
    Buf<float> x1(w + 1);
    std::copy(x0.data() + (size_t)t * stride + col, x0.data() + (size_t)t * stride + col + w, x1.p + 1);
    Buf<unsigned> p1(1);
    p1[0] = pos[t];
    rope(x1.p, 1, w + 1, 1, n_heads, head_dim, p1.p, inv.p);
    int diff = 0;
    for (int i = 0; i < w; ++i) diff += !same_bits(x1[1 + i], x[(size_t)t * stride + col + i]);
    CHECK(diff == 0, "rope hd %d: %d values differ alone vs in the batch", head_dim, diff);
}

int main() {
    test_rope(1, 2, 0, 1, 2, 0);
    test_rope(3, 64 * 3, 0, 3, 64, 100);
    test_rope(4, 2 * 128 + 9, 9, 2, 128, 4000);
    test_rope(2, 256 + 1, 1, 1, 256, 30000);
    test_rope(3, 6 * 5 + 4, 2, 5, 6, 50);
    test_rope(2, 2 * 80, 0, 2, 80, 7);
    test_rope(2, 512 + 3, 0, 1, 512, 1000);
    return finish("rope");
}
