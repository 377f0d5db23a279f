//! The one little-endian bytes → elements decoder, shared by every reader of tensor data:
//! safetensors (adapters and model weights), `.npy`, TensorRT-LLM headerless `.bin`, torch zip
//! storages and the unquantized GGUF types.
//!
//! All file formats loraplex reads store elements little-endian (a big-endian torch storage is
//! byte-swapped by its reader before it gets here). Pure functions; callable from any thread.

use half::{bf16, f16};

use super::{DType, TensorData};
use crate::error::{Error, Result};

/// Integer element types of index-like arrays (TensorRT-LLM `lora_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntType {
    /// Little-endian `i16`.
    I16,
    /// Little-endian `i32`.
    I32,
    /// Little-endian `i64`.
    I64,
}

impl IntType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            IntType::I16 => 2,
            IntType::I32 => 4,
            IntType::I64 => 8,
        }
    }
}

/// Errors unless `len` bytes are a whole number of `size`-byte elements.
fn whole(len: usize, size: usize, name: &str) -> Result<()> {
    if !len.is_multiple_of(size) {
        return Err(Error::invalid_argument(format!(
            "{len} bytes are not a whole number of {size}-byte {name} elements"
        )));
    }
    Ok(())
}

/// Decodes `bytes` as little-endian `dtype` elements, keeping the dtype.
///
/// Errors (`INVALID_ARGUMENT`) when `bytes.len()` is not a multiple of `dtype.size()`; readers
/// check lengths against their headers first and add the file and tensor to the message.
pub fn decode_le(dtype: DType, bytes: &[u8]) -> Result<TensorData> {
    whole(bytes.len(), dtype.size(), dtype.name())?;
    Ok(match dtype {
        DType::F32 => TensorData::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        DType::F16 => TensorData::F16(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        DType::BF16 => TensorData::BF16(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
    })
}

/// Decodes `bytes` as little-endian `dtype` elements widened to f32 (exact: every f16 and bf16
/// value is an f32 value). Errors as [`decode_le`].
pub fn decode_le_f32(dtype: DType, bytes: &[u8]) -> Result<Vec<f32>> {
    whole(bytes.len(), dtype.size(), dtype.name())?;
    let mut out = vec![0f32; bytes.len() / dtype.size()];
    decode_le_f32_into(dtype, bytes, &mut out);
    Ok(out)
}

/// Decodes little-endian `dtype` elements of `bytes` into `out` as f32: element `i` of `out` is
/// the `i`-th element of `bytes`. Decodes `min(out.len(), bytes.len() / dtype.size())` elements
/// and returns that count (callers size both sides; a trailing partial element is not read).
pub fn decode_le_f32_into(dtype: DType, bytes: &[u8], out: &mut [f32]) -> usize {
    let n = out.len().min(bytes.len() / dtype.size());
    let out = &mut out[..n];
    match dtype {
        DType::F32 => {
            for (x, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (x, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *x = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (x, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *x = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
    }
    n
}

/// Decodes `bytes` as little-endian integers of type `ty`, widened to `i64`. Errors
/// (`INVALID_ARGUMENT`) when `bytes.len()` is not a multiple of `ty.size()`.
pub fn decode_le_ints(ty: IntType, bytes: &[u8]) -> Result<Vec<i64>> {
    whole(bytes.len(), ty.size(), "integer")?;
    Ok(match ty {
        IntType::I16 => bytes
            .chunks_exact(2)
            .map(|c| i64::from(i16::from_le_bytes([c[0], c[1]])))
            .collect(),
        IntType::I32 => bytes
            .chunks_exact(4)
            .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        IntType::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_decodes_known_bit_patterns() {
        // 1.5, -2.0 as f32 / f16 / bf16 little-endian bit patterns.
        let f32b = [0x00, 0x00, 0xC0, 0x3F, 0x00, 0x00, 0x00, 0xC0];
        let f16b = [0x00, 0x3E, 0x00, 0xC0];
        let bf16b = [0xC0, 0x3F, 0x00, 0xC0];
        for (dt, b) in [
            (DType::F32, &f32b[..]),
            (DType::F16, &f16b[..]),
            (DType::BF16, &bf16b[..]),
        ] {
            assert_eq!(decode_le_f32(dt, b).unwrap(), vec![1.5, -2.0], "{dt:?}");
            let kept = decode_le(dt, b).unwrap();
            let t = crate::tensor::HostTensor {
                shape: vec![2],
                data: kept,
            };
            assert_eq!(t.dtype(), Some(dt));
            assert_eq!(t.into_f32_vec(), vec![1.5, -2.0], "{dt:?}");
        }
        assert_eq!(
            decode_le_ints(IntType::I16, &[0xFE, 0xFF, 3, 0]).unwrap(),
            vec![-2, 3]
        );
        assert_eq!(
            decode_le_ints(IntType::I32, &(-7i32).to_le_bytes()).unwrap(),
            vec![-7]
        );
        assert_eq!(
            decode_le_ints(IntType::I64, &(1i64 << 40).to_le_bytes()).unwrap(),
            vec![1 << 40]
        );
    }

    #[test]
    fn partial_elements_are_refused_not_dropped() {
        let e = decode_le_f32(DType::F32, &[0; 6]).unwrap_err();
        assert!(e.message().contains("6 bytes"), "{}", e.message());
        assert!(decode_le(DType::BF16, &[0; 3]).is_err());
        assert!(decode_le_ints(IntType::I64, &[0; 12]).is_err());
        let mut out = [9f32; 3];
        assert_eq!(decode_le_f32_into(DType::F16, &[0; 5], &mut out), 2);
        assert_eq!(out, [0.0, 0.0, 9.0]);
    }
}
