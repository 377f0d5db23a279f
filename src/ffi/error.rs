//! `lpx_error`: owned error objects (NULL = success) and their accessors.

use std::ffi::{c_char, CString};

use super::guard::ffi_guard;
use super::types::lpx_error_code_t;
use crate::error::{Error, ErrorCode};

/// An error returned by a loraplex call: a stable code and a message naming what is at fault.
/// Opaque; owned by the caller, freed with `lpx_error_free`. Immutable, so it may be read from
/// any thread.
pub struct lpx_error {
    pub(crate) code: ErrorCode,
    pub(crate) message: CString,
    /// For a refusal under load: the limit's name and the suggested wait in milliseconds.
    pub(crate) retry: Option<(CString, u64)>,
}

impl lpx_error {
    pub(crate) fn new(e: &Error) -> Self {
        let bytes: Vec<u8> = e
            .message()
            .bytes()
            .map(|b| if b == 0 { b'?' } else { b })
            .collect();
        Self {
            code: e.code(),
            message: CString::new(bytes).unwrap_or_default(),
            retry: e.retry().map(|r| {
                (
                    CString::new(r.limit).unwrap_or_default(),
                    u64::try_from(r.after.as_millis()).unwrap_or(u64::MAX),
                )
            }),
        }
    }
}

/// Boxes `e` for the caller.
pub(crate) fn into_raw(e: Error) -> *mut lpx_error {
    Box::into_raw(Box::new(lpx_error::new(&e)))
}

/// Maps the crate's code to the C enum (same numbers).
pub(crate) fn code_to_c(c: ErrorCode) -> lpx_error_code_t {
    match c {
        ErrorCode::InvalidArgument => lpx_error_code_t::LPX_ERROR_CODE_INVALID_ARGUMENT,
        ErrorCode::NotFound => lpx_error_code_t::LPX_ERROR_CODE_NOT_FOUND,
        ErrorCode::InvalidModel => lpx_error_code_t::LPX_ERROR_CODE_INVALID_MODEL,
        ErrorCode::InvalidAdapter => lpx_error_code_t::LPX_ERROR_CODE_INVALID_ADAPTER,
        ErrorCode::Capacity => lpx_error_code_t::LPX_ERROR_CODE_CAPACITY,
        ErrorCode::QueueFull => lpx_error_code_t::LPX_ERROR_CODE_QUEUE_FULL,
        ErrorCode::Io => lpx_error_code_t::LPX_ERROR_CODE_IO,
        ErrorCode::Device => lpx_error_code_t::LPX_ERROR_CODE_DEVICE,
        ErrorCode::Unsupported => lpx_error_code_t::LPX_ERROR_CODE_UNSUPPORTED,
        ErrorCode::Cancelled => lpx_error_code_t::LPX_ERROR_CODE_CANCELLED,
        ErrorCode::EngineFailed => lpx_error_code_t::LPX_ERROR_CODE_ENGINE_FAILED,
        ErrorCode::Panic => lpx_error_code_t::LPX_ERROR_CODE_PANIC,
        ErrorCode::Internal => lpx_error_code_t::LPX_ERROR_CODE_INTERNAL,
    }
}

