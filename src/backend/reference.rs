//! Scalar specification of every backend op (see the op docs in `backend/mod.rs`).
//!
//! [`ReferenceBackend`] implements each op as the literal loop of its doc comment, accumulating
//! sums (matmul, attention, rms_norm) in f64. It is slow and obviously correct; tests compare the
//! fast backends against it. Weights stored as [`WeightFormat::BF16`] are rounded to bf16 (round to
//! nearest even) and widened back, so the reference sees exactly the values a bf16 kernel sees;
//! their matmul also rounds the activations to bf16 (as the `vdpbf16ps` kernels and llama.cpp's
//! BF16 path do), so it sums exact bf16 × bf16 products.
//!
//! Weights kept in ggml blocks are computed on as blocks: [`quant_block`] decodes them and
//! [`quant_dot`] defines the quantized matmul (8-bit activations per 32-element block, exact
//! integer block dots, a fixed float combine). That scalar twin is the specification every CPU
//! kernel path matches bit for bit.
//!
//! Ops cannot return errors (the trait's op methods return `()`); the engine sizes every buffer.
//! When a buffer is too short or metadata points outside the cache, an op never panics: it fills
//! the affected output with NaN (or, for `kv_write`, skips the offending row) so that the mistake
//! is visible downstream. The helpers `matmul_shapes_ok` and friends state these checks once.

// The loops index exactly like the op docs; iterator rewrites would obscure the spec.
#![allow(clippy::needless_range_loop)]

pub mod quant_block;
pub mod quant_dot;

use super::kv_store::{attn_row, attn_shapes, positions};
use super::quant_stack::QuantStack;
use super::{
    AttentionArgs, Backend, KvGeometry, KvStore, KvWriteArgs, LoraArgs, RopeArgs, View, ViewMut,
    WeightFormat,
};
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
    /// `out * inp` values, row-major (for a quantized weight: its blocks dequantized).
    pub data: Vec<f32>,
    /// The blocks of a weight kept quantized ([`HostTensor`]s in ggml blocks); `matmul` then
    /// follows [`quant_dot`] instead of the f32 loop.
    pub quant: Option<QuantStack>,
}

/// The reference KV cache: the host backends' shared [`KvStore`].
pub type RefKvCache = KvStore;

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
        TensorData::Quant(q) => q.rows() * q.cols(),
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

/// Checks that every part of a weight in a quantized `format` is a quantized tensor: the model
/// loader quantizes dense checkpoints itself, so a dense tensor here is a caller bug.
/// Errors: INVALID_ARGUMENT naming the part and its dtype.
pub(crate) fn check_quantized_parts(parts: &[&HostTensor], format: WeightFormat) -> Result<()> {
    if !format.is_quantized() {
        return Ok(());
    }
    match parts.iter().position(|p| p.quant().is_none()) {
        None => Ok(()),
        Some(k) => Err(Error::invalid_argument(format!(
            "weight format {} needs quantized tensors, but part {k} is dense {} \
             (the model loader quantizes dense checkpoints before packing)",
            format.name(),
            parts[k].dtype().map_or("?", |d| d.name())
        ))),
    }
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

/// True when `rope`'s arguments address only columns inside the view `x` (over a buffer of
/// `xlen` values) and `row_pos` / `inv_freq` cover its rows and half-dims.
pub(crate) fn rope_ok(x: &View<'_, [f32]>, a: &RopeArgs<'_>) -> bool {
    matches!(a.n_heads.checked_mul(a.head_dim), Some(w) if x.fits(w))
        && a.row_pos.len() >= x.rows
        && a.head_dim.is_multiple_of(2)
        && a.inv_freq.len() >= a.head_dim / 2
}

/// True when `add_bias` may add `width` bias values to every row of `y` (a buffer of `ylen`
/// values): the view fits with `width` columns and the bias holds `width` values.
pub(crate) fn bias_ok(y: &View<'_, [f32]>, bias_len: usize, width: usize) -> bool {
    y.fits(width) && bias_len >= width
}

/// True when `head_rms_norm` may normalise `n_heads` heads of `head_dim` in every row of `x`
/// with a weight of `w_len` values.
pub(crate) fn head_norm_ok(
    x: &View<'_, [f32]>,
    w_len: usize,
    n_heads: usize,
    head_dim: usize,
) -> bool {
    matches!(n_heads.checked_mul(head_dim), Some(w) if x.fits(w)) && w_len >= head_dim
}

/// The first position a row at `pos` attends to under `window` (see
/// [`Backend::attention_paged`]; a window of 0 counts as 1, the row itself).
pub(crate) fn window_start(pos: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (pos + 1).saturating_sub(w.max(1)))
}

/// Sets every value of `buf` to NaN (how ops mark an output they cannot compute).
pub(crate) fn fill_nan(buf: &mut [f32]) {
    buf.iter_mut().for_each(|v| *v = f32::NAN);
}

