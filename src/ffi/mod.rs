//! The C ABI (`include/loraplex.h`, generated from this module by cbindgen).
//!
//! Conventions (see DESIGN.md §3): functions and types are prefixed `lpx_`; every fallible call
//! returns an owned `lpx_error *` (NULL = success) and writes its out-params only on success;
//! every pointer argument is checked (NULL → `LPX_ERROR_CODE_INVALID_ARGUMENT` naming it);
//! strings are UTF-8 (invalid UTF-8 → INVALID_ARGUMENT naming the field); handles (`lpx_engine`,
//! `lpx_output`, `lpx_error`) are opaque; requests are `uint64_t` ids. Every export runs inside
//! `ffi_guard!`, so a panic comes back as a `PANIC` error instead of unwinding into C.
//!
//! # Versioned structs
//!
//! `lpx_engine_config` and `lpx_request` start with `uint32_t struct_size` and only ever grow
//! by appending fields. Every call that reads one accepts each layout it knows
//! (`struct_size` = `sizeof` of the struct in this or an older header; an older caller's
//! missing fields keep their defaults) and refuses any other size. Initialisation is sized:
//! `lpx_request_init_sized(req, size)` / `lpx_engine_config_init_sized(cfg, size)` write the
//! defaults of exactly the layout `size` denotes (a known size, or this library's layout for a
//! larger size from a newer header, the rest untouched) and set `struct_size` to it; an unknown
//! size writes nothing and returns INVALID_ARGUMENT. The header defines
//! `#define lpx_request_init(req) lpx_request_init_sized((req), sizeof *(req))` (and the same
//! for `lpx_engine_config_init`), so C and C++ compiled against it always pass their own
//! `sizeof`. The unsized symbols `lpx_request_init` / `lpx_engine_config_init` stay exported for
//! binaries built before the structs grew and write only the FIRST layout (`struct_size` = its
//! size), which is all such callers have room for; reach them from new code only as
//! `(lpx_request_init)(req)`. Bindings that cannot expand C macros (cgo, Rust) call the
//! `_sized` functions with the struct's size.
//!
//! The functions are `unsafe extern "C"`: Rust callers must uphold the pointer contracts the
//! docs state, exactly as C callers do.
#![allow(non_camel_case_types)]

pub(crate) mod guard;

pub mod config;
pub mod engine;
pub mod error;
pub mod output;
pub mod plan;
pub mod request;
pub mod types;

use std::ffi::c_char;

use guard::{ffi_guard, req_str};

pub use config::{
    lpx_engine_config_from_env, lpx_engine_config_init, lpx_engine_config_init_sized,
};
pub use engine::{
    lpx_engine, lpx_engine_cancel, lpx_engine_create, lpx_engine_free, lpx_engine_metrics_text,
    lpx_engine_models_json, lpx_engine_poll, lpx_engine_refresh, lpx_engine_register_peft_source,
    lpx_engine_stats_json, lpx_engine_submit, lpx_engine_submit_json, lpx_string_free,
};
pub use error::{
    lpx_error, lpx_error_code, lpx_error_free, lpx_error_limit, lpx_error_message,
    lpx_error_retry_after_ms,
};
pub use output::{
    lpx_output, lpx_output_cumulative_logprob, lpx_output_error, lpx_output_finish_reason,
    lpx_output_free, lpx_output_index, lpx_output_is_done, lpx_output_is_final, lpx_output_json,
    lpx_output_logprobs, lpx_output_prompt_logprobs, lpx_output_prompt_text,
    lpx_output_prompt_token_ids, lpx_output_request_id, lpx_output_text, lpx_output_text_len,
    lpx_output_token_ids, lpx_output_usage, lpx_output_usage_json,
};
pub use plan::lpx_engine_plan_json;
pub use request::{lpx_request_init, lpx_request_init_sized};
pub use types::*;

/// Version of the binary interface; bumped on every breaking change. Compare
/// `lpx_abi_version()` with the header's `LPX_ABI_VERSION` before anything else.
pub const LPX_ABI_VERSION: u32 = 1;

/// The library's `LPX_ABI_VERSION`. Never fails; thread-safe.
#[no_mangle]
pub extern "C" fn lpx_abi_version() -> u32 {
    LPX_ABI_VERSION
}

/// The library version ("MAJOR.MINOR.PATCH"), a static NUL-terminated string (never freed).
/// Never fails; thread-safe.
#[no_mangle]
pub extern "C" fn lpx_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// Test hook (not in the header): panics with `msg` inside the guard, so that tests can check
/// that a panic comes back as a `PANIC` error carrying its message.
///
/// # Safety
/// `msg` must be NULL or a NUL-terminated string.
#[doc(hidden)]
#[no_mangle]
pub unsafe extern "C" fn lpx_debug_panic(msg: *const c_char) -> *mut lpx_error {
    ffi_guard!({
        // SAFETY: forwarded contract.
        let m = unsafe { req_str(msg, "msg") }?;
        panic!("{m}")
    })
}
