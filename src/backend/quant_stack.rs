//! A weight matrix kept in ggml blocks for the host backends: one or more row segments, each a
//! [`QuantData`] of its own type, stacked along `out` (a fused QKV of a Q4_K_M file stacks
//! Q4_K q/k rows on Q6_K v rows). The blocks are kept exactly as read, so the resident bytes
//! are the file's tensor bytes.

use crate::backend::reference::fused_shape;
use crate::backend::reference::quant_block::is_kernel_type;
use crate::error::{Error, Result};
use crate::quant::{GgmlType, QuantData};
use crate::tensor::HostTensor;

/// Row segments of block-quantized types stacked into one `[out, cols]` matrix. Immutable;
/// shareable across threads.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantStack {
    segs: Vec<QuantData>,
    /// Bytes of one row of each segment (cached: the kernels look rows up per weight row).
    row_bytes: Vec<usize>,
    cols: usize,
}

impl QuantStack {
    /// Stacks `parts` when every one is kept quantized in a type the quantized kernels compute
    /// on; `Ok(None)` when some part is dense (the caller then packs every part dense, the
    /// quantized ones dequantized exactly as ggml does).
    ///
    /// Errors: INVALID_ARGUMENT for parts that do not stack (not 2-D, different `in`); UNSUPPORTED
    /// for a quantized part of a type without kernels (the message names the type and part).
    pub fn from_parts(parts: &[&HostTensor]) -> Result<Option<Self>> {
        let (_, cols) = fused_shape(parts)?;
        let mut segs = Vec::with_capacity(parts.len());
        for (k, p) in parts.iter().enumerate() {
            if let Some(q) = p.quant() {
                if !is_kernel_type(q.ty()) {
                    return Err(Error::unsupported(format!(
                        "weight part {k} has type {} which the quantized kernels do not support",
                        q.ty()
                    )));
                }
                segs.push(q.clone());
            }
        }
        if segs.len() < parts.len() {
            return Ok(None);
        }
        let row_bytes = segs.iter().map(|s| s.row_bytes()).collect();
        Ok(Some(Self {
            segs,
            row_bytes,
            cols,
        }))
    }
    /// The segments, in row order.
    pub fn segments(&self) -> &[QuantData] {
        &self.segs
    }
    /// The segments, mutable (their blocks' bytes only: see [`QuantData::bytes_mut`]).
    pub(crate) fn segments_mut(&mut self) -> &mut [QuantData] {
        &mut self.segs
    }
    /// Columns (`in`).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Rows (`out`, the sum over segments).
    pub fn rows(&self) -> usize {
        self.segs.iter().map(|s| s.rows()).sum()
    }
    /// Bytes of all blocks.
    pub fn bytes(&self) -> usize {
        self.segs.iter().map(|s| s.bytes().len()).sum()
    }
    /// The type and blocks of row `r` (whole blocks of `cols` elements, a [`QuantData`]
    /// invariant), or `None` when out of range.
    #[inline]
    pub fn row(&self, mut r: usize) -> Option<(GgmlType, &[u8])> {
        for (s, &rb) in self.segs.iter().zip(&self.row_bytes) {
            if r < s.rows() {
                return Some((s.ty(), s.bytes().get(r * rb..(r + 1) * rb)?));
            }
            r -= s.rows();
        }
        None
    }
}
