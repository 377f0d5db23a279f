//! `lpx_engine_config`: defaults, environment overrides and conversion to and from
//! [`EngineConfig`].
//!
//! The two structs are mapped in ONE place: [`to_rust`] and [`from_rust`]; the numeric fields,
//! which have the same names on both sides, are listed once ([`numeric_fields`]).
//! `lpx_engine_config_init_sized` writes `from_rust(EngineConfig::new(""))` and
//! `lpx_engine_config_from_env` writes `from_rust(to_rust(cfg) + environment)`, so the defaults,
//! the environment and engine creation cannot disagree about a field.

use std::ffi::{c_char, CString};
use std::path::PathBuf;
use std::time::Duration;

use parking_lot::Mutex;

use super::guard::{ffi_guard, init_versioned, non_null, opt_str, read_versioned, Versioned};
use super::types::{lpx_engine_config, lpx_weight_dtype};
use crate::backend::WeightFormat;
use crate::config::{format_tenant_map, parse_tenant_map, EngineConfig};
use crate::error::{Error, Result};

/// Calls `$m!` with every numeric field shared by `lpx_engine_config` and [`EngineConfig`]
/// (same name on both sides; C type given), so that each conversion lists them exactly once.
macro_rules! numeric_fields {
    ($m:ident!($($arg:tt)*)) => {
        $m!($($arg)*;
            threads: u32,
            max_num_seqs: u32,
            max_batch_tokens: u32,
            max_model_len: u32,
            kv_block_size: u32,
            kv_cache_bytes: u64,
            max_queue: u32,
            max_cpu_loras: u32,
            max_gpu_loras: u32,
            max_lora_rank: u32,
            memory_budget_bytes: u64,
            max_running_per_adapter: u32
        )
    };
}

impl Versioned for lpx_engine_config {
    const NAME: &'static str = "lpx_engine_config";
    const KNOWN_SIZES: &'static [usize] = &[
        // Before memory_budget_bytes was appended.
        std::mem::offset_of!(lpx_engine_config, memory_budget_bytes),
        // Before prefix_caching was appended (the layout of the last header without the init
        // macros: what the legacy `lpx_engine_config_init` symbol writes).
        std::mem::offset_of!(lpx_engine_config, prefix_caching),
        // Before the tenant policy (adapter_weights, max_running_per_adapter,
        // adapter_max_running) was appended.
        std::mem::offset_of!(lpx_engine_config, adapter_weights),
        std::mem::size_of::<lpx_engine_config>(),
    ];
    fn defaults() -> Self {
        // Cannot fail: the defaults fit every C field and hold no NUL byte (unit-tested). The
        // fallback only keeps this infallible: a zeroed config that `lpx_engine_create` refuses
        // naming its first zero field.
        from_rust(&EngineConfig::new(""), intern).unwrap_or_else(|_| zeroed())
    }
}

/// Strings written into configs by this library (`device` of the defaults, strings read by
/// `lpx_engine_config_from_env`): owned for the process lifetime, deduplicated so that
/// repeated calls do not grow.
static INTERNED: Mutex<Vec<CString>> = Mutex::new(Vec::new());

fn intern(s: &str, field: &str) -> Result<*const c_char> {
    let c = CString::new(s)
        .map_err(|_| Error::invalid_argument(format!("{field} contains a NUL byte")))?;
    let mut v = INTERNED.lock();
    if let Some(old) = v.iter().find(|o| o.as_c_str() == c.as_c_str()) {
        return Ok(old.as_ptr());
    }
    let p = c.as_ptr();
    v.push(c);
    Ok(p)
}

/// A config with `struct_size` set and every other field 0 / NULL.
fn zeroed() -> lpx_engine_config {
    // SAFETY: every field of lpx_engine_config is an integer, a bool or a raw pointer, for
    // which all-zero bytes are a valid value (0, false, NULL).
    let mut c: lpx_engine_config = unsafe { std::mem::zeroed() };
    c.struct_size = std::mem::size_of::<lpx_engine_config>() as u32;
    c
}

/// The C value of a weight format.
fn dtype_of(w: WeightFormat) -> lpx_weight_dtype {
    match w {
        WeightFormat::F32 => lpx_weight_dtype::F32,
        WeightFormat::BF16 => lpx_weight_dtype::Bf16,
        WeightFormat::Q8_0 => lpx_weight_dtype::Q8_0,
        WeightFormat::Q4K => lpx_weight_dtype::Q4_K,
    }
}

