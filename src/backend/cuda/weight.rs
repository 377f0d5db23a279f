//! Weight matrices in device memory: dense `[out, in]` row-major, bf16 ([`WeightFormat::BF16`])
//! or f32 ([`WeightFormat::F32`]), as kernels/README.md's matmul and embedding kernels read them.
//!
//! The CUDA backend serves dense checkpoints (bf16, f16 or f32 tensors): quantized host tensors
//! and the quantized formats are UNSUPPORTED here, naming the tensor part and the format.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use super::device::driver_err;
use crate::backend::reference::fused_shape;
use crate::backend::select::WeightPartLayout;
use crate::backend::WeightFormat;
use crate::error::{Error, Result};
use crate::tensor::{HostTensor, TensorData};

/// The elements of a device weight.
#[derive(Debug)]
pub(crate) enum WeightData {
    /// bf16 bits.
    Bf16(CudaSlice<u16>),
    /// f32 values.
    F32(CudaSlice<f32>),
}

/// A packed weight `[out, in]` in device memory (the CUDA backend's
/// [`crate::backend::Backend::Weight`]). Immutable once packed; freed on the compute stream.
#[derive(Debug)]
pub struct CudaWeight {
    pub(crate) out: usize,
    pub(crate) inp: usize,
    pub(crate) data: WeightData,
}

impl CudaWeight {
    /// Bytes of device memory the elements occupy.
    pub fn bytes(&self) -> usize {
        match &self.data {
            WeightData::Bf16(s) => s.len() * 2,
            WeightData::F32(s) => s.len() * 4,
        }
    }
}

/// Bytes per element of a dense weight stored in `format`, or UNSUPPORTED for a quantized
/// format.
fn elem_bytes(format: WeightFormat) -> Result<usize> {
    match format {
        WeightFormat::BF16 => Ok(2),
        WeightFormat::F32 => Ok(4),
        f => Err(Error::unsupported(format!(
            "weight format {} is not available on a cuda device: the CUDA backend serves dense \
             (bf16/f16/f32) checkpoints in bf16 or f32",
            f.name()
        ))),
    }
}

/// The error for a quantized tensor part handed to the CUDA backend.
fn quantized_part(k: usize, what: &str) -> Error {
    Error::unsupported(format!(
        "weight part {k} is kept in ggml blocks ({what}): the CUDA backend serves dense \
         (bf16/f16/f32) checkpoints, not quantized ones"
    ))
}

/// The bytes [`CudaWeight::bytes`] reports for a weight of these parts in `format` (the
/// capacity planner's twin of [`pack`]). Errors as [`pack`] does.
pub(crate) fn packed_bytes(parts: &[WeightPartLayout], format: WeightFormat) -> Result<usize> {
    let first = parts
        .first()
        .ok_or_else(|| Error::invalid_argument("fused weight needs at least one part"))?;
    let per = elem_bytes(format)?;
    let mut elems = 0usize;
    for (k, p) in parts.iter().enumerate() {
        if p.cols != first.cols {
            return Err(Error::invalid_argument(format!(
                "fused weight part {k} has in = {}, part 0 has in = {}",
                p.cols, first.cols
            )));
        }
        if let Some(ty) = p.quant {
            return Err(quantized_part(k, &ty.to_string()));
        }
        elems = elems.saturating_add(p.rows.saturating_mul(p.cols));
    }
    Ok(elems.saturating_mul(per))
}

/// Packs the parts (stacked in order along `out`) into a device weight in `format`: BF16
/// rounds f32/f16 values to nearest-even bf16 (bf16 parts are copied as they are), F32 widens
/// exactly. Errors: INVALID_ARGUMENT for bad shapes (naming the part), UNSUPPORTED for
/// quantized parts or formats, DEVICE for a failed allocation or copy.
pub(crate) fn pack(
    stream: &Arc<CudaStream>,
    device: &str,
    parts: &[&HostTensor],
    format: WeightFormat,
) -> Result<CudaWeight> {
    let (out, inp) = fused_shape(parts)?;
    elem_bytes(format)?;
    if let Some(k) = parts.iter().position(|p| p.quant().is_some()) {
        let ty = parts[k]
            .quant()
            .map_or_else(String::new, |q| q.ty().to_string());
        return Err(quantized_part(k, &ty));
    }
    let n = out * inp;
    let err = |e| driver_err(device, "weight upload", e);
    let data = match format {
        WeightFormat::BF16 => {
            let mut bits = Vec::with_capacity(n);
            for p in parts {
                match &p.data {
                    TensorData::BF16(v) => bits.extend(v.iter().map(|b| b.to_bits())),
                    TensorData::F16(v) => {
                        bits.extend(v.iter().map(|h| half::bf16::from_f32(h.to_f32()).to_bits()))
                    }
                    TensorData::F32(v) => {
                        bits.extend(v.iter().map(|&x| half::bf16::from_f32(x).to_bits()))
                    }
                    TensorData::Quant(_) => unreachable_quant()?,
                }
            }
            WeightData::Bf16(stream.clone_htod(&bits).map_err(err)?)
        }
        _ => {
            let mut vals = Vec::with_capacity(n);
            for p in parts {
                vals.extend(p.to_f32_vec());
            }
            WeightData::F32(stream.clone_htod(&vals).map_err(err)?)
        }
    };
    Ok(CudaWeight { out, inp, data })
}

/// Quantized parts were refused before packing; reaching one is a bug, answered as INTERNAL.
fn unreachable_quant() -> Result<()> {
    Err(Error::internal(
        "cuda weight packing reached a quantized part after checking for none",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::quant::GgmlType;

    fn part(rows: usize, cols: usize, quant: Option<GgmlType>) -> WeightPartLayout {
        WeightPartLayout { rows, cols, quant }
    }

    #[test]
    fn dense_bytes_are_two_per_bf16_and_four_per_f32_element() {
        let parts = [part(3, 8, None), part(5, 8, None)];
        assert_eq!(packed_bytes(&parts, WeightFormat::BF16).unwrap(), 8 * 8 * 2);
        assert_eq!(packed_bytes(&parts, WeightFormat::F32).unwrap(), 8 * 8 * 4);
    }

    #[test]
    fn quantized_parts_and_formats_are_unsupported_naming_them() {
        let e = packed_bytes(&[part(4, 32, Some(GgmlType::Q8_0))], WeightFormat::BF16).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unsupported);
        assert!(
            e.message().contains("part 0") && e.message().contains("dense"),
            "{}",
            e.message()
        );
        let e = packed_bytes(&[part(4, 32, None)], WeightFormat::Q4K).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unsupported);
        assert!(e.message().contains("q4_k"), "{}", e.message());
    }

    #[test]
    fn parts_must_share_in() {
        let e =
            packed_bytes(&[part(4, 32, None), part(4, 16, None)], WeightFormat::BF16).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert!(e.message().contains("part 1"), "{}", e.message());
    }
}
