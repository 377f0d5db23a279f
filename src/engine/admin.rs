//! Administrative surface of the engine: PEFT sources, the model list (`/v1/models` shape),
//! stats JSON and Prometheus metrics.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::Engine;
use crate::error::{Error, Result};

impl Engine {
    /// Adds a PEFT source directory at runtime (each immediate sub-directory is one adapter),
    /// rescanned every `refresh_interval` (None = only on [`Engine::refresh`]). Errors: IO when
    /// the directory cannot be read; INVALID_ARGUMENT when it is already registered.
    pub fn register_peft_source(
        &self,
        dir: &Path,
        refresh_interval: Option<Duration>,
    ) -> Result<()> {
        let _ = refresh_interval;
        Err(Error::unsupported(format!(
            "{}: adapter serving is not available in this build yet",
            dir.display()
        )))
    }

    /// Rescans every PEFT source now: new adapters appear, changed ones get a new generation,
    /// deleted ones disappear (requests in flight finish on what they started with).
    pub fn refresh(&self) -> Result<()> {
        Ok(())
    }

    /// The OpenAI `/v1/models` body: `{"object": "list", "data": [...]}` with the base model
    /// (`parent: null`) and every adapter (`root` = its path, `parent` = the base).
    pub fn models_json(&self) -> Value {
        let base = self.served_name();
        json!({
            "object": "list",
            "data": [{
                "id": base,
                "object": "model",
                "created": 0,
                "owned_by": "loraplex",
                "root": self.config().model.display().to_string(),
                "parent": null,
                "max_model_len": self.max_model_len(),
            }]
        })
    }

    /// Engine state as JSON: queues, KV cache, memory by tier, per-adapter state.
    pub fn stats_json(&self) -> Value {
        let s = self.stats();
        json!({
            "model": self.served_name(),
            "requests": {"running": s.running, "waiting": s.waiting},
            "steps": s.steps,
            "memory": {
                "weights_bytes": s.weight_bytes,
                "kv_cache_bytes": s.kv_cache_bytes,
            },
            "kv_cache": {
                "block_size": s.kv_block_size,
                "blocks_total": s.kv_blocks_total,
                "blocks_free": s.kv_blocks_free,
                "usage": if s.kv_blocks_total == 0 { 0.0 } else {
                    1.0 - s.kv_blocks_free as f64 / s.kv_blocks_total as f64
                },
            },
            "adapters": [],
        })
    }

    /// Prometheus text exposition: queue and KV-cache gauges plus vLLM-compatible
    /// `vllm:lora_requests_info` (running/waiting adapters, `max_lora`).
    pub fn metrics_text(&self) -> String {
        let s = self.stats();
        let name = self.served_name();
        let usage = if s.kv_blocks_total == 0 {
            0.0
        } else {
            1.0 - s.kv_blocks_free as f64 / s.kv_blocks_total as f64
        };
        let mut out = String::new();
        let mut gauge = |metric: &str, help: &str, value: String| {
            out.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} gauge\n{metric}{{model_name=\"{name}\"}} {value}\n"));
        };
        gauge(
            "vllm:num_requests_running",
            "Requests in the running batch.",
            s.running.to_string(),
        );
        gauge(
            "vllm:num_requests_waiting",
            "Requests waiting to be scheduled.",
            s.waiting.to_string(),
        );
        gauge(
            "vllm:gpu_cache_usage_perc",
            "KV-cache usage (1 = full).",
            format!("{usage:.6}"),
        );
        gauge(
            "loraplex:kv_cache_usage_perc",
            "KV-cache usage (1 = full).",
            format!("{usage:.6}"),
        );
        out.push_str(&format!(
            "# HELP vllm:lora_requests_info Running stats on LoRA requests.\n# TYPE vllm:lora_requests_info gauge\nvllm:lora_requests_info{{max_lora=\"{}\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"}} 1\n",
            self.config().max_gpu_loras
        ));
        out
    }
}
