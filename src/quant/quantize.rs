//! f32 rows → ggml blocks: Q8_0 and Q4_0 (bit-exact with gguf-py's `gguf.quants.quantize`,
//! which reproduces ggml's `quantize_row_*_ref`) and the K-quants Q4_K, Q5_K, Q6_K of
//! [`super::quantize_k`] (ports of ggml's reference quantizers, without an importance matrix).
//! Q8_0 and the K-quants are byte-identical to ggml's C `quantize_row_*_ref` built without FMA
//! contraction (tests/quant_quantize.rs checks committed ggml outputs).
//!
//! Threading: [`quantize`] splits rows over the rayon pool; every row is quantized on its own, so
//! a row's blocks never depend on other rows. Ownership: the input is borrowed, the blocks are
//! returned in a new [`QuantData`].

use half::f16;
use rayon::prelude::*;

use super::quantize_k as k;
use super::{GgmlType, QuantData};
use crate::error::{Error, Result};

/// Quantizes one block: `x` is exactly one block's elements, `out` its bytes.
pub type QuantizeBlockFn = fn(&[f32], &mut [u8]);

/// Rows per parallel work item.
const CHUNK_ROWS: usize = 16;

/// The one-block quantizer of `ty`, or `None` when loraplex cannot write that type.
pub fn quantize_block_fn(ty: GgmlType) -> Option<QuantizeBlockFn> {
    Some(match ty {
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q4K => k::q4_k,
        GgmlType::Q5K => k::q5_k,
        GgmlType::Q6K => k::q6_k,
        _ => return None,
    })
}

/// Whether [`quantize`] can write `ty`.
pub fn is_quantizable(ty: GgmlType) -> bool {
    quantize_block_fn(ty).is_some()
}

/// Quantizes the row-major `[rows, cols]` matrix `x` to `ty` blocks along `cols`.
///
/// Errors (INVALID_ARGUMENT, naming the numbers): `ty` is not one of Q8_0, Q4_0, Q4_K, Q5_K,
/// Q6_K; `cols` is not a multiple of the type's block size (32, or 256 for the K-quants);
/// `x.len() != rows * cols`; a value is not finite (the message names its row and column).
pub fn quantize(ty: GgmlType, rows: usize, cols: usize, x: &[f32]) -> Result<QuantData> {
    let one = quantize_block_fn(ty).ok_or_else(|| {
        Error::invalid_argument(format!(
            "cannot quantize to {ty} (loraplex writes Q8_0, Q4_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)"
        ))
    })?;
    let (block, type_size) = (ty.block_size() as usize, ty.type_size() as usize);
    if !cols.is_multiple_of(block) || cols == 0 {
        return Err(Error::invalid_argument(format!(
            "{cols} columns cannot be quantized to {ty}: not a positive multiple of its \
             {block}-element block"
        )));
    }
    if rows.checked_mul(cols) != Some(x.len()) {
        return Err(Error::invalid_argument(format!(
            "[{rows}, {cols}] needs {} values, got {}",
            rows.saturating_mul(cols),
            x.len()
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid_argument(format!(
            "value {} at row {}, column {} cannot be quantized to {ty} (not finite)",
            x[i],
            i / cols,
            i % cols
        )));
    }
    let row_bytes = cols / block * type_size;
    let mut bytes = vec![0u8; rows * row_bytes];
    bytes
        .par_chunks_mut(CHUNK_ROWS * row_bytes)
        .zip(x.par_chunks(CHUNK_ROWS * cols))
        .for_each(|(out, xs)| {
            for (o, b) in out.chunks_exact_mut(type_size).zip(xs.chunks_exact(block)) {
                one(b, o);
            }
        });
    QuantData::new(ty, rows, cols, bytes)
}

/// Packs 32 five-bit levels as ggml's Q5_0/Q5_1 do: the low nibbles of elements `j` and
/// `j + 16` share byte `qs[j]`, the fifth bits form the little-endian `u32` `qh` (bit `j` from
/// element `j`). `out` starts at `qh`.
fn pack_q5(levels: &[u8; 32], out: &mut [u8]) {
    let mut qh = 0u32;
    for (j, &l) in levels.iter().enumerate() {
        qh |= u32::from(l >> 4) << j;
    }
    out[..4].copy_from_slice(&qh.to_le_bytes());
    for j in 0..16 {
        out[4 + j] = (levels[j] & 0x0F) | ((levels[j + 16] & 0x0F) << 4);
    }
}

/// One Q5_0 block: `d = m / -16` where `m` is the element of largest magnitude;
/// `q = trunc(x / d + 16.5)` clamped to 31, evaluated in f64 like [`q4_0`] (gguf-py's emulation
/// of ggml's fused multiply-add).
pub fn q5_0(x: &[f32], out: &mut [u8]) {
    let (_, max) = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, 0, d);
    let mut levels = [0u8; 32];
    for (l, &v) in levels.iter_mut().zip(x) {
        let t = ((v as f64) * (id as f64) + 16.5) as f32;
        *l = (t.trunc() as u8).min(31);
    }
    pack_q5(&levels, &mut out[2..]);
}

/// One Q5_1 block: `d = (max - min) / 31`, `m = min`, `q = trunc((x - min) / d + 0.5)` in f32,
/// clamped to 31 (as gguf-py and ggml's reference).
pub fn q5_1(x: &[f32], out: &mut [u8]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, 0, d);
    put_f16(out, 2, min);
    let mut levels = [0u8; 32];
    for (l, &v) in levels.iter_mut().zip(x) {
        *l = (((v - min) * id + 0.5).trunc() as u8).min(31);
    }
    pack_q5(&levels, &mut out[4..]);
}

/// Writes `v` as a little-endian f16 (round to nearest even, as ggml's `GGML_FP32_TO_FP16`).
#[inline]
pub(crate) fn put_f16(out: &mut [u8], at: usize, v: f32) {
    out[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// `max |x|` and the first element reaching it (ggml's scan with a strict `<`).
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// One Q8_0 block: `d = max|x| / 127`, `q = round(x / d)` (half away from zero).
pub fn q8_0(x: &[f32], out: &mut [u8]) {
    let (amax, _) = signed_absmax(x);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, 0, d);
    for (o, &v) in out[2..34].iter_mut().zip(x) {
        *o = ((v * id).round() as i8) as u8;
    }
}

/// One Q4_0 block: `d = m / -8` where `m` is the element of largest magnitude, so `m` maps to
/// level 0 and the other sign reaches level 15 (clamped from 16); `q = trunc(x / d + 8.5)`.
///
/// The rounding step `x * id + 8.5` is evaluated in f64 and narrowed to f32 before truncation,
/// exactly as gguf-py does to reproduce ggml's fused multiply-add (the product of two f32 is
/// exact in f64).
pub fn q4_0(x: &[f32], out: &mut [u8]) {
    let (_, max) = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, 0, d);
    let level = |v: f32| -> u8 {
        let t = ((v as f64) * (id as f64) + 8.5) as f32;
        (t.trunc() as u8).min(15)
    };
    for j in 0..16 {
        out[2 + j] = level(x[j]) | (level(x[j + 16]) << 4);
    }
}
