//! The LoRA target modules of a Llama decoder layer: a neutral vocabulary shared by the adapter
//! readers (`adapters`), the caches and the backend, so that none of them imports another for it.

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
