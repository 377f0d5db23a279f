//! The one normalised form every adapter format is read into (DESIGN.md 1.2).

use std::path::PathBuf;

use crate::lora_target::LoraTarget;

/// The on-disk format an adapter was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdapterFormat {
    /// HuggingFace PEFT with `adapter_model.safetensors`.
    HfSafetensors,
    /// HuggingFace PEFT with `adapter_model.bin` (torch zip pickle).
    HfBin,
    /// NeMo `.nemo` archive.
    Nemo,
    /// TensorRT-LLM `model.lora_config` / `model.lora_weights` (`.npy` or `.bin`).
    TrtLlm,
}

impl AdapterFormat {
    /// Stable lower-case name used in JSON ("hf-safetensors", "hf-bin", "nemo", "trtllm").
    pub fn name(self) -> &'static str {
        match self {
            AdapterFormat::HfSafetensors => "hf-safetensors",
            AdapterFormat::HfBin => "hf-bin",
            AdapterFormat::Nemo => "nemo",
            AdapterFormat::TrtLlm => "trtllm",
        }
    }
}

/// The base model dimensions an adapter is validated against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    /// Decoder layers.
    pub num_layers: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP intermediate size.
    pub intermediate_size: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// dtype of headerless TensorRT-LLM `.bin` files (the base model's dtype).
    pub dtype: crate::tensor::DType,
}

impl ModelShape {
    /// The shape of a base model, with `dtype` for headerless TensorRT-LLM `.bin` files.
    pub fn of(cfg: &crate::model::ModelConfig, dtype: crate::tensor::DType) -> Self {
        Self {
            num_layers: cfg.num_layers,
            hidden_size: cfg.hidden_size,
            intermediate_size: cfg.intermediate_size,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            dtype,
        }
    }

    /// `(in, out)` of every target, indexed by [`LoraTarget::index`].
    pub fn lora_dims(&self) -> [(usize, usize); 7] {
        LoraTarget::ALL.map(|t| self.module_dims(t))
    }

    /// `(in, out)` of a target module for this model.
    pub fn module_dims(&self, m: LoraTarget) -> (usize, usize) {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        match m {
            LoraTarget::Q => (h, q),
            LoraTarget::K | LoraTarget::V => (h, kv),
            LoraTarget::O => (q, h),
            LoraTarget::Gate | LoraTarget::Up => (h, i),
            LoraTarget::Down => (i, h),
        }
    }
}

/// One adapted module: `y += scale * B · (A · x)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraModule {
    /// Rank r.
    pub rank: usize,
    /// Input dimension.
    pub in_dim: usize,
    /// Output dimension.
    pub out_dim: usize,
    /// `A`, row-major `[rank, in_dim]`.
    pub a: Vec<f32>,
    /// `B`, row-major `[out_dim, rank]`.
    pub b: Vec<f32>,
    /// The scale s (alpha/r, alpha/sqrt(r) for rsLoRA, 1 for pre-scaled TRT-LLM B).
    pub scale: f32,
}

/// An adapter, fully parsed and validated: for each layer, each of the seven targets, at most one
/// module. Immutable once built; shared across threads behind an `Arc`.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizedAdapter {
    /// Adapter name (its directory name).
    pub name: String,
    /// Format it was read from.
    pub format: AdapterFormat,
    /// The directory (or file) it was read from.
    pub source: PathBuf,
    /// Content hash (hex) of the files read: the generation id.
    pub generation: String,
    /// `layers[l][target.index()]`.
    pub layers: Vec<[Option<LoraModule>; 7]>,
}

impl NormalizedAdapter {
    /// Largest rank of any module (0 if none).
    pub fn max_rank(&self) -> usize {
        self.modules().map(|(_, _, m)| m.rank).max().unwrap_or(0)
    }
    /// Bytes of A and B (f32).
    pub fn bytes(&self) -> usize {
        self.modules()
            .map(|(_, _, m)| (m.a.len() + m.b.len()) * 4)
            .sum()
    }
    /// Every present module as `(layer, target, module)`.
    pub fn modules(&self) -> impl Iterator<Item = (usize, LoraTarget, &LoraModule)> {
        self.layers.iter().enumerate().flat_map(|(l, mods)| {
            LoraTarget::ALL
                .iter()
                .filter_map(move |&t| mods[t.index()].as_ref().map(|m| (l, t, m)))
        })
    }
    /// Which targets any layer adapts.
    pub fn targets(&self) -> Vec<LoraTarget> {
        LoraTarget::ALL
            .iter()
            .copied()
            .filter(|t| self.layers.iter().any(|l| l[t.index()].is_some()))
            .collect()
    }
}
