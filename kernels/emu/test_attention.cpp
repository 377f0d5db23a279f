// test_attention.cpp: kernels/attention.cu (lpx_kv_write, lpx_attention) in the host emulation.
// Checks:
//   kv_write: cache rows bitwise equal to an independent RNE f32 -> bf16 reference (ties, inf,
//     overflow, denormals, NaN -> a NaN), rows whose slot is >= num_slots (0xFFFFFFFF incl.)
//     skipped, every other slot untouched, strided K/V views, a row alone vs in the batch.
//   attention: the f64 reference of Backend::attention_paged (reference.rs / kv_store.rs
//     attn_row) within 1e-4 relative + 1e-5: GQA groups, several sequences with block tables
//     padded with 0xFFFFFFFF and blocks in shuffled order, positions across block boundaries,
//     sliding windows (window > pos, window 1, window with its lo inside a block), head_dim 64,
//     128 and other even values (2 .. 256) on the 16-byte, 4-byte and 2-byte load paths (cache
//     pointers offset on purpose), large scores (online-softmax rescaling over many chunks);
//     NaN rows (every head) for row_seq >= n_seqs, positions past max_blocks, a 0xFFFFFFFF or
//     >= num_blocks block id among the row's first pos / block_size + 1 entries (also before
//     the window's lo, as the reference); every output written (poison); each row alone
//     (rows = 1, q at another stride / column) bitwise equal to its value in the batch.
#include "check.h"

extern "C" void lpx_kv_write(bf16*, bf16*, long long, int, const float*, int, int, const float*, int, int,
                             const unsigned*, int);
extern "C" void lpx_attention(const float*, int, int, int, int, int, int, const bf16*, const bf16*, long long, int,
                              const unsigned*, const unsigned*, const unsigned*, int, int, int, float, float*);

static const unsigned PAD = 0xFFFFFFFFu;

// Launch geometry of kernels/README.md.
static void kv_write(bf16* kc, bf16* vc, long long num_slots, int kv_dim, const float* k, int ks, int kcol,
                     const float* v, int vs, int vcol, const unsigned* slots, int rows) {
    if (rows == 0 || kv_dim == 0) return;
    dim3 g, b;
    g.x = cdiv(kv_dim, 256);
    g.y = rows;
    b.x = 256;
    emu_launch(g, b, [&] { lpx_kv_write(kc, vc, num_slots, kv_dim, k, ks, kcol, v, vs, vcol, slots, rows); });
}

struct Cache {
    int num_blocks, block_size, n_kv_heads, head_dim;
    Buf<bf16> k, v;
    Cache(int nb, int bs, int nkv, int hd, int off)
        : num_blocks(nb), block_size(bs), n_kv_heads(nkv), head_dim(hd),
          k((size_t)nb * bs * nkv * hd, off), v((size_t)nb * bs * nkv * hd, off) {
        for (size_t i = 0; i < k.n; ++i) k[i] = to_bf16(rnd());
        for (size_t i = 0; i < v.n; ++i) v[i] = to_bf16(rnd(-2.f, 2.f));
    }
    int kv_dim() const { return n_kv_heads * head_dim; }
};

struct Meta {
    int n_seqs, max_blocks;
    std::vector<unsigned> tables;  // [n_seqs, max_blocks]
    std::vector<unsigned> row_seq, row_pos;
};

static void attention(const float* q, int q_stride, int q_col, int rows, int n_heads, const Cache& c,
                      const unsigned* row_seq, const unsigned* row_pos, const unsigned* tables, int max_blocks,
                      int n_seqs, int window, float scale, float* out) {
    if (rows == 0 || n_heads == 0) return;
    dim3 g, b;
    g.x = n_heads;
    g.y = rows;
    b.x = 128;
    emu_launch(g, b, [&] {
        lpx_attention(q, q_stride, q_col, rows, n_heads, c.n_kv_heads, c.head_dim, c.k.p, c.v.p, c.num_blocks,
                      c.block_size, row_seq, row_pos, tables, max_blocks, n_seqs, window, scale, out);
    });
}

