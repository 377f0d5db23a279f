//! `lpx_engine_config`: defaults, environment overrides and conversion to [`EngineConfig`].

use std::ffi::{c_char, CString};
use std::path::PathBuf;
use std::time::Duration;

use parking_lot::Mutex;

use super::guard::{ffi_guard, non_null, opt_str, read_versioned, Versioned};
use super::types::{lpx_engine_config, lpx_weight_dtype};
use crate::backend::WeightFormat;
use crate::config::EngineConfig;
use crate::error::{Error, Result};

impl Versioned for lpx_engine_config {
    const NAME: &'static str = "lpx_engine_config";
    const KNOWN_SIZES: &'static [usize] = &[
        // Before memory_budget_bytes was appended.
        std::mem::offset_of!(lpx_engine_config, memory_budget_bytes),
        std::mem::size_of::<lpx_engine_config>(),
    ];
    fn defaults() -> Self {
        let d = EngineConfig::new("");
        Self {
            struct_size: std::mem::size_of::<Self>() as u32,
            model: std::ptr::null(),
            served_model_name: std::ptr::null(),
            device: c"cpu".as_ptr(),
            threads: d.threads as u32,
            weight_dtype: lpx_weight_dtype::F32 as u32,
            max_num_seqs: d.max_num_seqs as u32,
            max_batch_tokens: d.max_batch_tokens as u32,
            max_model_len: d.max_model_len as u32,
            kv_block_size: d.kv_block_size as u32,
            kv_cache_bytes: d.kv_cache_bytes as u64,
            max_queue: d.max_queue as u32,
            peft_source: std::ptr::null(),
            peft_refresh_interval_ms: 0,
            max_cpu_loras: d.max_cpu_loras as u32,
            max_gpu_loras: d.max_gpu_loras as u32,
            max_lora_rank: d.max_lora_rank as u32,
            memory_budget_bytes: d.memory_budget_bytes as u64,
        }
    }
}

/// Strings set by `lpx_engine_config_from_env`: owned by the library for the process lifetime,
/// deduplicated so that repeated calls do not grow.
static INTERNED: Mutex<Vec<CString>> = Mutex::new(Vec::new());

fn intern(s: &str, var: &str) -> Result<*const c_char> {
    let c = CString::new(s).map_err(|_| {
        Error::invalid_argument(format!("environment variable {var} contains a NUL byte"))
    })?;
    let mut v = INTERNED.lock();
    if let Some(old) = v.iter().find(|o| o.as_c_str() == c.as_c_str()) {
        return Ok(old.as_ptr());
    }
    let p = c.as_ptr();
    v.push(c);
    Ok(p)
}

/// Converts a C config to the Rust one; errors name the field.
///
/// # Safety
/// The string pointers of `c` must be NULL or NUL-terminated strings valid for the call.
pub(crate) unsafe fn to_rust(c: &lpx_engine_config) -> Result<EngineConfig> {
    // SAFETY: `c.model` is NULL or a NUL-terminated string valid for the call (our contract).
    let model = unsafe { opt_str(c.model, "cfg->model") }?.unwrap_or("");
    let mut r = EngineConfig::new(model);
    // SAFETY: as above, for `c.served_model_name`.
    r.served_model_name = unsafe { opt_str(c.served_model_name, "cfg->served_model_name") }?
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    // SAFETY: as above, for `c.device`.
    if let Some(d) = unsafe { opt_str(c.device, "cfg->device") }?.filter(|s| !s.is_empty()) {
        r.device = d.to_string();
    }
    r.threads = c.threads as usize;
    r.weight_format = match c.weight_dtype {
        0 => WeightFormat::F32,
        1 => WeightFormat::BF16,
        v => {
            return Err(Error::invalid_argument(format!(
                "cfg->weight_dtype = {v}: not an lpx_weight_dtype (0 = F32, 1 = BF16)"
            )))
        }
    };
    r.max_num_seqs = c.max_num_seqs as usize;
    r.max_batch_tokens = c.max_batch_tokens as usize;
    r.max_model_len = c.max_model_len as usize;
    r.kv_block_size = c.kv_block_size as usize;
    r.kv_cache_bytes = usize::try_from(c.kv_cache_bytes).map_err(|_| {
        Error::invalid_argument(format!(
            "cfg->kv_cache_bytes = {} does not fit this platform",
            c.kv_cache_bytes
        ))
    })?;
    r.max_queue = c.max_queue as usize;
    r.memory_budget_bytes = usize::try_from(c.memory_budget_bytes).map_err(|_| {
        Error::invalid_argument(format!(
            "cfg->memory_budget_bytes = {} does not fit this platform",
            c.memory_budget_bytes
        ))
    })?;
    // SAFETY: as above, for `c.peft_source`.
    r.peft_source = unsafe { opt_str(c.peft_source, "cfg->peft_source") }?
        .unwrap_or("")
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    r.peft_refresh_interval =
        (c.peft_refresh_interval_ms > 0).then(|| Duration::from_millis(c.peft_refresh_interval_ms));
    r.max_cpu_loras = c.max_cpu_loras as usize;
    r.max_gpu_loras = c.max_gpu_loras as usize;
    r.max_lora_rank = c.max_lora_rank as usize;
    Ok(r)
}

