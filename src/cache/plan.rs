//! The engine's memory plan (DESIGN.md 1.1 "Memory estimate"): bytes for weights, both adapter
//! caches at `max_lora_rank`, activations and LoRA scratch, and the KV cache, plus the longest
//! sequence the engine accepts. [`ModelLen::resolve`] and [`MemoryPlan::size`] are the one place
//! the engine is sized; `Engine::new` allocates what they return.
//!
//! Pure logic: no I/O, no allocation of the planned memory, no threads.

use serde::Serialize;

use crate::adapters::ModelShape;
use crate::backend::{KvGeometry, LoraPrecision, LoraStackGeometry, WeightFormat};
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::model::ModelConfig;

/// The automatic `max_model_len` is capped here (a default, not a model limit).
pub const DEFAULT_MAX_MODEL_LEN: usize = 8192;
/// The automatic KV cache (no `kv_cache_bytes`, no budget) is capped here.
pub const DEFAULT_KV_CACHE_CAP_BYTES: usize = 1 << 30;
/// Bytes of one stored value (weights are measured by the backend; everything planned here is
/// f32).
const F32_BYTES: usize = 4;

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

/// What bounds `max_model_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelLenBound {
    /// The configured `max_model_len`.
    Configured,
    /// The model's `max_position_embeddings`.
    MaxPositionEmbeddings,
    /// The default cap, [`DEFAULT_MAX_MODEL_LEN`].
    DefaultCap,
}

/// The longest prompt + completion the engine accepts, and what bounds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModelLen {
    /// Tokens.
    pub tokens: usize,
    /// Why it is not larger.
    pub bound: ModelLenBound,
}

impl ModelLen {
    /// `requested` 0 (automatic) → the smaller of `max_position_embeddings` and
    /// [`DEFAULT_MAX_MODEL_LEN`]. Otherwise `requested`, which must not exceed
    /// `max_position_embeddings`. A sliding window does not bound the length: attention applies
    /// it. Errors: INVALID_ARGUMENT naming the limit and both numbers.
    pub fn resolve(requested: usize, model: &ModelConfig) -> Result<Self> {
        if requested == 0 {
            let bounds = [
                (
                    model.max_position_embeddings,
                    ModelLenBound::MaxPositionEmbeddings,
                ),
                (DEFAULT_MAX_MODEL_LEN, ModelLenBound::DefaultCap),
            ];
            // Ties go to the earlier entry: the model's own limit is the better explanation.
            let (tokens, bound) =
                bounds
                    .into_iter()
                    .fold(bounds[0], |best, b| if b.0 < best.0 { b } else { best });
            return Ok(Self { tokens, bound });
        }
        if requested > model.max_position_embeddings {
            return Err(Error::invalid_argument(format!(
                "max_model_len {requested} exceeds the model's max_position_embeddings {}",
                model.max_position_embeddings
            )));
        }
        Ok(Self {
            tokens: requested,
            bound: ModelLenBound::Configured,
        })
    }
}

/// The least device memory kept free for what the plan does not count (the driver's and the
/// kernels' own allocations, fragmentation) when the KV cache is sized from free memory.
pub const DEVICE_MARGIN_MIN_BYTES: usize = 512 << 20;

/// What the memory plan needs to know of the device the engine runs on
/// ([`crate::backend::DeviceBackend::device_memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes of one cached K or V value: 4 (f32, host backends) or 2 (bf16, CUDA).
    pub kv_elem_bytes: usize,
    /// Bytes of one adapter weight in the device adapter arena whatever the base weights: 4
    /// (host backends, which follow the base weights: see [`MemoryPlan::lora_precision`]) or
    /// 2 (bf16, CUDA). The host adapter cache is f32 everywhere.
    pub lora_elem_bytes: usize,
    /// For a device with its own memory: its free bytes after the weights were loaded (the
    /// automatic KV cache is sized from it); `None` for host memory.
    pub free_bytes: Option<usize>,
}

impl DeviceMemory {
    /// The host backends: an f32 KV cache in host memory.
    pub const HOST: Self = Self {
        kv_elem_bytes: F32_BYTES,
        lora_elem_bytes: F32_BYTES,
        free_bytes: None,
    };

