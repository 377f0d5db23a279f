//! Re-quantizing a GGUF model file to one of the common llama.cpp schemes (Q8_0, Q4_0,
//! Q4_K_M, Q5_K_M, Q6_K) with loraplex's own quantizers ([`crate::quant::quantize`]).
//!
//! Every tensor is expanded to f32 ([`crate::quant::dequantize`]) and quantized again; names,
//! shapes, order, metadata (but `general.file_type`) and llama.cpp's q/k row order are kept, so
//! the output loads wherever the input did (loraplex, llama.cpp, transformers). The result is a
//! pure function of the input file and the scheme.
//!
//! Type per tensor, after llama.cpp's `llama_tensor_get_type` (simplified, documented here):
//! * 1-D tensors (norms) stay F32;
//! * `output.weight` (or, when absent, the tied `token_embd.weight`) is Q6_K (Q8_0 for Q8_0);
//! * Q4_K_M / Q5_K_M: `attn_v` and `ffn_down` of the layers llama.cpp gives more bits (the
//!   first and last eighth, and every third layer between) are Q6_K; other tensors Q4_K / Q5_K;
//! * a K type whose row is not a whole number of 256-element super-blocks falls back as in
//!   llama.cpp: Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0.

use std::path::Path;
use std::str::FromStr;

use super::reader::{GgufFile, MetaValue};
use super::writer::GgufWriter;
use crate::error::{Error, Result};
use crate::quant::{dequantize, quantize::quantize, GgmlType};

/// A whole-file quantization scheme, named as llama.cpp names its file types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantScheme {
    /// Every matrix Q8_0.
    Q8_0,
    /// Matrices Q4_0, output Q6_K.
    Q4_0,
    /// Q4_K with Q6_K for the output and some `attn_v` / `ffn_down`.
    Q4KM,
    /// Q5_K with Q6_K for the output and some `attn_v` / `ffn_down`.
    Q5KM,
    /// Every matrix Q6_K.
    Q6K,
}

impl QuantScheme {
    /// Every scheme.
    pub const ALL: [QuantScheme; 5] = [Self::Q8_0, Self::Q4_0, Self::Q4KM, Self::Q5KM, Self::Q6K];

    /// llama.cpp's name ("Q4_K_M").
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
            Self::Q4KM => "Q4_K_M",
            Self::Q5KM => "Q5_K_M",
            Self::Q6K => "Q6_K",
        }
    }

    /// llama.cpp's `llama_ftype` number, written to `general.file_type`.
    fn file_type(self) -> u32 {
        match self {
            Self::Q8_0 => 7,
            Self::Q4_0 => 2,
            Self::Q4KM => 15,
            Self::Q5KM => 17,
            Self::Q6K => 18,
        }
    }

    /// The type of the tensor `name` (`[rows, cols]` in row-major order) in a model of
    /// `n_layers` layers; `has_output` says whether the file has a separate `output.weight`.
    pub fn tensor_type(
        self,
        name: &str,
        cols: usize,
        n_layers: usize,
        has_output: bool,
    ) -> GgmlType {
        let base = match self {
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4KM => GgmlType::Q4K,
            Self::Q5KM => GgmlType::Q5K,
            Self::Q6K => GgmlType::Q6K,
        };
        let head = name == "output.weight" || (!has_output && name == "token_embd.weight");
        let more_bits_layer = matches!(self, Self::Q4KM | Self::Q5KM)
            && (name.ends_with(".attn_v.weight") || name.ends_with(".ffn_down.weight"))
            && layer_of(name).is_some_and(|l| more_bits(l, n_layers));
        let ty = if self != Self::Q8_0 && (head || more_bits_layer) {
            GgmlType::Q6K
        } else {
            base
        };
        if cols.is_multiple_of(256) {
            return ty;
        }
        match ty {
            GgmlType::Q4K => GgmlType::Q5_0,
            GgmlType::Q5K => GgmlType::Q5_1,
            GgmlType::Q6K => GgmlType::Q8_0,
            other => other,
        }
    }
}

impl FromStr for QuantScheme {
    type Err = Error;
    /// Case-insensitive llama.cpp name; errors (INVALID_ARGUMENT) list the accepted names.
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|q| q.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|q| q.name()).collect();
                Error::invalid_argument(format!(
                    "quantization scheme \"{s}\" is not one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// The layer number of `blk.N.*`.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third layer
/// between them.
fn more_bits(layer: usize, n_layers: usize) -> bool {
    let eighth = n_layers / 8;
    layer < eighth || layer >= 7 * n_layers / 8 || (layer - eighth) % 3 == 2
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
    fn scheme_names_parse_and_unknown_ones_are_refused() {
        for q in QuantScheme::ALL {
            assert_eq!(q.name().to_lowercase().parse::<QuantScheme>().unwrap(), q);
        }
        let e = "Q3_K_S".parse::<QuantScheme>().unwrap_err();
        assert!(
            e.to_string().contains("Q3_K_S") && e.to_string().contains("Q4_K_M"),
            "{e}"
        );
    }

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
