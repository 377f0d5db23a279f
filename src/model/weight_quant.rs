//! Load-time quantization of dense checkpoints: which ggml type each weight matrix gets under
//! a quantized [`WeightFormat`], and the conversion of its host tensors before they are packed.
//!
//! Policy (`weight_dtype` → ggml type of each dense 2-D matrix):
//!
//! | matrix | q8_0 | q4_k |
//! | --- | --- | --- |
//! | q/k/v/o, gate/up/down projections | Q8_0 | Q4_K |
//! | `lm_head` | Q8_0 | Q6_K |
//! | token embedding, untied | Q8_0 | Q4_K |
//! | token embedding, tied (it is also the head) | Q8_0 | Q6_K |
//!
//! which for q4_k is llama.cpp's Q4_K_M mix without its per-layer Q6_K upgrades of some
//! `attn_v`/`ffn_down` matrices (a fused weight keeps one type for all its parts).
//!
//! Fallback: a matrix whose column count is not a multiple of its type's block (256 for the
//! K-quants) gets the next type that fits, Q8_0 (32-element blocks); when not even that fits it
//! stays dense and is packed as f32. The fallback is per weight, so such a model mixes formats
//! (e.g. tiny test models with 176-wide MLPs); Llama checkpoints in the wild are multiples of 256.
//!
//! Cost: quantizing runs once per load on the rayon pool; measured on 2 shared cores, Q8_0 writes
//! ~90 M weights/s, Q4_K ~6 M/s and Q6_K ~11 M/s (the K-quant scale searches), so a 135M model
//! takes seconds and an 8B model minutes per core count.
//!
//! Tensors a checkpoint already stores quantized (a Q4_K_M GGUF) are kept as they are, never
//! re-quantized. Under the dense formats (f32, bf16) nothing here changes the tensors.

use crate::backend::WeightFormat;
use crate::error::{Error, Result};
use crate::quant::quantize::quantize;
use crate::quant::GgmlType;
use crate::tensor::HostTensor;

/// What a weight matrix is used for (decides its type under a quantized format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightRole {
    /// An attention or MLP projection.
    Projection,
    /// The output head (`lm_head`).
    Head,
    /// The token embedding table; `tied` when it also serves as the head.
    Embedding {
        /// The model ties its head to the embedding.
        tied: bool,
    },
}

/// The ggml type a dense matrix of `role` is quantized to under `format` before the column
/// fallback, or `None` under the dense formats.
pub fn target_type(format: WeightFormat, role: WeightRole) -> Option<GgmlType> {
    match format {
        WeightFormat::F32 | WeightFormat::BF16 => None,
        WeightFormat::Q8_0 => Some(GgmlType::Q8_0),
        WeightFormat::Q4K => Some(match role {
            WeightRole::Projection | WeightRole::Embedding { tied: false } => GgmlType::Q4K,
            WeightRole::Head | WeightRole::Embedding { tied: true } => GgmlType::Q6K,
        }),
    }
}

/// `ty` when `cols` is a whole number of its blocks, else Q8_0 when that fits, else `None`.
pub fn fitting_type(ty: GgmlType, cols: usize) -> Option<GgmlType> {
    [ty, GgmlType::Q8_0]
        .into_iter()
        .find(|t| cols.is_multiple_of(t.block_size() as usize))
}

