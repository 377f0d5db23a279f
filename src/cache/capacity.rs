//! The capacity planner: for a model, a memory budget and a workload (largest adapter rank,
//! adapters resident on the device and in the host cache, sequences × context), what fits, the
//! byte breakdown the engine would allocate, and the largest value of each knob that fits with
//! the others held at the workload's values. Nothing is loaded: the weights bytes come from the
//! model's config / GGUF header ([`ModelHeader`]) through the same packing rules the loader
//! and backend use, and every other part from [`MemoryPlan::size`], the engine's own sizing.
//!
//! Fitting means both: the engine starts ([`MemoryPlan::size`] accepts the budget) and its KV
//! cache holds `max_num_seqs` sequences of `max_model_len` tokens at once, each in whole blocks
//! of `kv_block_size` tokens.
//!
//! Pure logic over the model's metadata; no threads, no allocation of the planned memory.

use serde::Serialize;
use serde_json::Value;

use super::plan::{DeviceMemory, ModelLen, ModelLenBound, Sizing};
use super::MemoryPlan;
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::model::header::ModelHeader;
use crate::model::ModelConfig;

/// The largest value the planner accepts for, and searches, a count knob (adapter rank, adapter
/// counts, sequences, batch tokens, context): far beyond any real deployment, and small enough
/// that no size computed from it overflows.
pub const KNOB_LIMIT: usize = 1 << 24;

/// A workload to plan for. `None` takes the value of the engine config it is applied to; the
/// names and units are those of [`EngineConfig`] (and of the C ABI's workload JSON keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// Largest adapter rank served (`max_lora_rank`).
    pub max_lora_rank: Option<usize>,
    /// Adapters resident in device slots (`max_gpu_loras`).
    pub max_gpu_loras: Option<usize>,
    /// Adapters in the host cache (`max_cpu_loras`).
    pub max_cpu_loras: Option<usize>,
    /// Sequences running at once (`max_num_seqs`).
    pub max_num_seqs: Option<usize>,
    /// Context per sequence, prompt + completion tokens (`max_model_len`; 0 = the model's
    /// `max_position_embeddings` capped at 8192, as in the config).
    pub max_model_len: Option<usize>,
    /// Tokens per step (`max_batch_tokens`).
    pub max_batch_tokens: Option<usize>,
    /// The memory budget (`memory_budget_bytes`; 0 = none: then only the KV cache, sized as the
    /// engine sizes it without a budget, bounds sequences and context).
    pub memory_budget_bytes: Option<usize>,
}

/// The workload JSON keys, in [`Workload`] field order.
const KEYS: [&str; 7] = [
    "max_lora_rank",
    "max_gpu_loras",
    "max_cpu_loras",
    "max_num_seqs",
    "max_model_len",
    "max_batch_tokens",
    "memory_budget_bytes",
];