fn to_u32(v: usize, var: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        Error::invalid_argument(format!("environment variable {var} = {v} is too large"))
    })
}

/// Writes the defaults into `*cfg` (including `struct_size = sizeof(lpx_engine_config)`).
/// `device` points to a static "cpu"; other strings are NULL. NULL `cfg` is ignored.
///
/// # Safety
/// `cfg` must be NULL or point to writable memory of `sizeof(lpx_engine_config)` bytes as
/// declared by the header this library was built with (check `lpx_abi_version()`).
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_engine_config_init(cfg: *mut lpx_engine_config) {
    ffi_guard!({
        if !cfg.is_null() {
            // SAFETY: non-NULL, writable, correctly sized per the contract.
            unsafe { cfg.write_unaligned(lpx_engine_config::defaults()) };
        }
    } => ())
}

/// Applies environment overrides to `*cfg` (which must be initialised): `LPX_MODEL`,
/// `LPX_SERVED_MODEL_NAME`, `LPX_DEVICE`, `LPX_THREADS`, `LPX_WEIGHT_DTYPE` (f32|bf16),
/// `LPX_MAX_NUM_SEQS`, `LPX_MAX_BATCH_TOKENS`, `LPX_MAX_MODEL_LEN`, `LPX_KV_CACHE_BYTES`,
/// `LPX_MAX_QUEUE`, `NIM_PEFT_SOURCE` (':'-separated), `NIM_PEFT_REFRESH_INTERVAL` (seconds),
/// `NIM_MAX_CPU_LORAS`, `NIM_MAX_GPU_LORAS`, `NIM_MAX_LORA_RANK`. Unset variables leave fields as
/// they are. String fields taken from the environment point to library-owned storage that lives
/// until the process exits.
///
/// Errors: INVALID_ARGUMENT for a NULL or uninitialised `cfg`, invalid UTF-8 in a field, or a
/// malformed variable (the message names it). On error `*cfg` is unchanged. Thread-safe with
/// respect to other loraplex calls (reads the process environment).
///
/// # Safety
/// `cfg` must be NULL or point to an initialised `lpx_engine_config` of `cfg->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn lpx_engine_config_from_env(
    cfg: *mut lpx_engine_config,
) -> *mut super::error::lpx_error {
    ffi_guard!({
        non_null(cfg, "cfg")?;
        // SAFETY: non-NULL, initialised per the contract.
        let c = unsafe { read_versioned(cfg as *const lpx_engine_config, "cfg") }?;
        // SAFETY: string fields valid per the contract.
        let before = unsafe { to_rust(&c) }?;
        let mut r = before.clone();
        r.apply_env()?;
        let mut n = c;
        if r.model != before.model {
            n.model = intern(&r.model.to_string_lossy(), "LPX_MODEL")?;
        }
        if r.served_model_name != before.served_model_name {
            if let Some(s) = &r.served_model_name {
                n.served_model_name = intern(s, "LPX_SERVED_MODEL_NAME")?;
            }
        }
        if r.device != before.device {
            n.device = intern(&r.device, "LPX_DEVICE")?;
        }
        if r.peft_source != before.peft_source {
            let joined: Vec<String> = r
                .peft_source
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            n.peft_source = intern(&joined.join(":"), "NIM_PEFT_SOURCE")?;
        }
        if r.peft_refresh_interval != before.peft_refresh_interval {
            n.peft_refresh_interval_ms = r
                .peft_refresh_interval
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
        }
        n.weight_dtype = match r.weight_format {
            WeightFormat::F32 => lpx_weight_dtype::F32 as u32,
            WeightFormat::BF16 => lpx_weight_dtype::Bf16 as u32,
        };
        n.threads = to_u32(r.threads, "LPX_THREADS")?;
        n.max_num_seqs = to_u32(r.max_num_seqs, "LPX_MAX_NUM_SEQS")?;
        n.max_batch_tokens = to_u32(r.max_batch_tokens, "LPX_MAX_BATCH_TOKENS")?;
        n.max_model_len = to_u32(r.max_model_len, "LPX_MAX_MODEL_LEN")?;
        n.kv_cache_bytes = r.kv_cache_bytes as u64;
        n.memory_budget_bytes = r.memory_budget_bytes as u64;
        n.max_queue = to_u32(r.max_queue, "LPX_MAX_QUEUE")?;
        n.max_cpu_loras = to_u32(r.max_cpu_loras, "NIM_MAX_CPU_LORAS")?;
        n.max_gpu_loras = to_u32(r.max_gpu_loras, "NIM_MAX_GPU_LORAS")?;
        n.max_lora_rank = to_u32(r.max_lora_rank, "NIM_MAX_LORA_RANK")?;
        // Write back only the caller's prefix (its struct_size bytes).
        let size = c.struct_size as usize;
        // SAFETY: `size` is a known layout size ≤ size_of::<lpx_engine_config>() (checked by
        // read_versioned) and the caller's struct has `size` writable bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                &n as *const lpx_engine_config as *const u8,
                cfg as *mut u8,
                size,
            );
        }
        Ok(())
    })
}
