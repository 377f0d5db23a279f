// test_lora.cpp: kernels/lora.cu (lpx_lora_shrink, lpx_lora_expand) in the host emulation.
// The arena is bf16 (A and B rounded RNE by check.h's ref_bf16, as the host stages them); the
// references widen each weight to f32 and replay the f32 math.
// Checks: h and y bitwise against a host replay of the contract's fixed orders (shrink: 128
// thread-strided fmaf chains, shfl_down trees per warp, (s0 + s1) + (s2 + s3); expand: fmaf
// chain over k, y + (seg_scale * row_scale) * acc) and h within 1e-4 of f64 over the widened
// weights; rows in no segment, h columns >= rank and y columns outside the view untouched;
// several segments of mixed ranks (chunks of 8 rows, short last chunks, unordered rows); B rows
// read by 16-byte loads (rank % 8 == 0, aligned) and one weight at a time (other ranks, or
// modules at odd offsets); a row alone (its own one-row segment, other strides) bitwise equal
// to the batch.
#include "check.h"

extern "C" void lpx_lora_shrink(const float*, int, int, int, const bf16*, const int*, const int*,
                                const long long*, const int*, int, float*, int);
extern "C" void lpx_lora_expand(const float*, int, const bf16*, const int*, const int*,
                                const long long*, const int*, const float*, const float*, float*,
                                int, int, int, int);

// Shrink then expand with the launch geometry of kernels/README.md (device copies of the
// metadata arrays at their exact sizes).
static void lora(const float* x, int x_stride, int x_col, int in_dim, const bf16* arena,
                 std::vector<int> seg_start, std::vector<int> seg_rows, std::vector<long long> a_off,
                 std::vector<long long> b_off, std::vector<int> ranks, std::vector<float> seg_scale,
                 const float* row_scale, float* h, int max_rank, float* y, int y_stride, int y_col,
                 int out_dim) {
    const int n_seg = (int)ranks.size();
    if (n_seg == 0) return;
    {
        dim3 g, b;
        g.x = n_seg;
        g.y = max_rank;
        b.x = 128;
        emu_launch(g, b, [&] {
            lpx_lora_shrink(x, x_stride, x_col, in_dim, arena, seg_start.data(), seg_rows.data(), a_off.data(),
                            ranks.data(), n_seg, h, max_rank);
        });
    }
    {
        dim3 g, b;
        g.x = n_seg;
        g.y = cdiv(out_dim, 256);
        b.x = 256;
        emu_launch(g, b, [&] {
            lpx_lora_expand(h, max_rank, arena, seg_start.data(), seg_rows.data(), b_off.data(), ranks.data(),
                            seg_scale.data(), row_scale, y, y_stride, y_col, out_dim, n_seg);
        });
    }
}

// A bf16 arena of exactly n weights, uniform in +-1 before rounding, and the same weights widened
// to f32 (what the references read).
struct Arena {
    std::vector<bf16> w;
    std::vector<float> f;
    void push(float v) {
        w.push_back(to_bf16(v));
        f.push_back(bf16f(w.back().v));
    }
};

