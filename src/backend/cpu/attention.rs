//! Causal grouped-query attention over the paged KV cache (two-pass softmax), optionally limited
//! to a sliding window of the most recent positions.
//!
//! Work is split into units of (rows, KV head): a unit computes every query head that shares the
//! KV head for a run of up to [`ROW_BLOCK`] consecutive rows of one sequence (a prompt's rows in
//! prefill; one row in decode), so each K/V vector is loaded once per group and row block
//! instead of once per row (long prompts were bound by re-reading K/V from memory). Units run in
//! parallel on the pool. Each row's scores, softmax and weighted sum of V are computed exactly
//! as for that row alone, in a fixed order (keys in position order; a key's score is the same
//! bits whether it is dotted in a batch of 8 or alone), so a row's output is bitwise independent
//! of the other rows in the call, of how rows are blocked and of threading.

use rayon::prelude::*;

use super::{CpuBackend, CpuKvCache};
use crate::backend::kv_store::{attn_row, attn_shapes, block_runs};
use crate::backend::reference::window_start;
use crate::backend::AttentionArgs;

/// 8-lane dot product with a fixed summation order.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `e^x` for the softmax (`x <= 0`): Cephes-style range reduction and degree-6 polynomial in
/// plain f32 arithmetic (relative error ~2e-7), written so the compiler vectorises it. Inputs
/// below -87.3 are clamped (result ~1e-38); NaN propagates.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    let x = if x < -87.3 { -87.3 } else { x };
    let fx = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - fx * 0.693_359_4 - fx * -2.121_944_4e-4;
    let z = r * r;
    let y = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 0.166_666_65)
        * r
        + 0.5)
        * z
        + r
        + 1.0;
    y * f32::from_bits(((fx as i32 + 127) as u32) << 23)
}

/// Shapes and the layer's K/V, shared by all units of one call.
struct Call<'a> {
    hd: usize,
    kv_dim: usize,
    group: usize,
    bs: usize,
    scale: f32,
    /// Sliding window (None = every position).
    window: Option<usize>,
    /// The layer's K (slot-major).
    kc: &'a [f32],
    /// The layer's V (slot-major).
    vc: &'a [f32],
}

/// One unit compiled for AVX2/FMA. The body has no reductions across lanes and Rust never
/// contracts `a * b + c` into an FMA, so this gives the same bits as [`unit`] without SIMD.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn unit_avx2(u: &Unit<'_, '_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    // SAFETY: this function is only entered on CPUs with AVX2 and FMA (its own contract), which
    // is what `unit::<true>` requires.
    unsafe { unit::<true>(u, scores, out) }
}

/// [`unit_avx2`] compiled with AVX-512F as well, so the element-wise loops (the softmax's
/// exponentials, the weighted sum of V) run on 16 lanes. Element-wise operations give the same
/// bits at any vector width, and the dot products are the same AVX2 code, so this gives the same
/// bits as [`unit`].
///
/// # Safety
/// The CPU must support AVX2, FMA and AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn unit_avx512(u: &Unit<'_, '_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    // SAFETY: this function is only entered on CPUs with AVX2, FMA and AVX-512F (its own
    // contract), which covers what `unit::<true>` requires.
    unsafe { unit::<true>(u, scores, out) }
}

/// The scores of 8 keys (`(position index, K)`) for every query head of `q` (`hd` each):
/// `scores[qi * n + p] = dot(q_qi, k) * scale`.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scores8(
    q: &[f32],
    hd: usize,
    n: usize,
    scale: f32,
    batch: &[(usize, &[f32]); 8],
    scores: &mut [f32],
) {
    let keys = batch.map(|(_, k)| k);
    for (qi, qh) in q.chunks_exact(hd).enumerate() {
        let r = super::simd::dot8_mul_add(qh, keys);
        for (&(p, _), v) in batch.iter().zip(r) {
            scores[qi * n + p] = v * scale;
        }
    }
}

/// Query rows per unit at most: the rows share each K/V load, and their scores (`group` × the
/// positions each row sees) stay in L2 for the weighted sum of V.
const ROW_BLOCK: usize = 16;

/// A query row of a unit: its query (every head), its position, and the first position its
/// window lets it see.
#[derive(Debug, Clone, Copy)]
struct QRow<'a> {
    q: &'a [f32],
    pos: usize,
    lo: usize,
}

impl<'a> QRow<'a> {
    /// The query heads of KV head `g`'s group (`gh` values each group).
    fn group_q(&self, g: usize, gh: usize) -> &'a [f32] {
        &self.q[g * gh..(g + 1) * gh]
    }

    /// Positions the row attends to.
    fn n(&self) -> usize {
        self.pos + 1 - self.lo
    }

    /// Whether the row attends to position `p`.
    fn sees(&self, p: usize) -> bool {
        (self.lo..=self.pos).contains(&p)
    }
}

