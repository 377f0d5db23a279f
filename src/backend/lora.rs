//! The per-step description of which LoRA adapter slot each token row uses (DESIGN.md 1.4).
//!
//! The engine builds one [`LoraBatch`] per step (empty when every row uses the base model); the
//! backend applies it in every target module with `lora_apply`. [`LoraTarget`] lives in the
//! neutral [`crate::lora_target`] module (the adapter readers use it too) and is re-exported here.

pub use crate::lora_target::LoraTarget;

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

/// Shape of a device adapter arena: `num_slots` slots, each able to hold one adapter of rank up
/// to `max_rank` in every layer and target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoraStackGeometry {
    /// Slots (`max_gpu_loras`).
    pub num_slots: usize,
    /// Largest rank a slot holds (`max_lora_rank`).
    pub max_rank: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// `(in, out)` of each target, indexed by [`LoraTarget::index`].
    pub dims: [(usize, usize); 7],
}

impl LoraStackGeometry {
    /// f32 elements one slot reserves at `max_rank` (all layers, all targets).
    pub fn slot_elems(&self) -> usize {
        self.num_layers
            * self
                .dims
                .iter()
                .map(|(i, o)| (i + o) * self.max_rank)
                .sum::<usize>()
    }
}

/// One module's weights as handed to the backend: `y += scale * B · (A · x)`.
#[derive(Debug, Clone, Copy)]
pub struct LoraWeights<'a> {
    /// Rank r (1..=max_rank).
    pub rank: usize,
    /// `A`, row-major `[rank, in]`.
    pub a: &'a [f32],
    /// `B`, row-major `[out, rank]`.
    pub b: &'a [f32],
    /// Scale s.
    pub scale: f32,
}

/// An adapter as the backend sees it: `layers[l][target.index()]`, `None` = not adapted.
pub type LoraSlotData<'a> = [[Option<LoraWeights<'a>>; 7]];
