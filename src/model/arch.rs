//! The decoder families loraplex serves ([`Architecture`]) and how each differs from plain Llama.
//!
//! All four are the same pre-norm decoder (RMSNorm, GQA attention with HF "rotate half" RoPE,
//! SiLU-gated MLP); they differ only in:
//!
//! | family | HF class / `model_type` | GGUF `general.architecture` | difference |
//! | --- | --- | --- | --- |
//! | Llama (1-3.2) | `LlamaForCausalLM` / `llama` | `llama` | `rope_scaling` (llama3, linear) |
//! | Mistral | `MistralForCausalLM` / `mistral` | `llama` (llama.cpp converts it so) | sliding-window attention on every layer |
//! | Qwen2 / 2.5 | `Qwen2ForCausalLM` / `qwen2` | `qwen2` | q/k/v projection biases; optional window on layers by `layer_types` |
//! | Qwen3 (dense) | `Qwen3ForCausalLM` / `qwen3` | `qwen3` | per-head RMSNorm of q and k before RoPE, explicit `head_dim` |
//!
//! Anything else (Gemma, Phi, MoE models such as Mixtral or Qwen2-MoE, ...) is refused with
//! UNSUPPORTED naming the architecture: its checkpoint would load only in part or compute
//! something else.

use std::fmt;

use crate::error::{Error, Result};

/// A supported decoder family (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Architecture {
    /// Llama 1/2/3.x (and any `llama` GGUF, including converted Mistral models).
    #[default]
    Llama,
    /// Mistral (sliding-window attention).
    Mistral,
    /// Qwen2 / Qwen2.5 (q/k/v biases).
    Qwen2,
    /// Qwen3 dense (q/k RMSNorm).
    Qwen3,
}

/// Supported HF `architectures` entries and `model_type` values, with their family.
const HF_NAMES: &[(&str, &str, Architecture)] = &[
    ("LlamaForCausalLM", "llama", Architecture::Llama),
    ("MistralForCausalLM", "mistral", Architecture::Mistral),
    ("Qwen2ForCausalLM", "qwen2", Architecture::Qwen2),
    ("Qwen3ForCausalLM", "qwen3", Architecture::Qwen3),
];

impl Architecture {
    /// The family from a HF config's `architectures` list (or, when absent, its `model_type`).
    /// Errors: UNSUPPORTED naming what the config says when no entry is a supported family;
    /// INVALID_MODEL when neither field is present.
    pub fn from_hf(architectures: Option<&[&str]>, model_type: Option<&str>) -> Result<Self> {
        let by_class = |a: &str| HF_NAMES.iter().find(|n| n.0 == a).map(|n| n.2);
        let by_type = |t: &str| HF_NAMES.iter().find(|n| n.1 == t).map(|n| n.2);
        let found = match (architectures, model_type) {
            (Some(list), _) if !list.is_empty() => list.iter().find_map(|a| by_class(a)),
            (_, Some(t)) => by_type(t),
            _ => return Err(Error::invalid_model(
                "config.json names no architecture (neither \"architectures\" nor \"model_type\")",
            )),
        };
        found.ok_or_else(|| {
            let said = match (architectures, model_type) {
                (Some(list), _) if !list.is_empty() => format!("{list:?}"),
                (_, t) => format!("model_type \"{}\"", t.unwrap_or_default()),
            };
            Error::unsupported(format!(
                "unsupported architecture {said}: loraplex serves {}",
                supported_list()
            ))
        })
    }

    /// The family of a GGUF `general.architecture`. Errors: UNSUPPORTED naming it.
    pub fn from_gguf(arch: &str) -> Result<Self> {
        match arch {
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "qwen3" => Ok(Self::Qwen3),
            other => Err(Error::unsupported(format!(
                "general.architecture = \"{other}\" is not supported (llama, qwen2, qwen3; \
                 loraplex serves {})",
                supported_list()
            ))),
        }
    }

    /// `q_proj`, `k_proj` and `v_proj` carry biases (`o_proj` does not).
    pub fn qkv_bias(self) -> bool {
        self == Self::Qwen2
    }

    /// q and k are RMS-normalised per head (`self_attn.q_norm` / `k_norm`, `[head_dim]`)
    /// before RoPE.
    pub fn qk_norm(self) -> bool {
        self == Self::Qwen3
    }

    /// The GGUF `general.architecture` of this family (Mistral converts to `llama`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::Llama | Self::Mistral => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
    }

    /// llama.cpp's converter permutes q/k rows for this GGUF architecture (`llama` only; its
    /// Qwen2/Qwen3 converters keep HF's row order).
    pub fn gguf_permutes_qk(self) -> bool {
        matches!(self, Self::Llama | Self::Mistral)
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Llama => "Llama",
            Self::Mistral => "Mistral",
            Self::Qwen2 => "Qwen2",
            Self::Qwen3 => "Qwen3",
        })
    }
}

fn supported_list() -> String {
    let names: Vec<&str> = HF_NAMES.iter().map(|n| n.0).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn hf_names_map_to_families_and_others_are_named() {
        assert_eq!(
            Architecture::from_hf(Some(&["Qwen3ForCausalLM"]), Some("qwen3")).unwrap(),
            Architecture::Qwen3
        );
        assert_eq!(
            Architecture::from_hf(None, Some("mistral")).unwrap(),
            Architecture::Mistral
        );
        for bad in ["GemmaForCausalLM", "PhiForCausalLM", "MixtralForCausalLM"] {
            let e = Architecture::from_hf(Some(&[bad]), Some("llama")).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Unsupported);
            assert!(e.message().contains(bad), "{}", e.message());
        }
        let e = Architecture::from_hf(None, Some("qwen2_moe")).unwrap_err();
        assert!(e.message().contains("qwen2_moe"), "{}", e.message());
        let e = Architecture::from_hf(None, None).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidModel);
        let e = Architecture::from_gguf("gemma2").unwrap_err();
        assert!(e.message().contains("gemma2"), "{}", e.message());
        assert!(Architecture::Qwen2.qkv_bias() && !Architecture::Qwen3.qkv_bias());
        assert!(Architecture::Qwen3.qk_norm() && !Architecture::Llama.qk_norm());
        assert!(!Architecture::Qwen2.gguf_permutes_qk());
    }
}
