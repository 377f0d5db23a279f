//! Load-time quantization of dense checkpoints: which ggml type each weight matrix gets under
//! a quantized [`WeightFormat`], and the conversion of its host tensors before they are packed.
//!
//! Policy: `weight_dtype` q8_0 and q4_k are llama.cpp's Q8_0 and Q4_K_M mixes
//! ([`crate::quant::mix`], the same rules `requantize` writes GGUF files with): Q8_0 everywhere,
//! or Q4_K projections with a Q6_K head (a tied embedding is the head) and Q6_K `v_proj` /
//! `down_proj` in the layers llama.cpp gives more bits. A fused weight may mix types (Q4_K q/k
//! with a Q6_K v). Fallback: a matrix whose width is not a whole number of 256-element
//! super-blocks takes llama.cpp's legacy type (Q4_K → Q5_0, Q6_K → Q8_0); when not even a
//! 32-element block fits, the weight stays dense and is packed as f32, so such a model mixes
//! formats (e.g. tiny test models with 176-wide MLPs); Llama checkpoints in the wild are
//! multiples of 256.
//!
//! Cost: quantizing runs once per load on the rayon pool; measured on 2 shared cores, Q8_0 writes
//! ~90 M weights/s, Q4_K ~6 M/s and Q6_K ~11 M/s (the K-quant scale searches), so a 135M model
//! takes seconds and an 8B model minutes per core count.
//!
//! Tensors a checkpoint already stores quantized (a Q4_K_M GGUF) are kept as they are, never
//! re-quantized. Under the dense formats (f32, bf16) nothing here changes the tensors.

use crate::backend::WeightFormat;
use crate::error::{Error, Result};
pub use crate::quant::mix::MixRole;
use crate::quant::mix::QuantScheme;
use crate::quant::quantize::quantize;
use crate::quant::GgmlType;
use crate::tensor::HostTensor;

/// The mix a quantized `format` stands for, or `None` under the dense formats.
pub fn scheme(format: WeightFormat) -> Option<QuantScheme> {
    match format {
        WeightFormat::F32 | WeightFormat::BF16 => None,
        WeightFormat::Q8_0 => Some(QuantScheme::Q8_0),
        WeightFormat::Q4K => Some(QuantScheme::Q4KM),
    }
}

/// What [`prepare`] does to one weight, decided from its parts' layouts alone (shared with the
/// capacity planner, which has no tensor data): for each part `(cols, kept type, role)` (kept
/// type `None` for a dense part) the type it is packed in (`None`: dense), and the format the
/// weight is packed in.
///
/// Under a quantized `format` every dense part gets the type its role has in the format's mix
/// (`None` when its own width fits no block, which `prepare` refuses) and kept parts keep
/// theirs; when the first part's width fits no block type for some role, every part is kept as
/// it is and the weight is packed as [`WeightFormat::F32`]. Under the dense formats the parts
/// and format are kept.
pub fn packed_types(
    parts: &[(usize, Option<GgmlType>, MixRole)],
    n_layers: usize,
    format: WeightFormat,
) -> (Vec<Option<GgmlType>>, WeightFormat) {
    let kept = || parts.iter().map(|p| p.1).collect();
    let Some(scheme) = scheme(format) else {
        return (kept(), format);
    };
    let cols = parts.first().map_or(0, |p| p.0);
    // The parts of a fused weight share their width, so they fit (or not) together.
    if parts
        .iter()
        .any(|&(_, _, role)| scheme.role_type(role, cols, n_layers).is_none())
    {
        return (kept(), WeightFormat::F32);
    }
    let types = parts
        .iter()
        .map(|&(c, ty, role)| ty.or_else(|| scheme.role_type(role, c, n_layers)))
        .collect();
    (types, format)
}