// reference.rs attention_paged for one row: false when the row's metadata is bad (NaN row).
static bool ref_row(const float* qrow, int n_heads, const Cache& c, const Meta& m, unsigned seq, unsigned pos,
                    int window, float scale, double* out) {
    if (seq >= (unsigned)m.n_seqs) return false;
    const unsigned* table = m.tables.data() + (size_t)seq * m.max_blocks;
    const size_t nblk = pos / c.block_size + 1;
    if (nblk > (size_t)m.max_blocks) return false;
    for (size_t b = 0; b < nblk; ++b)
        if (table[b] >= (unsigned)c.num_blocks) return false;
    const int hd = c.head_dim, kv_dim = c.kv_dim(), group = n_heads / c.n_kv_heads;
    const long long lo = window > 0 ? max(0LL, (long long)pos + 1 - window) : 0;
    for (int h = 0; h < n_heads; ++h) {
        const int kvh = h / group;
        std::vector<double> s;
        std::vector<size_t> off;
        for (long long p = lo; p <= (long long)pos; ++p) {
            const size_t slot = (size_t)table[p / c.block_size] * c.block_size + p % c.block_size;
            off.push_back(slot * kv_dim + (size_t)kvh * hd);
            double dot = 0;
            for (int d = 0; d < hd; ++d) dot += (double)qrow[h * hd + d] * bf16f(c.k[off.back() + d].v);
            s.push_back(dot * scale);
        }
        double mx = -INFINITY, z = 0;
        for (double v : s) mx = max(mx, v);
        for (double& v : s) z += (v = exp(v - mx));
        for (int d = 0; d < hd; ++d) {
            double acc = 0;
            for (size_t i = 0; i < s.size(); ++i) acc += s[i] / z * bf16f(c.v[off[i] + d].v);
            out[h * hd + d] = acc;
        }
    }
    return true;
}

// Sequences of the given lengths get distinct blocks in shuffled order, tables padded with PAD.
static Meta make_meta(const Cache& c, std::vector<int> lens, int max_blocks) {
    Meta m;
    m.n_seqs = (int)lens.size();
    m.max_blocks = max_blocks;
    m.tables.assign((size_t)m.n_seqs * max_blocks, PAD);
    std::vector<unsigned> blocks(c.num_blocks);
    for (int i = 0; i < c.num_blocks; ++i) blocks[i] = i;
    std::shuffle(blocks.begin(), blocks.end(), emu_rng);
    size_t next = 0;
    for (int s = 0; s < m.n_seqs; ++s)
        for (int b = 0; b < cdiv(lens[s], c.block_size); ++b) {
            if (next >= blocks.size()) {
                fprintf(stderr, "test bug: not enough blocks\n");
                exit(2);
            }
            m.tables[(size_t)s * max_blocks + b] = blocks[next++];
        }
    return m;
}

// When set, q[row 0, head 0, d 0] is NaN: that head's outputs are NaN (as the reference's), the
// other heads and rows unaffected.
static bool inject_nan = false;

