//! Scalar specification of every backend op (see the op docs in `backend/mod.rs`).
//!
//! [`ReferenceBackend`] implements each op as the literal loop of its doc comment, accumulating
//! sums (matmul, attention, rms_norm) in f64. It is slow and obviously correct; tests compare the
//! fast backends against it. Weights stored as [`WeightFormat::BF16`] are rounded to bf16 (round to
//! nearest even) and widened back, so the reference sees exactly the values a bf16 kernel sees.
//!
//! Ops cannot return errors (the trait's op methods return `()`); the engine sizes every buffer.
//! When a buffer is too short or metadata points outside the cache, an op never panics: it fills
//! the affected output with NaN (or, for `kv_write`, skips the offending row) so that the mistake
//! is visible downstream. The helpers [`matmul_shapes_ok`] and friends state these checks once.

// The loops index exactly like the op docs; iterator rewrites would obscure the spec.
#![allow(clippy::needless_range_loop)]

use super::{AttnMeta, Backend, KvGeometry, WeightFormat};
use crate::error::{Error, Result};
use crate::tensor::{HostTensor, TensorData};

/// The scalar reference backend. Stateless; single-threaded.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReferenceBackend;

/// A reference weight: `[out, in]` row-major f32 values (bf16-rounded for [`WeightFormat::BF16`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RefWeight {
    /// Output features (rows).
    pub out: usize,
    /// Input features (columns).
    pub inp: usize,
    /// The format the weight was packed in.
    pub format: WeightFormat,
    /// `out * inp` values, row-major.
    pub data: Vec<f32>,
}

/// The reference KV cache: per layer, K and V as `layer_elems` f32 each, slot-major
/// (`[num_blocks * block_size, num_kv_heads * head_dim]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RefKvCache {
    /// The geometry the cache was allocated with.
    pub geom: KvGeometry,
    /// K per layer.
    pub k: Vec<Vec<f32>>,
    /// V per layer.
    pub v: Vec<Vec<f32>>,
}

/// Validates a 2-D host tensor as a weight and returns `(out, in)`.
pub(crate) fn weight_shape(t: &HostTensor) -> Result<(usize, usize)> {
    let (out, inp) = match t.shape.as_slice() {
        [o, i] => (*o, *i),
        s => {
            return Err(Error::invalid_argument(format!(
                "weight tensor must be 2-D [out, in], got shape {s:?}"
            )))
        }
    };
    if out == 0 || inp == 0 {
        return Err(Error::invalid_argument(format!(
            "weight tensor has a zero dimension: shape [{out}, {inp}]"
        )));
    }
    let n = out.checked_mul(inp).ok_or_else(|| {
        Error::invalid_argument(format!("weight shape [{out}, {inp}] overflows usize"))
    })?;
    let len = match &t.data {
        TensorData::F32(v) => v.len(),
        TensorData::F16(v) => v.len(),
        TensorData::BF16(v) => v.len(),
    };
    if len != n {
        return Err(Error::invalid_argument(format!(
            "weight tensor of shape [{out}, {inp}] holds {len} elements, expected {n}"
        )));
    }
    Ok((out, inp))
}