    /// The device named by `device` as the capacity planner sees it without opening it: a
    /// `cuda:N` device keeps a bf16 KV cache and bf16 adapter slots (its free memory is
    /// unknown, so the planner's automatic KV cache is the host default); anything else is
    /// [`DeviceMemory::HOST`].
    pub fn planned(device: &str) -> Self {
        match crate::backend::select::Device::parse(device) {
            Ok(crate::backend::select::Device::Cuda(_)) => Self {
                kv_elem_bytes: 2,
                lora_elem_bytes: 2,
                free_bytes: None,
            },
            _ => Self::HOST,
        }
    }
}

/// How the engine is sized: the plan and the geometries it allocates from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Bytes per component.
    pub plan: MemoryPlan,
    /// The KV cache to allocate (`plan.kv_cache_bytes == kv.bytes_at(kv_elem_bytes)`, `bytes()`
    /// on the host backends).
    pub kv: KvGeometry,
    /// The device adapter arena to allocate (`max_gpu_loras` slots at `max_lora_rank`).
    pub lora: LoraStackGeometry,
}

impl MemoryPlan {
    /// Sizes an engine running `model` under `cfg` with sequences of up to `len` tokens, given
    /// the bytes of the packed weights (as the backend measured them).
    ///
    /// KV cache: `cfg.kv_cache_bytes` when set; otherwise, with `cfg.memory_budget_bytes`, what
    /// the other parts leave of the budget; otherwise enough for `max_num_seqs` sequences of
    /// `len` tokens each in whole blocks, capped at [`DEFAULT_KV_CACHE_CAP_BYTES`]. It is rounded down to whole
    /// blocks of `kv_block_size` tokens.
    ///
    /// Errors (INVALID_ARGUMENT): a budget the parts exceed (the message lists every part), a KV
    /// size below one block (naming both numbers), sizes that overflow.
    pub fn size(
        cfg: &EngineConfig,
        model: &ModelConfig,
        len: ModelLen,
        weights_bytes: usize,
    ) -> Result<Sizing> {
        Self::size_on(cfg, model, len, weights_bytes, DeviceMemory::HOST)
    }

    /// How the device adapter arena stores adapter weights: bf16 on a device that keeps them
    /// in bf16 (`dev.lora_elem_bytes == 2`) and when the base weights are bf16
    /// (`cfg.weight_format`), so that LoRA streams the same precision as the base; f32
    /// otherwise (f32 and quantized bases).
    pub fn lora_precision(cfg: &EngineConfig, dev: DeviceMemory) -> LoraPrecision {
        if dev.lora_elem_bytes == 2 || cfg.weight_format == WeightFormat::BF16 {
            LoraPrecision::Bf16
        } else {
            LoraPrecision::F32
        }
    }

