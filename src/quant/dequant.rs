//! Expansion of ggml tensor data to f32, bit-exact with ggml's reference dequantization
//! (`dequantize_row_*` in ggml-quants.c, mirrored by gguf-py's `gguf.quants.dequantize`):
//! F32, F16, BF16, the 32-element types below, and the 256-element K-quants and IQ4_XS of
//! [`super::dequant_k`].
//!
//! Block layouts of the 32-element types (little-endian; element `j < 16` uses the low nibble
//! of byte `j` of the nibbles, element `j + 16` its high nibble):
//! * Q4_0 (18 bytes): f16 `d`, 16 bytes of nibbles; element = `(nibble - 8) * d`.
//! * Q4_1 (20 bytes): f16 `d`, f16 `m`, 16 bytes of nibbles; element = `nibble * d + m`.
//! * Q5_0 (22 bytes): f16 `d`, u32 `qh` (bit `j` is bit 4 of element `j`), 16 bytes of
//!   nibbles; element = `(q - 16) * d`.
//! * Q5_1 (24 bytes): f16 `d`, f16 `m`, u32 `qh`, 16 bytes of nibbles; element = `q * d + m`.
//! * Q8_0 (34 bytes): f16 `d`, 32 `i8`; element = `q * d`.
//! * IQ4_NL (18 bytes): f16 `d`, 16 bytes of nibbles; element =
//!   `d * IQ4_NL_VALUES[nibble]` (a non-linear 16-level grid).

use rayon::prelude::*;

use super::dequant_k::{self as k, f16_at, IQ4_NL_VALUES};
use super::types::GgmlType;
use crate::error::{Error, Result};
use crate::tensor::decode::decode_le_f32_into;
use crate::tensor::DType;

/// Blocks per parallel work item.
const CHUNK_BLOCKS: usize = 1024;

/// Expands one block: `blk` is exactly one block's bytes, `y` its elements.
pub type BlockFn = fn(&[u8], &mut [f32]);

/// The one-block expansion of a block-quantized type, or `None` for plain types (F32, F16,
/// BF16) and for types that cannot be expanded. Kernels that dequantize on the fly use it.
pub fn block_fn(ty: GgmlType) -> Option<BlockFn> {
    Some(match ty {
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Iq4Nl => iq4_nl,
        GgmlType::Q2K => k::q2_k,
        GgmlType::Q3K => k::q3_k,
        GgmlType::Q4K => k::q4_k,
        GgmlType::Q5K => k::q5_k,
        GgmlType::Q6K => k::q6_k,
        GgmlType::Iq4Xs => k::iq4_xs,
        _ => return None,
    })
}

/// The names of the types [`dequantize`] expands, for error messages.
pub fn supported_names() -> String {
    GgmlType::all()
        .filter(|t| t.is_dequantizable())
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Expands `n_elements` elements of type `ty` stored in `bytes` to f32.
///
/// Errors: UNSUPPORTED when `ty` is not one of the types above (the message names the type and
/// lists the supported ones; callers add the tensor name); INVALID_MODEL when `n_elements` is
/// not a whole number of blocks or `bytes` does not hold exactly that many blocks.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>> {
    if !ty.is_dequantizable() {
        return Err(Error::unsupported(format!(
            "ggml type {ty} cannot be loaded (supported: {}); re-quantize the model to one of \
             them or use the HuggingFace safetensors",
            supported_names()
        )));
    }
    let block = ty.block_size() as usize;
    let type_size = ty.type_size() as usize;
    if !n_elements.is_multiple_of(block) {
        return Err(Error::invalid_model(format!(
            "{n_elements} elements of {ty} are not a whole number of {block}-element blocks"
        )));
    }
    let n_blocks = n_elements / block;
    if n_blocks.checked_mul(type_size) != Some(bytes.len()) {
        return Err(Error::invalid_model(format!(
            "{n_elements} elements of {ty} need {} bytes, got {}",
            n_blocks.saturating_mul(type_size),
            bytes.len()
        )));
    }
    let mut out = vec![0f32; n_elements];
    let plain = match ty {
        GgmlType::F32 => Some(DType::F32),
        GgmlType::F16 => Some(DType::F16),
        GgmlType::BF16 => Some(DType::BF16),
        _ => None,
    };
    if let Some(dtype) = plain {
        // Unquantized types go through the crate's one little-endian decoder.
        out.par_chunks_mut(CHUNK_BLOCKS * 64)
            .zip(bytes.par_chunks(CHUNK_BLOCKS * 64 * type_size))
            .for_each(|(o, b)| {
                decode_le_f32_into(dtype, b, o);
            });
        return Ok(out);
    }
    let one = block_fn(ty).ok_or_else(|| {
        Error::internal(format!(
            "dequantize: no kernel for {ty} although it is marked supported"
        ))
    })?;
    out.par_chunks_mut(CHUNK_BLOCKS * block)
        .zip(bytes.par_chunks(CHUNK_BLOCKS * type_size))
        .for_each(|(o, b)| {
            for (y, blk) in o.chunks_exact_mut(block).zip(b.chunks_exact(type_size)) {
                one(blk, y);
            }
        });
    Ok(out)
}

/// The 32 nibbles of a 16-byte array in ggml's order: low nibbles first, then high nibbles.
#[inline]
fn nibble(qs: &[u8], j: usize) -> u8 {
    (qs[j % 16] >> (4 * (j / 16))) & 0x0F
}

/// One Q8_0 block.
pub fn q8_0(blk: &[u8], y: &mut [f32]) {
    let d = f16_at(blk, 0);
    for (x, &q) in y.iter_mut().zip(&blk[2..34]) {
        *x = (q as i8) as f32 * d;
    }
}

/// One Q4_0 block.
pub fn q4_0(blk: &[u8], y: &mut [f32]) {
    let d = f16_at(blk, 0);
    for (j, x) in y.iter_mut().enumerate().take(32) {
        *x = (nibble(&blk[2..18], j) as i32 - 8) as f32 * d;
    }
}

/// One Q4_1 block.
pub fn q4_1(blk: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
    for (j, x) in y.iter_mut().enumerate().take(32) {
        *x = nibble(&blk[4..20], j) as f32 * d + m;
    }
}

/// The 5-bit quant `j` of a Q5_0/Q5_1 block whose `qh` word starts at `at` (nibbles follow it).
#[inline]
fn q5(blk: &[u8], at: usize, j: usize) -> u8 {
    let qh = u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]]);
    nibble(&blk[at + 4..at + 20], j) | ((((qh >> j) & 1) as u8) << 4)
}

/// One Q5_0 block.
pub fn q5_0(blk: &[u8], y: &mut [f32]) {
    let d = f16_at(blk, 0);
    for (j, x) in y.iter_mut().enumerate().take(32) {
        *x = (q5(blk, 2, j) as i32 - 16) as f32 * d;
    }
}

/// One Q5_1 block.
pub fn q5_1(blk: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
    for (j, x) in y.iter_mut().enumerate().take(32) {
        *x = q5(blk, 4, j) as f32 * d + m;
    }
}

/// One IQ4_NL block.
pub fn iq4_nl(blk: &[u8], y: &mut [f32]) {
    let d = f16_at(blk, 0);
    for (j, x) in y.iter_mut().enumerate().take(32) {
        *x = d * IQ4_NL_VALUES[nibble(&blk[2..18], j) as usize] as f32;
    }
}
