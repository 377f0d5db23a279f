//! `lpx_engine_plan_json`: the capacity planner ([`crate::cache::capacity`]) over the C ABI.

use std::ffi::c_char;

use super::engine::owned_c_string;
use super::error::lpx_error;
use super::guard::{ffi_guard, non_null, opt_str};
use super::types::lpx_engine_config;
use crate::cache::capacity::{plan_capacity, Workload};
use crate::error::Error;

/// Plans a workload for the engine `*cfg` would create, without loading weights (the model's
/// `config.json` or GGUF header is read; nothing is allocated for the plan), and writes the plan
/// as JSON to `*out_json` (free with `lpx_string_free`). `*cfg`, its strings and
/// `workload_json` are borrowed for this call only.
///
/// `workload_json`: NULL, "" or a JSON object with any of the keys `max_lora_rank`,
/// `max_gpu_loras`, `max_cpu_loras`, `max_num_seqs`, `max_model_len` (context tokens per
/// sequence), `max_batch_tokens`, `memory_budget_bytes`, each a non-negative integer or null;
/// an absent or null key takes the value of `*cfg` (same names and units as its fields).
///
/// The JSON: `workload` (the settings planned for, context resolved), `fits` (the engine
/// starts within `memory_budget_bytes` and its KV cache holds `max_num_seqs` sequences of
/// `max_model_len` tokens), `reason` (why not, naming the part; null when it fits), `memory`
/// (the bytes per part the engine would allocate, the same object as `stats_json`'s `memory`;
/// null when it would not start), `total_bytes`, `required` / `required_bytes` (the parts with a
/// KV cache of exactly the workload's blocks: the smallest budget that fits), `kv` (block size
/// and bytes, blocks and tokens held vs needed) and `largest` (for each knob above except the
/// budget, `{"value": n|null, "bound": ...}`: the largest value that fits with the others held,
/// and what stops it: "memory_budget", "kv_cache", "max_position_embeddings", "max_cpu_loras",
/// "unbounded" or "does_not_fit").
///
/// A workload that does not fit is not an error (`fits` is false). Errors (`*out_json`
/// untouched): INVALID_ARGUMENT for NULL `cfg`/`out_json`, a bad `struct_size`, invalid UTF-8,
/// malformed workload JSON, unknown keys or bad values (the message names the key or field),
/// `max_model_len` over the model's `max_position_embeddings`; IO / INVALID_MODEL /
/// UNSUPPORTED for the model file (naming it); UNSUPPORTED for a device not compiled in.
/// Thread-safe; needs no engine.
///
/// # Safety
/// `cfg` must be NULL or an initialised config; `workload_json` NULL or a NUL-terminated
/// string; `out_json` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lpx_engine_plan_json(
    cfg: *const lpx_engine_config,
    workload_json: *const c_char,
    out_json: *mut *mut c_char,
) -> *mut lpx_error {
    ffi_guard!({
        non_null(cfg, "cfg")?;
        non_null(out_json, "out_json")?;
        // SAFETY: forwarded contract.
        let rc = unsafe { super::config::read_config(cfg) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let text = unsafe { opt_str(workload_json, "workload_json") }?.unwrap_or("");
        let plan = plan_capacity(&rc, &Workload::from_json(text)?)?;
        let json =
            serde_json::to_string(&plan).map_err(|e| Error::internal(format!("plan JSON: {e}")))?;
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out_json.write_unaligned(owned_c_string(json)) };
        Ok(())
    })
}