    /// [`MemoryPlan::size`] for an engine on a device described by `dev`: the KV cache is
    /// planned at `dev.kv_elem_bytes` per value, the device adapter arena at the bytes of its
    /// [`MemoryPlan::lora_precision`] per weight (the host adapter cache at 4), and for a device with
    /// its own memory (`dev.free_bytes`) the automatic KV cache (no `kv_cache_bytes`, no
    /// budget) is what the free memory leaves after the device adapter arena, the activations
    /// and a margin (the larger of [`DEVICE_MARGIN_MIN_BYTES`] and 5% of the free memory),
    /// capped at what `max_num_seqs` sequences of `len` tokens can use. Errors as
    /// [`MemoryPlan::size`], and DEVICE when the free memory does not leave one KV block
    /// (naming every part).
    pub fn size_on(
        cfg: &EngineConfig,
        model: &ModelConfig,
        len: ModelLen,
        weights_bytes: usize,
        dev: DeviceMemory,
    ) -> Result<Sizing> {
        let shape = ModelShape::of(model, crate::tensor::DType::F32);
        let lora = LoraStackGeometry {
            num_slots: cfg.max_gpu_loras,
            max_rank: cfg.max_lora_rank,
            num_layers: model.num_layers,
            dims: shape.lora_dims(),
            precision: Self::lora_precision(cfg, dev),
        };
        let overflow = |what: &str| Error::invalid_argument(format!("{what} overflows"));
        let slot_bytes = |elem_bytes: usize| {
            lora.slot_elems()
                .checked_mul(elem_bytes)
                .ok_or_else(|| overflow("adapter slot size"))
        };
        let mut plan = MemoryPlan {
            weights_bytes,
            host_adapter_cache_bytes: slot_bytes(F32_BYTES)?
                .checked_mul(cfg.max_cpu_loras)
                .ok_or_else(|| overflow("host adapter cache size"))?,
            device_adapter_cache_bytes: slot_bytes(lora.precision.elem_bytes())?
                .checked_mul(cfg.max_gpu_loras)
                .ok_or_else(|| overflow("device adapter cache size"))?,
            activations_bytes: Self::step_activation_bytes(
                &shape,
                model.vocab_size,
                cfg.max_batch_tokens,
                cfg.max_num_seqs.min(cfg.max_batch_tokens),
                cfg.max_lora_rank,
            ),
            kv_cache_bytes: 0,
        };
        let block = Self::one_kv_block(cfg, model);
        let block_bytes = block.bytes_at(dev.kv_elem_bytes);
        let budget = cfg.memory_budget_bytes;
        let kv_bytes = if cfg.kv_cache_bytes > 0 {
            cfg.kv_cache_bytes
        } else if budget > 0 {
            budget.saturating_sub(plan.total())
        } else if let Some(free) = dev.free_bytes {
            let wanted = Self::blocks_for_sequences(cfg, len.tokens).saturating_mul(block_bytes);
            Self::device_kv_bytes(free, &plan, block_bytes)?.min(wanted)
        } else {
            Self::blocks_for_sequences(cfg, len.tokens)
                .saturating_mul(block_bytes)
                .min(DEFAULT_KV_CACHE_CAP_BYTES)
        };
        let num_blocks = kv_bytes.checked_div(block_bytes).unwrap_or(0);
        let kv = KvGeometry {
            num_blocks,
            ..block
        };
        plan.kv_cache_bytes = kv.bytes_at(dev.kv_elem_bytes);
        if budget > 0 && (num_blocks == 0 || plan.total() > budget) {
            return Err(Error::invalid_argument(format!(
                "memory_budget_bytes {budget} is too small: weights {} + host adapter cache {} + \
                 device adapter cache {} + activations {} = {} bytes, and the KV cache needs {} \
                 (at least one block of {block_bytes})",
                plan.weights_bytes,
                plan.host_adapter_cache_bytes,
                plan.device_adapter_cache_bytes,
                plan.activations_bytes,
                plan.total() - plan.kv_cache_bytes,
                plan.kv_cache_bytes.max(block_bytes),
            )));
        }
        if num_blocks == 0 {
            return Err(Error::invalid_argument(format!(
                "kv_cache_bytes {kv_bytes} is smaller than one KV block ({block_bytes} bytes)"
            )));
        }
        Ok(Sizing { plan, kv, lora })
    }

    /// The KV bytes `free` device bytes leave after the device adapter arena, the activations
    /// and the margin (see [`MemoryPlan::size_on`]); DEVICE error when under one block.
    fn device_kv_bytes(free: usize, plan: &MemoryPlan, block_bytes: usize) -> Result<usize> {
        let margin = DEVICE_MARGIN_MIN_BYTES.max(free / 20);
        let others = plan
            .device_adapter_cache_bytes
            .saturating_add(plan.activations_bytes)
            .saturating_add(margin);
        let kv = free.saturating_sub(others);
        if kv < block_bytes {
            return Err(Error::device(format!(
                "the device has {free} bytes free after the weights: the device adapter cache \
                 {} + activations {} + margin {margin} leave {kv} bytes for the KV cache, less \
                 than one block of {block_bytes} (lower max_gpu_loras, max_lora_rank or \
                 max_batch_tokens, or set kv_cache_bytes)",
                plan.device_adapter_cache_bytes, plan.activations_bytes
            )));
        }
        Ok(kv)
    }

    /// The KV geometry of one block of `cfg.kv_block_size` tokens of `model`.
    pub fn one_kv_block(cfg: &EngineConfig, model: &ModelConfig) -> KvGeometry {
        KvGeometry {
            num_layers: model.num_layers,
            num_blocks: 1,
            block_size: cfg.kv_block_size,
            num_kv_heads: model.num_kv_heads,
            head_dim: model.head_dim,
        }
    }

    /// KV blocks that hold `cfg.max_num_seqs` sequences of `len` tokens at once, each in whole
    /// blocks (the default KV cache's size, and what the capacity planner requires).
    pub fn blocks_for_sequences(cfg: &EngineConfig, len: usize) -> usize {
        len.div_ceil(cfg.kv_block_size.max(1))
            .saturating_mul(cfg.max_num_seqs)
    }