// Runs the rows of `m` (q random at stride n_heads*hd + 5, column 3), checks them against the
// reference and each row alone against the batch.
static void check_attention(const char* what, const Cache& c, const Meta& m, int n_heads, int window, float qscale,
                            int expect_nan_rows) {
    const int rows = (int)m.row_seq.size(), hd = c.head_dim, qd = n_heads * hd;
    const int q_stride = qd + 5, q_col = 3;
    Buf<float> q((size_t)rows * q_stride), out((size_t)rows * qd);
    for (size_t i = 0; i < q.n; ++i) q[i] = rnd() * qscale;
    if (inject_nan) q[q_col] = CANON_NAN;
    Buf<unsigned> seq(rows), pos(rows), tables(m.tables.size());
    std::copy(m.row_seq.begin(), m.row_seq.end(), seq.p);
    std::copy(m.row_pos.begin(), m.row_pos.end(), pos.p);
    std::copy(m.tables.begin(), m.tables.end(), tables.p);
    const float scale = 1.0f / sqrtf((float)hd);
    poison(out);
    attention(q.p, q_stride, q_col, rows, n_heads, c, seq.p, pos.p, tables.p, m.max_blocks, m.n_seqs, window, scale,
              out.p);
    int bad = 0, nan_rows = 0, unwritten = 0;
    double maxerr = 0;
    std::vector<double> want(qd);
    for (int t = 0; t < rows; ++t) {
        const float* got = out.p + (size_t)t * qd;
        for (int i = 0; i < qd; ++i) unwritten += is_poison(got[i]);
        if (!ref_row(q.p + (size_t)t * q_stride + q_col, n_heads, c, m, m.row_seq[t], m.row_pos[t], window, scale,
                     want.data())) {
            nan_rows++;
            for (int i = 0; i < qd; ++i) bad += !std::isnan(got[i]);
            continue;
        }
        for (int i = 0; i < qd; ++i) {
            bad += !close(got[i], want[i], 1e-4, 1e-5);
            if (!std::isnan(got[i])) maxerr = max(maxerr, fabs(got[i] - want[i]));
        }
    }
    CHECK(unwritten == 0 && bad == 0 && nan_rows == expect_nan_rows,
          "attention %s (hd %d heads %d/%d bs %d window %d): %d unwritten, %d wrong (max abs err %.2g), %d NaN rows "
          "(expected %d)",
          what, hd, n_heads, c.n_kv_heads, c.block_size, window, unwritten, bad, maxerr, nan_rows, expect_nan_rows);
    // Each row alone: rows = 1, grid (n_heads, 1), q at stride qd, column 0.
    int diff = 0;
    for (int t = 0; t < rows; ++t) {
        Buf<float> q1(qd), o1(qd);
        std::copy(q.p + (size_t)t * q_stride + q_col, q.p + (size_t)t * q_stride + q_col + qd, q1.p);
        poison(o1);
        attention(q1.p, qd, 0, 1, n_heads, c, seq.p + t, pos.p + t, tables.p, m.max_blocks, m.n_seqs, window, scale,
                  o1.p);
        for (int i = 0; i < qd; ++i) diff += !same_bits(o1[i], out[(size_t)t * qd + i]);
    }
    CHECK(diff == 0, "attention %s (hd %d): %d values of rows alone differ from the batch", what, hd, diff);
}

static void add_row(Meta& m, unsigned seq, unsigned pos) {
    m.row_seq.push_back(seq);
    m.row_pos.push_back(pos);
}

// GQA, 3 sequences (block size 16), a prefill run across a block boundary, decode rows, and
// the four kinds of bad metadata.
static void test_main(int hd, int off, int window) {
    Cache c(24, 16, 2, hd, off);
    // seq 3: a hole (PAD) in its used blocks; seq 4: a block id past the cache.
    Meta m = make_meta(c, {40, 70, 5, 40, 40}, 6);
    m.tables[3 * 6 + 1] = PAD;
    m.tables[4 * 6 + 0] = 24;
    for (unsigned p = 28; p < 36; ++p) add_row(m, 1, p);
    add_row(m, 0, 39);
    add_row(m, 2, 0);
    add_row(m, 2, 4);
    add_row(m, 1, 69);
    add_row(m, 0, 16);
    add_row(m, 5, 3);    // row_seq >= n_seqs
    add_row(m, 0, 96);   // pos / 16 + 1 = 7 > max_blocks
    add_row(m, 3, 35);   // PAD among its blocks
    add_row(m, 4, 39);   // block id 24 >= num_blocks (block 0: before lo when window is 20)
    add_row(m, 3, 10);   // only block 0 used: fine
    add_row(m, 1, PAD);  // the largest position: far past max_blocks
    char what[64];
    snprintf(what, sizeof what, "gqa off %d", off);
    check_attention(what, c, m, 4, window, 1.f, 5);
}

// One sequence, one KV head: head_dim / load-path coverage with a few rows.
static void test_hd(int hd, int off, int n_heads, int block_size, std::vector<unsigned> positions, int window,
                    float qscale) {
    unsigned maxp = 0;
    for (unsigned p : positions) maxp = max(maxp, p);
    const int nb = (int)(maxp / block_size) + 2;
    Cache c(nb, block_size, 1, hd, off);
    Meta m = make_meta(c, {(int)maxp + 1}, nb + 1);
    for (unsigned p : positions) add_row(m, 0, p);
    char what[64];
    snprintf(what, sizeof what, "single seq off %d qscale %g", off, qscale);
    check_attention(what, c, m, n_heads, window, qscale, 0);
}

