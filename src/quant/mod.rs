//! Quantized weights: ggml block types ([`types`]), their expansion to f32 ([`dequant`],
//! [`dequant_k`]) and
//! [`QuantData`], a matrix kept in ggml blocks (what a GGUF file stores, or what a load-time
//! quantizer writes).
//!
//! [`mix`] is the policy of which type each matrix of a model gets under a llama.cpp file type.
//!
//! This module knows nothing of files, models or backends: the GGUF reader and the model loader
//! produce [`QuantData`], the backends compute on it.

pub mod dequant;
pub mod dequant_k;
pub mod mix;
pub mod quantize;
pub mod quantize_k;
pub mod types;

pub use dequant::dequantize;
pub use types::GgmlType;

use crate::error::{Error, Result};

/// A row-major matrix `[rows, cols]` stored as ggml blocks of one type: row `r` is the
/// `cols / block_size` blocks at bytes `r * row_bytes .. (r + 1) * row_bytes`. Blocks run along
/// `cols`, so whole rows can be moved (permuted, stacked) as byte ranges.
///
/// Invariants (checked by [`QuantData::new`]): `ty` is a block-quantized type (not F32/F16/BF16),
/// `cols` is a multiple of its block size, and `bytes` holds exactly `rows` rows.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantData {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    bytes: Vec<u8>,
}

impl QuantData {
    /// Wraps `bytes` as a `[rows, cols]` matrix of `ty` blocks.
    ///
    /// Errors: INVALID_ARGUMENT when `ty` is not block-quantized, `cols` is not a whole number
    /// of blocks or `bytes` is not exactly `rows` rows of them (the message names the numbers).
    pub fn new(ty: GgmlType, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<Self> {
        let block = usize::try_from(ty.block_size()).unwrap_or(usize::MAX);
        let type_size = usize::try_from(ty.type_size()).unwrap_or(usize::MAX);
        if block <= 1 {
            return Err(Error::invalid_argument(format!(
                "{ty} is not a block-quantized type"
            )));
        }
        if !cols.is_multiple_of(block) {
            return Err(Error::invalid_argument(format!(
                "{cols} columns of {ty} are not a whole number of {block}-element blocks"
            )));
        }
        let row_bytes = (cols / block).checked_mul(type_size);
        let need = row_bytes.and_then(|r| r.checked_mul(rows));
        if need != Some(bytes.len()) {
            return Err(Error::invalid_argument(format!(
                "[{rows}, {cols}] of {ty} needs {} bytes, got {}",
                need.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                bytes.len()
            )));
        }
        Ok(Self {
            ty,
            rows,
            cols,
            bytes,
        })
    }
    /// The block type.
    #[inline]
    pub fn ty(&self) -> GgmlType {
        self.ty
    }
    /// Rows (the `out` dimension of a weight).
    #[inline]
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns (the `in` dimension of a weight; a whole number of blocks).
    #[inline]
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        // Exact: checked in `new`.
        self.ty.row_bytes(self.cols)
    }
    /// All blocks, row after row.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// All blocks, mutable in place (the length, and so every shape invariant, stays): for
    /// backends that rearrange bytes within blocks for their kernels.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
    /// The blocks of row `r` (empty when out of range).
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        self.bytes.get(r * rb..(r + 1) * rb).unwrap_or(&[])
    }
    /// The matrix expanded to f32, row-major (`rows * cols` values).
    ///
    /// Errors: UNSUPPORTED when [`dequantize`] cannot expand this type.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        dequantize(self.ty, &self.bytes, self.rows * self.cols)
    }
    /// A copy with rows reordered: row `i` of the result is row `src_of(i)` of `self`.
    /// Errors (INVALID_ARGUMENT) when `src_of` returns a row out of range.
    pub fn permute_rows(&self, src_of: impl Fn(usize) -> usize) -> Result<Self> {
        let rb = self.row_bytes();
        let mut bytes = Vec::with_capacity(self.bytes.len());
        for i in 0..self.rows {
            let s = src_of(i);
            let row = self.bytes.get(s * rb..(s + 1) * rb).ok_or_else(|| {
                Error::invalid_argument(format!("row {s} out of range ({} rows)", self.rows))
            })?;
            bytes.extend_from_slice(row);
        }
        Ok(Self {
            bytes,
            ..self.clone()
        })
    }
}