// `pad` elements precede every module's A (pad odd: every B row of the test misaligned for
// 16-byte loads).
static int test_lora(int rows, int in_dim, int out_dim, int max_rank, int x_stride, int x_col,
                      int y_stride, int y_col, std::vector<std::vector<int>> segs, std::vector<int> ranks,
                      int pad = 0) {
    int n_seg = segs.size();
    std::vector<int> seg_start{0}, seg_rows;
    for (auto& s : segs) { for (int r : s) seg_rows.push_back(r); seg_start.push_back(seg_rows.size()); }
    std::vector<long long> a_off, b_off;
    Arena arena;
    std::vector<float> seg_scale, row_scale(rows);
    int vec_rows = 0;  // segments whose B rows the kernel reads with 16-byte loads
    for (int g = 0; g < n_seg; ++g) {
        for (int i = 0; i < pad; ++i) arena.push(rnd());
        a_off.push_back(arena.w.size());
        for (int i = 0; i < ranks[g] * in_dim; ++i) arena.push(rnd());
        b_off.push_back(arena.w.size());
        for (int i = 0; i < ranks[g] * out_dim; ++i) arena.push(rnd());
        seg_scale.push_back(0.5f + g);
    }
    arena.w.shrink_to_fit();  // exact size: ASan sees a read past the last module
    for (int g = 0; g < n_seg; ++g)
        vec_rows += ranks[g] % 8 == 0 && ((uintptr_t)(arena.w.data() + b_off[g]) & 15) == 0;
    CHECK(pad % 2 == 0 || vec_rows == 0, "lora: odd pad %d left %d segments aligned", pad, vec_rows);
    for (int t = 0; t < rows; ++t) row_scale[t] = 1.0f + 0.25f * t;
    std::vector<float> x(rows * x_stride);
    for (auto& v : x) v = rnd();
    std::vector<float> h(rows * max_rank, -99.f);
    std::vector<float> y(rows * y_stride), y0;
    for (auto& v : y) v = rnd();
    y0 = y;
    lora(x.data(), x_stride, x_col, in_dim, arena.w.data(), seg_start, seg_rows, a_off, b_off, ranks, seg_scale,
         row_scale.data(), h.data(), max_rank, y.data(), y_stride, y_col, out_dim);
    int bad_h = 0, bad_y = 0, untouched_bad = 0;
    double maxerr = 0;
    std::vector<int> seg_of(rows, -1);
    for (int g = 0; g < n_seg; ++g) for (int r : segs[g]) seg_of[r] = g;
    for (int t = 0; t < rows; ++t) {
        int g = seg_of[t];
        if (g < 0) {
            for (int i = 0; i < y_stride; ++i) if (!same_bits(y[t * y_stride + i], y0[t * y_stride + i])) untouched_bad++;
            for (int k = 0; k < max_rank; ++k) if (h[t * max_rank + k] != -99.f) untouched_bad++;
            continue;
        }
        const float* A = arena.f.data() + a_off[g];
        const float* B = arena.f.data() + b_off[g];
        int rank = ranks[g];
        std::vector<float> hr(rank);
        for (int k = 0; k < rank; ++k) {
            float p[128];
            for (int j = 0; j < 128; ++j) { p[j] = 0.f; for (int i = j; i < in_dim; i += 128) p[j] = fmaf(A[k * in_dim + i], x[t * x_stride + x_col + i], p[j]); }
            float s[4];
            for (int w = 0; w < 4; ++w) {
                float v[32];
                for (int l = 0; l < 32; ++l) v[l] = p[w * 32 + l];
                for (int off = 16; off > 0; off >>= 1) for (int l = 0; l + off < 32; ++l) v[l] = v[l] + v[l + off];
                s[w] = v[0];
            }
            hr[k] = (s[0] + s[1]) + (s[2] + s[3]);
            if (!same_bits(hr[k], h[t * max_rank + k])) bad_h++;
            double d = 0; for (int i = 0; i < in_dim; ++i) d += (double)A[k * in_dim + i] * x[t * x_stride + x_col + i];
            maxerr = max(maxerr, fabs(d - h[t * max_rank + k]) / (1e-3 + fabs(d)));
        }
        for (int k = rank; k < max_rank; ++k) if (h[t * max_rank + k] != -99.f) untouched_bad++;
        for (int i = 0; i < y_stride; ++i) {
            int o = i - y_col;
            float expect = y0[t * y_stride + i];
            if (o >= 0 && o < out_dim) {
                float acc = 0.f;
                for (int k = 0; k < rank; ++k) acc = fmaf(B[o * rank + k], hr[k], acc);
                float sc = seg_scale[g] * row_scale[t];
                expect = expect + sc * acc;
            }
            if (!same_bits(expect, y[t * y_stride + i])) bad_y++;
        }
    }
    // Batch invariance: the last row of every segment alone (a one-row segment, one row in the
    // step, x / y at another stride), bitwise equal to its h and y in the batch.
    int diff = 0;
    for (int g = 0; g < n_seg; ++g) {
        const int t = segs[g].back();
        std::vector<float> x1(in_dim + 1), h1(max_rank, -99.f), y1(out_dim + 2), rs1{row_scale[t]};
        std::copy(x.begin() + (size_t)t * x_stride + x_col, x.begin() + (size_t)t * x_stride + x_col + in_dim, x1.begin() + 1);
        std::copy(y0.begin() + (size_t)t * y_stride + y_col, y0.begin() + (size_t)t * y_stride + y_col + out_dim, y1.begin() + 2);
        lora(x1.data(), in_dim + 1, 1, in_dim, arena.w.data(), {0, 1}, {0}, {a_off[g]}, {b_off[g]}, {ranks[g]},
             {seg_scale[g]}, rs1.data(), h1.data(), max_rank, y1.data(), out_dim + 2, 2, out_dim);
        for (int k = 0; k < max_rank; ++k) diff += !same_bits(h1[k], h[(size_t)t * max_rank + k]);
        for (int o = 0; o < out_dim; ++o) diff += !same_bits(y1[2 + o], y[(size_t)t * y_stride + y_col + o]);
    }
    CHECK(diff == 0, "lora: %d values of rows alone differ from the batch", diff);
    CHECK(bad_h == 0 && bad_y == 0 && untouched_bad == 0 && maxerr < 1e-4, "lora: bad_h %d bad_y %d untouched %d err %g", bad_h, bad_y, untouched_bad, maxerr);
    if (0) printf("lora rows %d in %d out %d max_rank %d segs %d (%d vector): bad_h %d bad_y %d untouched %d maxrel %.2g\n", rows, in_dim, out_dim, max_rank, n_seg, vec_rows, bad_h, bad_y, untouched_bad, maxerr);
    return vec_rows;
}