static void test_kv_write(int num_slots, int kv_dim, std::vector<unsigned> slots) {
    const int rows = (int)slots.size();
    const int ks = kv_dim + 3, vs = 2 * kv_dim + 1;
    Buf<float> k((size_t)rows * ks), v((size_t)rows * vs);
    for (size_t i = 0; i < k.n; ++i) k[i] = rnd(-3.f, 3.f);
    for (size_t i = 0; i < v.n; ++i) v[i] = rnd(-3.f, 3.f);
    // Special values in row 0's K: ties (to even down / up), inf, overflow to inf, the largest
    // finite, a denormal, NaN, -0.
    const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0x7f800000u, 0x7f7fffffu, 0x7f7f7fffu,
                                0x00000001u, 0x7fc00001u, 0x80000000u, 0xbf80c000u, 0x3f80ffffu};
    for (int i = 0; i < (int)(sizeof special / 4) && i < kv_dim; ++i) k[2 + i] = from_bits(special[i]);
    Buf<bf16> kc((size_t)num_slots * kv_dim), vc((size_t)num_slots * kv_dim);
    for (size_t i = 0; i < kc.n; ++i) kc[i] = vc[i] = bf16{0x5555};
    Buf<unsigned> sm(rows);
    std::copy(slots.begin(), slots.end(), sm.p);
    kv_write(kc.p, vc.p, num_slots, kv_dim, k.p, ks, 2, v.p, vs, kv_dim, sm.p, rows);
    int bad = 0;
    std::vector<int> written(num_slots, -1);
    for (int t = 0; t < rows; ++t)
        if (slots[t] < (unsigned)num_slots) written[slots[t]] = t;
    auto same = [](uint16_t got, float f) {
        return std::isnan(f) ? ((got & 0x7f80) == 0x7f80 && (got & 0x7f)) : got == ref_bf16(f);
    };
    for (int s = 0; s < num_slots; ++s)
        for (int j = 0; j < kv_dim; ++j) {
            const size_t e = (size_t)s * kv_dim + j;
            const int t = written[s];
            if (t < 0) {
                bad += kc[e].v != 0x5555 || vc[e].v != 0x5555;
            } else {
                bad += !same(kc[e].v, k[(size_t)t * ks + 2 + j]);
                bad += !same(vc[e].v, v[(size_t)t * vs + kv_dim + j]);
            }
        }
    CHECK(bad == 0, "kv_write slots %d kv_dim %d rows %d: %d wrong", num_slots, kv_dim, rows, bad);
    // The last row alone, K / V contiguous.
    const int t = rows - 1;
    Buf<bf16> k1((size_t)num_slots * kv_dim), v1((size_t)num_slots * kv_dim);
    for (size_t i = 0; i < k1.n; ++i) k1[i] = v1[i] = bf16{0x5555};
    Buf<float> kr(kv_dim), vr(kv_dim);
    std::copy(k.p + (size_t)t * ks + 2, k.p + (size_t)t * ks + 2 + kv_dim, kr.p);
    std::copy(v.p + (size_t)t * vs + kv_dim, v.p + (size_t)t * vs + 2 * kv_dim, vr.p);
    kv_write(k1.p, v1.p, num_slots, kv_dim, kr.p, kv_dim, 0, vr.p, kv_dim, 0, sm.p + t, 1);
    int diff = 0;
    if (slots[t] < (unsigned)num_slots)
        for (int j = 0; j < kv_dim; ++j) {
            const size_t e = (size_t)slots[t] * kv_dim + j;
            diff += k1[e].v != kc[e].v || v1[e].v != vc[e].v;
        }
    CHECK(diff == 0, "kv_write: %d differ alone vs in the batch", diff);
}