    /// f32 elements of one adapter at `rank` on every target of every layer.
    pub fn adapter_elems(shape: &ModelShape, rank: usize) -> usize {
        LoraStackGeometry {
            num_slots: 1,
            max_rank: rank,
            num_layers: shape.num_layers,
            dims: shape.lora_dims(),
            precision: LoraPrecision::F32,
        }
        .slot_elems()
    }

    /// Activation bytes of one step of `tokens` rows that samples one row (see
    /// [`MemoryPlan::step_activation_bytes`]).
    pub fn activation_bytes(
        shape: &ModelShape,
        vocab: usize,
        tokens: usize,
        max_rank: usize,
    ) -> usize {
        Self::step_activation_bytes(shape, vocab, tokens, 1, max_rank)
    }

    /// Activation bytes of one step of `tokens` rows of which `logit_rows` are sampled: every
    /// buffer the forward pass allocates per row (x, normed, proj, fused qkv, attention output,
    /// gate/up, activation), LoRA shrink scratch at `max_rank` per row, and per sampled row the
    /// gathered and normed hidden rows plus its logits on the device and on the host.
    pub fn step_activation_bytes(
        shape: &ModelShape,
        vocab: usize,
        tokens: usize,
        logit_rows: usize,
        max_rank: usize,
    ) -> usize {
        let q = shape.num_heads * shape.head_dim;
        let kv = shape.num_kv_heads * shape.head_dim;
        let per_row =
            3 * shape.hidden_size + (q + 2 * kv) + q + 3 * shape.intermediate_size + max_rank;
        let per_logit_row = 2 * shape.hidden_size + 2 * vocab;
        F32_BYTES.saturating_mul(
            tokens
                .saturating_mul(per_row)
                .saturating_add(logit_rows.max(1).saturating_mul(per_logit_row)),
        )
    }

