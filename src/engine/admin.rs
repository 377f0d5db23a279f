//! Administrative surface of the engine: PEFT sources, the model list (`/v1/models` shape),
//! stats JSON and Prometheus metrics.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::adapters::{rescan, LoaderMsg};
use super::Engine;
use crate::adapters::source::ScanReport;
use crate::cache::LoadState;
use crate::config::EngineConfig;
use crate::error::{Error, Result};

/// A Prometheus label value: `\\`, `"` and newline escaped as the text exposition format
/// requires (anything else is taken literally).
fn label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The configuration as JSON, one key per `lpx_engine_config` field (same names and units; 0
/// keeps its "automatic" meaning, the resolved values are under `limits` and `memory`).
fn config_json(c: &EngineConfig) -> Value {
    json!({
        "model": c.model.display().to_string(),
        "served_model_name": c.served_model_name,
        "device": c.device,
        "threads": c.threads,
        "weight_dtype": c.weight_format.name(),
        "max_num_seqs": c.max_num_seqs,
        "max_batch_tokens": c.max_batch_tokens,
        "max_model_len": c.max_model_len,
        "kv_block_size": c.kv_block_size,
        "kv_cache_bytes": c.kv_cache_bytes,
        "max_queue": c.max_queue,
        "peft_source": c.peft_source.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "peft_refresh_interval_ms": c.peft_refresh_interval.map_or(0, |d| d.as_millis() as u64),
        "max_cpu_loras": c.max_cpu_loras,
        "max_gpu_loras": c.max_gpu_loras,
        "max_lora_rank": c.max_lora_rank,
        "memory_budget_bytes": c.memory_budget_bytes,
        "prefix_caching": c.prefix_caching,
        "adapter_weights": crate::config::format_tenant_map(&c.adapter_weights),
        "max_running_per_adapter": c.max_running_per_adapter,
        "adapter_max_running": crate::config::format_tenant_map(&c.adapter_max_running),
    })
}

fn report_json(r: &ScanReport) -> Value {
    json!({
        "added": r.added, "changed": r.changed, "removed": r.removed, "conflicts": r.conflicts,
        "skipped": r.skipped.iter().map(|(n, why)| json!({"name": n, "reason": why})).collect::<Vec<_>>(),
    })
}

impl Engine {
    /// Adds a PEFT source directory at runtime (each immediate sub-directory is one adapter),
    /// rescanned every `refresh_interval` (None = only on [`Engine::refresh`]). Errors: IO when
    /// the directory cannot be read; INVALID_ARGUMENT when it is already registered, or when an
    /// adapter name it offers is already offered by another source (the first source keeps it;
    /// the rest of this source is still registered).
    pub fn register_peft_source(
        &self,
        dir: &Path,
        refresh_interval: Option<Duration>,
    ) -> Result<()> {
        let report = self.shared.registry.lock().add_source(dir)?;
        if let Some(d) = refresh_interval.filter(|d| !d.is_zero()) {
            let _ = self.loader_tx.send(LoaderMsg::Interval(d));
        }
        if !report.conflicts.is_empty() {
            return Err(Error::invalid_argument(format!(
                "PEFT source {}: adapter name(s) {} already come from another source; the first source wins",
                dir.display(),
                report.conflicts.join(", ")
            )));
        }
        Ok(())
    }

    /// Rescans every PEFT source now: new adapters appear, changed ones get a new generation,
    /// deleted ones disappear (requests in flight finish on what they started with). Returns
    /// what changed.
    pub fn refresh(&self) -> Result<Value> {
        Ok(report_json(&rescan(&self.shared)))
    }

    /// The OpenAI `/v1/models` body: `{"object": "list", "data": [...]}` with the base model
    /// (`parent: null`) and every adapter (`id` = directory name, `root` = its path, `parent` =
    /// the base model's id).
    pub fn models_json(&self) -> Value {
        let base = self.served_name();
        let mut data = vec![json!({
            "id": base,
            "object": "model",
            "created": 0,
            "owned_by": "loraplex",
            "root": self.config().model.display().to_string(),
            "parent": null,
            "max_model_len": self.max_model_len(),
        })];
        for a in self.shared.registry.lock().adapters() {
            data.push(json!({
                "id": a.name,
                "object": "model",
                "created": 0,
                "owned_by": "loraplex",
                "root": a.dir.display().to_string(),
                "parent": base,
                "format": a.format.name(),
            }));
        }
        json!({"object": "list", "data": data})
    }

    /// Engine state as JSON: the configuration it was created with (`config`, one key per
    /// `lpx_engine_config` field), queues, KV cache, the memory plan by tier, and per adapter its
    /// tier (disk / host / device), pinned, rank, bytes, generation, in-flight and queued requests
    /// and load time.
    pub fn stats_json(&self) -> Value {
        let s = self.stats();
        let plan = self.shared.plan;
        let runtime = self.shared.adapter_runtime.lock().clone();
        // Lock order everywhere: registry, then host cache.
        let registry = self.shared.registry.lock();
        let host = self.shared.host.lock();
        let mut adapters = Vec::new();
        for a in registry.adapters() {
            let key = (a.name.clone(), a.generation);
            let entry = host.get(&key);
            let rt = runtime.get(&a.name).cloned().unwrap_or_default();
            let (state, rank, bytes, hash) = match entry.map(|e| &e.state) {
                Some(LoadState::Ready(n)) => (
                    "ready",
                    Some(n.max_rank()),
                    Some(n.bytes()),
                    Some(n.generation.clone()),
                ),
                Some(LoadState::Loading) => ("loading", None, None, None),
                Some(LoadState::Failed(_)) => ("failed", None, None, None),
                None => ("not loaded", None, None, None),
            };
            let tier = if rt.device_slot.is_some() {
                "device"
            } else if matches!(entry.map(|e| &e.state), Some(LoadState::Ready(_))) {
                "host"
            } else {
                "disk"
            };
            adapters.push(json!({
                "name": a.name,
                "format": a.format.name(),
                "path": a.dir.display().to_string(),
                "generation": a.generation,
                "content_hash": hash,
                "tier": tier,
                "state": state,
                "pinned": entry.is_some_and(|e| e.pins > 0),
                "pins": entry.map(|e| e.pins).unwrap_or(0),
                "rank": rank,
                "bytes": bytes,
                "device_slot": rt.device_slot,
                "running_requests": rt.running,
                "queued_requests": rt.queued,
                "load_time_ms": entry.and_then(|e| e.load_time).map(|d| d.as_secs_f64() * 1e3),
                "error": match entry.map(|e| &e.state) { Some(LoadState::Failed(e)) => Some(e.message().to_string()), _ => None },
            }));
        }
        let (copies, copy_bytes) = host.distinct_copies();
        let kv_usage = if s.kv_blocks_total == 0 {
            0.0
        } else {
            1.0 - s.kv_blocks_free as f64 / s.kv_blocks_total as f64
        };
        json!({
            "model": self.served_name(),
            "config": config_json(self.config()),
            "backend": self.shared.kernels,
            "requests": {"running": s.running, "waiting": s.waiting},
            "steps": s.steps,
            // Rows (decode tokens plus prefill chunk tokens) and sequences per step: requests in
            // flight together shared a step when `max_seqs` reaches their number.
            "step": {
                "last_rows": s.last_step_rows,
                "last_seqs": s.last_step_seqs,
                "max_rows": s.max_step_rows,
                "max_seqs": s.max_step_seqs,
            },
            "memory": plan,
            // The same breakdown `plan_capacity` gives for this config (its `memory`).
            "memory_total_bytes": plan.total(),
            "kv_cache": {
                "block_size": s.kv_block_size,
                "blocks_total": s.kv_blocks_total,
                "blocks_free": s.kv_blocks_free,
                "usage": kv_usage,
            },
            "limits": {
                "max_cpu_loras": self.config().max_cpu_loras,
                "max_gpu_loras": self.config().max_gpu_loras,
                "max_lora_rank": self.config().max_lora_rank,
                "max_num_seqs": self.config().max_num_seqs,
                "max_batch_tokens": self.config().max_batch_tokens,
                "max_model_len": self.max_model_len(),
                // What bounds max_model_len (configured, max_position_embeddings, default_cap).
                "max_model_len_bound": self.max_model_len_bound,
            },
            // Prompt tokens looked up / reused (vLLM's prefix_cache_queries / _hits), blocks held.
            "prefix_cache": {
                "enabled": self.config().prefix_caching,
                "queries": s.prefix_cache_queries,
                "hits": s.prefix_cache_hits,
                "blocks": s.prefix_cache_blocks,
                "choice_shared_tokens": s.prompt_tokens_shared,
            },
            "host_cache": {
                "entries": host.len(),
                "capacity": host.capacity(),
                // Entries whose files hash the same share one copy.
                "distinct_copies": copies,
                "bytes": copy_bytes,
            },
            "device_cache": {
                "slots": self.config().max_gpu_loras,
                "uploads": s.device_uploads,
                "prefetches": s.adapter_prefetches,
                "admissions": s.adapter_admissions,
                "admissions_resident": s.adapter_admissions_resident,
                "resident_rate": if s.adapter_admissions == 0 { None } else {
                    Some(s.adapter_admissions_resident as f64 / s.adapter_admissions as f64)
                },
            },
            "peft_sources": registry.sources().iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "last_scan": report_json(registry.last_report()),
            "adapters": adapters,
        })
    }

    /// Prometheus text exposition: queue and KV-cache gauges plus vLLM-compatible
    /// `vllm:lora_requests_info` (`running_lora_adapters`, `waiting_lora_adapters`, `max_lora`)
    /// for LoRA-affinity routers, and per-adapter residency. Label values (model and adapter
    /// names) are escaped per the exposition format.
    pub fn metrics_text(&self) -> String {
        let s = self.stats();
        let name = label_value(&self.served_name());
        let usage = if s.kv_blocks_total == 0 {
            0.0
        } else {
            1.0 - s.kv_blocks_free as f64 / s.kv_blocks_total as f64
        };
        let runtime = self.shared.adapter_runtime.lock().clone();
        let mut running: Vec<String> = runtime
            .iter()
            .filter(|(_, r)| r.running > 0)
            .map(|(n, _)| label_value(n))
            .collect();
        let mut waiting: Vec<String> = runtime
            .iter()
            .filter(|(_, r)| r.queued > 0)
            .map(|(n, _)| label_value(n))
            .collect();
        running.sort_unstable();
        waiting.sort_unstable();
        let mut out = String::new();
        let mut gauge = |metric: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {metric} {help}\n# TYPE {metric} gauge\n{metric}{{model_name=\"{name}\"}} {value}\n"
            ));
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
        // vLLM's newer name, the default of the Inference Extension's endpoint picker from v1.3.
        gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage (1 = full).",
            format!("{usage:.6}"),
        );
        gauge(
            "loraplex:kv_cache_usage_perc",
            "KV-cache usage (1 = full).",
            format!("{usage:.6}"),
        );
        gauge(
            "loraplex:engine_steps",
            "Engine steps run.",
            s.steps.to_string(),
        );
        gauge(
            "loraplex:prefix_cache_blocks",
            "KV blocks held by the prefix cache.",
            s.prefix_cache_blocks.to_string(),
        );
        // vLLM's prefix-cache counters (tokens), exposed as `<name>_total` like its Counters.
        for (metric, help, value) in [
            (
                "vllm:prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
                s.prefix_cache_queries,
            ),
            (
                "vllm:prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.",
                s.prefix_cache_hits,
            ),
            (
                "loraplex:adapter_admissions",
                "Adapter requests admitted.",
                s.adapter_admissions,
            ),
            (
                "loraplex:adapter_admissions_resident",
                "Adapter requests admitted whose adapters were already resident on the device.",
                s.adapter_admissions_resident,
            ),
            (
                "loraplex:adapter_prefetches",
                "Adapters uploaded to the device ahead of their request's admission.",
                s.adapter_prefetches,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {metric} {help}\n# TYPE {metric} counter\n{metric}_total{{model_name=\"{name}\"}} {value}\n"
            ));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        out.push_str(&format!(
            "# HELP vllm:lora_requests_info Running stats on LoRA requests.\n# TYPE vllm:lora_requests_info gauge\nvllm:lora_requests_info{{max_lora=\"{}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"{}\"}} {now}\n",
            self.config().max_gpu_loras,
            running.join(","),
            waiting.join(",")
        ));
        out.push_str("# HELP loraplex:adapter_device_resident 1 when the adapter holds a device slot.\n# TYPE loraplex:adapter_device_resident gauge\n");
        let mut names: Vec<&String> = runtime.keys().collect();
        names.sort();
        for n in names {
            let r = &runtime[n];
            out.push_str(&format!(
                "loraplex:adapter_device_resident{{adapter=\"{}\"}} {}\n",
                label_value(n),
                u8::from(r.device_slot.is_some())
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("plain-name_1"), "plain-name_1");
        assert_eq!(label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
