//! Op-level conformance of the backend chosen by `LORAPLEX_TEST_DEVICE` (default "cpu"; "cuda:0"
//! on a GPU machine, see scripts/gpu-check.sh): every [`Backend`] op through
//! `loraplex::backend::select` against the scalar `ReferenceBackend` on random data, bitwise batch
//! invariance (a row of a batch equals the same row computed alone: matmul for 1..=80 rows, across
//! the ≤ 8 / > 8 row kernel switch, attention, lora) and the NaN / skip rules the op docs state.
//! The CPU kernels have their own, path-forcing tests (ops.rs, lora_ops.rs); this file is written
//! against the public API only, so it runs unchanged on any device.
//!
//! Tolerances, per op (f32 where the device computes in f32):
//! - matmul: `1e-6 · sqrt(in) · Σ_i |x_i w_i|` (f32 accumulation in any order); a CUDA device's
//!   BF16 weights go through tensor cores (bf16 × bf16 products, f32 accumulate of unspecified
//!   internal precision): the bf16 bound `2^-8 · Σ_i |x_i w_i|`.
//! - attention: a CUDA device stores K/V in bf16, so the reference is given the K/V rounded to
//!   bf16 (round to nearest even: the device's conversion) and both see the same cache; the
//!   difference is the softmax's f32 arithmetic: `2e-6 · sqrt(head_dim) · (1 + ctx/1024)`.
//! - lora: `TOL_ULPS · eps · (in/8 + r + 8) · mag`, `mag` the sum of absolute terms (as
//!   tests/lora_ops.rs; ×2 on a CUDA device, whose shrink sums in a tree of partial sums). A
//!   CUDA device holds A and B in bf16 (its adapter arena), so there the reference is given the
//!   adapters rounded to bf16 (round to nearest even: the upload's conversion) and the
//!   difference left is the f32 arithmetic.
//! - norms, rope, silu: a few f32 ulps of the value (`1e-6 · (1 + |v|)`, ×4 on a device with its
//!   own transcendental functions); add, add_bias, gather, embedding: exact.

mod common;

use common::lora::{model_layout as layout, random_adapter, view, OwnedAdapter, OwnedModule};
use common::paged::{paged_step, slot as paged_slot, PagedStep};
use common::values::{assert_bits_eq, assert_close, rand_vec};
use loraplex::backend::reference::ReferenceBackend;
use loraplex::backend::{
    select, AttentionArgs, AttnMeta, Backend, DeviceBackend, KvGeometry, KvWriteArgs, LoraArgs,
    LoraBatch, LoraLane, LoraPrecision, LoraSlotData, LoraStackGeometry, LoraTarget, RopeArgs,
    View, ViewMut, WeightFormat,
};
use loraplex::error::ErrorCode;
use loraplex::tensor::HostTensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const FORMATS: [WeightFormat; 2] = [WeightFormat::F32, WeightFormat::BF16];
const TOL_ULPS: f64 = 4.0;

/// The device under test (2 threads on the CPU).
fn dev() -> DeviceBackend {
    let d = common::test_device();
    select(&d, 2).unwrap_or_else(|e| panic!("device {d:?}: {e}"))
}

/// What the device stores in bf16 (see the module docs).
fn cuda(be: &DeviceBackend) -> bool {
    be.name().starts_with("cuda")
}

/// Slack for ops with transcendental functions (`expf`, `sincosf`, `rsqrtf`) of the device's own.
fn fn_slack(be: &DeviceBackend) -> f32 {
    if cuda(be) {
        4.0
    } else {
        1.0
    }
}