/// Validates the parts of a fused weight; returns `(sum of out, in)`.
pub(crate) fn fused_shape(parts: &[&HostTensor]) -> Result<(usize, usize)> {
    let first = parts
        .first()
        .ok_or_else(|| Error::invalid_argument("fused weight needs at least one part"))?;
    let (_, inp) = weight_shape(first).map_err(|e| e.context("fused weight part 0"))?;
    let mut total = 0usize;
    for (k, p) in parts.iter().enumerate() {
        let (o, i) = weight_shape(p).map_err(|e| e.context(format!("fused weight part {k}")))?;
        if i != inp {
            return Err(Error::invalid_argument(format!(
                "fused weight part {k} has in = {i}, part 0 has in = {inp}"
            )));
        }
        total = total
            .checked_add(o)
            .ok_or_else(|| Error::invalid_argument("fused weight out dimension overflows"))?;
    }
    Ok((total, inp))
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

/// Converts an f32 to bf16 (round to nearest even) and back.
pub(crate) fn round_bf16(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

/// True when `x` holds `rows * inp` and `y` holds `rows * out` values.
pub(crate) fn matmul_shapes_ok(
    xlen: usize,
    ylen: usize,
    rows: usize,
    out: usize,
    inp: usize,
) -> bool {
    matches!(rows.checked_mul(inp), Some(n) if n <= xlen)
        && matches!(rows.checked_mul(out), Some(n) if n <= ylen)
}

/// `Some(slot index range start)` of position `p` of a sequence, checked against the geometry.
pub(crate) fn slot_of(table: &[u32], p: usize, geom: &KvGeometry) -> Option<usize> {
    let block = *table.get(p / geom.block_size)? as usize;
    if block >= geom.num_blocks {
        return None;
    }
    Some(block * geom.block_size + p % geom.block_size)
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

/// Attention's buffer checks: `Some((n_kv_heads, head_dim, group))` when shapes are consistent.
pub(crate) fn attn_shapes(
    qkv_len: usize,
    out_len: usize,
    rows: usize,
    stride: usize,
    n_heads: usize,
    geom: &KvGeometry,
) -> Option<(usize, usize, usize)> {
    let (nkv, hd) = (geom.num_kv_heads, geom.head_dim);
    if n_heads == 0 || nkv == 0 || n_heads % nkv != 0 {
        return None;
    }
    let q_dim = n_heads.checked_mul(hd)?;
    if q_dim > stride || rows.checked_mul(stride)? > qkv_len || rows.checked_mul(q_dim)? > out_len {
        return None;
    }
    Some((nkv, hd, n_heads / nkv))
}

#[allow(clippy::too_many_arguments)]
/// True when `rope`'s arguments address only columns inside `x` viewed as `[rows, stride]`.
pub(crate) fn rope_ok(
    xlen: usize,
    rows: usize,
    stride: usize,
    col0: usize,
    n_heads: usize,
    head_dim: usize,
    row_pos: &[u32],
    inv_freq: &[f32],
) -> bool {
    let end = n_heads
        .checked_mul(head_dim)
        .and_then(|w| w.checked_add(col0));
    matches!(end, Some(e) if e <= stride)
        && matches!(rows.checked_mul(stride), Some(n) if n <= xlen)
        && row_pos.len() >= rows
        && head_dim % 2 == 0
        && inv_freq.len() >= head_dim / 2
}

fn fill_nan(buf: &mut [f32]) {
    buf.iter_mut().for_each(|v| *v = f32::NAN);
}

impl Backend for ReferenceBackend {
    type Buf = Vec<f32>;
    type Weight = RefWeight;
    type KvCache = RefKvCache;
    type LoraStack = super::lora_arena::HostLoraArena;

    fn name(&self) -> String {
        "reference".to_string()
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }

    fn download(&self, buf: &Vec<f32>, out: &mut [f32]) -> Result<()> {
        let src = buf.get(..out.len()).ok_or_else(|| {
            Error::invalid_argument(format!(
                "download of {} values from a buffer of {}",
                out.len(),
                buf.len()
            ))
        })?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn weight(&self, t: &HostTensor, format: WeightFormat) -> Result<RefWeight> {
        self.fused_weight(&[t], format)
    }

    fn fused_weight(&self, parts: &[&HostTensor], format: WeightFormat) -> Result<RefWeight> {
        let (out, inp) = fused_shape(parts)?;
        let mut data = Vec::with_capacity(out * inp);
        for p in parts {
            data.extend(p.to_f32_vec());
        }
        if format == WeightFormat::BF16 {
            data.iter_mut().for_each(|v| *v = round_bf16(*v));
        }
        Ok(RefWeight {
            out,
            inp,
            format,
            data,
        })
    }

    fn weight_bytes(&self, w: &RefWeight) -> usize {
        let per = match w.format {
            WeightFormat::F32 => 4,
            WeightFormat::BF16 => 2,
        };
        w.data.len() * per
    }

    fn weight_dims(&self, w: &RefWeight) -> (usize, usize) {
        (w.out, w.inp)
    }

    fn alloc_kv(&self, geom: KvGeometry) -> Result<RefKvCache> {
        let n = kv_layer_elems(&geom)?;
        Ok(RefKvCache {
            geom,
            k: vec![vec![0.0; n]; geom.num_layers],
            v: vec![vec![0.0; n]; geom.num_layers],
        })
    }

    fn matmul(&self, x: &Vec<f32>, rows: usize, w: &RefWeight, y: &mut Vec<f32>) {
        let (out, inp) = (w.out, w.inp);
        if !matmul_shapes_ok(x.len(), y.len(), rows, out, inp) {
            return fill_nan(y);
        }
        for t in 0..rows {
            for o in 0..out {
                let mut s = 0f64;
                for i in 0..inp {
                    s += x[t * inp + i] as f64 * w.data[o * inp + i] as f64;
                }
                y[t * out + o] = s as f32;
            }
        }
    }

    fn embedding_gather(&self, table: &RefWeight, ids: &[u32], out: &mut Vec<f32>) {
        let hidden = table.inp;
        if !matches!(ids.len().checked_mul(hidden), Some(n) if n <= out.len()) {
            return fill_nan(out);
        }
        for (t, &id) in ids.iter().enumerate() {
            let dst = &mut out[t * hidden..(t + 1) * hidden];
            let id = id as usize;
            match table.data.get(id.saturating_mul(hidden)..) {
                Some(src) if id < table.out => dst.copy_from_slice(&src[..hidden]),
                _ => fill_nan(dst),
            }
        }
    }

    fn rms_norm(
        &self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut Vec<f32>,
    ) {
        let ok = matches!(rows.checked_mul(dim), Some(n) if n <= x.len() && n <= out.len());
        if !ok || w.len() < dim {
            return fill_nan(out);
        }
        for t in 0..rows {
            let mut ss = 0f64;
            for j in 0..dim {
                let v = x[t * dim + j] as f64;
                ss += v * v;
            }
            let r = 1.0 / (ss / dim as f64 + eps as f64).sqrt();
            for j in 0..dim {
                out[t * dim + j] = (x[t * dim + j] as f64 * r * w[j] as f64) as f32;
            }
        }
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        rows: usize,
        stride: usize,
        col0: usize,
        n_heads: usize,
        head_dim: usize,
        row_pos: &[u32],
        inv_freq: &[f32],
    ) {
        if !rope_ok(
            x.len(),
            rows,
            stride,
            col0,
            n_heads,
            head_dim,
            row_pos,
            inv_freq,
        ) {
            return fill_nan(x);
        }
        let half = head_dim / 2;
        for t in 0..rows {
            for h in 0..n_heads {
                let base = t * stride + col0 + h * head_dim;
                for i in 0..half {
                    let a = (row_pos[t] as f32 * inv_freq[i]) as f64;
                    let (x1, x2) = (x[base + i] as f64, x[base + i + half] as f64);
                    x[base + i] = (x1 * a.cos() - x2 * a.sin()) as f32;
                    x[base + i + half] = (x2 * a.cos() + x1 * a.sin()) as f32;
                }
            }
        }
    }

    fn silu_mul(&self, gate_up: &Vec<f32>, rows: usize, inter: usize, out: &mut Vec<f32>) {
        let ok = matches!(rows.checked_mul(inter), Some(n) if n <= out.len())
            && matches!(rows.checked_mul(inter).and_then(|n| n.checked_mul(2)), Some(n) if n <= gate_up.len());
        if !ok {
            return fill_nan(out);
        }
        for t in 0..rows {
            for j in 0..inter {
                let g = gate_up[t * 2 * inter + j] as f64;
                let u = gate_up[t * 2 * inter + inter + j] as f64;
                out[t * inter + j] = (g / (1.0 + (-g).exp()) * u) as f32;
            }
        }
    }

    fn add(&self, acc: &mut Vec<f32>, x: &Vec<f32>, len: usize) {
        if len > acc.len() || len > x.len() {
            return fill_nan(acc);
        }
        for i in 0..len {
            acc[i] += x[i];
        }
    }

    fn kv_write(
        &self,
        cache: &mut RefKvCache,
        layer: usize,
        qkv: &Vec<f32>,
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
        if !fits || k_col.saturating_add(kv_dim) > stride || v_col.saturating_add(kv_dim) > stride {
            return;
        }
        for t in 0..rows.min(slot_mapping.len()) {
            let s = slot_mapping[t] as usize;
            if s >= nslots {
                continue;
            }
            let row = &qkv[t * stride..(t + 1) * stride];
            kc[s * kv_dim..(s + 1) * kv_dim].copy_from_slice(&row[k_col..k_col + kv_dim]);
            vc[s * kv_dim..(s + 1) * kv_dim].copy_from_slice(&row[v_col..v_col + kv_dim]);
        }
    }

    fn attention_paged(
        &self,
        qkv: &Vec<f32>,
        rows: usize,
        stride: usize,
        n_heads: usize,
        cache: &RefKvCache,
        layer: usize,
        meta: &AttnMeta<'_>,
        out: &mut Vec<f32>,
    ) {
        let geom = cache.geom;
        let (Some((nkv, hd, group)), Some(kc), Some(vc)) = (
            attn_shapes(qkv.len(), out.len(), rows, stride, n_heads, &geom),
            cache.k.get(layer),
            cache.v.get(layer),
        ) else {
            return fill_nan(out);
        };
        let kv_dim = nkv * hd;
        let q_dim = n_heads * hd;
        let scale = 1.0 / (hd as f64).sqrt();
        for t in 0..rows {
            let Some((table, pos)) = attn_row(meta, t, &geom) else {
                fill_nan(&mut out[t * q_dim..(t + 1) * q_dim]);
                continue;
            };
            for h in 0..n_heads {
                let kvh = h / group;
                let q = &qkv[t * stride + h * hd..t * stride + (h + 1) * hd];
                let mut s = vec![0f64; pos + 1];
                for (p, sp) in s.iter_mut().enumerate() {
                    let slot = slot_of(table, p, &geom).unwrap_or(0);
                    let k = &kc[slot * kv_dim + kvh * hd..slot * kv_dim + (kvh + 1) * hd];
                    let dot: f64 = q.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum();
                    *sp = dot * scale;
                }
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|&v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    let mut acc = 0f64;
                    for (p, &ep) in e.iter().enumerate() {
                        let slot = slot_of(table, p, &geom).unwrap_or(0);
                        acc += ep / z * vc[slot * kv_dim + kvh * hd + d] as f64;
                    }
                    out[t * q_dim + h * hd + d] = acc as f32;
                }
            }
        }
    }

    fn gather_rows(&self, x: &Vec<f32>, dim: usize, rows: &[u32], out: &mut Vec<f32>) {
        if !matches!(rows.len().checked_mul(dim), Some(n) if n <= out.len()) {
            return fill_nan(out);
        }
        for (k, &r) in rows.iter().enumerate() {
            let dst = &mut out[k * dim..(k + 1) * dim];
            let start = (r as usize).checked_mul(dim);
            match start.and_then(|s| x.get(s..s.checked_add(dim)?)) {
                Some(src) => dst.copy_from_slice(src),
                None => fill_nan(dst),
            }
        }
    }

    fn alloc_lora_stack(&self, geom: super::LoraStackGeometry) -> Result<Self::LoraStack> {
        super::lora_arena::HostLoraArena::new(geom)
    }

    fn lora_load_slot(
        &self,
        stack: &mut Self::LoraStack,
        slot: usize,
        layers: &super::LoraSlotData<'_>,
    ) -> Result<()> {
        stack.load_slot(slot, layers)
    }

    fn lora_clear_slot(&self, stack: &mut Self::LoraStack, slot: usize) {
        stack.clear_slot(slot)
    }

    fn lora_stack_bytes(&self, stack: &Self::LoraStack) -> usize {
        stack.bytes()
    }

    fn lora_apply(
        &self,
        x: &Vec<f32>,
        x_stride: usize,
        x_col: usize,
        y: &mut Vec<f32>,
        y_stride: usize,
        y_col: usize,
        rows: usize,
        batch: &super::LoraBatch,
        stack: &Self::LoraStack,
        layer: usize,
        target: super::LoraTarget,
    ) {
        let (inp, out) = stack.geometry().dims[target.index()];
        for t in 0..rows {
            let Some(&s) = batch.token_slot.get(t) else {
                continue;
            };
            if s < 0 {
                continue;
            }
            let Some(m) = stack.module(s as usize, layer, target) else {
                continue;
            };
            let (xs, ys) = (t * x_stride + x_col, t * y_stride + y_col);
            if xs + inp > x.len() || ys + out > y.len() {
                continue;
            }
            let h: Vec<f64> = (0..m.rank)
                .map(|k| {
                    (0..inp)
                        .map(|i| m.a[k * inp + i] as f64 * x[xs + i] as f64)
                        .sum()
                })
                .collect();
            for o in 0..out {
                let d: f64 = (0..m.rank).map(|k| m.b[o * m.rank + k] as f64 * h[k]).sum();
                y[ys + o] += (m.scale as f64 * d) as f32;
            }
        }
    }
}
