//! Base model loading (HF safetensors directories and GGUF files) and the transformer of the
//! Llama family (Llama, Mistral, Qwen2, Qwen3: [`arch`]).

pub mod arch;
pub mod config;
pub mod gguf;
pub mod header;
pub mod layout;
pub mod llama;
pub mod packed_weights;
mod qkv_extras;
pub mod weight_quant;
pub mod weights;

use std::collections::HashMap;
use std::path::Path;

pub use config::{Architecture, ModelConfig, RopeScaling};

use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use crate::tokenizer::Tokenizer;

/// Tensors by their HuggingFace names (`model.embed_tokens.weight`,
/// `model.layers.{i}.self_attn.q_proj.weight`, ..., `model.norm.weight`, `lm_head.weight`).
pub type TensorMap = HashMap<String, HostTensor>;

/// Everything read from a model on disk, in HF layout, before the backend packs it.
pub struct ModelFiles {
    /// Shape and hyper-parameters.
    pub config: ModelConfig,
    /// Weights in HF naming and layout (q/k rows in HF order, not GGUF's permuted order).
    pub tensors: TensorMap,
    /// Tokenizer with chat template and special tokens.
    pub tokenizer: Tokenizer,
}

impl ModelFiles {
    /// Expands every tensor kept in ggml blocks to f32 (exactly as ggml dequantizes), so that
    /// backends compute on dense weights with f32 activations: the dequantized-GGUF path that
    /// reference logits are computed with.
    pub fn expand_quantized(&mut self) {
        for t in self.tensors.values_mut() {
            if t.quant().is_some() {
                *t = HostTensor::f32(t.shape.clone(), t.to_f32_vec());
            }
        }
    }

    /// Loads a HuggingFace directory (config.json + safetensors + tokenizer.json) or a `.gguf` file.
    pub fn load(path: &Path) -> Result<Self> {
        if path.is_dir() {
            weights::load_hf_dir(path)
        } else if path.is_file() {
            gguf::load_gguf(path)
        } else {
            Err(Error::new(
                crate::error::ErrorCode::Io,
                format!("model path {} does not exist (expected a HuggingFace directory or a .gguf file)", path.display()),
            ))
        }
    }
}