fn bf16(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

fn up<B: Backend>(be: &B, v: &[f32]) -> B::Buf {
    be.upload(v).unwrap()
}

fn down<B: Backend>(be: &B, b: &B::Buf, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    be.download(b, &mut out).unwrap();
    out
}

// ---------------------------------------------------------------------------------------------
// matmul, embedding

/// `Σ_i |x[t,i] w[o,i]|` for every output, with the reference's (format-rounded) weight values.
fn abs_sums(x: &[f32], w: &[f32], rows: usize, out: usize, inp: usize) -> Vec<f32> {
    let mut s = vec![0f32; rows * out];
    for t in 0..rows {
        for o in 0..out {
            s[t * out + o] = (0..inp)
                .map(|i| (x[t * inp + i] * w[o * inp + i]).abs())
                .sum();
        }
    }
    s
}

/// The matmul bound for one output (see the module docs).
fn matmul_tol(be: &DeviceBackend, format: WeightFormat, inp: usize, abs_sum: f32) -> f32 {
    if cuda(be) && format == WeightFormat::BF16 {
        abs_sum / 256.0 + 1e-30
    } else {
        1e-6 * (inp as f32).sqrt() * abs_sum + 1e-30
    }
}

/// `(in, out)`: odd `in` everywhere but one, outputs not multiples of the tile sizes.
const MATMUL_SHAPES: &[(usize, usize)] = &[(7, 5), (33, 63), (129, 40), (576, 70), (1001, 96)];
const MATMUL_ROWS: &[usize] = &[1, 3, 8, 9, 64, 100];

#[test]
fn matmul_matches_reference() {
    let (be, r) = (dev(), ReferenceBackend);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for &(inp, out) in MATMUL_SHAPES {
        let t = HostTensor::f32(vec![out, inp], rand_vec(&mut rng, out * inp));
        for format in FORMATS {
            let wr = r.weight(&t, format).unwrap();
            let wd = be.weight(&t, format).unwrap();
            assert_eq!(be.weight_dims(&wd), (out, inp));
            for &rows in MATMUL_ROWS {
                let x = rand_vec(&mut rng, rows * inp);
                let mut yr = vec![0f32; rows * out];
                r.matmul(&x, rows, &wr, &mut yr);
                let xd = up(&be, &x);
                let mut yd = be.alloc(rows * out).unwrap();
                be.matmul(&xd, rows, &wd, &mut yd);
                let y = down(&be, &yd, rows * out);
                // BF16: the reference rounds x to bf16 too (x as the kernels see it).
                let xs: Vec<f32> = match format {
                    WeightFormat::BF16 => x.iter().map(|&v| bf16(v)).collect(),
                    _ => x.clone(),
                };
                let sums = abs_sums(&xs, &wr.data, rows, out, inp);
                let what = format!("matmul {format:?} in={inp} out={out} rows={rows}");
                assert_close(&what, &y, &yr, |i| matmul_tol(&be, format, inp, sums[i]));
            }
        }
    }
}

#[test]
fn fused_weight_matches_reference() {
    let (be, r) = (dev(), ReferenceBackend);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let inp = 45;
    let parts: Vec<HostTensor> = [17usize, 5, 30]
        .iter()
        .map(|&o| HostTensor::f32(vec![o, inp], rand_vec(&mut rng, o * inp)))
        .collect();
    let refs: Vec<&HostTensor> = parts.iter().collect();
    for format in FORMATS {
        let wr = r.fused_weight(&refs, format).unwrap();
        let wd = be.fused_weight(&refs, format).unwrap();
        assert_eq!(be.weight_dims(&wd), (52, inp));
        for rows in [1usize, 9] {
            let x = rand_vec(&mut rng, rows * inp);
            let mut yr = vec![0f32; rows * 52];
            r.matmul(&x, rows, &wr, &mut yr);
            let mut yd = be.alloc(rows * 52).unwrap();
            be.matmul(&up(&be, &x), rows, &wd, &mut yd);
            let y = down(&be, &yd, rows * 52);
            let xs: Vec<f32> = match format {
                WeightFormat::BF16 => x.iter().map(|&v| bf16(v)).collect(),
                _ => x.clone(),
            };
            let sums = abs_sums(&xs, &wr.data, rows, 52, inp);
            assert_close(&format!("fused {format:?} rows={rows}"), &y, &yr, |i| {
                matmul_tol(&be, format, inp, sums[i])
            });
        }
    }
}

/// Row t of an N-row matmul is bitwise row t computed alone, for every N in 1..=80.
#[test]
fn matmul_rows_are_batch_invariant() {
    let be = dev();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for &(inp, out) in &[(257usize, 70usize), (64, 130)] {
        let t = HostTensor::f32(vec![out, inp], rand_vec(&mut rng, out * inp));
        for format in FORMATS {
            let w = be.weight(&t, format).unwrap();
            let x = rand_vec(&mut rng, 80 * inp);
            let alone: Vec<Vec<f32>> = (0..80)
                .map(|t| {
                    let mut y = be.alloc(out).unwrap();
                    be.matmul(&up(&be, &x[t * inp..(t + 1) * inp]), 1, &w, &mut y);
                    down(&be, &y, out)
                })
                .collect();
            for n in 1..=80usize {
                let mut y = be.alloc(n * out).unwrap();
                be.matmul(&up(&be, &x[..n * inp]), n, &w, &mut y);
                let y = down(&be, &y, n * out);
                for (t, a) in alone.iter().enumerate().take(n) {
                    let what = format!("matmul {format:?} {inp}x{out}: row {t} of {n} vs alone");
                    assert_bits_eq(&what, &y[t * out..(t + 1) * out], a);
                }
            }
        }
    }
}

#[test]
fn matmul_with_too_short_buffers_fills_nan() {
    let be = dev();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for format in FORMATS {
        let w = be
            .weight(&HostTensor::f32(vec![4, 8], rand_vec(&mut rng, 32)), format)
            .unwrap();
        let x = up(&be, &rand_vec(&mut rng, 8)); // one row, asked for two
        let mut y = be.alloc(8).unwrap();
        be.matmul(&x, 2, &w, &mut y);
        assert!(down(&be, &y, 8).iter().all(|v| v.is_nan()), "{format:?}");
    }
}

#[test]
fn embedding_gather_matches_reference_and_nans_bad_ids() {
    let (be, r) = (dev(), ReferenceBackend);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for &(vocab, hidden) in &[(50usize, 7usize), (1000, 576)] {
        let t = HostTensor::f32(vec![vocab, hidden], rand_vec(&mut rng, vocab * hidden));
        for format in FORMATS {
            let (wd, wr) = (
                be.weight(&t, format).unwrap(),
                r.weight(&t, format).unwrap(),
            );
            let ids: Vec<u32> = (0..37).map(|_| rng.gen_range(0..vocab as u32)).collect();
            let mut want = vec![0f32; 37 * hidden];
            r.embedding_gather(&wr, &ids, &mut want);
            let mut got = be.alloc(37 * hidden).unwrap();
            be.embedding_gather(&wd, &ids, &mut got);
            assert_bits_eq("embedding_gather", &down(&be, &got, 37 * hidden), &want);
            let mut c = be.alloc(2 * hidden).unwrap();
            be.embedding_gather(&wd, &[0, vocab as u32], &mut c);
            let c = down(&be, &c, 2 * hidden);
            assert!(c[..hidden].iter().all(|v| v.is_finite()));
            assert!(c[hidden..].iter().all(|v| v.is_nan()), "out-of-range id");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// element-wise and per-row ops

#[test]
fn rms_norm_silu_add_gather_match_reference() {
    let (be, r) = (dev(), ReferenceBackend);
    let slack = fn_slack(&be);
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for &(rows, dim) in &[(1usize, 1usize), (3, 7), (9, 64), (33, 576), (2, 4096)] {
        let x: Vec<f32> = rand_vec(&mut rng, rows * dim)
            .iter()
            .map(|v| v * 3.0)
            .collect();
        let w = rand_vec(&mut rng, dim);
        let mut want = vec![0f32; rows * dim];
        r.rms_norm(&x, &w, rows, dim, 1e-5, &mut want);
        let mut got = be.alloc(rows * dim).unwrap();
        be.rms_norm(&up(&be, &x), &up(&be, &w), rows, dim, 1e-5, &mut got);
        assert_close(
            &format!("rms_norm {rows}x{dim}"),
            &down(&be, &got, rows * dim),
            &want,
            |i| slack * 1e-6 * (1.0 + want[i].abs()),
        );
    }
    for &(rows, inter) in &[(1usize, 1usize), (3, 7), (33, 1536)] {
        let gu: Vec<f32> = rand_vec(&mut rng, rows * 2 * inter)
            .iter()
            .map(|v| v * 20.0)
            .collect();
        let n = rows * inter;
        let mut want = vec![0f32; n];
        r.silu_mul(&gu, rows, inter, &mut want);
        let mut got = be.alloc(n).unwrap();
        be.silu_mul(&up(&be, &gu), rows, inter, &mut got);
        let got_h = down(&be, &got, n);
        assert_close("silu_mul", &got_h, &want, |i| {
            slack * 1e-6 * (1.0 + want[i].abs())
        });
        // add over a prefix: exact, the tail untouched.
        let x = rand_vec(&mut rng, n);
        let len = n - n / 3;
        let mut want_add = got_h.clone();
        r.add(&mut want_add, &x, len);
        be.add(&mut got, &up(&be, &x), len);
        assert_bits_eq("add", &down(&be, &got, n), &want_add);
        // gather_rows: exact.
        let idx: Vec<u32> = (0..5).map(|_| rng.gen_range(0..rows as u32)).collect();
        let mut want_g = vec![0f32; 5 * inter];
        r.gather_rows(&x, inter, &idx, &mut want_g);
        let mut got_g = be.alloc(5 * inter).unwrap();
        be.gather_rows(&up(&be, &x), inter, &idx, &mut got_g);
        assert_bits_eq("gather_rows", &down(&be, &got_g, 5 * inter), &want_g);
    }
}

/// rope, add_bias and head_rms_norm on a column range of strided rows (columns outside it
/// untouched), and the whole-buffer NaN of each op's stated bad-shape rule.
#[test]
fn rope_bias_head_norm_match_reference() {
    let (be, r) = (dev(), ReferenceBackend);
    let slack = fn_slack(&be);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for &(n_heads, head_dim, theta) in &[
        (9usize, 64usize, 10000f32),
        (3, 128, 500000.0),
        (2, 2, 10.0),
    ] {
        let inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32))
            .collect();
        let (rows, col) = (11usize, 5usize);
        let stride = col + n_heads * head_dim + 3;
        let pos: Vec<u32> = (0..rows).map(|_| rng.gen_range(0..8192)).collect();
        let x = rand_vec(&mut rng, rows * stride);
        let args = RopeArgs {
            n_heads,
            head_dim,
            row_pos: &pos,
            inv_freq: &inv_freq,
        };
        let mut want = x.clone();
        r.rope(ViewMut::new(&mut want, rows, stride, col), &args);
        let mut xd = up(&be, &x);
        be.rope(ViewMut::new(&mut xd, rows, stride, col), &args);
        let got = down(&be, &xd, rows * stride);
        assert_close(&format!("rope {n_heads}x{head_dim}"), &got, &want, |_| {
            slack * 1e-6
        });
        for t in 0..rows {
            let outside =
                (t * stride..t * stride + col).chain((t + 1) * stride - 3..(t + 1) * stride);
            for i in outside {
                assert_eq!(
                    got[i].to_bits(),
                    x[i].to_bits(),
                    "rope wrote outside the heads"
                );
            }
        }
        // add_bias over the same column range: exact.
        let width = n_heads * head_dim;
        let bias = rand_vec(&mut rng, width);
        let mut want_b = x.clone();
        r.add_bias(ViewMut::new(&mut want_b, rows, stride, col), &bias, width);
        let mut xd = up(&be, &x);
        be.add_bias(
            ViewMut::new(&mut xd, rows, stride, col),
            &up(&be, &bias),
            width,
        );
        assert_bits_eq("add_bias", &down(&be, &xd, rows * stride), &want_b);
        // head_rms_norm.
        let w = rand_vec(&mut rng, head_dim);
        let mut want_n = x.clone();
        r.head_rms_norm(
            ViewMut::new(&mut want_n, rows, stride, col),
            &w,
            n_heads,
            head_dim,
            1e-6,
        );
        let mut xd = up(&be, &x);
        be.head_rms_norm(
            ViewMut::new(&mut xd, rows, stride, col),
            &up(&be, &w),
            n_heads,
            head_dim,
            1e-6,
        );
        assert_close(
            "head_rms_norm",
            &down(&be, &xd, rows * stride),
            &want_n,
            |i| slack * 1e-6 * (1.0 + want_n[i].abs()),
        );
        // The stated NaN rules: heads past the stride (rope, head_rms_norm), bias too short.
        let all_nan = |b: &<DeviceBackend as Backend>::Buf| {
            down(&be, b, rows * stride).iter().all(|v| v.is_nan())
        };
        let mut xd = up(&be, &x);
        be.rope(ViewMut::new(&mut xd, rows, stride, col + 4), &args);
        assert!(all_nan(&xd), "rope with heads past the stride");
        let short_pos = RopeArgs {
            row_pos: &pos[..rows - 1],
            ..args
        };
        let mut xd = up(&be, &x);
        be.rope(ViewMut::new(&mut xd, rows, stride, col), &short_pos);
        assert!(all_nan(&xd), "rope with short row_pos");
        let mut xd = up(&be, &x);
        be.add_bias(
            ViewMut::new(&mut xd, rows, stride, col),
            &up(&be, &bias[1..]),
            width,
        );
        assert!(all_nan(&xd), "add_bias with a short bias");
        let mut xd = up(&be, &x);
        be.head_rms_norm(
            ViewMut::new(&mut xd, rows, stride, col + 4),
            &up(&be, &w),
            n_heads,
            head_dim,
            1e-6,
        );
        assert!(all_nan(&xd), "head_rms_norm with heads past the stride");
    }
}

// ---------------------------------------------------------------------------------------------
// kv_write + attention_paged

/// A paged-attention scenario: sequences with shuffled block tables, every position written
/// with kv_write (plus a row whose slot is outside the cache, which must be skipped), then one
/// step mixing a full prefill, a decode row and prefill chunks.
struct Scenario {
    geom: KvGeometry,
    n_heads: usize,
    stride: usize,
    tables: Vec<Vec<u32>>,
    row_seq: Vec<u32>,
    row_pos: Vec<u32>,
    slots: Vec<u32>,
    q: Vec<f32>,
    /// K/V rows written to the cache (`[n, stride]`, K at column `q_dim`, V after it) and
    /// their slots.
    kv: Vec<f32>,
    kv_slots: Vec<u32>,
}

fn scenario(
    seed: u64,
    n_heads: usize,
    nkv: usize,
    hd: usize,
    bs: usize,
    lens: &[usize],
) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let PagedStep {
        geom,
        tables,
        row_seq,
        row_pos,
        slots,
    } = paged_step(&mut rng, nkv, hd, bs, lens);
    let num_blocks = geom.num_blocks;
    let slot = |s: usize, p: usize| paged_slot(&tables, bs, s, p);
    let stride = (n_heads + 2 * nkv) * hd + 3;
    let mut kv_slots: Vec<u32> = (0..lens.len())
        .flat_map(|s| (0..lens[s]).map(move |p| (s, p)))
        .map(|(s, p)| slot(s, p))
        .collect();
    kv_slots.push((num_blocks * bs) as u32 + 3); // outside the cache: skipped
    let kv = rand_vec(&mut rng, kv_slots.len() * stride);
    let q = rand_vec(&mut rng, row_seq.len() * stride);
    Scenario {
        geom,
        n_heads,
        stride,
        tables,
        row_seq,
        row_pos,
        slots,
        q,
        kv,
        kv_slots,
    }
}

impl Scenario {
    fn q_dim(&self) -> usize {
        self.n_heads * self.geom.head_dim
    }
    fn kv_dim(&self) -> usize {
        self.geom.num_kv_heads * self.geom.head_dim
    }
    fn max_ctx(&self) -> usize {
        self.row_pos
            .iter()
            .map(|&p| p as usize + 1)
            .max()
            .unwrap_or(1)
    }
}

/// Writes the scenario's K/V into layer `layer` of a fresh cache on `be` (`kv` the rows, as
/// given or bf16-rounded).
fn write_cache<B: Backend>(be: &B, sc: &Scenario, kv: &[f32]) -> B::KvCache {
    let mut cache = be.alloc_kv(sc.geom).unwrap();
    let buf = up(be, kv);
    let n = sc.kv_slots.len();
    for layer in 0..2 {
        be.kv_write(
            &mut cache,
            KvWriteArgs {
                layer,
                k: View::new(&buf, n, sc.stride, sc.q_dim()),
                v: View::new(&buf, n, sc.stride, sc.q_dim() + sc.kv_dim()),
                slot_mapping: &sc.kv_slots,
            },
        );
    }
    cache
}

/// Attention (layer 1) for the step rows `rows` of the scenario.
fn attend<B: Backend>(
    be: &B,
    sc: &Scenario,
    cache: &B::KvCache,
    rows: std::ops::Range<usize>,
    window: Option<usize>,
) -> Vec<f32> {
    let tables: Vec<&[u32]> = sc.tables.iter().map(|t| t.as_slice()).collect();
    let n = rows.len();
    let meta = AttnMeta {
        row_seq: &sc.row_seq[rows.clone()],
        row_pos: &sc.row_pos[rows.clone()],
        slot_mapping: &sc.slots[rows.clone()],
        block_tables: &tables,
    };
    let q = up(be, &sc.q[rows.start * sc.stride..rows.end * sc.stride]);
    let width = sc.q_dim();
    let mut out = be.alloc(n * width).unwrap();
    be.attention_paged(
        AttentionArgs {
            q: View::new(&q, n, sc.stride, 0),
            n_heads: sc.n_heads,
            cache,
            layer: 1,
            meta,
            window,
        },
        &mut out,
    );
    down(be, &out, n * width)
}

/// `(n_heads, n_kv_heads, head_dim, block_size, sequence lengths)`: GQA 1:1 to 4:1, several
/// sequences, block size 1 and 16, a 2,000-token context.
const ATTN_CASES: &[(usize, usize, usize, usize, &[usize])] = &[
    (9, 3, 64, 16, &[40, 70, 33, 1]),
    (4, 2, 16, 1, &[3, 30]),
    (8, 2, 128, 16, &[17, 2000, 9]),
    (4, 4, 8, 4, &[13, 2, 1]),
    (32, 8, 128, 16, &[300, 129]),
];

/// The device's cache contents as the reference must see them (bf16 on CUDA).
fn kv_as_stored(be: &DeviceBackend, kv: &[f32]) -> Vec<f32> {
    if cuda(be) {
        kv.iter().map(|&v| bf16(v)).collect()
    } else {
        kv.to_vec()
    }
}

#[test]
fn kv_write_and_attention_match_reference() {
    let (be, r) = (dev(), ReferenceBackend);
    for (ci, &(nh, nkv, hd, bs, lens)) in ATTN_CASES.iter().enumerate() {
        let sc = scenario(100 + ci as u64, nh, nkv, hd, bs, lens);
        let cd = write_cache(&be, &sc, &sc.kv);
        let cr = write_cache(&r, &sc, &kv_as_stored(&be, &sc.kv));
        let rows = sc.row_seq.len();
        let tol = 2e-6 * (hd as f32).sqrt() * (1.0 + sc.max_ctx() as f32 / 1024.0);
        for window in [None, Some(0), Some(1), Some(5), Some(64)] {
            let got = attend(&be, &sc, &cd, 0..rows, window);
            let want = attend(&r, &sc, &cr, 0..rows, window);
            let what = format!("attention case {ci} ({nh}:{nkv} heads, hd {hd}) window {window:?}");
            assert_close(&what, &got, &want, |_| tol);
        }
    }
}

#[test]
fn attention_rows_are_batch_invariant() {
    let be = dev();
    for (ci, &(nh, nkv, hd, bs, lens)) in ATTN_CASES.iter().enumerate() {
        let sc = scenario(200 + ci as u64, nh, nkv, hd, bs, lens);
        let cache = write_cache(&be, &sc, &sc.kv);
        let rows = sc.row_seq.len();
        let width = sc.q_dim();
        for window in [None, Some(5)] {
            let full = attend(&be, &sc, &cache, 0..rows, window);
            for t in (0..rows).step_by(7).chain([rows - 1]) {
                let alone = attend(&be, &sc, &cache, t..t + 1, window);
                let what = format!("attention case {ci} window {window:?}: row {t} vs alone");
                assert_bits_eq(&what, &full[t * width..(t + 1) * width], &alone);
            }
            // A contiguous sub-batch (another row count, another start) too.
            let (a, b) = (rows / 3, rows.min(rows / 3 + 9));
            let part = attend(&be, &sc, &cache, a..b, window);
            assert_bits_eq("attention sub-batch", &part, &full[a * width..b * width]);
        }
    }
}

#[test]
fn attention_bad_metadata_gives_nan_rows() {
    let be = dev();
    let sc = scenario(300, 4, 2, 16, 4, &[10, 6]);
    let cache = write_cache(&be, &sc, &sc.kv);
    let good: Vec<&[u32]> = sc.tables.iter().map(|t| t.as_slice()).collect();
    let bad_table = [sc.geom.num_blocks as u32 + 9];
    let tables = [good[0], &bad_table[..]];
    let meta = AttnMeta {
        row_seq: &[0, 1, 0, 5],
        row_pos: &[3, 0, 30, 0],
        slot_mapping: &[0, 0, 0, 0],
        block_tables: &tables,
    };
    let q = up(&be, &sc.q[..4 * sc.stride]);
    let args = |n_heads, col| AttentionArgs {
        q: View::new(&q, 4, sc.stride, col),
        n_heads,
        cache: &cache,
        layer: 1,
        meta,
        window: None,
    };
    let mut out = be.alloc(4 * 64).unwrap();
    be.attention_paged(args(4, 0), &mut out);
    let out = down(&be, &out, 4 * 64);
    assert!(out[..64].iter().all(|v| v.is_finite()));
    assert!(
        out[64..].iter().all(|v| v.is_nan()),
        "a bad block, a position past the table and a bad sequence give NaN rows"
    );
    let mut out = be.alloc(4 * 48).unwrap();
    be.attention_paged(args(3, 0), &mut out);
    assert!(
        down(&be, &out, 4 * 48).iter().all(|v| v.is_nan()),
        "heads not a multiple of the KV heads"
    );
    let mut out = be.alloc(4 * 64).unwrap();
    be.attention_paged(args(4, sc.stride - 63), &mut out);
    assert!(
        down(&be, &out, 4 * 64).iter().all(|v| v.is_nan()),
        "Q columns past the stride"
    );
}

// ---------------------------------------------------------------------------------------------
// LoRA

/// Odd dims (nothing a multiple of 8) and Llama-like ones (q 512, kv 128, inter 1376).
fn geoms(num_slots: usize, max_rank: usize) -> [LoraStackGeometry; 2] {
    let g = |h: usize, q: usize, kv: usize, i: usize, layers| LoraStackGeometry {
        num_slots,
        max_rank,
        num_layers: layers,
        dims: [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)],
        precision: LoraPrecision::F32,
    };
    [g(37, 27, 9, 61, 3), g(512, 512, 128, 1376, 2)]
}