impl Workload {
    /// Parses a workload JSON object whose keys are the field names, each a non-negative
    /// integer or null (= the config's value). Empty or all-whitespace text is the empty
    /// workload. Errors (INVALID_ARGUMENT, starting with "workload"): text that is not a JSON
    /// object, an unknown key (listing the known ones), a value that is not a non-negative
    /// integer (naming the key).
    pub fn from_json(text: &str) -> Result<Self> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::invalid_argument(format!("workload: invalid JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| {
            Error::invalid_argument(format!("workload: expected a JSON object, got {v}"))
        })?;
        let mut w = Self::default();
        for (key, value) in obj {
            let slot = w.slot(key).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "workload: unknown key \"{key}\" (known: {})",
                    KEYS.join(", ")
                ))
            })?;
            *slot = match value {
                Value::Null => None,
                v => Some(
                    v.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| {
                            Error::invalid_argument(format!(
                                "workload: \"{key}\" must be a non-negative integer (got {v})"
                            ))
                        })?,
                ),
            };
        }
        Ok(w)
    }

    fn slot(&mut self, key: &str) -> Option<&mut Option<usize>> {
        Some(match key {
            "max_lora_rank" => &mut self.max_lora_rank,
            "max_gpu_loras" => &mut self.max_gpu_loras,
            "max_cpu_loras" => &mut self.max_cpu_loras,
            "max_num_seqs" => &mut self.max_num_seqs,
            "max_model_len" => &mut self.max_model_len,
            "max_batch_tokens" => &mut self.max_batch_tokens,
            "memory_budget_bytes" => &mut self.memory_budget_bytes,
            _ => return None,
        })
    }

    /// `cfg` with this workload's values in place of its own: the config an engine serving the
    /// workload is built with. Errors (INVALID_ARGUMENT naming the field): a workload count of 0
    /// (except `max_model_len` and `memory_budget_bytes`, where 0 keeps its config meaning); a
    /// knob or `kv_block_size` of the result over [`KNOB_LIMIT`].
    pub fn apply(&self, cfg: &EngineConfig) -> Result<EngineConfig> {
        let mut c = cfg.clone();
        let fields: [(&str, Option<usize>, &mut usize, bool); 7] = [
            (
                "max_lora_rank",
                self.max_lora_rank,
                &mut c.max_lora_rank,
                true,
            ),
            (
                "max_gpu_loras",
                self.max_gpu_loras,
                &mut c.max_gpu_loras,
                true,
            ),
            (
                "max_cpu_loras",
                self.max_cpu_loras,
                &mut c.max_cpu_loras,
                true,
            ),
            ("max_num_seqs", self.max_num_seqs, &mut c.max_num_seqs, true),
            (
                "max_model_len",
                self.max_model_len,
                &mut c.max_model_len,
                false,
            ),
            (
                "max_batch_tokens",
                self.max_batch_tokens,
                &mut c.max_batch_tokens,
                true,
            ),
            (
                "memory_budget_bytes",
                self.memory_budget_bytes,
                &mut c.memory_budget_bytes,
                false,
            ),
        ];
        for (name, value, slot, positive) in fields {
            if let Some(v) = value {
                if positive && v == 0 {
                    return Err(Error::invalid_argument(format!(
                        "workload: {name} must be > 0 (got 0)"
                    )));
                }
                *slot = v;
            }
        }
        let limited = [
            ("max_lora_rank", c.max_lora_rank),
            ("max_gpu_loras", c.max_gpu_loras),
            ("max_cpu_loras", c.max_cpu_loras),
            ("max_num_seqs", c.max_num_seqs),
            ("max_model_len", c.max_model_len),
            ("max_batch_tokens", c.max_batch_tokens),
            ("kv_block_size", c.kv_block_size),
        ];
        if let Some((name, v)) = limited.into_iter().find(|&(_, v)| v > KNOB_LIMIT) {
            return Err(Error::invalid_argument(format!(
                "plan: {name} {v} exceeds the planner's limit {KNOB_LIMIT}"
            )));
        }
        Ok(c)
    }
}

/// What stops a knob from being larger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KnobBound {
    /// One more exceeds `memory_budget_bytes`.
    MemoryBudget,
    /// One more needs more KV blocks than the KV cache holds.
    KvCache,
    /// The model's `max_position_embeddings` (context only).
    MaxPositionEmbeddings,
    /// `max_gpu_loras` may not exceed `max_cpu_loras`.
    MaxCpuLoras,
    /// Memory does not bound it (no budget, or it does not change what is measured against
    /// it); [`KNOB_LIMIT`] is the search limit.
    Unbounded,
    /// Not even the smallest value fits: the other knobs alone do not fit.
    DoesNotFit,
}

/// The largest value of one knob that fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KnobLimit {
    /// The largest value that fits; `None` when none does or memory does not bound it.
    pub value: Option<usize>,
    /// What stops it.
    pub bound: KnobBound,
}