/// Readies the host tensors of one backend weight (several parts for a fused weight, named for
/// errors) under `format`, returning them with the format to pack them in.
///
/// Under a quantized format every dense 2-D part is quantized to the [`target_type`] of `role`
/// (or its [`fitting_type`]); already-quantized parts are kept. When the columns fit no block
/// type, all parts are returned as they are with [`WeightFormat::F32`]. Under the dense formats
/// the parts and format are returned unchanged.
///
/// Errors: INVALID_MODEL naming the tensor when a dense part is not 2-D or holds a non-finite
/// value.
pub fn prepare(
    parts: Vec<(String, HostTensor)>,
    role: WeightRole,
    format: WeightFormat,
) -> Result<(Vec<HostTensor>, WeightFormat)> {
    let Some(want) = target_type(format, role) else {
        return Ok((parts.into_iter().map(|(_, t)| t).collect(), format));
    };
    let cols = parts
        .first()
        .and_then(|(_, t)| t.shape.get(1).copied())
        .unwrap_or(0);
    let Some(ty) = fitting_type(want, cols) else {
        return Ok((
            parts.into_iter().map(|(_, t)| t).collect(),
            WeightFormat::F32,
        ));
    };
    let mut out = Vec::with_capacity(parts.len());
    for (name, t) in parts {
        if t.quant().is_some() {
            out.push(t);
            continue;
        }
        let [rows, c] = t.shape[..] else {
            return Err(Error::invalid_model(format!(
                "tensor \"{name}\" has shape {:?}; only 2-D weights can be quantized",
                t.shape
            )));
        };
        let q = quantize(ty, rows, c, &t.into_f32_vec()).map_err(|e| {
            Error::invalid_model(format!(
                "tensor \"{name}\" cannot be quantized to {ty}: {}",
                e.message()
            ))
        })?;
        out.push(HostTensor::quantized(q));
    }
    Ok((out, format))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(rows: usize, cols: usize) -> (String, HostTensor) {
        let v = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        ("w".to_string(), HostTensor::f32(vec![rows, cols], v))
    }

    #[test]
    fn q4_k_mix_and_column_fallback() {
        let (t, f) = prepare(
            vec![dense(2, 512)],
            WeightRole::Projection,
            WeightFormat::Q4K,
        )
        .unwrap();
        assert_eq!(
            (t[0].quant().unwrap().ty(), f),
            (GgmlType::Q4K, WeightFormat::Q4K)
        );
        let (t, _) = prepare(vec![dense(2, 512)], WeightRole::Head, WeightFormat::Q4K).unwrap();
        assert_eq!(t[0].quant().unwrap().ty(), GgmlType::Q6K);
        let tied = WeightRole::Embedding { tied: true };
        let (t, _) = prepare(vec![dense(2, 256)], tied, WeightFormat::Q4K).unwrap();
        assert_eq!(t[0].quant().unwrap().ty(), GgmlType::Q6K);
        // 64 columns: no 256-block fits, Q8_0 does.
        let (t, f) = prepare(
            vec![dense(3, 64), dense(1, 64)],
            WeightRole::Projection,
            WeightFormat::Q4K,
        )
        .unwrap();
        assert!(t.iter().all(|t| t.quant().unwrap().ty() == GgmlType::Q8_0));
        assert_eq!(f, WeightFormat::Q4K);
        // 176 columns: nothing fits, the weight stays dense f32.
        let (t, f) = prepare(
            vec![dense(2, 176)],
            WeightRole::Projection,
            WeightFormat::Q8_0,
        )
        .unwrap();
        assert_eq!((t[0].quant(), f), (None, WeightFormat::F32));
    }

    #[test]
    fn dense_formats_and_quantized_tensors_pass_through() {
        let d = dense(2, 256);
        let (t, f) = prepare(vec![d.clone()], WeightRole::Projection, WeightFormat::BF16).unwrap();
        assert_eq!((&t[0], f), (&d.1, WeightFormat::BF16));
        let q = HostTensor::quantized(quantize(GgmlType::Q4_0, 2, 256, &d.1.to_f32_vec()).unwrap());
        let (t, _) = prepare(
            vec![("q".into(), q.clone())],
            WeightRole::Projection,
            WeightFormat::Q8_0,
        )
        .unwrap();
        assert_eq!(t[0], q, "a quantized checkpoint tensor is kept as it is");
    }

    #[test]
    fn non_finite_weights_name_the_tensor() {
        let (_, mut t) = dense(2, 64);
        if let crate::tensor::TensorData::F32(v) = &mut t.data {
            v[70] = f32::NAN;
        }
        let e = prepare(
            vec![("model.layers.0.mlp.up_proj.weight".into(), t)],
            WeightRole::Projection,
            WeightFormat::Q8_0,
        )
        .unwrap_err();
        assert_eq!(e.code(), crate::error::ErrorCode::InvalidModel);
        assert!(e.message().contains("up_proj") && e.message().contains("row 1, column 6"));
    }
}