/// The adapters of the arena: slot 0 rank 16 everywhere, slot 1 ranks 4/8/64 with absent
/// modules, slot 2 ranks 1/3, slot 3 loaded then cleared, slot 4 never loaded, slot 5 rank 8.
fn adapters(geom: &LoraStackGeometry, seed: u64) -> Vec<OwnedAdapter> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    vec![
        random_adapter(geom, &mut rng, |_, _| Some(16)),
        random_adapter(geom, &mut rng, |l, t| match (l + t.index()) % 4 {
            0 => Some(4),
            1 => Some(8),
            2 => Some(64.min(geom.max_rank)),
            _ => None,
        }),
        random_adapter(geom, &mut rng, |l, t| {
            (t != LoraTarget::O || l != 0).then_some(1 + 2 * (t.index() % 2))
        }),
        random_adapter(geom, &mut rng, |_, _| Some(2)),
        random_adapter(geom, &mut rng, |_, _| Some(8)),
    ]
}

/// `ad` with A and B rounded to bf16: what a CUDA device's adapter arena holds.
fn bf16_adapter(ad: &OwnedAdapter) -> OwnedAdapter {
    let round = |v: &[f32]| v.iter().map(|&x| bf16(x)).collect::<Vec<_>>();
    ad.iter()
        .map(|mods| {
            std::array::from_fn(|ti| {
                mods[ti]
                    .as_ref()
                    .map(|(r, a, b, s)| (*r, round(a), round(b), *s))
            })
        })
        .collect()
}