/// The largest value of every knob, the others held at the workload's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KnobLimits {
    /// Largest adapter rank.
    pub max_lora_rank: KnobLimit,
    /// Most device adapter slots.
    pub max_gpu_loras: KnobLimit,
    /// Most host-cached adapters.
    pub max_cpu_loras: KnobLimit,
    /// Most sequences at once.
    pub max_num_seqs: KnobLimit,
    /// Longest context per sequence.
    pub max_model_len: KnobLimit,
    /// Most tokens per step.
    pub max_batch_tokens: KnobLimit,
}

/// The KV cache against the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KvFit {
    /// Tokens per block.
    pub block_size: usize,
    /// Bytes of one block (all layers, K and V).
    pub block_bytes: usize,
    /// Blocks the engine would allocate (0 when it would refuse to start).
    pub blocks: usize,
    /// Tokens they hold.
    pub tokens: usize,
    /// Blocks the workload needs: `max_num_seqs × ⌈max_model_len / block_size⌉`.
    pub blocks_needed: usize,
    /// Tokens the workload holds at once: `max_num_seqs × max_model_len`.
    pub tokens_needed: usize,
}

/// The settings planned for (the workload applied to the config, context resolved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedSettings {
    /// The model path.
    pub model: String,
    /// The device.
    pub device: String,
    /// The weight format's name (`f32`, `bf16`, `q8_0`, `q4_k`).
    pub weight_dtype: &'static str,
    /// Largest adapter rank.
    pub max_lora_rank: usize,
    /// Device adapter slots.
    pub max_gpu_loras: usize,
    /// Host adapter cache capacity.
    pub max_cpu_loras: usize,
    /// Sequences at once.
    pub max_num_seqs: usize,
    /// Context per sequence, resolved.
    pub max_model_len: usize,
    /// What bounds it when it was automatic.
    pub max_model_len_bound: ModelLenBound,
    /// Tokens per step.
    pub max_batch_tokens: usize,
    /// KV block size in tokens.
    pub kv_block_size: usize,
    /// Explicit KV cache bytes (0 = sized by the engine).
    pub kv_cache_bytes: usize,
    /// The budget (0 = none).
    pub memory_budget_bytes: usize,
    /// The model's `max_position_embeddings` (the hard limit on context).
    pub max_position_embeddings: usize,
}

/// The planner's answer; serializes to the JSON `lpx_engine_plan_json` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapacityPlan {
    /// What was planned for.
    pub workload: PlannedSettings,
    /// Whether the engine starts and its KV cache holds the workload.
    pub fits: bool,
    /// Why not (names the part that does not fit); `None` when it fits.
    pub reason: Option<String>,
    /// What the engine would allocate (equal to its `stats_json()["memory"]`); `None` when it
    /// would refuse to start (the budget is too small).
    pub memory: Option<MemoryPlan>,
    /// Sum of `memory`.
    pub total_bytes: Option<usize>,
    /// The plan with a KV cache of exactly the blocks the workload needs (and no budget).
    pub required: MemoryPlan,
    /// Sum of `required`: with `kv_cache_bytes` 0, the smallest budget the workload fits in.
    pub required_bytes: usize,
    /// The KV cache against the workload.
    pub kv: KvFit,
    /// The largest value of each knob that fits, the others at the workload's values.
    pub largest: KnobLimits,
}

