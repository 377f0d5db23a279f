//! Expansion of ggml tensor data to f32, bit-exact with ggml's reference dequantization
//! (`dequantize_row_*` in ggml-quants.c): F32, F16, BF16, Q8_0, Q4_0, Q4_1.
//!
//! Block layouts (little-endian, 32 elements per block):
//! * Q4_0: f16 `d`, 16 bytes of nibbles; element `j` (< 16) is `(lo(q[j]) - 8) * d`, element
//!   `j + 16` is `(hi(q[j]) - 8) * d`.
//! * Q4_1: f16 `d`, f16 `m`, 16 bytes of nibbles; element = `nibble * d + m` (same order).
//! * Q8_0: f16 `d`, 32 `i8`; element = `q * d`.

use half::f16;
use rayon::prelude::*;

use super::types::GgmlType;
use crate::error::{Error, Result};
use crate::tensor::decode::decode_le_f32_into;
use crate::tensor::DType;

/// Blocks per parallel work item.
const CHUNK_BLOCKS: usize = 4096;

/// Expands `n_elements` elements of type `ty` stored in `bytes` to f32.
///
/// Errors: UNSUPPORTED when `ty` is not one of the types above (the message names the type;
/// callers add the tensor name); INVALID_MODEL when `n_elements` is not a whole number of blocks
/// or `bytes` does not hold exactly that many blocks.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>> {
    if !ty.is_dequantizable() {
        return Err(Error::unsupported(format!(
            "ggml type {ty} cannot be loaded (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1); \
             re-quantize the model to Q8_0/Q4_0/Q4_1 or use the HuggingFace safetensors"
        )));
    }
    let block = ty.block_size() as usize;
    let type_size = ty.type_size() as usize;
    if n_elements % block != 0 {
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
    let kernel: fn(&[u8], &mut [f32]) = match ty {
        // Unquantized types go through the crate's one little-endian decoder.
        GgmlType::F32 => |b, o| {
            decode_le_f32_into(DType::F32, b, o);
        },
        GgmlType::F16 => |b, o| {
            decode_le_f32_into(DType::F16, b, o);
        },
        GgmlType::BF16 => |b, o| {
            decode_le_f32_into(DType::BF16, b, o);
        },
        GgmlType::Q8_0 => |b, o| {
            for (y, blk) in o.chunks_exact_mut(32).zip(b.chunks_exact(34)) {
                let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                for (x, &q) in y.iter_mut().zip(&blk[2..]) {
                    *x = (q as i8) as f32 * d;
                }
            }
        },
        GgmlType::Q4_0 => |b, o| {
            for (y, blk) in o.chunks_exact_mut(32).zip(b.chunks_exact(18)) {
                let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                let (lo, hi) = y.split_at_mut(16);
                for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&blk[2..]) {
                    *l = ((q & 0x0F) as i32 - 8) as f32 * d;
                    *h = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        },
        GgmlType::Q4_1 => |b, o| {
            for (y, blk) in o.chunks_exact_mut(32).zip(b.chunks_exact(20)) {
                let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                let m = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
                let (lo, hi) = y.split_at_mut(16);
                for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&blk[4..]) {
                    *l = (q & 0x0F) as f32 * d + m;
                    *h = (q >> 4) as f32 * d + m;
                }
            }
        },
        _ => {
            return Err(Error::internal(format!(
                "dequantize: no kernel for {ty} although it is marked supported"
            )))
        }
    };
    out.par_chunks_mut(CHUNK_BLOCKS * block)
        .zip(bytes.par_chunks(CHUNK_BLOCKS * type_size))
        .for_each(|(o, b)| kernel(b, o));
    Ok(out)
}
