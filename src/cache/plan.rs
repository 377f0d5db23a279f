//! The engine's memory plan (DESIGN.md 1.1 "Memory estimate"): bytes for weights, both adapter
//! caches at `max_lora_rank`, activations and LoRA scratch, and the KV cache.

use serde::Serialize;

use crate::adapters::ModelShape;
use crate::lora_target::LoraTarget;

/// Bytes per component, as planned at engine start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryPlan {
    /// Packed base weights.
    pub weights_bytes: usize,
    /// Host adapter cache at capacity, every adapter at `max_lora_rank` on all 7 targets (upper bound).
    pub host_adapter_cache_bytes: usize,
    /// Device adapter arena (`max_gpu_loras` slots reserved at `max_lora_rank`).
    pub device_adapter_cache_bytes: usize,
    /// Step activations and LoRA scratch at `max_batch_tokens`.
    pub activations_bytes: usize,
    /// The KV cache.
    pub kv_cache_bytes: usize,
}

impl MemoryPlan {
    /// f32 elements of one adapter at `rank` on every target of every layer.
    pub fn adapter_elems(shape: &ModelShape, rank: usize) -> usize {
        shape.num_layers
            * LoraTarget::ALL
                .iter()
                .map(|&t| {
                    let (i, o) = shape.module_dims(t);
                    (i + o) * rank
                })
                .sum::<usize>()
    }

    /// Activation bytes of one step of `tokens` rows (every buffer the forward pass allocates,
    /// plus shrink scratch at `max_rank` for every row).
    pub fn activation_bytes(
        shape: &ModelShape,
        vocab: usize,
        tokens: usize,
        max_rank: usize,
    ) -> usize {
        let q = shape.num_heads * shape.head_dim;
        let kv = shape.num_kv_heads * shape.head_dim;
        let per_row =
            3 * shape.hidden_size + (q + 2 * kv) + q + 3 * shape.intermediate_size + max_rank;
        4 * (tokens * per_row + vocab)
    }

    /// Sum of all parts.
    pub fn total(&self) -> usize {
        self.weights_bytes
            + self.host_adapter_cache_bytes
            + self.device_adapter_cache_bytes
            + self.activations_bytes
            + self.kv_cache_bytes
    }
}
