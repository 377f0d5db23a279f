//! Engine configuration ([`EngineConfig`]) with defaults, validation and environment overrides
//! (`LPX_*` and NVIDIA NIM's `NIM_*` names).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::backend::WeightFormat;
use crate::error::{Error, Result};

/// Everything needed to create an [`crate::engine::Engine`]. Build with `EngineConfig::new(model)`
/// and adjust fields; [`EngineConfig::validate`] is called by the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// HuggingFace model directory or `.gguf` file.
    pub model: PathBuf,
    /// The name clients use for the base model (default: the model file/directory stem).
    pub served_model_name: Option<String>,
    /// "cpu" (default) or "cuda:N" (returns UNSUPPORTED in builds without CUDA).
    pub device: String,
    /// Worker compute threads (0 = all available cores).
    pub threads: usize,
    /// How base weights are stored: F32 (default), BF16 (half the bytes), or quantized at load
    /// to Q8_0 / Q4_K (dense checkpoints only; see [`WeightFormat`]).
    pub weight_format: WeightFormat,
    /// Most sequences in one step.
    pub max_num_seqs: usize,
    /// Most tokens (decode rows + prefill chunk rows) in one step.
    pub max_batch_tokens: usize,
    /// Longest prompt + completion, in tokens (0 = the model's max_position_embeddings, capped at 8192).
    pub max_model_len: usize,
    /// Token positions per KV block.
    pub kv_block_size: usize,
    /// Bytes for the KV cache (0 = enough for `max_num_seqs` sequences of `max_model_len`, capped at 1 GiB).
    pub kv_cache_bytes: usize,
    /// Most requests waiting or running before submit answers QUEUE_FULL.
    pub max_queue: usize,
    /// Total memory for weights, adapter caches, activations and KV cache (0 = no budget). When
    /// set and `kv_cache_bytes` is 0, the KV cache gets what the other parts leave.
    pub memory_budget_bytes: usize,
    /// PEFT source directories (`NIM_PEFT_SOURCE`).
    pub peft_source: Vec<PathBuf>,
    /// Rescan interval of the PEFT sources (`NIM_PEFT_REFRESH_INTERVAL`, None = never).
    pub peft_refresh_interval: Option<Duration>,
    /// Host adapter cache capacity (`NIM_MAX_CPU_LORAS`).
    pub max_cpu_loras: usize,
    /// Device adapter slots (`NIM_MAX_GPU_LORAS`).
    pub max_gpu_loras: usize,
    /// Largest accepted LoRA rank (`NIM_MAX_LORA_RANK`).
    pub max_lora_rank: usize,
    /// Keep full KV blocks by the tokens (and adapter generation) they hold and reuse them for
    /// requests that start with the same tokens (`LPX_PREFIX_CACHING` = 1/0, true/false). Outputs
    /// are the same bits with or without it. Default on.
    pub prefix_caching: bool,
    /// Admission weights by tenant: an adapter's name or the served base model name, weight >= 1
    /// (absent: 1). While both wait, a tenant of weight w is admitted w times as often as one of
    /// weight 1 (`LPX_ADAPTER_WEIGHTS="a=3,b=2"`).
    pub adapter_weights: BTreeMap<String, u32>,
    /// Most sequences of one adapter running at once (0 = no cap); further ones wait while other
    /// tenants run (`LPX_MAX_RUNNING_PER_ADAPTER`).
    pub max_running_per_adapter: usize,
    /// Running caps by tenant (adapter name or the served base model name), overriding
    /// `max_running_per_adapter`; 0 = no cap (`LPX_ADAPTER_MAX_RUNNING="a=2,b=0"`).
    pub adapter_max_running: BTreeMap<String, usize>,
}