// Arguments the host validates, violated anyway: every output NaN, nothing read out of bounds
// (head_dim odd or > 256, n_heads not a multiple of n_kv_heads, n_kv_heads 0, block_size 0).
static void test_bad_args() {
    struct Case { int n_heads, n_kv_heads, head_dim, block_size; };
    const Case cases[] = {{2, 1, 33, 16}, {1, 1, 258, 16}, {3, 2, 64, 16}, {2, 0, 64, 16}, {2, 1, 64, 0}};
    for (const Case& k : cases) {
        Cache c(2, 16, 1, 64, 0);  // 2 blocks of 16 slots, kv_dim 64
        Meta m = make_meta(c, {20}, 2);
        add_row(m, 0, 19);
        add_row(m, 0, 0);
        const int rows = 2, qd = k.n_heads * k.head_dim;
        Buf<float> q((size_t)rows * qd), out((size_t)rows * qd);
        for (size_t i = 0; i < q.n; ++i) q[i] = rnd();
        poison(out);
        Buf<unsigned> seq(rows), pos(rows), tables(m.tables.size());
        std::copy(m.row_seq.begin(), m.row_seq.end(), seq.p);
        std::copy(m.row_pos.begin(), m.row_pos.end(), pos.p);
        std::copy(m.tables.begin(), m.tables.end(), tables.p);
        dim3 g, b;
        g.x = k.n_heads;
        g.y = rows;
        b.x = 128;
        emu_launch(g, b, [&] {
            lpx_attention(q.p, qd, 0, rows, k.n_heads, k.n_kv_heads, k.head_dim, c.k.p, c.v.p, c.num_blocks,
                          k.block_size, seq.p, pos.p, tables.p, m.max_blocks, m.n_seqs, 0, 0.125f, out.p);
        });
        int bad = 0;
        for (size_t i = 0; i < out.n; ++i) bad += bits(out[i]) != 0x7fc00000u;
        CHECK(bad == 0, "attention bad args (heads %d/%d hd %d bs %d): %d outputs not NaN", k.n_heads, k.n_kv_heads,
              k.head_dim, k.block_size, bad);
    }
}

int main() {
    test_bad_args();
    test_kv_write(1, 1, {0});
    test_kv_write(10, 64, {3, 0, 9, 10, PAD, 7});
    test_kv_write(5, 300, {4, 1, 2});
    test_kv_write(40, 256, {39, 0, 20, 41});

    test_main(64, 0, 0);       // 16-byte path
    test_main(64, 2, 20);      // 4-byte path (cache 4-byte aligned only), window with lo inside a block
    test_hd(128, 0, 3, 8, {0, 7, 8, 9, 40}, 0, 1.f);
    test_hd(128, 0, 2, 8, {0, 5, 37, 38}, 9, 1.f);
    test_hd(128, 0, 1, 16, {100}, 1, 1.f);       // window 1: the row itself
    test_hd(128, 0, 1, 16, {20}, 64, 1.f);       // window > pos
    test_hd(96, 0, 2, 32, {95, 10}, 0, 12.f);    // large scores, 3 chunks: rescaling
    test_hd(64, 0, 2, 16, {130, 64}, 0, 300.f);  // huge scores: alpha underflows to 0
    inject_nan = true;
    test_hd(64, 0, 2, 16, {40, 3}, 0, 1.f);     // a NaN in q: NaN head
    inject_nan = false;
    test_hd(2, 0, 1, 4, {0, 33, 70}, 0, 4.f);    // smallest head, 4-byte path
    test_hd(6, 1, 2, 4, {13, 2}, 0, 1.f);        // 2-byte path
    test_hd(34, 0, 1, 8, {40}, 0, 1.f);          // head_dim % 8 != 0: 4-byte path
    test_hd(40, 1, 1, 8, {33}, 0, 1.f);          // head_dim % 8 == 0 but misaligned: 2-byte path
    test_hd(80, 0, 1, 16, {47}, 0, 1.f);
    test_hd(130, 0, 1, 16, {35}, 0, 1.f);        // P = 96: one group, lanes past hd/2 idle
    test_hd(200, 0, 1, 16, {33}, 0, 1.f);
    test_hd(256, 0, 1, 16, {64}, 0, 1.f);
    test_hd(256, 2, 1, 16, {31}, 0, 1.f);
    return finish("attention");
}
