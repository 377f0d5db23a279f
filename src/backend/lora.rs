//! The per-step description of which LoRA adapter slot each token row uses (DESIGN.md 1.4).
//!
//! Until adapters are served (the multi-LoRA issue) every batch is empty: all rows use the base
//! model. The engine builds one [`LoraBatch`] per step; the backend applies it in every target
//! module with `lora_apply`.

/// The seven LoRA target modules of a Llama decoder layer, in canonical order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraTarget {
    /// `self_attn.q_proj`.
    Q = 0,
    /// `self_attn.k_proj`.
    K = 1,
    /// `self_attn.v_proj`.
    V = 2,
    /// `self_attn.o_proj`.
    O = 3,
    /// `mlp.gate_proj`.
    Gate = 4,
    /// `mlp.up_proj`.
    Up = 5,
    /// `mlp.down_proj`.
    Down = 6,
}

impl LoraTarget {
    /// All seven, in canonical order.
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];
    /// The HF module name (`q_proj`, ..., `down_proj`).
    pub fn hf_name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }
    /// Index in [`LoraTarget::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Which device-cache slot each token row of a step uses; `-1` is the base model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoraBatch {
    /// One entry per token row of the step.
    pub token_slot: Vec<i32>,
}

impl LoraBatch {
    /// True when no row uses an adapter.
    pub fn is_empty(&self) -> bool {
        self.token_slot.iter().all(|&s| s < 0)
    }
}