impl EngineConfig {
    /// Defaults for `model`.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            served_model_name: None,
            device: "cpu".into(),
            threads: 0,
            weight_format: WeightFormat::F32,
            max_num_seqs: 64,
            max_batch_tokens: 512,
            max_model_len: 0,
            kv_block_size: 16,
            kv_cache_bytes: 0,
            max_queue: 4096,
            memory_budget_bytes: 0,
            peft_source: Vec::new(),
            peft_refresh_interval: None,
            max_cpu_loras: 16,
            max_gpu_loras: 8,
            max_lora_rank: 64,
            prefix_caching: true,
            adapter_weights: BTreeMap::new(),
            max_running_per_adapter: 0,
            adapter_max_running: BTreeMap::new(),
        }
    }

    /// Checks every field; the error names the field and its value.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("max_num_seqs", self.max_num_seqs),
            ("max_batch_tokens", self.max_batch_tokens),
            ("kv_block_size", self.kv_block_size),
            ("max_queue", self.max_queue),
            ("max_cpu_loras", self.max_cpu_loras),
            ("max_gpu_loras", self.max_gpu_loras),
            ("max_lora_rank", self.max_lora_rank),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::invalid_argument(format!(
                    "engine config: {name} must be > 0 (got 0)"
                )));
            }
        }
        if self.max_gpu_loras > self.max_cpu_loras {
            return Err(Error::invalid_argument(format!(
                "engine config: max_gpu_loras ({}) must not exceed max_cpu_loras ({})",
                self.max_gpu_loras, self.max_cpu_loras
            )));
        }
        if let Some((name, _)) = self.adapter_weights.iter().find(|(_, &w)| w == 0) {
            return Err(Error::invalid_argument(format!(
                "engine config: adapter_weights: weight of \"{name}\" must be >= 1 (got 0)"
            )));
        }
        if self.device != "cpu" && !self.device.starts_with("cuda") {
            return Err(Error::invalid_argument(format!(
                "engine config: device \"{}\" is not \"cpu\" or \"cuda:N\"",
                self.device
            )));
        }
        Ok(())
    }

    /// Applies environment overrides: `LPX_MODEL`, `LPX_SERVED_MODEL_NAME`, `LPX_DEVICE`,
    /// `LPX_THREADS`, `LPX_WEIGHT_DTYPE` (f32|bf16|q8_0|q4_k), `LPX_MAX_NUM_SEQS`, `LPX_MAX_BATCH_TOKENS`,
    /// `LPX_MAX_MODEL_LEN`, `LPX_KV_BLOCK_SIZE`, `LPX_KV_CACHE_BYTES`, `LPX_MEMORY_BUDGET_BYTES`,
    /// `LPX_MAX_QUEUE`, `LPX_PREFIX_CACHING`,
    /// `NIM_PEFT_SOURCE` (paths
    /// separated by ':'), `NIM_PEFT_REFRESH_INTERVAL` (seconds), `NIM_MAX_CPU_LORAS`,
    /// `NIM_MAX_GPU_LORAS`, `NIM_MAX_LORA_RANK`. A malformed value is an error naming the variable.
    pub fn apply_env(&mut self) -> Result<()> {
        self.apply_vars(|k| std::env::var(k).ok())
    }

    /// Same as [`EngineConfig::apply_env`] with variables looked up through `get` (for tests).
    pub fn apply_vars(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        let num = |k: &str| -> Result<Option<usize>> {
            match get(k) {
                None => Ok(None),
                Some(s) if s.trim().is_empty() => Ok(None),
                Some(s) => s.trim().parse::<usize>().map(Some).map_err(|_| {
                    Error::invalid_argument(format!(
                        "environment variable {k}=\"{s}\" is not a non-negative integer"
                    ))
                }),
            }
        };
        if let Some(m) = get("LPX_MODEL").filter(|s| !s.is_empty()) {
            self.model = PathBuf::from(m);
        }
        if let Some(n) = get("LPX_SERVED_MODEL_NAME").filter(|s| !s.is_empty()) {
            self.served_model_name = Some(n);
        }
        if let Some(d) = get("LPX_DEVICE").filter(|s| !s.is_empty()) {
            self.device = d;
        }
        if let Some(w) = get("LPX_WEIGHT_DTYPE").filter(|s| !s.is_empty()) {
            self.weight_format = WeightFormat::parse(w.trim()).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "environment variable LPX_WEIGHT_DTYPE=\"{w}\" is not f32, bf16, q8_0 or q4_k"
                ))
            })?;
        }
        let fields: [(&str, &mut usize); 12] = [
            (
                "LPX_MAX_RUNNING_PER_ADAPTER",
                &mut self.max_running_per_adapter,
            ),
            ("LPX_MEMORY_BUDGET_BYTES", &mut self.memory_budget_bytes),
            ("LPX_KV_BLOCK_SIZE", &mut self.kv_block_size),
            ("LPX_THREADS", &mut self.threads),
            ("LPX_MAX_NUM_SEQS", &mut self.max_num_seqs),
            ("LPX_MAX_BATCH_TOKENS", &mut self.max_batch_tokens),
            ("LPX_MAX_MODEL_LEN", &mut self.max_model_len),
            ("LPX_KV_CACHE_BYTES", &mut self.kv_cache_bytes),
            ("LPX_MAX_QUEUE", &mut self.max_queue),
            ("NIM_MAX_CPU_LORAS", &mut self.max_cpu_loras),
            ("NIM_MAX_GPU_LORAS", &mut self.max_gpu_loras),
            ("NIM_MAX_LORA_RANK", &mut self.max_lora_rank),
        ];
        for (k, slot) in fields {
            if let Some(v) = num(k)? {
                *slot = v;
            }
        }
        if let Some(src) = get("NIM_PEFT_SOURCE").filter(|s| !s.is_empty()) {
            self.peft_source = src
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect();
        }
        if let Some(v) = get("LPX_PREFIX_CACHING").filter(|s| !s.trim().is_empty()) {
            self.prefix_caching = match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "on" | "yes" => true,
                "0" | "false" | "off" | "no" => false,
                _ => {
                    return Err(Error::invalid_argument(format!(
                        "environment variable LPX_PREFIX_CACHING=\"{v}\" is not 1/0, true/false, on/off or yes/no"
                    )))
                }
            };
        }
        if let Some(v) = get("LPX_ADAPTER_WEIGHTS").filter(|s| !s.trim().is_empty()) {
            self.adapter_weights =
                parse_tenant_map(&v, "environment variable LPX_ADAPTER_WEIGHTS")?;
        }
        if let Some(v) = get("LPX_ADAPTER_MAX_RUNNING").filter(|s| !s.trim().is_empty()) {
            self.adapter_max_running =
                parse_tenant_map(&v, "environment variable LPX_ADAPTER_MAX_RUNNING")?;
        }
        if let Some(secs) = num("NIM_PEFT_REFRESH_INTERVAL")? {
            self.peft_refresh_interval = (secs > 0).then(|| Duration::from_secs(secs as u64));
        }
        Ok(())
    }

    /// The served name of the base model.
    pub fn served_name(&self) -> String {
        if let Some(n) = &self.served_model_name {
            return n.clone();
        }
        let stem = self.model.file_stem().or_else(|| self.model.file_name());
        stem.map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "base".into())
    }
}

