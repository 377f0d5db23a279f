// test_sampling.cpp: kernels/sampling.cu (lpx_gather_rows) in the host emulation. Checks
// (Backend::gather_rows, reference.rs gather_rows): each requested row copied bitwise, a row
// index >= x_rows (incl. 0xFFFFFFFF) gives a NaN row, every output written (poison), repeated
// and reordered indices, dims across the 256-wide blocks.
#include "check.h"

extern "C" void lpx_gather_rows(const float*, int, const unsigned*, float*, int, long long);

// grid (ceil(dim/256), n), block 256.
static void gather_rows(const float* x, int dim, const unsigned* rows, float* out, int n, long long x_rows) {
    if (n == 0 || dim == 0) return;
    dim3 g, b;
    g.x = cdiv(dim, 256);
    g.y = n;
    b.x = 256;
    emu_launch(g, b, [&] { lpx_gather_rows(x, dim, rows, out, n, x_rows); });
}

static void test_gather(int x_rows, int dim, std::vector<unsigned> idx) {
    const int n = (int)idx.size();
    Buf<float> x((size_t)x_rows * dim), out((size_t)n * dim);
    Buf<unsigned> r(n);
    for (size_t i = 0; i < x.n; ++i) x[i] = rnd(-100.f, 100.f);
    for (int k = 0; k < n; ++k) r[k] = idx[k];
    poison(out);
    gather_rows(x.p, dim, r.p, out.p, n, x_rows);
    int bad = 0;
    for (int k = 0; k < n; ++k)
        for (int j = 0; j < dim; ++j) {
            const float got = out[(size_t)k * dim + j];
            bad += idx[k] < (unsigned)x_rows ? !same_bits(got, x[(size_t)idx[k] * dim + j])
                                            : !(std::isnan(got) && !is_poison(got));
        }
    CHECK(bad == 0, "gather_rows x_rows %d dim %d n %d: %d wrong", x_rows, dim, n, bad);
    // Invariance: the last index alone.
    Buf<float> o1(dim);
    poison(o1);
    gather_rows(x.p, dim, r.p + n - 1, o1.p, 1, x_rows);
    int diff = 0;
    for (int j = 0; j < dim; ++j) diff += !same_bits(o1[j], out[(size_t)(n - 1) * dim + j]);
    CHECK(diff == 0, "gather_rows: %d differ alone vs in the batch", diff);
}

int main() {
    test_gather(1, 1, {0});
    test_gather(5, 300, {4, 0, 2, 2, 5, 0xFFFFFFFFu, 3});
    test_gather(3, 256, {1, 3, 0});
    test_gather(7, 513, {6, 1, 100000, 0});
    test_gather(2, 49, {1});
    return finish("sampling");
}