/// Plans `workload` on the engine config `cfg` (model, device, weight format, KV block size and
/// bytes, and the knobs the workload leaves out). Reads the model's config.json or GGUF header
/// only. The same config given to [`crate::engine::Engine::new`] (see [`Workload::apply`])
/// allocates exactly [`CapacityPlan::memory`].
///
/// Errors: INVALID_ARGUMENT naming the field for a bad config or workload (0 or over
/// [`KNOB_LIMIT`] counts, `max_gpu_loras` over `max_cpu_loras`, `max_model_len` over the
/// model's `max_position_embeddings`, a bad device string); the model reader's IO /
/// INVALID_MODEL / UNSUPPORTED errors naming the file; UNSUPPORTED for a device this build has
/// no backend for. A workload that does not fit is not an error: `fits` is false.
pub fn plan_capacity(cfg: &EngineConfig, workload: &Workload) -> Result<CapacityPlan> {
    let planned = workload.apply(cfg)?;
    planned.validate()?;
    let header = ModelHeader::read(&planned.model)?;
    let weights = header
        .packed_weight_bytes(&planned.device, planned.weight_format)
        .map_err(|e| e.context(planned.model.display()))?;
    let model = &header.config;
    let len = ModelLen::resolve(planned.max_model_len, model)?;
    let dev = DeviceMemory::planned(&planned.device);
    let block_bytes = MemoryPlan::one_kv_block(&planned, model).bytes_at(dev.kv_elem_bytes);
    let blocks_needed = MemoryPlan::blocks_for_sequences(&planned, len.tokens);
    let required = MemoryPlan::size_on(
        &EngineConfig {
            memory_budget_bytes: 0,
            kv_cache_bytes: blocks_needed.max(1).saturating_mul(block_bytes),
            ..planned.clone()
        },
        model,
        len,
        weights,
        dev,
    )?
    .plan;
    let sized = MemoryPlan::size_on(&planned, model, len, weights, dev);
    let blocks = sized.as_ref().map_or(0, |s| s.kv.num_blocks);
    let reason = assess(&planned, model, weights).err().map(|(_, why)| why);
    let memory = sized.ok().map(|s| s.plan);
    let search = Search {
        cfg: &planned,
        model,
        weights,
    };
    Ok(CapacityPlan {
        workload: PlannedSettings {
            model: planned.model.display().to_string(),
            device: planned.device.clone(),
            weight_dtype: planned.weight_format.name(),
            max_lora_rank: planned.max_lora_rank,
            max_gpu_loras: planned.max_gpu_loras,
            max_cpu_loras: planned.max_cpu_loras,
            max_num_seqs: planned.max_num_seqs,
            max_model_len: len.tokens,
            max_model_len_bound: len.bound,
            max_batch_tokens: planned.max_batch_tokens,
            kv_block_size: planned.kv_block_size,
            kv_cache_bytes: planned.kv_cache_bytes,
            memory_budget_bytes: planned.memory_budget_bytes,
            max_position_embeddings: model.max_position_embeddings,
        },
        fits: reason.is_none(),
        reason,
        total_bytes: memory.map(|m| m.total()),
        memory,
        required_bytes: required.total(),
        required,
        kv: KvFit {
            block_size: planned.kv_block_size,
            block_bytes,
            blocks,
            tokens: blocks.saturating_mul(planned.kv_block_size),
            blocks_needed,
            tokens_needed: planned.max_num_seqs.saturating_mul(len.tokens),
        },
        largest: search.limits(),
    })
}

/// Why a config does not fit: what bounds it and the message.
type Misfit = (KnobBound, String);

/// Whether an engine under `cfg` starts and holds its workload.
fn assess(
    cfg: &EngineConfig,
    model: &ModelConfig,
    weights: usize,
) -> std::result::Result<Sizing, Misfit> {
    let len = ModelLen::resolve(cfg.max_model_len, model)
        .map_err(|e| (KnobBound::MaxPositionEmbeddings, e.message().to_string()))?;
    let s = MemoryPlan::size_on(cfg, model, len, weights, DeviceMemory::planned(&cfg.device))
        .map_err(|e| (KnobBound::MemoryBudget, e.message().to_string()))?;
    let needed = MemoryPlan::blocks_for_sequences(cfg, len.tokens);
    if s.kv.num_blocks < needed {
        return Err((
            KnobBound::KvCache,
            format!(
                "the KV cache holds {} blocks of {} tokens ({} tokens), but {} sequences of {} \
                 tokens need {needed} blocks ({} each)",
                s.kv.num_blocks,
                cfg.kv_block_size,
                s.kv.num_blocks * cfg.kv_block_size,
                cfg.max_num_seqs,
                len.tokens,
                len.tokens.div_ceil(cfg.kv_block_size.max(1)),
            ),
        ));
    }
    Ok(s)
}