/// Parses `"name=value,name=value"` (spaces around items allowed; empty = none) into a map;
/// `what` names the source in errors (a malformed item, a repeated name, a bad number).
pub fn parse_tenant_map<V: std::str::FromStr>(s: &str, what: &str) -> Result<BTreeMap<String, V>> {
    let mut out = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, value) = item
            .rsplit_once('=')
            .map(|(n, v)| (n.trim(), v.trim()))
            .filter(|(n, _)| !n.is_empty())
            .ok_or_else(|| {
                Error::invalid_argument(format!("{what}: \"{item}\" is not name=value"))
            })?;
        let v = value.parse::<V>().map_err(|_| {
            Error::invalid_argument(format!(
                "{what}: value \"{value}\" of \"{name}\" is not a non-negative integer"
            ))
        })?;
        if out.insert(name.to_string(), v).is_some() {
            return Err(Error::invalid_argument(format!(
                "{what}: \"{name}\" is given twice"
            )));
        }
    }
    Ok(out)
}

/// Formats a map as [`parse_tenant_map`] reads it.
pub fn format_tenant_map<V: std::fmt::Display>(m: &BTreeMap<String, V>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_sets_its_field() {
        let vars: std::collections::HashMap<&str, &str> = [
            ("LPX_MODEL", "/m"),
            ("LPX_SERVED_MODEL_NAME", "served"),
            ("LPX_DEVICE", "cuda:1"),
            ("LPX_THREADS", "3"),
            ("LPX_WEIGHT_DTYPE", "bf16"),
            ("LPX_MAX_NUM_SEQS", "5"),
            ("LPX_MAX_BATCH_TOKENS", "6"),
            ("LPX_MAX_MODEL_LEN", "7"),
            ("LPX_KV_BLOCK_SIZE", "8"),
            ("LPX_KV_CACHE_BYTES", "9"),
            ("LPX_MAX_QUEUE", "10"),
            ("LPX_MEMORY_BUDGET_BYTES", "11"),
            ("NIM_PEFT_SOURCE", "/a:/b"),
            ("NIM_PEFT_REFRESH_INTERVAL", "12"),
            ("NIM_MAX_CPU_LORAS", "13"),
            ("NIM_MAX_GPU_LORAS", "4"),
            ("NIM_MAX_LORA_RANK", "14"),
            ("LPX_ADAPTER_WEIGHTS", " a=3, served=2 "),
            ("LPX_MAX_RUNNING_PER_ADAPTER", "15"),
            ("LPX_ADAPTER_MAX_RUNNING", "b=0,c=1"),
        ]
        .into_iter()
        .collect();
        let mut c = EngineConfig::new("");
        c.apply_vars(|k| vars.get(k).map(|v| v.to_string()))
            .unwrap();
        let mut want = EngineConfig::new("/m");
        want.served_model_name = Some("served".into());
        want.device = "cuda:1".into();
        want.threads = 3;
        want.weight_format = WeightFormat::BF16;
        want.max_num_seqs = 5;
        want.max_batch_tokens = 6;
        want.max_model_len = 7;
        want.kv_block_size = 8;
        want.kv_cache_bytes = 9;
        want.max_queue = 10;
        want.memory_budget_bytes = 11;
        want.peft_source = vec!["/a".into(), "/b".into()];
        want.peft_refresh_interval = Some(Duration::from_secs(12));
        want.max_cpu_loras = 13;
        want.max_gpu_loras = 4;
        want.max_lora_rank = 14;
        want.adapter_weights = [("a".into(), 3), ("served".into(), 2)].into();
        want.max_running_per_adapter = 15;
        want.adapter_max_running = [("b".into(), 0), ("c".into(), 1)].into();
        assert_eq!(c, want);
        assert_eq!(format_tenant_map(&want.adapter_weights), "a=3,served=2");
        for (bad, needle) in [
            ("a=3,a=4", "\"a\" is given twice"),
            ("a", "\"a\" is not name=value"),
            ("=3", "\"=3\" is not name=value"),
            ("a=-1", "value \"-1\" of \"a\""),
        ] {
            let e = EngineConfig::new("")
                .apply_vars(|k| (k == "LPX_ADAPTER_WEIGHTS").then(|| bad.to_string()))
                .unwrap_err();
            assert!(e.message().contains("LPX_ADAPTER_WEIGHTS"), "{e}");
            assert!(e.message().contains(needle), "{bad}: {e}");
        }
        let mut zero = EngineConfig::new("m");
        zero.adapter_weights.insert("a".into(), 0);
        let e = zero.validate().unwrap_err();
        assert!(
            e.message().contains("adapter_weights") && e.message().contains("\"a\""),
            "{e}"
        );

        let e = EngineConfig::new("")
            .apply_vars(|k| (k == "LPX_KV_BLOCK_SIZE").then(|| "big".to_string()))
            .unwrap_err();
        assert!(e.message().contains("LPX_KV_BLOCK_SIZE"), "{e}");
    }

    #[test]
    fn weight_dtype_names_round_trip() {
        for (name, want) in [
            ("f32", WeightFormat::F32),
            ("BF16", WeightFormat::BF16),
            ("bfloat16", WeightFormat::BF16),
            ("q8_0", WeightFormat::Q8_0),
            (" Q4_K ", WeightFormat::Q4K),
        ] {
            let mut c = EngineConfig::new("");
            c.apply_vars(|k| (k == "LPX_WEIGHT_DTYPE").then(|| name.to_string()))
                .unwrap();
            assert_eq!(c.weight_format, want, "{name}");
            assert_eq!(WeightFormat::parse(want.name()), Some(want));
        }
        let e = EngineConfig::new("")
            .apply_vars(|k| (k == "LPX_WEIGHT_DTYPE").then(|| "q4_0".to_string()))
            .unwrap_err();
        assert!(
            e.message().contains("LPX_WEIGHT_DTYPE") && e.message().contains("q4_k"),
            "{e}"
        );
    }
}
