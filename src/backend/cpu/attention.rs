//! Causal grouped-query attention over the paged KV cache (two-pass softmax), optionally limited
//! to a sliding window of the most recent positions.
//!
//! Work is split into units of (row, KV head): a unit computes every query head that shares the
//! KV head, so each K/V vector is loaded once per group. Units run in parallel on the pool. A
//! unit's result depends only on its own row's query, metadata and the cache, computed in a fixed
//! order, so a row's output is bitwise independent of the other rows in the call and of
//! threading.

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
    nkv: usize,
    bs: usize,
    scale: f32,
    /// Sliding window (None = every position).
    window: Option<usize>,
    /// The layer's K (slot-major).
    kc: &'a [f32],
    /// The layer's V (slot-major).
    vc: &'a [f32],
}

/// One (row, KV head) unit compiled for AVX2/FMA. The body has no reductions across lanes and
/// Rust never contracts `a * b + c` into an FMA, so this gives the same bits as [`unit`].
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn unit_avx2(
    d: &Call<'_>,
    q_row: &[f32],
    g: usize,
    seq: (&[u32], usize),
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    // SAFETY: this function is only entered on CPUs with AVX2 and FMA (its own contract), which
    // is what `unit::<true>` requires.
    unsafe { unit::<true>(d, q_row, g, seq, scores, out) }
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

/// One (row, KV head) unit: `out` is the `group * hd` outputs of the group's query heads; the
/// row attends to positions `lo..=pos` of the sequence with block table `table` (`seq`), `lo`
/// from the call's window.
///
/// # Safety
/// With `SIMD = true` the CPU must support AVX2 and FMA.
#[inline(always)]
unsafe fn unit<const SIMD: bool>(
    d: &Call<'_>,
    q_row: &[f32],
    g: usize,
    (table, pos): (&[u32], usize),
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (kc, vc) = (d.kc, d.vc);
    let lo = window_start(pos, d.window);
    let n = pos + 1 - lo;
    let (hd, group) = (d.hd, d.group);
    scores.clear();
    scores.resize(group * n, 0.0);
    let koff = g * hd;
    let q = &q_row[g * group * hd..(g + 1) * group * hd];
    // On the SIMD path keys wait in `batch` until 8 are there, then go through `dot8_mul_add`
    // (the same bits as one `dot_mul_add` per key, with the 8 chains interleaved).
    let mut batch: [(usize, &[f32]); 8] = [(0, &[]); 8];
    let mut nb = 0;
    for (p0, s0, cnt) in block_runs(table, pos + 1, d.bs) {
        for off in lo.saturating_sub(p0).min(cnt)..cnt {
            let (p, slot) = (p0 + off - lo, s0 + off);
            let k = kc.get(slot * d.kv_dim + koff..slot * d.kv_dim + koff + hd);
            match k {
                None => (0..group).for_each(|qi| scores[qi * n + p] = f32::NAN),
                #[cfg(target_arch = "x86_64")]
                Some(k) if SIMD => {
                    batch[nb] = (p, k);
                    nb += 1;
                    if nb == 8 {
                        // SAFETY: the caller guarantees AVX2/FMA when SIMD is set.
                        unsafe { scores8(q, hd, n, d.scale, &batch, scores) };
                        nb = 0;
                    }
                }
                Some(k) => {
                    for (qi, qh) in q.chunks_exact(hd).enumerate() {
                        scores[qi * n + p] = dot(qh, k) * d.scale;
                    }
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    for &(p, k) in &batch[..nb] {
        for (qi, qh) in q.chunks_exact(hd).enumerate() {
            // SAFETY: keys are batched only when SIMD is set, which the caller guarantees means
            // AVX2/FMA (all `dot_mul_add` requires; it bounds-checks its slices).
            scores[qi * n + p] = unsafe { super::simd::dot_mul_add(qh, k) } * d.scale;
        }
    }
    let mut inv_z = [0f32; 64];
    let mut inv_z_vec;
    let inv_z: &mut [f32] = if group <= 64 {
        &mut inv_z[..group]
    } else {
        inv_z_vec = vec![0f32; group];
        &mut inv_z_vec
    };
    for (s, iz) in scores.chunks_exact_mut(n).zip(inv_z.iter_mut()) {
        let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for v in s.iter_mut() {
            *v = exp_neg(*v - m);
        }
        let z: f32 = s.iter().sum();
        *iz = 1.0 / z;
    }
    out.fill(0.0);
    for (p0, s0, cnt) in block_runs(table, pos + 1, d.bs) {
        for off in lo.saturating_sub(p0).min(cnt)..cnt {
            let (p, slot) = (p0 + off - lo, s0 + off);
            let Some(v) = vc.get(slot * d.kv_dim + koff..slot * d.kv_dim + koff + hd) else {
                continue;
            };
            for (qi, o) in out.chunks_exact_mut(hd).enumerate() {
                let wgt = scores[qi * n + p];
                for (o, &vv) in o.iter_mut().zip(v) {
                    *o += wgt * vv;
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
        nkv,
        bs: geom.block_size,
        scale: 1.0 / (hd as f32).sqrt(),
        window: a.window,
        kc,
        vc,
    };
    let out = &mut out[..rows * n_heads * hd];
    let run = |c: usize, chunk: &mut [f32], scores: &mut Vec<f32>| {
        let (t, g) = (c / d.nkv, c % d.nkv);
        match (attn_row(meta, t, &geom), q.row(t, n_heads * d.hd)) {
            (Some(seq), Some(q_row)) => {
                #[cfg(target_arch = "x86_64")]
                if be.simd {
                    // SAFETY: `be.simd` is only set when AVX2 and FMA were detected at runtime.
                    unsafe { unit_avx2(&d, q_row, g, seq, scores, chunk) };
                    return;
                }
                // SAFETY: SIMD = false needs no CPU features.
                unsafe { unit::<false>(&d, q_row, g, seq, scores, chunk) };
            }
            _ => chunk.iter_mut().for_each(|v| *v = f32::NAN),
        }
    };
    let work: usize = meta
        .row_pos
        .iter()
        .take(rows)
        .map(|&p| p as usize + 1)
        .sum::<usize>()
        .saturating_mul(n_heads * hd);
    if be.pool.current_num_threads() <= 1 || work < (1 << 16) {
        let mut scores = Vec::new();
        for (c, chunk) in out.chunks_exact_mut(group * hd).enumerate() {
            run(c, chunk, &mut scores);
        }
    } else {
        be.pool.install(|| {
            out.par_chunks_exact_mut(group * hd)
                .enumerate()
                .with_max_len(1)
                .for_each_init(Vec::new, |scores, (c, chunk)| run(c, chunk, scores));
        });
    }
}
