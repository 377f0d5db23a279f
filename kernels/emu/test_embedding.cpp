// test_embedding.cpp: kernels/embedding.cu (lpx_embedding_f32, lpx_embedding_bf16) in the host
// emulation. Checks (Backend::embedding_gather, reference.rs): rows copied bitwise (bf16 widened
// exactly: value bits << 16), ids >= table_rows (incl. 0xFFFFFFFF) give NaN rows, every output
// written (poison), hidden sizes across the 256-wide blocks, a row alone vs in the batch.
#include "check.h"

extern "C" void lpx_embedding_f32(const float*, long long, const unsigned*, float*, int, int);
extern "C" void lpx_embedding_bf16(const bf16*, long long, const unsigned*, float*, int, int);

// grid (ceil(hidden/256), n), block 256.
template <class F> static void launch(int n, int hidden, F f) {
    if (n == 0 || hidden == 0) return;
    dim3 g, b;
    g.x = cdiv(hidden, 256);
    g.y = n;
    b.x = 256;
    emu_launch(g, b, f);
}

static void test_emb(int table_rows, int hidden, std::vector<unsigned> ids) {
    const int n = (int)ids.size();
    Buf<float> tf((size_t)table_rows * hidden), of((size_t)n * hidden), ob((size_t)n * hidden);
    Buf<bf16> tb((size_t)table_rows * hidden);
    Buf<unsigned> id(n);
    for (size_t i = 0; i < tf.n; ++i) tf[i] = rnd(-1.f, 1.f);
    for (size_t i = 0; i < tb.n; ++i) tb[i] = bf16{(uint16_t)rndi(0, 0xffff)};  // any bits, NaNs incl.
    for (int k = 0; k < n; ++k) id[k] = ids[k];
    poison(of);
    poison(ob);
    launch(n, hidden, [&] { lpx_embedding_f32(tf.p, table_rows, id.p, of.p, n, hidden); });
    launch(n, hidden, [&] { lpx_embedding_bf16(tb.p, table_rows, id.p, ob.p, n, hidden); });
    int bad_f = 0, bad_b = 0;
    for (int k = 0; k < n; ++k)
        for (int j = 0; j < hidden; ++j) {
            const size_t e = (size_t)k * hidden + j;
            if (ids[k] < (unsigned)table_rows) {
                bad_f += !same_bits(of[e], tf[(size_t)ids[k] * hidden + j]);
                bad_b += bits(ob[e]) != (uint32_t)tb[(size_t)ids[k] * hidden + j].v << 16;
            } else {
                bad_f += !(std::isnan(of[e]) && !is_poison(of[e]));
                bad_b += !(std::isnan(ob[e]) && !is_poison(ob[e]));
            }
        }
    CHECK(bad_f == 0 && bad_b == 0, "embedding rows %d hidden %d n %d: f32 %d wrong, bf16 %d wrong",
          table_rows, hidden, n, bad_f, bad_b);
    Buf<float> o1(hidden), o2(hidden);
    poison(o1);
    poison(o2);
    launch(1, hidden, [&] { lpx_embedding_f32(tf.p, table_rows, id.p + n - 1, o1.p, 1, hidden); });
    launch(1, hidden, [&] { lpx_embedding_bf16(tb.p, table_rows, id.p + n - 1, o2.p, 1, hidden); });
    int diff = 0;
    for (int j = 0; j < hidden; ++j)
        diff += !same_bits(o1[j], of[(size_t)(n - 1) * hidden + j]) + !same_bits(o2[j], ob[(size_t)(n - 1) * hidden + j]);
    CHECK(diff == 0, "embedding: %d differ alone vs in the batch", diff);
}

int main() {
    test_emb(1, 1, {0});
    test_emb(10, 576, {3, 9, 0, 10, 3, 0xFFFFFFFFu, 7});
    test_emb(4, 256, {0, 1, 2, 3});
    test_emb(6, 257, {5, 4, 1u << 31});
    test_emb(3, 33, {2});
    return finish("embedding");
}