/// Reads the caller's `*cfg` (NULL and `struct_size` checked) into the Rust config, which must
/// name a model: what `lpx_engine_create` and `lpx_engine_plan_json` start from. Errors
/// (INVALID_ARGUMENT) name the field.
///
/// # Safety
/// `cfg` must be NULL or an initialised config whose strings are NULL or NUL-terminated.
pub(crate) unsafe fn read_config(cfg: *const lpx_engine_config) -> Result<EngineConfig> {
    non_null(cfg, "cfg")?;
    // SAFETY: non-NULL, initialised per the contract.
    let c = unsafe { read_versioned(cfg, "cfg") }?;
    // SAFETY: string fields valid per the contract.
    let rc = unsafe { to_rust(&c) }?;
    if rc.model.as_os_str().is_empty() {
        return Err(Error::invalid_argument("cfg->model is NULL or empty"));
    }
    Ok(rc)
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
    r.weight_format = WeightFormat::ALL
        .into_iter()
        .find(|&w| dtype_of(w) as u32 == c.weight_dtype)
        .ok_or_else(|| {
            Error::invalid_argument(format!(
                "cfg->weight_dtype = {}: not an lpx_weight_dtype (0 = F32, 1 = BF16, 2 = Q8_0, 3 = Q4_K)",
                c.weight_dtype
            ))
        })?;
    macro_rules! copy_in {
        ($c:ident, $r:ident; $($f:ident: $t:ty),*) => {$(
            $r.$f = usize::try_from($c.$f).map_err(|_| {
                Error::invalid_argument(format!(
                    "cfg->{} = {} does not fit this platform",
                    stringify!($f),
                    $c.$f
                ))
            })?;
        )*};
    }
    numeric_fields!(copy_in!(c, r));
    // SAFETY: as above, for `c.peft_source`.
    r.peft_source = unsafe { opt_str(c.peft_source, "cfg->peft_source") }?
        .unwrap_or("")
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    r.peft_refresh_interval =
        (c.peft_refresh_interval_ms > 0).then(|| Duration::from_millis(c.peft_refresh_interval_ms));
    r.prefix_caching = c.prefix_caching;
    // SAFETY: as above, for `c.adapter_weights`.
    if let Some(w) = unsafe { opt_str(c.adapter_weights, "cfg->adapter_weights") }? {
        r.adapter_weights = parse_tenant_map(w, "cfg->adapter_weights")?;
    }
    // SAFETY: as above, for `c.adapter_max_running`.
    if let Some(m) = unsafe { opt_str(c.adapter_max_running, "cfg->adapter_max_running") }? {
        r.adapter_max_running = parse_tenant_map(m, "cfg->adapter_max_running")?;
    }
    Ok(r)
}

/// Converts a Rust config to the C one; `text(value, field)` supplies the C strings (they must
/// outlive the config). Empty model, absent served name and no PEFT sources become NULL.
/// Errors name the field whose value does not fit its C type.
fn from_rust(
    r: &EngineConfig,
    mut text: impl FnMut(&str, &str) -> Result<*const c_char>,
) -> Result<lpx_engine_config> {
    let mut opt_text = |s: &str, field: &str| -> Result<*const c_char> {
        if s.is_empty() {
            Ok(std::ptr::null())
        } else {
            text(s, field)
        }
    };
    let peft: Vec<String> = r
        .peft_source
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut c = zeroed();
    c.model = opt_text(&r.model.to_string_lossy(), "model")?;
    c.served_model_name = opt_text(
        r.served_model_name.as_deref().unwrap_or(""),
        "served_model_name",
    )?;
    c.device = opt_text(&r.device, "device")?;
    c.weight_dtype = dtype_of(r.weight_format) as u32;
    c.peft_source = opt_text(&peft.join(":"), "peft_source")?;
    c.peft_refresh_interval_ms = r
        .peft_refresh_interval
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    macro_rules! copy_out {
        ($c:ident, $r:ident; $($f:ident: $t:ty),*) => {$(
            $c.$f = <$t>::try_from($r.$f).map_err(|_| {
                Error::invalid_argument(format!(
                    "{} = {} does not fit lpx_engine_config.{} ({})",
                    stringify!($f),
                    $r.$f,
                    stringify!($f),
                    stringify!($t)
                ))
            })?;
        )*};
    }
    numeric_fields!(copy_out!(c, r));
    c.prefix_caching = r.prefix_caching;
    c.adapter_weights = opt_text(&format_tenant_map(&r.adapter_weights), "adapter_weights")?;
    c.adapter_max_running = opt_text(
        &format_tenant_map(&r.adapter_max_running),
        "adapter_max_running",
    )?;
    Ok(c)
}

