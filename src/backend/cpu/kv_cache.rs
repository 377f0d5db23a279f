//! The CPU paged KV cache and `kv_write`.

use crate::backend::reference::kv_layer_elems;
use crate::backend::KvGeometry;
use crate::error::Result;

/// The paged KV cache of the CPU backend: for each layer, K and V as
/// `[num_blocks * block_size, num_kv_heads * head_dim]` f32 (slot-major, so one slot's K for one
/// KV head is `head_dim` contiguous values). Owned by the engine's worker; not shared.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuKvCache {
    pub(crate) geom: KvGeometry,
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
}

impl CpuKvCache {
    /// A zeroed cache; errors on a zero or overflowing geometry.
    pub(crate) fn new(geom: KvGeometry) -> Result<Self> {
        let n = kv_layer_elems(&geom)?;
        Ok(Self {
            geom,
            k: vec![vec![0.0; n]; geom.num_layers],
            v: vec![vec![0.0; n]; geom.num_layers],
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
}

/// See [`crate::backend::Backend::kv_write`]. Rows whose slot is outside the cache are skipped;
/// nothing is written when the column ranges do not fit `stride` or `qkv` is too short.
#[allow(clippy::too_many_arguments)]
pub(crate) fn kv_write(
    cache: &mut CpuKvCache,
    layer: usize,
    qkv: &[f32],
    rows: usize,
    stride: usize,
    k_col: usize,
    v_col: usize,
    slot_mapping: &[u32],
) {
    let geom = cache.geom;
    let kv_dim = geom.num_kv_heads * geom.head_dim;
    let nslots = geom.num_blocks * geom.block_size;
    let (Some(kc), Some(vc)) = (cache.k.get_mut(layer), cache.v.get_mut(layer)) else {
        return;
    };
    let fits = matches!(rows.checked_mul(stride), Some(n) if n <= qkv.len());
    if !fits
        || stride == 0
        || k_col.saturating_add(kv_dim) > stride
        || v_col.saturating_add(kv_dim) > stride
    {
        return;
    }
    for (row, &s) in qkv.chunks_exact(stride).zip(slot_mapping).take(rows) {
        let s = s as usize;
        if s >= nslots {
            continue;
        }
        kc[s * kv_dim..(s + 1) * kv_dim].copy_from_slice(&row[k_col..k_col + kv_dim]);
        vc[s * kv_dim..(s + 1) * kv_dim].copy_from_slice(&row[v_col..v_col + kv_dim]);
    }
}