fn fill<B: Backend>(be: &B, geom: &LoraStackGeometry, ads: &[OwnedAdapter]) -> B::LoraStack {
    let mut stack = be.alloc_lora_stack(*geom).unwrap();
    for (slot, ad) in [0usize, 1, 2, 3, 5].into_iter().zip(ads) {
        let v = view(ad);
        let data: &LoraSlotData<'_> = &v;
        be.lora_load_slot(&mut stack, slot, data).unwrap();
    }
    be.lora_clear_slot(&mut stack, 3);
    stack
}

/// A batch of `rows` rows over slots -1..=5 (cleared and never-loaded slots included), with
/// two mix lanes carrying row scales on some rows.
fn lora_batch(rng: &mut ChaCha8Rng, rows: usize) -> LoraBatch {
    let slot = |rng: &mut ChaCha8Rng| rng.gen_range(-1i32..=5);
    let token_slot = (0..rows).map(|_| slot(rng)).collect();
    let token_scale = (0..rows).map(|_| rng.gen_range(-1.5f32..1.5)).collect();
    let lane = |rng: &mut ChaCha8Rng, scaled: bool| LoraLane {
        slot: (0..rows)
            .map(|t| if t % 3 == 0 { slot(rng) } else { -1 })
            .collect(),
        scale: if scaled {
            (0..rows).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
        } else {
            Vec::new()
        },
    };
    LoraBatch {
        token_slot,
        token_scale,
        mix: vec![lane(rng, true), lane(rng, false)],
    }
}