/// Writes the defaults into the caller's `lpx_engine_config` of `size` bytes; pass
/// `sizeof *cfg`, as the header's `lpx_engine_config_init(cfg)` macro does. `device` points to
/// a library-owned "cpu" (never freed); other strings are NULL; the numbers are the engine's
/// defaults (`EngineConfig::new`).
///
/// Only the fields of the layout `size` denotes are written, and `struct_size` is set to that
/// layout's size: a `size` this library knows (the current `sizeof(lpx_engine_config)` or an
/// older header's, e.g. 104 bytes on 64-bit platforms before `memory_budget_bytes` was
/// appended) → that layout; a larger `size` (a header newer than this library) → this
/// library's layout, the bytes after it untouched (the newer fields are then ignored).
///
/// Errors: INVALID_ARGUMENT for a NULL `cfg`, or for a `size` that is no layout (smaller than
/// the first, or between two known ones; the message names it and the known sizes): then
/// nothing is written. With `sizeof *cfg` and a non-NULL `cfg` it never fails. The error is
/// owned by the caller (`lpx_error_free`). Thread-safe: writes `*cfg` only.
///
/// # Safety
/// `cfg` must be NULL or point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn lpx_engine_config_init_sized(
    cfg: *mut lpx_engine_config,
    size: usize,
) -> *mut super::error::lpx_error {
    ffi_guard!({
        // SAFETY: `cfg` is NULL (refused) or has `size` writable bytes (our contract).
        unsafe { init_versioned(cfg, size, "lpx_engine_config_init_sized", "cfg") }
    })
}

/// Binary compatibility: initialises the `lpx_engine_config` layout that the last header
/// without the init macros declared (the fields up to `memory_budget_bytes`, `struct_size` =
/// its size, 112 bytes on 64-bit platforms): what every binary already built against a header
/// with this symbol expects, and writes nothing after it. (Binaries built before
/// `memory_budget_bytes` existed passed a 104-byte struct to this symbol; they must be rebuilt
/// against this header, whose macro passes the size.) Code compiled against this header does not call it: the
/// `lpx_engine_config_init(cfg)` macro (end of the header) calls
/// `lpx_engine_config_init_sized(cfg, sizeof *(cfg))`. `(lpx_engine_config_init)(cfg)` or the
/// function's address still reach this symbol, with this first-layout behaviour. NULL `cfg` is
/// ignored. Thread-safe.
///
/// # Safety
/// `cfg` must be NULL or point to that layout's size of writable bytes.
#[no_mangle]
pub unsafe extern "C" fn lpx_engine_config_init(cfg: *mut lpx_engine_config) {
    ffi_guard!({
        if !cfg.is_null() {
            let legacy = <lpx_engine_config as Versioned>::KNOWN_SIZES
                .get(1)
                .copied()
                .unwrap_or(std::mem::size_of::<lpx_engine_config>());
            // SAFETY: non-NULL, with `legacy` writable bytes per the contract; a known size is
            // a layout, so this cannot fail.
            let _ = unsafe { init_versioned(cfg, legacy, "lpx_engine_config_init", "cfg") };
        }
    } => ())
}

