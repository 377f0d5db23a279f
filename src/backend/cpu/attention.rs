//! Causal grouped-query attention over the paged KV cache (two-pass softmax).
//!
//! Work is split into units of (row, KV head): a unit computes every query head that shares the
//! KV head, so each K/V vector is loaded once per group. Units run in parallel on the pool. A
//! unit's result depends only on its own row's query, metadata and the cache, computed in a fixed
//! order, so a row's output is bitwise independent of the other rows in the call and of
//! threading.

use rayon::prelude::*;

use super::kv_cache::CpuKvCache;
use super::CpuBackend;
use crate::backend::reference::{attn_row, attn_shapes};
use crate::backend::AttnMeta;

/// 8-lane dot product with a fixed summation order.
#[inline]
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

/// Shapes shared by all units of one call.
struct Dims {
    hd: usize,
    kv_dim: usize,
    group: usize,
    stride: usize,
    nkv: usize,
    bs: usize,
    scale: f32,
}

/// Calls `f(p, slot)` for positions `0..n` of a sequence through its block table.
#[inline]
fn for_slots(table: &[u32], n: usize, bs: usize, mut f: impl FnMut(usize, usize)) {
    for (b, &blk) in table.iter().enumerate() {
        let p0 = b * bs;
        if p0 >= n {
            break;
        }
        let base = blk as usize * bs;
        for off in 0..bs.min(n - p0) {
            f(p0 + off, base + off);
        }
    }
}

/// One (row, KV head) unit: `out` is the `group * hd` outputs of the group's query heads.
#[allow(clippy::too_many_arguments)]
fn unit(
    d: &Dims,
    q_row: &[f32],
    g: usize,
    table: &[u32],
    pos: usize,
    kc: &[f32],
    vc: &[f32],
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let n = pos + 1;
    let (hd, group) = (d.hd, d.group);
    scores.clear();
    scores.resize(group * n, 0.0);
    let koff = g * hd;
    let q = &q_row[g * group * hd..(g + 1) * group * hd];
    for_slots(table, n, d.bs, |p, slot| {
        let k = kc.get(slot * d.kv_dim + koff..slot * d.kv_dim + koff + hd);
        for (qi, qh) in q.chunks_exact(hd).enumerate() {
            scores[qi * n + p] = k.map_or(f32::NAN, |k| dot(qh, k) * d.scale);
        }
    });
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
        let mut z = 0f32;
        for v in s.iter_mut() {
            *v = (*v - m).exp();
            z += *v;
        }
        *iz = 1.0 / z;
    }
    out.fill(0.0);
    for_slots(table, n, d.bs, |p, slot| {
        let Some(v) = vc.get(slot * d.kv_dim + koff..slot * d.kv_dim + koff + hd) else {
            return;
        };
        for (qi, o) in out.chunks_exact_mut(hd).enumerate() {
            let wgt = scores[qi * n + p];
            for (o, &vv) in o.iter_mut().zip(v) {
                *o += wgt * vv;
            }
        }
    });
    for (o, &iz) in out.chunks_exact_mut(hd).zip(inv_z.iter()) {
        o.iter_mut().for_each(|v| *v *= iz);
    }
}

/// See [`crate::backend::Backend::attention_paged`]. Fills the output with NaN when shapes are
/// inconsistent, and a row's output with NaN when its metadata points outside the cache.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_paged(
    be: &CpuBackend,
    qkv: &[f32],
    rows: usize,
    stride: usize,
    n_heads: usize,
    cache: &CpuKvCache,
    layer: usize,
    meta: &AttnMeta<'_>,
    out: &mut [f32],
) {
    let geom = cache.geom;
    let (Some((nkv, hd, group)), Some((kc, vc))) = (
        attn_shapes(qkv.len(), out.len(), rows, stride, n_heads, &geom),
        cache.layer(layer),
    ) else {
        out.iter_mut().for_each(|v| *v = f32::NAN);
        return;
    };
    if rows == 0 || hd == 0 {
        return;
    }
    let d = Dims {
        hd,
        kv_dim: nkv * hd,
        group,
        stride,
        nkv,
        bs: geom.block_size,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let out = &mut out[..rows * n_heads * hd];
    let run = |c: usize, chunk: &mut [f32], scores: &mut Vec<f32>| {
        let (t, g) = (c / d.nkv, c % d.nkv);
        match attn_row(meta, t, &geom) {
            Some((table, pos)) => {
                let q_row = &qkv[t * d.stride..t * d.stride + n_heads * d.hd];
                unit(&d, q_row, g, table, pos, kc, vc, scores, chunk);
            }
            None => chunk.iter_mut().for_each(|v| *v = f32::NAN),
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