/// One unit of work: up to [`ROW_BLOCK`] rows of one sequence (block table `table`) × KV head
/// `g`.
struct Unit<'c, 'a> {
    d: &'c Call<'a>,
    rows: &'c [QRow<'a>],
    table: &'a [u32],
    g: usize,
}

/// Computes a unit: `out` is `rows × group × hd` (each row's outputs of the group's query heads).
/// Row `r` attends to positions `lo..=pos` of the sequence; its scores sit at `offs[r]` in
/// `scores` (`group` runs of `n` values), computed key by key in position order.
///
/// # Safety
/// With `SIMD = true` the CPU must support AVX2 and FMA.
#[inline(always)]
unsafe fn unit<const SIMD: bool>(u: &Unit<'_, '_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    let (d, rows, g) = (u.d, u.rows, u.g);
    let (kc, vc) = (d.kc, d.vc);
    let (hd, group) = (d.hd, d.group);
    let gh = group * hd;
    let mut offs = [0usize; ROW_BLOCK];
    let mut total = 0;
    for (o, row) in offs.iter_mut().zip(rows) {
        *o = total;
        total += group * row.n();
    }
    scores.clear();
    scores.resize(total, 0.0);
    let lo = rows.iter().map(|r| r.lo).min().unwrap_or(0);
    let end = rows.iter().map(|r| r.pos + 1).max().unwrap_or(0);
    let koff = g * hd;
    // The scores of row `r` for key `(p, k)`, one dot product per query head.
    let score1 = |scores: &mut [f32], r: usize, p: usize, k: Option<&[f32]>| {
        let row = &rows[r];
        let n = row.n();
        let s = &mut scores[offs[r]..offs[r] + group * n];
        for (qi, qh) in row.group_q(g, gh).chunks_exact(hd).enumerate() {
            s[qi * n + p - row.lo] = match k {
                None => f32::NAN,
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the caller guarantees AVX2/FMA when SIMD is set (all `dot_mul_add`
                // requires; it bounds-checks its slices).
                Some(k) if SIMD => (unsafe { super::simd::dot_mul_add(qh, k) }) * d.scale,
                Some(k) => dot(qh, k) * d.scale,
            };
        }
    };
    // On the SIMD path keys wait in `batch` until 8 are there, then go through `dot8_mul_add`
    // for every row that sees all 8 (the same bits as one `dot_mul_add` per key, with the 8
    // chains interleaved), one at a time for the others.
    let mut batch: [(usize, &[f32]); 8] = [(0, &[]); 8];
    let mut nb = 0;
    for (p0, s0, cnt) in block_runs(u.table, end, d.bs) {
        for off in lo.saturating_sub(p0).min(cnt)..cnt {
            let (p, slot) = (p0 + off, s0 + off);
            let k = kc.get(slot * d.kv_dim + koff..slot * d.kv_dim + koff + hd);
            #[cfg(target_arch = "x86_64")]
            if let (Some(k), true) = (k, SIMD) {
                batch[nb] = (p, k);
                nb += 1;
                if nb == 8 {
                    nb = 0;
                    for (r, row) in rows.iter().enumerate() {
                        if row.sees(batch[0].0) && row.sees(batch[7].0) {
                            let rel = batch.map(|(p, k)| (p - row.lo, k));
                            let n = row.n();
                            let s = &mut scores[offs[r]..offs[r] + group * n];
                            // SAFETY: the caller guarantees AVX2/FMA when SIMD is set.
                            unsafe { scores8(row.group_q(g, gh), hd, n, d.scale, &rel, s) };
                        } else {
                            for &(p, k) in &batch {
                                if row.sees(p) {
                                    score1(scores, r, p, Some(k));
                                }
                            }
                        }
                    }
                }
                continue;
            }
            for (r, row) in rows.iter().enumerate() {
                if row.sees(p) {
                    score1(scores, r, p, k);
                }
            }
        }
    }
    for &(p, k) in &batch[..nb] {
        for (r, row) in rows.iter().enumerate() {
            if row.sees(p) {
                score1(scores, r, p, Some(k));
            }
        }
    }
    let mut inv_z = vec![0f32; rows.len() * group];
    for (r, row) in rows.iter().enumerate() {
        let n = row.n();
        let s = &mut scores[offs[r]..offs[r] + group * n];
        for (s, iz) in s.chunks_exact_mut(n).zip(&mut inv_z[r * group..]) {
            let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for v in s.iter_mut() {
                *v = exp_neg(*v - m);
            }
            let z: f32 = s.iter().sum();
            *iz = 1.0 / z;
        }
    }
    out.fill(0.0);
    for (p0, s0, cnt) in block_runs(u.table, end, d.bs) {
        for off in lo.saturating_sub(p0).min(cnt)..cnt {
            let (p, slot) = (p0 + off, s0 + off);
            let Some(v) = vc.get(slot * d.kv_dim + koff..slot * d.kv_dim + koff + hd) else {
                continue;
            };
            for (r, row) in rows.iter().enumerate() {
                if !row.sees(p) {
                    continue;
                }
                let n = row.n();
                let s = &scores[offs[r]..offs[r] + group * n];
                for (qi, o) in out[r * gh..(r + 1) * gh].chunks_exact_mut(hd).enumerate() {
                    let wgt = s[qi * n + p - row.lo];
                    for (o, &vv) in o.iter_mut().zip(v) {
                        *o += wgt * vv;
                    }
                }
            }
        }
    }
    for (o, &iz) in out.chunks_exact_mut(hd).zip(inv_z.iter()) {
        o.iter_mut().for_each(|v| *v *= iz);
    }
}

/// See [`crate::backend::Backend::attention_paged`]. Fills the output with NaN when shapes are
/// inconsistent, and a row's output with NaN when its metadata points outside the cache.
pub(crate) fn attention_paged(
    be: &CpuBackend,
    a: AttentionArgs<'_, [f32], CpuKvCache>,
    out: &mut [f32],
) {
    let (q, n_heads, meta) = (a.q, a.n_heads, &a.meta);
    let geom = a.cache.geom;
    let (Some((nkv, hd, group)), Some((kc, vc))) = (
        attn_shapes(&q, out.len(), n_heads, &geom),
        a.cache.layer(a.layer),
    ) else {
        out.iter_mut().for_each(|v| *v = f32::NAN);
        return;
    };
    let rows = q.rows;
    if rows == 0 || hd == 0 {
        return;
    }
    let d = Call {
        hd,
        kv_dim: nkv * hd,
        group,
        bs: geom.block_size,
        scale: 1.0 / (hd as f32).sqrt(),
        window: a.window,
        kc,
        vc,
    };
    let q_dim = n_heads * hd;
    let out = &mut out[..rows * q_dim];
    let threads = be.pool.current_num_threads();
    // Row blocks: runs of consecutive rows of one sequence with valid metadata, small enough
    // that every thread gets several units; a row with invalid metadata is a block alone.
    let rb = (rows * nkv / (threads * 4)).clamp(1, ROW_BLOCK);
    let mut blocks: Vec<(usize, usize)> = Vec::new();
    let mut t = 0;
    while t < rows {
        let ok = |t: usize| attn_row(meta, t, &geom).is_some() && q.row(t, q_dim).is_some();
        let mut t1 = t + 1;
        if ok(t) {
            while t1 < rows && t1 - t < rb && meta.row_seq.get(t1) == meta.row_seq.get(t) && ok(t1)
            {
                t1 += 1;
            }
        }
        blocks.push((t, t1));
        t = t1;
    }
    #[cfg(target_arch = "x86_64")]
    let wide = be.wide;
    let gh = group * hd;
    // Unit `c`: row block `c / nkv`, KV head `c % nkv`; its output is `rows × gh` values.
    let run = |c: usize, scores: &mut Vec<f32>| -> Vec<f32> {
        let ((t0, t1), g) = (blocks[c / nkv], c % nkv);
        let mut res = vec![f32::NAN; (t1 - t0) * gh];
        let mut qrows = Vec::with_capacity(t1 - t0);
        let mut table: &[u32] = &[];
        for t in t0..t1 {
            let (Some((tb, pos)), Some(q_row)) = (attn_row(meta, t, &geom), q.row(t, q_dim)) else {
                return res;
            };
            table = tb;
            qrows.push(QRow {
                q: q_row,
                pos,
                lo: window_start(pos, d.window),
            });
        }
        let u = Unit {
            d: &d,
            rows: &qrows,
            table,
            g,
        };
        #[cfg(target_arch = "x86_64")]
        if be.simd {
            if wide {
                // SAFETY: `be.simd` is only set when AVX2 and FMA were detected at runtime, and
                // `be.wide` when AVX-512F/VL were as well.
                unsafe { unit_avx512(&u, scores, &mut res) };
            } else {
                // SAFETY: `be.simd` is only set when AVX2 and FMA were detected at runtime.
                unsafe { unit_avx2(&u, scores, &mut res) };
            }
            return res;
        }
        // SAFETY: SIMD = false needs no CPU features.
        unsafe { unit::<false>(&u, scores, &mut res) };
        res
    };
    let work: usize = meta
        .row_pos
        .iter()
        .take(rows)
        .map(|&p| p as usize + 1)
        .sum::<usize>()
        .saturating_mul(q_dim);
    let units = blocks.len() * nkv;
    let results: Vec<Vec<f32>> = if threads <= 1 || work < (1 << 16) {
        let mut scores = Vec::new();
        (0..units).map(|c| run(c, &mut scores)).collect()
    } else {
        be.pool.install(|| {
            (0..units)
                .into_par_iter()
                .with_max_len(1)
                .map_init(Vec::new, |scores, c| run(c, scores))
                .collect()
        })
    };
    for (c, res) in results.iter().enumerate() {
        let ((t0, _), g) = (blocks[c / nkv], c % nkv);
        for (r, src) in res.chunks_exact(gh).enumerate() {
            let at = (t0 + r) * q_dim + g * gh;
            out[at..at + gh].copy_from_slice(src);
        }
    }
}