/// Applies environment overrides to `*cfg` (which must be initialised): `LPX_MODEL`,
/// `LPX_SERVED_MODEL_NAME`, `LPX_DEVICE`, `LPX_THREADS`, `LPX_WEIGHT_DTYPE` (f32|bf16|q8_0|q4_k),
/// `LPX_MAX_NUM_SEQS`, `LPX_MAX_BATCH_TOKENS`, `LPX_MAX_MODEL_LEN`, `LPX_KV_BLOCK_SIZE`,
/// `LPX_KV_CACHE_BYTES`, `LPX_MEMORY_BUDGET_BYTES`, `LPX_MAX_QUEUE`, `LPX_PREFIX_CACHING`, `NIM_PEFT_SOURCE` (':'-separated),
/// `NIM_PEFT_REFRESH_INTERVAL` (seconds), `NIM_MAX_CPU_LORAS`, `NIM_MAX_GPU_LORAS`,
/// `NIM_MAX_LORA_RANK` (the same variables and parsing as `EngineConfig::apply_env`). Unset
/// variables leave fields as they are. String fields taken from the environment point to
/// library-owned storage that lives until the process exits; strings the caller set and the
/// environment does not change keep the caller's pointers.
///
/// Errors: INVALID_ARGUMENT for a NULL or uninitialised `cfg`, invalid UTF-8 in a field, a
/// malformed variable (the message names it) or a value too large for its field (named). On
/// error `*cfg` is unchanged. Thread-safe with respect to other loraplex calls (reads the
/// process environment).
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
        let mut r = unsafe { to_rust(&c) }?;
        r.apply_env()?;
        let n = from_rust(&r, |s, field| {
            let mine = match field {
                "model" => c.model,
                "served_model_name" => c.served_model_name,
                "device" => c.device,
                "peft_source" => c.peft_source,
                _ => std::ptr::null(),
            };
            if !mine.is_null() {
                // SAFETY: the caller's strings are NULL (excluded above) or valid NUL-terminated
                // strings per the contract (already read by `to_rust`).
                let theirs = unsafe { std::ffi::CStr::from_ptr(mine) };
                if theirs.to_bytes() == s.as_bytes() {
                    return Ok(mine);
                }
            }
            intern(s, &format!("cfg->{field} from the environment"))
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_rust_defaults() {
        let d = lpx_engine_config::defaults();
        assert_eq!(
            d.struct_size as usize,
            std::mem::size_of::<lpx_engine_config>()
        );
        assert!(d.model.is_null() && d.served_model_name.is_null() && d.peft_source.is_null());
        // SAFETY: device points to an interned string.
        let dev = unsafe { std::ffi::CStr::from_ptr(d.device) };
        assert_eq!(dev.to_str().unwrap(), "cpu");
        // SAFETY: strings are NULL or interned.
        let back = unsafe { to_rust(&d) }.unwrap();
        assert_eq!(back, EngineConfig::new(""));
    }

    #[test]
    fn every_field_round_trips() {
        let mut r = EngineConfig::new("/m/model.gguf");
        r.served_model_name = Some("served".into());
        r.device = "cuda:1".into();
        r.threads = 3;
        r.weight_format = WeightFormat::BF16;
        r.max_num_seqs = 5;
        r.max_batch_tokens = 6;
        r.max_model_len = 7;
        r.kv_block_size = 8;
        r.kv_cache_bytes = 9 << 33;
        r.max_queue = 10;
        r.memory_budget_bytes = 11 << 34;
        r.peft_source = vec!["/a".into(), "/b".into()];
        r.peft_refresh_interval = Some(Duration::from_millis(1500));
        r.max_cpu_loras = 12;
        r.max_gpu_loras = 4;
        r.max_lora_rank = 13;
        let c = from_rust(&r, intern).unwrap();
        // SAFETY: strings are interned.
        assert_eq!(unsafe { to_rust(&c) }.unwrap(), r);
        assert_eq!(c.kv_cache_bytes, 9 << 33);
        assert_eq!(c.peft_refresh_interval_ms, 1500);

        for w in WeightFormat::ALL {
            r.weight_format = w;
            let c = from_rust(&r, intern).unwrap();
            assert_eq!(
                c.weight_dtype,
                WeightFormat::ALL.iter().position(|&x| x == w).unwrap() as u32
            );
            // SAFETY: strings are interned.
            assert_eq!(unsafe { to_rust(&c) }.unwrap(), r);
        }
        let mut bad = from_rust(&r, intern).unwrap();
        bad.weight_dtype = 4;
        // SAFETY: strings are interned.
        let e = unsafe { to_rust(&bad) }.unwrap_err();
        assert!(e.message().contains("weight_dtype = 4"), "{e}");

        r.max_queue = u32::MAX as usize + 1;
        let e = from_rust(&r, intern).unwrap_err();
        assert!(e.message().contains("max_queue"), "{e}");
    }
}