// A segment rank above max_rank (a host bug the kernel still bounds): h keeps to its row
// (k < max_rank), expand sums k < max_rank of B rows of stride rank (bitwise: the fmaf chain over
// the kernel's own h); nothing read or written out of bounds (ASan), rows in no segment
// untouched. rank 16 over max_rank 12: the 16-byte path stops after 8 weights and the rest go
// one at a time.
static void test_rank_over_max(int rank, int max_rank) {
    const int rows = 3, in_dim = 20, out_dim = 10;
    Arena arena;
    for (int i = 0; i < rank * (in_dim + out_dim); ++i) arena.push(rnd());
    arena.w.shrink_to_fit();
    std::vector<float> x((size_t)rows * in_dim), h((size_t)rows * max_rank, -99.f), y((size_t)rows * out_dim, 0.f),
        rs(rows, 1.f);
    for (auto& v : x) v = rnd();
    const long long b_off = (long long)rank * in_dim;
    lora(x.data(), in_dim, 0, in_dim, arena.w.data(), {0, 2}, {2, 0}, {0}, {b_off}, {rank}, {1.f}, rs.data(), h.data(),
         max_rank, y.data(), out_dim, 0, out_dim);
    int bad = 0;
    for (int t : {0, 2}) {
        for (int k = 0; k < max_rank; ++k) {
            double d = 0;
            for (int i = 0; i < in_dim; ++i) d += (double)arena.f[(size_t)k * in_dim + i] * x[(size_t)t * in_dim + i];
            bad += !close(h[(size_t)t * max_rank + k], d, 1e-5, 1e-6);
        }
        for (int o = 0; o < out_dim; ++o) {
            float acc = 0.f;
            for (int k = 0; k < max_rank; ++k)
                acc = fmaf(arena.f[(size_t)b_off + (size_t)o * rank + k], h[(size_t)t * max_rank + k], acc);
            bad += !same_bits(0.f + (1.f * 1.f) * acc, y[(size_t)t * out_dim + o]);
        }
    }
    for (int k = 0; k < max_rank; ++k) bad += h[max_rank + k] != -99.f;
    for (int o = 0; o < out_dim; ++o) bad += y[out_dim + o] != 0.f;
    CHECK(bad == 0, "lora rank %d > max_rank %d: %d wrong", rank, max_rank, bad);
}

int main() {
    test_rank_over_max(5, 2);
    test_rank_over_max(16, 12);
    int vec = 0;
    vec += test_lora(12, 40, 20, 8, 50, 3, 30, 5, {{0, 2, 4}, {1, 3, 5, 6, 7, 8, 9, 10}}, {8, 4});
    vec += test_lora(30, 300, 600, 16, 300, 0, 600, 0,
                     {{3}, {0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17}, {20, 29, 21, 22, 23, 24, 25, 26, 27}},
                     {16, 1, 7});
    // The same shapes with every module at an odd offset: B rows of rank 8 and 16 misaligned.
    test_lora(12, 40, 20, 8, 50, 3, 30, 5, {{0, 2, 4}, {1, 3, 5, 6, 7, 8, 9, 10}}, {8, 4}, 1);
    test_lora(20, 64, 300, 16, 64, 0, 300, 0, {{0, 19, 5, 6, 7, 8, 9, 10, 11, 12, 13}, {1, 2}}, {16, 8}, 3);
    CHECK(vec >= 2, "lora: only %d segments took the 16-byte path", vec);
    test_lora(5, 129, 257, 4, 129, 0, 257, 0, {{4, 0}}, {3});
    test_lora(9, 8, 3, 2, 10, 2, 5, 1, {{8, 7, 6, 5, 4, 3, 2, 1, 0}}, {2});
    return finish("lora");
}