/// The lora bound per output of `y` (see the module docs): `mag` from the host adapters.
#[allow(clippy::too_many_arguments)]
fn lora_tol(
    ads: &[OwnedAdapter],
    batch: &LoraBatch,
    layer: usize,
    target: LoraTarget,
    x: &[f32],
    y0: &[f32],
    lay: (usize, usize, usize, usize),
    dims: (usize, usize),
) -> Vec<f32> {
    let (xs, xc, ys, yc) = lay;
    let (inp, out) = dims;
    let rows = batch.token_slot.len();
    let slot_ad = |s: i32| -> Option<&OwnedModule> {
        let k = [0usize, 1, 2, usize::MAX, usize::MAX, 4].get(usize::try_from(s).ok()?)?;
        ads.get(*k)?[layer][target.index()].as_ref()
    };
    let mut tol = vec![0f32; y0.len()];
    for t in 0..rows {
        let mut mag = vec![0f64; out];
        let mut rank_sum = 0usize;
        for (slots, scales) in batch.lanes() {
            let Some(&s) = slots.get(t) else { continue };
            let Some((r, a, b, sc)) = slot_ad(s) else {
                continue;
            };
            rank_sum += r;
            let m = loraplex::backend::lane_scale(scales, t);
            let h: Vec<f64> = (0..*r)
                .map(|k| {
                    (0..inp)
                        .map(|i| (a[k * inp + i] * x[t * xs + xc + i]).abs() as f64)
                        .sum()
                })
                .collect();
            for (o, mo) in mag.iter_mut().enumerate() {
                let bh: f64 = (0..*r).map(|k| b[o * r + k].abs() as f64 * h[k]).sum();
                *mo += (sc * m).abs() as f64 * bh;
            }
        }
        for (o, mo) in mag.iter().enumerate() {
            let i = t * ys + yc + o;
            let m = y0[i].abs() as f64 + mo;
            let n = (inp / 8 + rank_sum + 8) as f64;
            tol[i] = (TOL_ULPS * f32::EPSILON as f64 * n * m) as f32 + 1e-30;
        }
    }
    tol
}