/// Readies the host tensors of one backend weight (several parts for a fused weight, each
/// named for errors and with its [`MixRole`]) of a model of `n_layers` layers under `format`,
/// returning them with the format to pack them in.
///
/// Under a quantized format every dense 2-D part is quantized to the type its role gets in the
/// format's mix (see the module docs and [`packed_types`]); already-quantized parts are kept.
/// When the columns fit no block type, all parts are returned as they are with
/// [`WeightFormat::F32`]. Under the dense formats the parts and format are returned unchanged.
///
/// Errors: INVALID_MODEL naming the tensor when a dense part is not 2-D or holds a non-finite
/// value.
pub fn prepare(
    parts: Vec<(String, HostTensor, MixRole)>,
    n_layers: usize,
    format: WeightFormat,
) -> Result<(Vec<HostTensor>, WeightFormat)> {
    let layouts: Vec<_> = parts
        .iter()
        .map(|(_, t, role)| {
            let cols = t.shape.get(1).copied().unwrap_or(0);
            (cols, t.quant().map(|q| q.ty()), *role)
        })
        .collect();
    let (types, fmt) = packed_types(&layouts, n_layers, format);
    if !fmt.is_quantized() {
        return Ok((parts.into_iter().map(|(_, t, _)| t).collect(), fmt));
    }
    let cols = layouts.first().map_or(0, |l| l.0);
    let mut out = Vec::with_capacity(parts.len());
    for ((name, t, _), ty) in parts.into_iter().zip(types) {
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
        let Some(ty) = ty else {
            return Err(Error::invalid_model(format!(
                "tensor \"{name}\" has {c} columns, not the {cols} of the other parts of its weight"
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
    Ok((out, fmt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(rows: usize, cols: usize) -> (String, HostTensor) {
        let v = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        ("w".to_string(), HostTensor::f32(vec![rows, cols], v))
    }

    fn one(
        rows: usize,
        cols: usize,
        role: MixRole,
        format: WeightFormat,
    ) -> (Vec<HostTensor>, WeightFormat) {
        let (n, t) = dense(rows, cols);
        prepare(vec![(n, t, role)], 16, format).unwrap()
    }

    #[test]
    fn q4_k_is_the_q4_k_m_mix_with_its_fallbacks() {
        let (t, f) = one(2, 512, MixRole::Projection, WeightFormat::Q4K);
        assert_eq!(
            (t[0].quant().unwrap().ty(), f),
            (GgmlType::Q4K, WeightFormat::Q4K)
        );
        let (t, _) = one(2, 512, MixRole::Head, WeightFormat::Q4K);
        assert_eq!(t[0].quant().unwrap().ty(), GgmlType::Q6K);
        // Layer 0 of 16 gets more bits; layer 3 does not.
        let (t, _) = one(2, 256, MixRole::AttnV { layer: 0 }, WeightFormat::Q4K);
        assert_eq!(t[0].quant().unwrap().ty(), GgmlType::Q6K);
        let (t, _) = one(2, 256, MixRole::FfnDown { layer: 3 }, WeightFormat::Q4K);
        assert_eq!(t[0].quant().unwrap().ty(), GgmlType::Q4K);
        // A fused weight mixes types: q/k Q4_K, v Q6_K.
        let parts = ["q", "k", "v"]
            .iter()
            .zip([
                MixRole::Projection,
                MixRole::Projection,
                MixRole::AttnV { layer: 15 },
            ])
            .map(|(n, r)| (n.to_string(), dense(2, 256).1, r))
            .collect();
        let (t, _) = prepare(parts, 16, WeightFormat::Q4K).unwrap();
        let types: Vec<_> = t.iter().map(|t| t.quant().unwrap().ty()).collect();
        assert_eq!(types, [GgmlType::Q4K, GgmlType::Q4K, GgmlType::Q6K]);
        // 64 columns: no 256-block fits, llama.cpp's legacy fallbacks do.
        let parts = vec![
            (dense(3, 64).0, dense(3, 64).1, MixRole::Projection),
            (dense(1, 64).0, dense(1, 64).1, MixRole::Head),
        ];
        let (t, f) = prepare(parts, 16, WeightFormat::Q4K).unwrap();
        let types: Vec<_> = t.iter().map(|t| t.quant().unwrap().ty()).collect();
        assert_eq!(types, [GgmlType::Q5_0, GgmlType::Q8_0]);
        assert_eq!(f, WeightFormat::Q4K);
        // 176 columns: nothing fits, the weight stays dense f32.
        let (t, f) = one(2, 176, MixRole::Projection, WeightFormat::Q8_0);
        assert_eq!((t[0].quant(), f), (None, WeightFormat::F32));
    }

    #[test]
    fn dense_formats_and_quantized_tensors_pass_through() {
        let d = dense(2, 256);
        let (t, f) = one(2, 256, MixRole::Projection, WeightFormat::BF16);
        assert_eq!((&t[0], f), (&d.1, WeightFormat::BF16));
        let q = HostTensor::quantized(
            crate::quant::quantize::quantize(GgmlType::Q4_0, 2, 256, &d.1.to_f32_vec()).unwrap(),
        );
        let (t, _) = prepare(
            vec![("q".into(), q.clone(), MixRole::Projection)],
            16,
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
            vec![(
                "model.layers.0.mlp.up_proj.weight".into(),
                t,
                MixRole::Projection,
            )],
            16,
            WeightFormat::Q8_0,
        )
        .unwrap_err();
        assert_eq!(e.code(), crate::error::ErrorCode::InvalidModel);
        assert!(e.message().contains("up_proj") && e.message().contains("row 1, column 6"));
    }
}