// The C codes are the crate's codes, number for number.
const _: () = {
    assert!(
        ErrorCode::InvalidArgument as u32
            == lpx_error_code_t::LPX_ERROR_CODE_INVALID_ARGUMENT as u32
    );
    assert!(ErrorCode::NotFound as u32 == lpx_error_code_t::LPX_ERROR_CODE_NOT_FOUND as u32);
    assert!(
        ErrorCode::InvalidModel as u32 == lpx_error_code_t::LPX_ERROR_CODE_INVALID_MODEL as u32
    );
    assert!(
        ErrorCode::InvalidAdapter as u32 == lpx_error_code_t::LPX_ERROR_CODE_INVALID_ADAPTER as u32
    );
    assert!(ErrorCode::Capacity as u32 == lpx_error_code_t::LPX_ERROR_CODE_CAPACITY as u32);
    assert!(ErrorCode::QueueFull as u32 == lpx_error_code_t::LPX_ERROR_CODE_QUEUE_FULL as u32);
    assert!(ErrorCode::Io as u32 == lpx_error_code_t::LPX_ERROR_CODE_IO as u32);
    assert!(ErrorCode::Device as u32 == lpx_error_code_t::LPX_ERROR_CODE_DEVICE as u32);
    assert!(ErrorCode::Unsupported as u32 == lpx_error_code_t::LPX_ERROR_CODE_UNSUPPORTED as u32);
    assert!(ErrorCode::Cancelled as u32 == lpx_error_code_t::LPX_ERROR_CODE_CANCELLED as u32);
    assert!(
        ErrorCode::EngineFailed as u32 == lpx_error_code_t::LPX_ERROR_CODE_ENGINE_FAILED as u32
    );
    assert!(ErrorCode::Panic as u32 == lpx_error_code_t::LPX_ERROR_CODE_PANIC as u32);
    assert!(ErrorCode::Internal as u32 == lpx_error_code_t::LPX_ERROR_CODE_INTERNAL as u32);
};

/// The error's stable code. Returns `LPX_ERROR_CODE_INVALID_ARGUMENT` for a NULL `err`.
///
/// # Safety
/// `err` must be NULL or a live error from this library (owned or borrowed from an output).
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_error_code(err: *const lpx_error) -> lpx_error_code_t {
    ffi_guard!({
        // SAFETY: NULL or a live error per the contract.
        match unsafe { err.as_ref() } {
            Some(e) => code_to_c(e.code),
            None => lpx_error_code_t::LPX_ERROR_CODE_INVALID_ARGUMENT,
        }
    } => lpx_error_code_t::LPX_ERROR_CODE_PANIC)
}

/// The error's message (UTF-8, NUL-terminated), borrowed from `err`: valid until `err` is freed
/// (or, for an error borrowed from an output, until that output is freed). Returns
/// "argument err is NULL" for a NULL `err`.
///
/// # Safety
/// `err` must be NULL or a live error from this library. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_error_message(err: *const lpx_error) -> *const c_char {
    ffi_guard!({
        // SAFETY: NULL or a live error per the contract.
        match unsafe { err.as_ref() } {
            Some(e) => e.message.as_ptr(),
            None => c"argument err is NULL".as_ptr(),
        }
    } => c"panic inside loraplex".as_ptr())
}

/// For a request refused under load (QUEUE_FULL, CAPACITY): the suggested wait before retrying,
/// in milliseconds (at least 1000), estimated from the engine's recent completion rate and how
/// far over the limit the request was. 0 for other errors and for a NULL `err`.
///
/// # Safety
/// `err` must be NULL or a live error from this library. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_error_retry_after_ms(err: *const lpx_error) -> u64 {
    ffi_guard!({
        // SAFETY: NULL or a live error per the contract.
        unsafe { err.as_ref() }.and_then(|e| e.retry.as_ref()).map_or(0, |r| r.1)
    } => 0)
}

/// For a request refused under load: the name of the configuration limit that was hit
/// ("max_queue", "max_cpu_loras"), borrowed from `err` (valid until it is freed). NULL for other
/// errors and for a NULL `err`.
///
/// # Safety
/// `err` must be NULL or a live error from this library. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_error_limit(err: *const lpx_error) -> *const c_char {
    ffi_guard!({
        // SAFETY: NULL or a live error per the contract.
        unsafe { err.as_ref() }
            .and_then(|e| e.retry.as_ref())
            .map_or(std::ptr::null(), |r| r.0.as_ptr())
    } => std::ptr::null())
}

/// Frees an error returned by a loraplex call. NULL is fine. Never free an error borrowed from
/// an output (`lpx_output_error`).
///
/// # Safety
/// `err` must be NULL or an owned error not freed before.
#[no_mangle]
pub unsafe extern "C" fn lpx_error_free(err: *mut lpx_error) {
    ffi_guard!({
        if !err.is_null() {
            // SAFETY: an owned error created by Box::into_raw, freed once per the contract.
            drop(unsafe { Box::from_raw(err) });
        }
    } => ())
}