/// lora_apply on the device for one target: returns y.
#[allow(clippy::too_many_arguments)]
fn lora_run<B: Backend>(
    be: &B,
    stack: &B::LoraStack,
    batch: &LoraBatch,
    layer: usize,
    target: LoraTarget,
    x: &[f32],
    y0: &[f32],
    lay: (usize, usize, usize, usize),
) -> Vec<f32> {
    let (xs, xc, ys, yc) = lay;
    let rows = batch.token_slot.len();
    let xb = up(be, x);
    let mut yb = up(be, y0);
    be.lora_apply(
        View::new(&xb, rows, xs, xc),
        ViewMut::new(&mut yb, rows, ys, yc),
        &LoraArgs {
            batch,
            stack,
            layer,
            target,
        },
    );
    down(be, &yb, y0.len())
}

#[test]
fn lora_apply_matches_reference() {
    let (be, r) = (dev(), ReferenceBackend);
    let slack = if cuda(&be) { 2.0 } else { 1.0 };
    for (gi, geom) in geoms(6, 64).iter().enumerate() {
        let ads = adapters(geom, 10 + gi as u64);
        // The adapters as the device holds them (see the module docs).
        let held: Vec<OwnedAdapter> = if cuda(&be) {
            ads.iter().map(bf16_adapter).collect()
        } else {
            ads.clone()
        };
        let (sd, sr) = (fill(&be, geom, &ads), fill(&r, geom, &held));
        let mut rng = ChaCha8Rng::seed_from_u64(20 + gi as u64);
        for rows in [1usize, 3, 8, 9, 37] {
            let batch = lora_batch(&mut rng, rows);
            for layer in 0..geom.num_layers {
                for target in LoraTarget::ALL {
                    let lay = layout(geom, target);
                    let x = rand_vec(&mut rng, rows * lay.0);
                    let y0 = rand_vec(&mut rng, rows * lay.2);
                    let got = lora_run(&be, &sd, &batch, layer, target, &x, &y0, lay);
                    let want = lora_run(&r, &sr, &batch, layer, target, &x, &y0, lay);
                    let dims = geom.dims[target.index()];
                    let tol = lora_tol(&held, &batch, layer, target, &x, &y0, lay, dims);
                    let what = format!("lora geom {gi} rows {rows} layer {layer} {target:?}");
                    assert_close(&what, &got, &want, |i| slack * tol[i]);
                }
            }
        }
    }
}

