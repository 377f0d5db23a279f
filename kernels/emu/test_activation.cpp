// test_activation.cpp: kernels/activation.cu (lpx_silu_mul, lpx_add, lpx_add_bias,
// lpx_fill_f32) in the host emulation. Checks against reference.rs: silu_mul vs f64 within
// 1e-6 relative (device expf may differ by an ulp from glibc's); add, add_bias, fill bitwise
// (plain f32 adds); every output written (poison), elements outside the view / past n never
// touched; the grid-stride loops of add / fill also with grids smaller than ceil(n/256) (what
// the README's min(ceil(n/256), 65535) gives past 65535 * 256 elements, too big to emulate);
// a row alone vs in the batch for silu_mul and add_bias.
#include "check.h"

extern "C" void lpx_silu_mul(const float*, float*, int, int);
extern "C" void lpx_add(float*, const float*, long long);
extern "C" void lpx_add_bias(float*, int, int, int, const float*, int);
extern "C" void lpx_fill_f32(float*, long long, float);

static void silu_mul(const float* gu, float* out, int rows, int inter) {
    if (rows == 0 || inter == 0) return;
    dim3 g, b;
    g.x = cdiv(inter, 256);
    g.y = rows;
    b.x = 256;
    emu_launch(g, b, [&] { lpx_silu_mul(gu, out, rows, inter); });
}
// grid min(ceil(n/256), 65535) unless `grid` forces a smaller one.
static void add(float* acc, const float* x, long long n, int grid = 0) {
    if (n == 0) return;
    dim3 g, b;
    g.x = grid ? grid : (unsigned)min<long long>(cdiv(n, 256), 65535);
    b.x = 256;
    emu_launch(g, b, [&] { lpx_add(acc, x, n); });
}
static void add_bias(float* y, int rows, int stride, int col, const float* bias, int width) {
    if (rows == 0 || width == 0) return;
    dim3 g, b;
    g.x = cdiv(width, 256);
    g.y = rows;
    b.x = 256;
    emu_launch(g, b, [&] { lpx_add_bias(y, rows, stride, col, bias, width); });
}
static void fill(float* p, long long n, float v, int grid = 0) {
    if (n == 0) return;
    dim3 g, b;
    g.x = grid ? grid : (unsigned)min<long long>(cdiv(n, 256), 65535);
    b.x = 256;
    emu_launch(g, b, [&] { lpx_fill_f32(p, n, v); });
}

static void test_silu(int rows, int inter) {
    Buf<float> gu((size_t)rows * 2 * inter), out((size_t)rows * inter);
    for (size_t i = 0; i < gu.n; ++i) gu[i] = rnd(-12.f, 12.f);
    if (gu.n > 4) {
        gu[0] = 100.f;  // expf(-g) underflow / overflow ends
        gu[1] = -100.f;
        gu[2] = 0.f;
    }
    poison(out);
    silu_mul(gu.p, out.p, rows, inter);
    int bad = 0;
    for (int t = 0; t < rows; ++t)
        for (int j = 0; j < inter; ++j) {
            const double g = gu[(size_t)t * 2 * inter + j], u = gu[(size_t)t * 2 * inter + inter + j];
            bad += !close(out[(size_t)t * inter + j], g / (1.0 + exp(-g)) * u, 1e-6, 1e-37);
        }
    CHECK(bad == 0, "silu_mul rows %d inter %d: %d off the f64 reference", rows, inter, bad);
    const int t = rows - 1;
    Buf<float> g1(2 * inter), o1(inter);
    std::copy(gu.p + (size_t)t * 2 * inter, gu.p + (size_t)(t + 1) * 2 * inter, g1.p);
    poison(o1);
    silu_mul(g1.p, o1.p, 1, inter);
    int diff = 0;
    for (int j = 0; j < inter; ++j) diff += !same_bits(o1[j], out[(size_t)t * inter + j]);
    CHECK(diff == 0, "silu_mul: %d differ alone vs in the batch", diff);
}

static void test_add(long long n, int grid) {
    Buf<float> acc(n + 5), x(n);
    for (size_t i = 0; i < acc.n; ++i) acc[i] = rnd();
    for (size_t i = 0; i < x.n; ++i) x[i] = rnd();
    std::vector<float> a0(acc.p, acc.p + acc.n);
    add(acc.p, x.p, n, grid);
    int bad = 0;
    for (long long i = 0; i < n + 5; ++i)
        bad += !same_bits(acc[i], i < n ? a0[i] + x[i] : a0[i]);
    CHECK(bad == 0, "add n %lld grid %d: %d wrong", n, grid, bad);
}

static void test_fill(long long n, int grid) {
    Buf<float> p(n + 3);
    poison(p);
    fill(p.p, n, CANON_NAN, grid);
    int bad = 0;
    for (long long i = 0; i < n + 3; ++i) bad += i < n ? bits(p[i]) != 0x7fc00000u : !is_poison(p[i]);
    fill(p.p, n, -2.5f, grid);
    for (long long i = 0; i < n; ++i) bad += p[i] != -2.5f;
    CHECK(bad == 0, "fill n %lld grid %d: %d wrong", n, grid, bad);
}

static void test_bias(int rows, int stride, int col, int width) {
    Buf<float> y((size_t)rows * stride), bias(width);
    for (size_t i = 0; i < y.n; ++i) y[i] = rnd();
    for (int j = 0; j < width; ++j) bias[j] = rnd();
    std::vector<float> y0(y.p, y.p + y.n);
    add_bias(y.p, rows, stride, col, bias.p, width);
    int bad = 0;
    for (int t = 0; t < rows; ++t)
        for (int c = 0; c < stride; ++c) {
            const size_t e = (size_t)t * stride + c;
            const int j = c - col;
            bad += !same_bits(y[e], j >= 0 && j < width ? y0[e] + bias[j] : y0[e]);
        }
    CHECK(bad == 0, "add_bias rows %d stride %d col %d width %d: %d wrong", rows, stride, col, width, bad);
}

int main() {
    test_silu(1, 1);
    test_silu(3, 300);
    test_silu(2, 512);
    test_silu(4, 1536 + 7);
    test_add(1, 0);
    test_add(1000, 0);
    test_add(256 * 3, 0);
    test_add(5000, 2);   // grid-stride: 2 blocks cover 5000
    test_add(777, 1);
    test_fill(1, 0);
    test_fill(3000, 0);
    test_fill(4099, 3);
    test_bias(1, 1, 0, 1);
    test_bias(3, 600, 17, 300);
    test_bias(5, 256, 0, 256);
    test_bias(2, 1000, 100, 513);
    return finish("activation");
}
