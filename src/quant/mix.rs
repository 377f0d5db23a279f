//! Quantization mixes: which ggml type each weight matrix of a model gets under one of
//! llama.cpp's file types (Q8_0, Q4_0, Q4_K_M, Q5_K_M, Q6_K). One policy for both places that
//! quantize: re-quantizing a GGUF file ([`crate::model::gguf::requantize`], by tensor name) and
//! quantizing a dense checkpoint at load ([`crate::model::weight_quant`], `weight_dtype` q8_0 =
//! [`QuantScheme::Q8_0`], q4_k = [`QuantScheme::Q4KM`]), so a model gets the same types either
//! way.
//!
//! Rules, after llama.cpp's `llama_tensor_get_type` (simplified):
//! * the output head (or a tied model's embedding, which is its head) is Q6_K (Q8_0 under Q8_0);
//! * Q4_K_M / Q5_K_M: `attn_v` and `ffn_down` of the layers llama.cpp gives more bits (the first
//!   and last eighth, and every third layer between) are Q6_K; every other matrix (the untied
//!   embedding included) has the scheme's base type;
//! * a K type whose row is not a whole number of 256-element super-blocks falls back as in
//!   llama.cpp: Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0; a row that is not a whole number of
//!   32-element blocks fits no type ([`QuantScheme::role_type`] says `None`).

use std::str::FromStr;

use super::GgmlType;
use crate::error::{Error, Result};

/// A whole-model quantization scheme, named as llama.cpp names its file types.
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

/// What a weight matrix is in the model, as far as the mix rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixRole {
    /// The output head: `lm_head` / `output`, or a tied model's token embedding.
    Head,
    /// The token embedding of a model with a separate head.
    Embedding,
    /// The value projection (`v_proj` / `attn_v`) of a layer.
    AttnV {
        /// The layer.
        layer: usize,
    },
    /// The down projection (`down_proj` / `ffn_down`) of a layer.
    FfnDown {
        /// The layer.
        layer: usize,
    },
    /// Any other projection (q, k, o, gate, up).
    Projection,
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

    /// llama.cpp's `llama_ftype` number (written to a GGUF's `general.file_type`).
    pub fn file_type(self) -> u32 {
        match self {
            Self::Q8_0 => 7,
            Self::Q4_0 => 2,
            Self::Q4KM => 15,
            Self::Q5KM => 17,
            Self::Q6K => 18,
        }
    }

    /// The type of a matrix of `role` with `cols` columns in a model of `n_layers` layers (see
    /// the module docs), or `None` when `cols` is not a whole number of 32-element blocks.
    pub fn role_type(self, role: MixRole, cols: usize, n_layers: usize) -> Option<GgmlType> {
        let base = match self {
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4KM => GgmlType::Q4K,
            Self::Q5KM => GgmlType::Q5K,
            Self::Q6K => GgmlType::Q6K,
        };
        let more_bits_layer = matches!(self, Self::Q4KM | Self::Q5KM)
            && match role {
                MixRole::AttnV { layer } | MixRole::FfnDown { layer } => more_bits(layer, n_layers),
                _ => false,
            };
        let ty = if self != Self::Q8_0 && (role == MixRole::Head || more_bits_layer) {
            GgmlType::Q6K
        } else {
            base
        };
        let ty = if cols.is_multiple_of(256) {
            ty
        } else {
            match ty {
                GgmlType::Q4K => GgmlType::Q5_0,
                GgmlType::Q5K => GgmlType::Q5_1,
                GgmlType::Q6K => GgmlType::Q8_0,
                other => other,
            }
        };
        cols.is_multiple_of(ty.block_size() as usize).then_some(ty)
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

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third layer
/// between them.
fn more_bits(layer: usize, n_layers: usize) -> bool {
    let eighth = n_layers / 8;
    layer < eighth || layer >= 7 * n_layers / 8 || (layer - eighth) % 3 == 2
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
    fn roles_follow_the_mix_rules() {
        let t = |s: QuantScheme, role, cols| s.role_type(role, cols, 32);
        use MixRole::*;
        assert_eq!(t(QuantScheme::Q4KM, Projection, 4096), Some(GgmlType::Q4K));
        // Layers 0..4 and 28..32 get more bits, and every third from layer 4 + 2.
        assert_eq!(
            t(QuantScheme::Q4KM, AttnV { layer: 0 }, 4096),
            Some(GgmlType::Q6K)
        );
        assert_eq!(
            t(QuantScheme::Q4KM, FfnDown { layer: 6 }, 14336),
            Some(GgmlType::Q6K)
        );
        assert_eq!(
            t(QuantScheme::Q4KM, FfnDown { layer: 7 }, 14336),
            Some(GgmlType::Q4K)
        );
        assert_eq!(
            t(QuantScheme::Q4KM, AttnV { layer: 31 }, 4096),
            Some(GgmlType::Q6K)
        );
        assert_eq!(
            t(QuantScheme::Q6K, AttnV { layer: 7 }, 4096),
            Some(GgmlType::Q6K)
        );
        assert_eq!(t(QuantScheme::Q5KM, Head, 4096), Some(GgmlType::Q6K));
        assert_eq!(t(QuantScheme::Q8_0, Head, 4096), Some(GgmlType::Q8_0));
        assert_eq!(t(QuantScheme::Q4_0, Head, 4096), Some(GgmlType::Q6K));
        assert_eq!(t(QuantScheme::Q4KM, Embedding, 4096), Some(GgmlType::Q4K));
        // Rows that are not whole super-blocks fall back like llama.cpp; rows that are not
        // whole 32-blocks fit nothing.
        assert_eq!(t(QuantScheme::Q4KM, Projection, 576), Some(GgmlType::Q5_0));
        assert_eq!(t(QuantScheme::Q5KM, Projection, 576), Some(GgmlType::Q5_1));
        assert_eq!(t(QuantScheme::Q6K, Projection, 576), Some(GgmlType::Q8_0));
        assert_eq!(t(QuantScheme::Q4KM, Head, 576), Some(GgmlType::Q8_0));
        assert_eq!(t(QuantScheme::Q4KM, Projection, 176), None);
        assert_eq!(t(QuantScheme::Q8_0, Projection, 176), None);
    }
}