#[test]
fn lora_rows_are_batch_invariant() {
    let be = dev();
    let geom = geoms(6, 64)[1];
    let ads = adapters(&geom, 30);
    let stack = fill(&be, &geom, &ads);
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let rows = 40;
    let batch = lora_batch(&mut rng, rows);
    for target in [LoraTarget::Q, LoraTarget::V, LoraTarget::Down] {
        let lay = layout(&geom, target);
        let x = rand_vec(&mut rng, rows * lay.0);
        let y0 = rand_vec(&mut rng, rows * lay.2);
        let full = lora_run(&be, &stack, &batch, 1, target, &x, &y0, lay);
        for t in 0..rows {
            let one = LoraBatch {
                token_slot: vec![batch.token_slot[t]],
                token_scale: vec![batch.token_scale[t]],
                mix: batch
                    .mix
                    .iter()
                    .map(|l| LoraLane {
                        slot: vec![l.slot[t]],
                        scale: l.scale.get(t).map(|&s| vec![s]).unwrap_or_default(),
                    })
                    .collect(),
            };
            let xr = &x[t * lay.0..(t + 1) * lay.0];
            let yr = &y0[t * lay.2..(t + 1) * lay.2];
            let alone = lora_run(&be, &stack, &one, 1, target, xr, yr, lay);
            let what = format!("lora {target:?}: row {t} of {rows} vs alone");
            assert_bits_eq(&what, &full[t * lay.2..(t + 1) * lay.2], &alone);
        }
    }
}

