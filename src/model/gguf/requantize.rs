//! Re-quantizing a GGUF model file to one of the common llama.cpp schemes (Q8_0, Q4_0,
//! Q4_K_M, Q5_K_M, Q6_K) with loraplex's own quantizers ([`crate::quant::quantize`]).
//!
//! Every tensor is expanded to f32 ([`crate::quant::dequantize`]) and quantized again; names,
//! shapes, order, metadata (but `general.file_type`) and llama.cpp's q/k row order are kept, so
//! the output loads wherever the input did (loraplex, llama.cpp, transformers). The result is a
//! pure function of the input file and the scheme.
//!
//! Type per tensor: 1-D tensors (norms) stay F32; matrices follow the mix rules of
//! [`crate::quant::mix`] (llama.cpp's `llama_tensor_get_type`, simplified), by GGUF tensor name.

use std::path::Path;

use super::reader::{GgufFile, MetaValue};
use super::writer::GgufWriter;
use crate::error::{Error, Result};
use crate::quant::mix::MixRole;
use crate::quant::{dequantize, quantize::quantize, GgmlType};

pub use crate::quant::mix::QuantScheme;

impl QuantScheme {
    /// The type of the GGUF tensor `name` (`[rows, cols]` in row-major order) in a model of
    /// `n_layers` layers; `has_output` says whether the file has a separate `output.weight`.
    /// The [`crate::quant::mix`] rules, by GGUF name; a row that fits no block type gets the
    /// scheme's rule anyway (quantizing it then fails naming the tensor).
    pub fn tensor_type(
        self,
        name: &str,
        cols: usize,
        n_layers: usize,
        has_output: bool,
    ) -> GgmlType {
        let layer = layer_of(name);
        let role = if name == "output.weight" || (!has_output && name == "token_embd.weight") {
            MixRole::Head
        } else if name == "token_embd.weight" {
            MixRole::Embedding
        } else if let (true, Some(layer)) = (name.ends_with(".attn_v.weight"), layer) {
            MixRole::AttnV { layer }
        } else if let (true, Some(layer)) = (name.ends_with(".ffn_down.weight"), layer) {
            MixRole::FfnDown { layer }
        } else {
            MixRole::Projection
        };
        // A row of no whole 32-block: the rule for a 256-multiple row, then the quantizer
        // refuses it by name.
        self.role_type(role, cols, n_layers)
            .or_else(|| self.role_type(role, 256, n_layers))
            .unwrap_or(GgmlType::Q8_0)
    }
}

/// The layer number of `blk.N.*`.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// What [`requantize_gguf`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct RequantReport {
    /// `(tensor name, type written)` in file order.
    pub tensors: Vec<(String, GgmlType)>,
    /// Bytes of tensor data written.
    pub tensor_bytes: u64,
}

/// Reads the GGUF at `src`, re-quantizes every tensor with `scheme` and writes `dst`.
///
/// Errors: those of [`GgufFile::open`] and of dequantizing a tensor of `src` (each naming the
/// tensor); IO naming `dst`. `src` and `dst` may not be the same file (INVALID_ARGUMENT).
pub fn requantize_gguf(src: &Path, dst: &Path, scheme: QuantScheme) -> Result<RequantReport> {
    if src == dst {
        return Err(Error::invalid_argument(format!(
            "{}: cannot re-quantize a file onto itself",
            src.display()
        )));
    }
    let g = GgufFile::open(src)?;
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.set(k, v.clone());
    }
    w.set("general.file_type", MetaValue::U32(scheme.file_type()));
    w.set("general.quantization_version", MetaValue::U32(2));
    let arch = g
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("llama");
    let n_layers = g
        .get(&format!("{arch}.block_count"))
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as usize;
    let has_output = g.tensor("output.weight").is_some();
    let mut report = RequantReport {
        tensors: Vec::with_capacity(g.tensors.len()),
        tensor_bytes: 0,
    };
    for info in &g.tensors {
        let ctx = |e: Error| e.context(format!("{}: tensor \"{}\"", src.display(), info.name));
        let n = usize::try_from(info.n_elements)
            .map_err(|_| ctx(Error::invalid_model("too many elements")))?;
        let values = dequantize(info.ggml_type, &g.read_tensor_bytes(info)?, n).map_err(ctx)?;
        let (ty, bytes) = match info.dims.as_slice() {
            [cols, rest @ ..] if !rest.is_empty() => {
                let cols = *cols as usize;
                let ty = scheme.tensor_type(&info.name, cols, n_layers, has_output);
                let q = quantize(ty, n / cols, cols, &values).map_err(ctx)?;
                (ty, q.bytes().to_vec())
            }
            _ => (
                GgmlType::F32,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        };
        report.tensor_bytes += bytes.len() as u64;
        report.tensors.push((info.name.clone(), ty));
        w.add_tensor(&info.name, &info.dims, ty, bytes)?;
    }
    w.write(dst)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_types_follow_the_mix_rules() {
        let t = |s: QuantScheme, name: &str, cols: usize| s.tensor_type(name, cols, 32, true);
        assert_eq!(
            t(QuantScheme::Q4KM, "blk.5.attn_q.weight", 4096),
            GgmlType::Q4K
        );
        // Layers 0..4 and 28..32 get more bits, and every third from layer 4 + 2.
        assert_eq!(
            t(QuantScheme::Q4KM, "blk.0.attn_v.weight", 4096),
            GgmlType::Q6K
        );
        assert_eq!(
            t(QuantScheme::Q4KM, "blk.6.ffn_down.weight", 14336),
            GgmlType::Q6K
        );
        assert_eq!(
            t(QuantScheme::Q4KM, "blk.7.ffn_down.weight", 14336),
            GgmlType::Q4K
        );
        assert_eq!(
            t(QuantScheme::Q4KM, "blk.31.attn_v.weight", 4096),
            GgmlType::Q6K
        );
        assert_eq!(t(QuantScheme::Q5KM, "output.weight", 4096), GgmlType::Q6K);
        assert_eq!(t(QuantScheme::Q8_0, "output.weight", 4096), GgmlType::Q8_0);
        assert_eq!(t(QuantScheme::Q4_0, "output.weight", 4096), GgmlType::Q6K);
        // Rows that are not whole super-blocks fall back like llama.cpp.
        assert_eq!(
            t(QuantScheme::Q4KM, "blk.5.attn_q.weight", 576),
            GgmlType::Q5_0
        );
        assert_eq!(
            t(QuantScheme::Q5KM, "blk.5.attn_q.weight", 576),
            GgmlType::Q5_1
        );
        assert_eq!(
            t(QuantScheme::Q6K, "blk.5.attn_q.weight", 576),
            GgmlType::Q8_0
        );
        // A tied model's embedding is its head.
        assert_eq!(
            QuantScheme::Q4KM.tensor_type("token_embd.weight", 4096, 32, false),
            GgmlType::Q6K
        );
    }
}
