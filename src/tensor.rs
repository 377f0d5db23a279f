//! Host tensors as loaded from files: a shape and owned data in one of the supported dtypes.
//! No autograd, no views: the model copies what it needs into backend weights.
//!
//! [`decode`] is the one little-endian bytes → elements decoder and [`safetensors_file`] the one
//! checked safetensors reader; adapters and model weights both read through them.

pub mod decode;
pub mod safetensors_file;

use half::{bf16, f16};

use crate::quant::QuantData;

/// The element count of `shape` (1 for a scalar `[]`); `None` when the product overflows.
/// Readers of untrusted headers use it before trusting a declared shape.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// The element count and byte size of `shape` with `elem_size`-byte elements; `None` when either
/// overflows.
pub fn checked_byte_size(shape: &[usize], elem_size: usize) -> Option<(usize, usize)> {
    let n = checked_numel(shape)?;
    Some((n, n.checked_mul(elem_size)?))
}

/// Element types loraplex reads or stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
    /// Lower-case name ("f32", "f16", "bf16").
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
}

/// Owned element data of a host tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    BF16(Vec<bf16>),
    /// A 2-D matrix kept in ggml quantized blocks (the tensor's shape is `[rows, cols]`).
    Quant(QuantData),
}

impl TensorData {
    /// The elements widened to f32 (copies; exact for every dtype, quantized blocks expanded
    /// as ggml dequantizes them). A quantized type that cannot be expanded (see
    /// [`crate::quant::GgmlType::is_dequantizable`]) yields NaNs; loaders refuse such tensors.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            TensorData::F32(v) => v.clone(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::Quant(q) => q
                .to_f32()
                .unwrap_or_else(|_| vec![f32::NAN; q.rows() * q.cols()]),
        }
    }
    /// Consumes the data, returning f32 elements (no copy when already f32).
    pub fn into_f32_vec(self) -> Vec<f32> {
        match self {
            TensorData::F32(v) => v,
            other => other.to_f32_vec(),
        }
    }
}

/// A dense row-major host tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first (a Linear weight is `[out, in]`).
    pub shape: Vec<usize>,
    /// Elements, `shape.iter().product()` of them.
    pub data: TensorData,
}

impl HostTensor {
    /// An f32 tensor. The caller guarantees `data.len() == shape.product()`.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self {
            shape,
            data: TensorData::F32(data),
        }
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The element type of a dense tensor; `None` for quantized blocks (see [`Self::quant`]).
    pub fn dtype(&self) -> Option<DType> {
        match self.data {
            TensorData::F32(_) => Some(DType::F32),
            TensorData::F16(_) => Some(DType::F16),
            TensorData::BF16(_) => Some(DType::BF16),
            TensorData::Quant(_) => None,
        }
    }
    /// The quantized blocks, when the tensor is kept quantized.
    pub fn quant(&self) -> Option<&QuantData> {
        match &self.data {
            TensorData::Quant(q) => Some(q),
            _ => None,
        }
    }
    /// A `[rows, cols]` tensor kept in quantized blocks.
    pub fn quantized(q: QuantData) -> Self {
        Self {
            shape: vec![q.rows(), q.cols()],
            data: TensorData::Quant(q),
        }
    }
    /// The elements converted to f32 (copies).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.data.to_f32_vec()
    }
    /// Consumes the tensor, returning f32 elements (no copy when already f32).
    pub fn into_f32_vec(self) -> Vec<f32> {
        self.data.into_f32_vec()
    }
}