#[test]
fn lora_mismatched_rows_write_nothing() {
    let be = dev();
    let geom = geoms(6, 16)[0];
    let ads = adapters(&geom, 40);
    let stack = fill(&be, &geom, &ads);
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let batch = LoraBatch::from_slots(vec![0, 0, 0]);
    let (inp, out) = geom.dims[LoraTarget::O.index()];
    let x = up(&be, &rand_vec(&mut rng, 3 * inp));
    let y0 = rand_vec(&mut rng, 3 * out);
    let mut y = up(&be, &y0);
    be.lora_apply(
        View::new(&x, 3, inp, 0),
        ViewMut::new(&mut y, 2, out, 0),
        &LoraArgs {
            batch: &batch,
            stack: &stack,
            layer: 0,
            target: LoraTarget::O,
        },
    );
    assert_bits_eq("lora with x.rows != y.rows", &down(&be, &y, 3 * out), &y0);
}

#[test]
fn lora_load_slot_refuses_bad_adapters() {
    let be = dev();
    let geom = geoms(2, 16)[0];
    let mut stack = be.alloc_lora_stack(geom).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(50);
    let ok = random_adapter(&geom, &mut rng, |_, _| Some(4));
    let too_big = random_adapter(&geom, &mut rng, |_, _| Some(17));
    let v = view(&ok);
    assert!(be.lora_load_slot(&mut stack, 1, &v).is_ok());
    let codes = [ErrorCode::InvalidAdapter, ErrorCode::Internal];
    let e = be.lora_load_slot(&mut stack, 2, &v).unwrap_err();
    assert!(codes.contains(&e.code()), "slot out of range: {e}");
    let e = be
        .lora_load_slot(&mut stack, 0, &view(&too_big))
        .unwrap_err();
    assert!(codes.contains(&e.code()), "rank over max_rank: {e}");
    let e = be.lora_load_slot(&mut stack, 0, &v[..2]).unwrap_err();
    assert!(codes.contains(&e.code()), "too few layers: {e}");
    let mut short = view(&ok);
    if let Some(m) = short[1][3].as_mut() {
        m.a = &m.a[1..];
    }
    let e = be.lora_load_slot(&mut stack, 0, &short).unwrap_err();
    assert!(codes.contains(&e.code()), "short A: {e}");
}