/// The knob searches over one planned config.
struct Search<'a> {
    cfg: &'a EngineConfig,
    model: &'a ModelConfig,
    weights: usize,
}

impl Search<'_> {
    fn limits(&self) -> KnobLimits {
        let c = self.cfg;
        let budget = c.memory_budget_bytes > 0;
        // Without a budget nothing but the KV cache is measured, and only sequences and
        // context change what it must hold.
        let unbounded = KnobLimit {
            value: None,
            bound: KnobBound::Unbounded,
        };
        let mem = |lo, hi, hard, set: fn(&mut EngineConfig, usize)| {
            if budget {
                self.largest(lo, hi, hard, set)
            } else {
                unbounded
            }
        };
        KnobLimits {
            max_lora_rank: mem(1, KNOB_LIMIT, KnobBound::Unbounded, |c, v| {
                c.max_lora_rank = v
            }),
            max_gpu_loras: self.largest(1, c.max_cpu_loras, KnobBound::MaxCpuLoras, |c, v| {
                c.max_gpu_loras = v
            }),
            max_cpu_loras: mem(c.max_gpu_loras, KNOB_LIMIT, KnobBound::Unbounded, |c, v| {
                c.max_cpu_loras = v
            }),
            max_num_seqs: self.largest(1, KNOB_LIMIT, KnobBound::Unbounded, |c, v| {
                c.max_num_seqs = v
            }),
            max_model_len: self.largest(
                1,
                self.model.max_position_embeddings.min(KNOB_LIMIT),
                KnobBound::MaxPositionEmbeddings,
                |c, v| c.max_model_len = v,
            ),
            max_batch_tokens: mem(1, KNOB_LIMIT, KnobBound::Unbounded, |c, v| {
                c.max_batch_tokens = v
            }),
        }
    }

    /// Whether the planned config with the knob at `v` fits.
    fn fits(&self, set: fn(&mut EngineConfig, usize), v: usize) -> std::result::Result<(), Misfit> {
        let mut c = self.cfg.clone();
        set(&mut c, v);
        assess(&c, self.model, self.weights).map(|_| ())
    }

    /// The largest `v` in `lo..=hi` that fits (fitting is monotone: every knob only adds
    /// bytes or KV blocks needed), found by doubling then bisection; `hard` names the bound
    /// when `hi` itself fits.
    fn largest(
        &self,
        lo: usize,
        hi: usize,
        hard: KnobBound,
        set: fn(&mut EngineConfig, usize),
    ) -> KnobLimit {
        if lo > hi || self.fits(set, lo).is_err() {
            return KnobLimit {
                value: None,
                bound: KnobBound::DoesNotFit,
            };
        }
        let mut good = lo;
        let mut bad = None;
        while good < hi {
            let next = good.saturating_mul(2).min(hi);
            if self.fits(set, next).is_ok() {
                good = next;
            } else {
                bad = Some(next);
                break;
            }
        }
        let Some(mut bad) = bad else {
            let value = (hard != KnobBound::Unbounded).then_some(hi);
            return KnobLimit { value, bound: hard };
        };
        while bad - good > 1 {
            let mid = good + (bad - good) / 2;
            if self.fits(set, mid).is_ok() {
                good = mid;
            } else {
                bad = mid;
            }
        }
        let bound = match self.fits(set, bad) {
            Err((b, _)) => b,
            Ok(()) => KnobBound::Unbounded,
        };
        KnobLimit {
            value: Some(good),
            bound,
        }
    }
}
