//! The paged KV cache of the host backends (reference and CPU), its `kv_write`, and the one
//! place that maps a sequence's positions to cache slots (the gather every attention uses).
//!
//! Layout: for each layer, K and V as `[num_blocks * block_size, num_kv_heads * head_dim]` f32,
//! slot-major, so one slot's K for one KV head is `head_dim` contiguous values. Position `p` of a
//! sequence lives at slot `block_table[p / block_size] * block_size + p % block_size`.

use super::op_args::KvWriteArgs;
use super::view::View;
use super::{AttnMeta, KvGeometry};
use crate::error::{Error, Result};

/// The paged KV cache of the host backends (see the module docs). Owned by the engine's worker;
/// not shared between threads. The fields are public for inspection; ops bounds-check every
/// access, so a cache whose vectors were shortened by hand makes ops skip or produce NaN, never
/// panic.
#[derive(Debug, Clone, PartialEq)]
pub struct KvStore {
    /// The geometry the cache was allocated with.
    pub geom: KvGeometry,
    /// K per layer.
    pub k: Vec<Vec<f32>>,
    /// V per layer.
    pub v: Vec<Vec<f32>>,
}

/// The KV cache geometry's per-layer element count, or an error on zero/overflowing geometry.
pub(crate) fn kv_layer_elems(geom: &KvGeometry) -> Result<usize> {
    let dims = [
        geom.num_blocks,
        geom.block_size,
        geom.num_kv_heads,
        geom.head_dim,
    ];
    if geom.num_layers == 0 || dims.contains(&0) {
        return Err(Error::invalid_argument(format!(
            "KV geometry has a zero dimension: {geom:?}"
        )));
    }
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|n| {
            n.checked_mul(geom.num_layers)
                .and_then(|t| t.checked_mul(8))
                .is_some()
        })
        .ok_or_else(|| Error::invalid_argument(format!("KV geometry overflows: {geom:?}")))?;
    Ok(n)
}

impl KvStore {
    /// A zeroed cache; errors (INVALID_ARGUMENT) on a zero or overflowing geometry.
    ///
    /// Every layer is allocated zeroed on its own (not cloned from one zeroed layer, which
    /// writes every page): the OS commits a page when a KV block first writes it, so the
    /// process's resident memory grows with the tokens cached, not with the planned size.
    pub fn new(geom: KvGeometry) -> Result<Self> {
        let n = kv_layer_elems(&geom)?;
        let zeroed = || (0..geom.num_layers).map(|_| vec![0.0; n]).collect();
        Ok(Self {
            geom,
            k: zeroed(),
            v: zeroed(),
        })
    }

    /// The geometry the cache was allocated with.
    pub fn geometry(&self) -> KvGeometry {
        self.geom
    }

    /// Layer `layer`'s K and V (slot-major), if the layer exists.
    pub fn layer(&self, layer: usize) -> Option<(&[f32], &[f32])> {
        Some((self.k.get(layer)?, self.v.get(layer)?))
    }

    /// See [`super::Backend::kv_write`]. Rows whose slot is outside the cache are skipped;
    /// nothing is written when the layer does not exist, `k` and `v` differ in rows, or a view
    /// does not fit its buffer with `kv_dim` columns.
    pub fn write(&mut self, w: KvWriteArgs<'_, [f32]>) {
        let geom = self.geom;
        let kv_dim = geom.num_kv_heads * geom.head_dim;
        let nslots = geom.num_blocks * geom.block_size;
        let (Some(kc), Some(vc)) = (self.k.get_mut(w.layer), self.v.get_mut(w.layer)) else {
            return;
        };
        if w.k.rows != w.v.rows || !w.k.fits(kv_dim) || !w.v.fits(kv_dim) {
            return;
        }
        for (t, &s) in w.slot_mapping.iter().enumerate().take(w.k.rows) {
            let s = s as usize;
            let (Some(k), Some(v)) = (w.k.row(t, kv_dim), w.v.row(t, kv_dim)) else {
                continue;
            };
            if s >= nslots {
                continue;
            }
            let dst = s * kv_dim..(s + 1) * kv_dim;
            if let (Some(kd), Some(vd)) = (kc.get_mut(dst.clone()), vc.get_mut(dst)) {
                kd.copy_from_slice(k);
                vd.copy_from_slice(v);
            }
        }
    }
}

/// The cache slots of positions `0..n` of a sequence with block table `table`, block by block:
/// `(first position, first slot, count)` for each block the positions touch (position
/// `p0 + i` is at slot `s0 + i` for `i < count`). Stops early when the table has fewer than
/// `n.div_ceil(bs)` blocks (callers check the table with [`attn_row`] first).
#[inline(always)]
pub(crate) fn block_runs(
    table: &[u32],
    n: usize,
    bs: usize,
) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    table
        .iter()
        .enumerate()
        .map(move |(b, &blk)| (b * bs, blk as usize * bs))
        .take_while(move |&(p0, _)| p0 < n)
        .map(move |(p0, s0)| (p0, s0, bs.min(n - p0)))
}

/// [`block_runs`] one position at a time: `(position, slot)` in position order.
pub(crate) fn positions(
    table: &[u32],
    n: usize,
    bs: usize,
) -> impl Iterator<Item = (usize, usize)> + '_ {
    block_runs(table, n, bs).flat_map(|(p0, s0, cnt)| (0..cnt).map(move |i| (p0 + i, s0 + i)))
}

/// Checks a row's attention metadata: `Some((block table, pos))` when every position
/// `0..=pos` maps to a slot inside the cache.
pub(crate) fn attn_row<'a>(
    meta: &AttnMeta<'a>,
    t: usize,
    geom: &KvGeometry,
) -> Option<(&'a [u32], usize)> {
    let seq = *meta.row_seq.get(t)? as usize;
    let pos = *meta.row_pos.get(t)? as usize;
    let table: &'a [u32] = meta.block_tables.get(seq)?;
    let nblocks = pos / geom.block_size + 1;
    let used = table.get(..nblocks)?;
    if used.iter().any(|&b| b as usize >= geom.num_blocks) {
        return None;
    }
    Some((table, pos))
}

/// Attention's buffer checks: `Some((n_kv_heads, head_dim, group))` when `n_heads` is a
/// multiple of the cache's KV heads, `q` fits its buffer with `n_heads * head_dim` columns and
/// `out` holds `q.rows * n_heads * head_dim` values.
pub(crate) fn attn_shapes(
    q: &View<'_, [f32]>,
    out_len: usize,
    n_heads: usize,
    geom: &KvGeometry,
) -> Option<(usize, usize, usize)> {
    let (nkv, hd) = (geom.num_kv_heads, geom.head_dim);
    if n_heads == 0 || nkv == 0 || !n_heads.is_multiple_of(nkv) {
        return None;
    }
    let q_dim = n_heads.checked_mul(hd)?;
    if !q.fits(q_dim) || q.rows.checked_mul(q_dim)? > out_len {
        return None;
    }
    Some((nkv, hd, n_heads / nkv))
}