    /// Sum of all parts.
    pub fn total(&self) -> usize {
        self.weights_bytes
            .saturating_add(self.host_adapter_cache_bytes)
            .saturating_add(self.device_adapter_cache_bytes)
            .saturating_add(self.activations_bytes)
            .saturating_add(self.kv_cache_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::model::RopeScaling;

    fn model(window: Option<usize>) -> ModelConfig {
        ModelConfig {
            architecture: crate::model::Architecture::Mistral,
            hidden_size: 64,
            intermediate_size: 96,
            num_layers: 3,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            vocab_size: 100,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::None,
            max_position_embeddings: 2048,
            sliding_window: window,
            sliding_layers: None,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_ids: vec![2],
        }
    }

    fn cfg() -> EngineConfig {
        let mut c = EngineConfig::new("unused");
        c.max_num_seqs = 4;
        c.max_batch_tokens = 32;
        c.kv_block_size = 16;
        c.max_cpu_loras = 3;
        c.max_gpu_loras = 2;
        c.max_lora_rank = 8;
        c
    }

    /// Bytes of one KV block of `model()` with 16-token blocks, computed by hand:
    /// K and V × 3 layers × 16 tokens × 2 heads × 16 dims × 4 bytes.
    const BLOCK: usize = 2 * 3 * 16 * 2 * 16 * 4;

    fn len(tokens: usize) -> ModelLen {
        ModelLen {
            tokens,
            bound: ModelLenBound::Configured,
        }
    }

    #[test]
    fn default_kv_holds_max_num_seqs_full_sequences() {
        let m = model(None);
        let s = MemoryPlan::size(&cfg(), &m, len(100), 1000).unwrap();
        // 4 sequences × 100 tokens, each in 7 whole blocks of 16 (400 tokens would fit in 25
        // blocks, but not as 4 sequences).
        assert_eq!(s.kv.num_blocks, 28);
        assert_eq!(s.kv.block_size, 16);
        assert_eq!(s.plan.kv_cache_bytes, 28 * BLOCK);
        assert_eq!(s.plan.kv_cache_bytes, s.kv.bytes());
        assert_eq!(s.plan.weights_bytes, 1000);
        // The default is capped.
        let mut c = cfg();
        c.max_num_seqs = 1 << 20;
        let s = MemoryPlan::size(&c, &m, len(2048), 0).unwrap();
        assert_eq!(s.kv.num_blocks, DEFAULT_KV_CACHE_CAP_BYTES / BLOCK);
    }

    #[test]
    fn adapter_caches_reserve_every_slot_at_max_rank() {
        let m = model(None);
        let s = MemoryPlan::size(&cfg(), &m, len(100), 0).unwrap();
        // Per layer at rank 8: q (64+64), k (64+32), v (64+32), o (64+64), gate and up
        // (64+96 each), down (96+64).
        let per_layer = (128 + 96 + 96 + 128 + 160 + 160 + 160) * 8;
        let slot = 3 * per_layer * 4;
        assert_eq!(s.plan.host_adapter_cache_bytes, 3 * slot);
        assert_eq!(s.plan.device_adapter_cache_bytes, 2 * slot);
        assert_eq!(s.lora.num_slots, 2);
        assert_eq!(s.lora.max_rank, 8);
        assert_eq!(s.lora.slot_elems() * 4, slot);
        let shape = ModelShape::of(&m, crate::tensor::DType::F32);
        assert_eq!(MemoryPlan::adapter_elems(&shape, 8) * 4, slot);
    }

    #[test]
    fn activations_cover_every_row_and_sampled_row() {
        let m = model(None);
        let s = MemoryPlan::size(&cfg(), &m, len(100), 0).unwrap();
        // Per row: x, normed, proj (3×64) + qkv (64+2×32) + attn (64) + gate/up and act (3×96)
        // + shrink scratch (8); per sampled row (4 = max_num_seqs): 2×64 + 2×100.
        let per_row = 3 * 64 + 128 + 64 + 3 * 96 + 8;
        assert_eq!(
            s.plan.activations_bytes,
            4 * (32 * per_row + 4 * (128 + 200))
        );
    }

    #[test]
    fn explicit_kv_bytes_round_down_to_blocks() {
        let mut c = cfg();
        c.kv_cache_bytes = 7 * BLOCK + BLOCK / 2;
        let s = MemoryPlan::size(&c, &model(None), len(100), 0).unwrap();
        assert_eq!(s.kv.num_blocks, 7);
        assert_eq!(s.plan.kv_cache_bytes, 7 * BLOCK);
        c.kv_cache_bytes = BLOCK - 1;
        let e = MemoryPlan::size(&c, &model(None), len(100), 0).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert!(
            e.message()
                .contains(&format!("kv_cache_bytes {}", BLOCK - 1))
                && e.message().contains(&format!("{BLOCK} bytes")),
            "{}",
            e.message()
        );
    }

    #[test]
    fn budget_gives_the_kv_cache_what_is_left() {
        let m = model(None);
        let free = MemoryPlan::size(&cfg(), &m, len(100), 5000).unwrap().plan;
        let others = free.total() - free.kv_cache_bytes;
        let mut c = cfg();
        c.memory_budget_bytes = others + 10 * BLOCK + 17;
        let s = MemoryPlan::size(&c, &m, len(100), 5000).unwrap();
        assert_eq!(s.kv.num_blocks, 10);
        assert_eq!(s.plan.total(), others + 10 * BLOCK);
        assert!(s.plan.total() <= c.memory_budget_bytes);
    }

    #[test]
    fn budget_too_small_lists_every_part() {
        let m = model(None);
        let mut c = cfg();
        c.memory_budget_bytes = 4096;
        let s = MemoryPlan::size(&cfg(), &m, len(100), 5000).unwrap().plan;
        let e = MemoryPlan::size(&c, &m, len(100), 5000).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        let msg = e.message();
        for part in [
            "memory_budget_bytes 4096".to_string(),
            "weights 5000".to_string(),
            format!("host adapter cache {}", s.host_adapter_cache_bytes),
            format!("device adapter cache {}", s.device_adapter_cache_bytes),
            format!("activations {}", s.activations_bytes),
            format!("one block of {BLOCK}"),
        ] {
            assert!(msg.contains(&part), "{part:?} missing in: {msg}");
        }
        // Room for the other parts but not one block is still too small.
        c.memory_budget_bytes = s.total() - s.kv_cache_bytes + BLOCK - 1;
        assert!(MemoryPlan::size(&c, &m, len(100), 5000).is_err());
        // An explicit KV size is checked against the budget too.
        c.memory_budget_bytes = s.total() - s.kv_cache_bytes + 2 * BLOCK;
        c.kv_cache_bytes = 3 * BLOCK;
        let e = MemoryPlan::size(&c, &m, len(100), 5000).unwrap_err();
        assert!(
            e.message().contains("memory_budget_bytes"),
            "{}",
            e.message()
        );
        c.kv_cache_bytes = 2 * BLOCK;
        assert_eq!(
            MemoryPlan::size(&c, &m, len(100), 5000)
                .unwrap()
                .kv
                .num_blocks,
            2
        );
    }

    #[test]
    fn model_len_is_not_capped_by_the_sliding_window() {
        let auto = ModelLen::resolve(0, &model(None)).unwrap();
        assert_eq!(auto.tokens, 2048);
        assert_eq!(auto.bound, ModelLenBound::MaxPositionEmbeddings);
        let mut long = model(None);
        long.max_position_embeddings = 1 << 20;
        let auto = ModelLen::resolve(0, &long).unwrap();
        assert_eq!(
            (auto.tokens, auto.bound),
            (DEFAULT_MAX_MODEL_LEN, ModelLenBound::DefaultCap)
        );

        // Attention applies the window, so it bounds nothing.
        let w = model(Some(512));
        let auto = ModelLen::resolve(0, &w).unwrap();
        assert_eq!(
            (auto.tokens, auto.bound),
            (2048, ModelLenBound::MaxPositionEmbeddings)
        );
        let set = ModelLen::resolve(1024, &w).unwrap();
        assert_eq!((set.tokens, set.bound), (1024, ModelLenBound::Configured));
        let e = ModelLen::resolve(4096, &w).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert!(
            e.message().contains("max_position_embeddings 2048"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn a_device_plans_a_bf16_kv_cache_from_its_free_memory() {
        let (m, c) = (model(None), cfg());
        let host = MemoryPlan::size(&c, &m, len(100), 5000).unwrap();
        assert_eq!(
            MemoryPlan::size_on(&c, &m, len(100), 5000, DeviceMemory::HOST).unwrap(),
            host
        );
        let block2 = MemoryPlan::one_kv_block(&c, &m).bytes_at(2);
        // The device's adapter slots are bf16: half the host backends' f32 bytes.
        let arena2 = host.plan.device_adapter_cache_bytes / 2;
        let others = arena2 + host.plan.activations_bytes;
        // Little free memory: the KV cache is what the arena, activations and margin leave.
        let free = others + DEVICE_MARGIN_MIN_BYTES + 3 * block2 + 1;
        let dev = DeviceMemory {
            kv_elem_bytes: 2,
            lora_elem_bytes: 2,
            free_bytes: Some(free),
        };
        let s = MemoryPlan::size_on(&c, &m, len(100), 5000, dev).unwrap();
        assert_eq!(s.plan.device_adapter_cache_bytes, arena2);
        assert_eq!(
            s.plan.host_adapter_cache_bytes,
            host.plan.host_adapter_cache_bytes
        );
        assert_eq!(s.kv.num_blocks, 3);
        assert_eq!(s.plan.kv_cache_bytes, 3 * block2);
        assert_eq!(s.plan.kv_cache_bytes, s.kv.bytes_at(2));
        // Plenty: capped at what max_num_seqs full sequences use, in bf16.
        let big = DeviceMemory {
            free_bytes: Some(1 << 40),
            ..dev
        };
        let s = MemoryPlan::size_on(&c, &m, len(100), 5000, big).unwrap();
        assert_eq!(s.kv.num_blocks, MemoryPlan::blocks_for_sequences(&c, 100));
        // Too little: a DEVICE error naming the parts.
        let tiny = DeviceMemory {
            free_bytes: Some(others),
            ..dev
        };
        let e = MemoryPlan::size_on(&c, &m, len(100), 5000, tiny).unwrap_err();
        assert_eq!(e.code(), crate::error::ErrorCode::Device);
        assert!(
            e.message().contains("device adapter cache"),
            "{}",
            e.message()
        );
        // An explicit kv_cache_bytes is planned in bf16 blocks.
        let mut c2 = c.clone();
        c2.kv_cache_bytes = 5 * block2 + 7;
        let s = MemoryPlan::size_on(&c2, &m, len(100), 5000, dev).unwrap();
        assert_eq!(s.kv.num_blocks, 5);
        assert_eq!(DeviceMemory::planned("cpu"), DeviceMemory::HOST);
        assert_eq!(DeviceMemory::planned("cuda:1").kv_elem_bytes, 2);
        assert_eq!(DeviceMemory::planned("cuda:1").lora_elem_bytes, 2);
    }
}