/// [`Backend::gather_rows`] for host buffers (shared by the reference and CPU backends): an
/// out-of-range row index yields a NaN row; `out` shorter than `rows.len() * dim` becomes NaN.
pub(crate) fn gather_rows(x: &[f32], dim: usize, rows: &[u32], out: &mut [f32]) {
    if !matches!(rows.len().checked_mul(dim), Some(n) if n <= out.len()) {
        return fill_nan(out);
    }
    if dim == 0 {
        return;
    }
    for (dst, &r) in out.chunks_exact_mut(dim).zip(rows) {
        let src = (r as usize)
            .checked_mul(dim)
            .and_then(|s| x.get(s..s.checked_add(dim)?));
        match src {
            Some(src) => dst.copy_from_slice(src),
            None => fill_nan(dst),
        }
    }
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
        check_quantized_parts(parts, format)?;
        let quant = QuantStack::from_parts(parts)?;
        let mut data = Vec::with_capacity(out * inp);
        for p in parts {
            data.extend(p.to_f32_vec());
        }
        // The format applies to dense weights only; quantized blocks are kept as they are.
        if format == WeightFormat::BF16 && quant.is_none() {
            data.iter_mut().for_each(|v| *v = round_bf16(*v));
        }
        Ok(RefWeight {
            out,
            inp,
            format,
            data,
            quant,
        })
    }

    fn weight_bytes(&self, w: &RefWeight) -> usize {
        if let Some(q) = &w.quant {
            return q.bytes();
        }
        let per = match w.format {
            // Quantized formats always hold quantized parts (returned above).
            WeightFormat::F32 | WeightFormat::Q8_0 | WeightFormat::Q4K => 4,
            WeightFormat::BF16 => 2,
        };
        w.data.len() * per
    }

    fn weight_dims(&self, w: &RefWeight) -> (usize, usize) {
        (w.out, w.inp)
    }

    fn alloc_kv(&self, geom: KvGeometry) -> Result<RefKvCache> {
        KvStore::new(geom)
    }

    fn matmul(&self, x: &Vec<f32>, rows: usize, w: &RefWeight, y: &mut Vec<f32>) {
        let (out, inp) = (w.out, w.inp);
        if !matmul_shapes_ok(x.len(), y.len(), rows, out, inp) {
            return fill_nan(y);
        }
        if let Some(q) = &w.quant {
            let mut a = quant_dot::QActs::default();
            if !a.quantize(x, rows, inp) {
                return fill_nan(y);
            }
            return quant_dot::matmul(q.segments(), &a, rows, y);
        }
        // A bf16 weight multiplies bf16-rounded activations (every product exact in f32).
        let bf16 = w.format == WeightFormat::BF16;
        let xr: Vec<f32> = x[..rows * inp]
            .iter()
            .map(|&v| if bf16 { round_bf16(v) } else { v })
            .collect();
        for t in 0..rows {
            for o in 0..out {
                let mut s = 0f64;
                for i in 0..inp {
                    s += xr[t * inp + i] as f64 * w.data[o * inp + i] as f64;
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

    fn rope(&self, x: ViewMut<'_, Vec<f32>>, a: &RopeArgs<'_>) {
        let (rows, stride, col0) = (x.rows, x.stride, x.col);
        let x = x.buf;
        if !rope_ok(&View::new(x.as_slice(), rows, stride, col0), a) {
            return fill_nan(x);
        }
        let (head_dim, half) = (a.head_dim, a.head_dim / 2);
        for t in 0..rows {
            for h in 0..a.n_heads {
                let base = t * stride + col0 + h * head_dim;
                for i in 0..half {
                    let ang = (a.row_pos[t] as f32 * a.inv_freq[i]) as f64;
                    let (x1, x2) = (x[base + i] as f64, x[base + i + half] as f64);
                    x[base + i] = (x1 * ang.cos() - x2 * ang.sin()) as f32;
                    x[base + i + half] = (x2 * ang.cos() + x1 * ang.sin()) as f32;
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

    fn kv_write(&self, cache: &mut RefKvCache, w: KvWriteArgs<'_, Vec<f32>>) {
        cache.write(w.slice());
    }

    fn attention_paged(&self, a: AttentionArgs<'_, Vec<f32>, RefKvCache>, out: &mut Vec<f32>) {
        let a = a.slice();
        let (q, n_heads, meta) = (a.q, a.n_heads, &a.meta);
        let geom = a.cache.geom;
        let (Some((nkv, hd, group)), Some((kc, vc))) = (
            attn_shapes(&q, out.len(), n_heads, &geom),
            a.cache.layer(a.layer),
        ) else {
            return fill_nan(out);
        };
        let kv_dim = nkv * hd;
        let q_dim = n_heads * hd;
        let scale = 1.0 / (hd as f64).sqrt();
        for t in 0..q.rows {
            let (Some((table, pos)), Some(q_row)) = (attn_row(meta, t, &geom), q.row(t, q_dim))
            else {
                fill_nan(&mut out[t * q_dim..(t + 1) * q_dim]);
                continue;
            };
            // Every position 0..=pos has a slot (checked by attn_row); the row reads lo..=pos.
            let lo = window_start(pos, a.window);
            let slots: Vec<usize> = positions(table, pos + 1, geom.block_size)
                .skip(lo)
                .map(|(_, slot)| slot)
                .collect();
            for h in 0..n_heads {
                let kvh = h / group;
                let qh = &q_row[h * hd..(h + 1) * hd];
                let mut s = vec![f64::NAN; slots.len()];
                for (sp, &slot) in s.iter_mut().zip(&slots) {
                    let Some(k) = kc.get(slot * kv_dim + kvh * hd..slot * kv_dim + (kvh + 1) * hd)
                    else {
                        continue;
                    };
                    let dot: f64 = qh.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum();
                    *sp = dot * scale;
                }
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|&v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    let mut acc = 0f64;
                    for (&ep, &slot) in e.iter().zip(&slots) {
                        let v = vc.get(slot * kv_dim + kvh * hd + d).copied();
                        acc += ep / z * v.unwrap_or(f32::NAN) as f64;
                    }
                    out[t * q_dim + h * hd + d] = acc as f32;
                }
            }
        }
    }

    fn add_bias(&self, y: ViewMut<'_, Vec<f32>>, bias: &Vec<f32>, width: usize) {
        let (rows, stride, col) = (y.rows, y.stride, y.col);
        let y = y.buf;
        if !bias_ok(
            &View::new(y.as_slice(), rows, stride, col),
            bias.len(),
            width,
        ) {
            return fill_nan(y);
        }
        for t in 0..rows {
            for j in 0..width {
                y[t * stride + col + j] += bias[j];
            }
        }
    }

    fn head_rms_norm(
        &self,
        x: ViewMut<'_, Vec<f32>>,
        w: &Vec<f32>,
        n_heads: usize,
        head_dim: usize,
        eps: f32,
    ) {
        let (rows, stride, col) = (x.rows, x.stride, x.col);
        let x = x.buf;
        if !head_norm_ok(
            &View::new(x.as_slice(), rows, stride, col),
            w.len(),
            n_heads,
            head_dim,
        ) {
            return fill_nan(x);
        }
        for t in 0..rows {
            for h in 0..n_heads {
                let base = t * stride + col + h * head_dim;
                let mut ss = 0f64;
                for j in 0..head_dim {
                    let v = x[base + j] as f64;
                    ss += v * v;
                }
                let r = 1.0 / (ss / head_dim as f64 + eps as f64).sqrt();
                for j in 0..head_dim {
                    x[base + j] = (x[base + j] as f64 * r * w[j] as f64) as f32;
                }
            }
        }
    }

    fn gather_rows(&self, x: &Vec<f32>, dim: usize, rows: &[u32], out: &mut Vec<f32>) {
        gather_rows(x, dim, rows, out);
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
        x: View<'_, Vec<f32>>,
        y: ViewMut<'_, Vec<f32>>,
        a: &LoraArgs<'_, Self::LoraStack>,
    ) {
        let (x, mut y) = (x.slice(), y.slice());
        let (inp, out) = a.stack.geometry().dims[a.target.index()];
        let overlap = |col: usize, w: usize, stride: usize| !matches!(col.checked_add(w), Some(e) if e <= stride);
        if x.rows != y.rows || overlap(x.col, inp, x.stride) || overlap(y.col, out, y.stride) {
            return;
        }
        for (slots, scales) in a.batch.lanes() {
            for t in 0..x.rows {
                let Some(&s) = slots.get(t) else {
                    continue;
                };
                if s < 0 {
                    continue;
                }
                let Some(m) = a.stack.module(s as usize, a.layer, a.target) else {
                    continue;
                };
                let (Some(xr), Some(yr)) = (x.row(t, inp), y.row_mut(t, out)) else {
                    continue;
                };
                // The stored weights as f32 (bf16 arenas: exactly the rounded values).
                let (ma, mb) = (m.a.to_vec(), m.b.to_vec());
                let h: Vec<f64> = (0..m.rank)
                    .map(|k| {
                        (0..inp)
                            .map(|i| ma[k * inp + i] as f64 * xr[i] as f64)
                            .sum()
                    })
                    .collect();
                let scale = m.scale as f64 * super::lane_scale(scales, t) as f64;
                for o in 0..out {
                    let d: f64 = (0..m.rank).map(|k| mb[o * m.rank + k] as f64 * h[k]).sum();
                    yr[o] += (scale * d) as f32;
                }
            }
        }
    }
}
