//! `lpx_output`: one streamed piece of a request's result, and its accessors.
//!
//! An output is immutable and owned by the caller (free it with `lpx_output_free`); every
//! pointer an accessor returns borrows from it. Accessors are NULL-tolerant: a NULL output reads
//! as an empty, unfinished output.

use std::ffi::c_char;
use std::sync::Arc;

use super::error::lpx_error;
use super::guard::{ffi_guard, non_null};
use super::types::{lpx_finish_reason, lpx_token_logprob, lpx_top_logprob, lpx_usage};
use crate::engine::{FinishReason, Output};
use crate::error::Error;
use crate::openai::{response_json, usage_chunk_json, ResponseShape};
use crate::tokenizer::Tokenizer;

/// A delta of a request's result (text, token ids, log-probabilities, usage, finish reason).
/// Opaque, immutable, owned by the caller; free with `lpx_output_free`. Safe to read from any
/// thread.
pub struct lpx_output {
    out: Output,
    /// `out.text` plus a NUL terminator.
    text: Vec<u8>,
    logprobs: Vec<lpx_token_logprob>,
    /// Owns the arrays `logprobs[i].top` points into (never resized after construction).
    _tops: Vec<Vec<lpx_top_logprob>>,
    error: Option<Box<lpx_error>>,
    shape: ResponseShape,
    tokenizer: Arc<Tokenizer>,
}

impl lpx_output {
    pub(crate) fn new(out: Output, shape: ResponseShape, tokenizer: Arc<Tokenizer>) -> Self {
        let mut text = out.text.as_bytes().to_vec();
        text.push(0);
        let tops: Vec<Vec<lpx_top_logprob>> = out
            .logprobs
            .iter()
            .map(|l| {
                l.top
                    .iter()
                    .map(|&(token, logprob)| lpx_top_logprob { token, logprob })
                    .collect()
            })
            .collect();
        let logprobs = out
            .logprobs
            .iter()
            .zip(&tops)
            .map(|(l, t)| lpx_token_logprob {
                token: l.token,
                logprob: l.logprob,
                top: if t.is_empty() {
                    std::ptr::null()
                } else {
                    t.as_ptr()
                },
                top_len: t.len(),
            })
            .collect();
        let error = match (&out.error, out.finish_reason) {
            (Some(e), _) => Some(Box::new(lpx_error::new(e))),
            (None, Some(FinishReason::Error)) => Some(Box::new(lpx_error::new(&Error::internal(
                "request failed without an error message",
            )))),
            _ => None,
        };
        Self {
            out,
            text,
            logprobs,
            _tops: tops,
            error,
            shape,
            tokenizer,
        }
    }
}

/// Borrows the output behind `o` (None for NULL).
///
/// # Safety
/// `o` must be NULL or a live output.
unsafe fn get<'a>(o: *const lpx_output) -> Option<&'a lpx_output> {
    // SAFETY: NULL or live per the caller's contract.
    unsafe { o.as_ref() }
}

/// The request id this output belongs to (0 for NULL).
///
/// # Safety
/// `o` must be NULL or a live output. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_request_id(o: *const lpx_output) -> u64 {
    // SAFETY: forwarded contract.
    ffi_guard!(unsafe { get(o) }.map_or(0, |o| o.out.id) => 0)
}

/// Why the request ended, or `LPX_FINISH_REASON_NONE` if more outputs will follow (also for
/// NULL). After a terminal output the engine forgets the id.
///
/// # Safety
/// `o` must be NULL or a live output. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_finish_reason(o: *const lpx_output) -> lpx_finish_reason {
    // SAFETY: forwarded contract.
    ffi_guard!(match unsafe { get(o) }.and_then(|o| o.out.finish_reason) {
        None => lpx_finish_reason::None,
        Some(FinishReason::Stop) => lpx_finish_reason::Stop,
        Some(FinishReason::Length) => lpx_finish_reason::Length,
        Some(FinishReason::Cancelled) => lpx_finish_reason::Cancelled,
        Some(FinishReason::Error) => lpx_finish_reason::Error,
    } => lpx_finish_reason::Error)
}

/// True for the last output of a request (finish reason set); false for NULL.
///
/// # Safety
/// `o` must be NULL or a live output. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_is_final(o: *const lpx_output) -> bool {
    // SAFETY: forwarded contract.
    ffi_guard!(unsafe { get(o) }.is_some_and(|o| o.out.is_final()) => true)
}

/// The new text of this delta: UTF-8, NUL-terminated, borrowed from `o` (valid until
/// `lpx_output_free`). Concatenating every delta's text gives the whole completion. Generated
/// text may contain a NUL byte; use `lpx_output_text_len` to get the full length. "" for NULL.
///
/// # Safety
/// `o` must be NULL or a live output. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_text(o: *const lpx_output) -> *const c_char {
    // SAFETY: forwarded contract.
    ffi_guard!(unsafe { get(o) }.map_or(c"".as_ptr(), |o| o.text.as_ptr() as *const c_char)
        => c"".as_ptr())
}

/// As `lpx_output_text`, also writing the text's length in bytes (without the terminator) to
/// `*len` when `len` is not NULL.
///
/// # Safety
/// `o` must be NULL or a live output; `len` NULL or writable. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_text_len(
    o: *const lpx_output,
    len: *mut usize,
) -> *const c_char {
    ffi_guard!({
        // SAFETY: forwarded contract.
        let o = unsafe { get(o) };
        if !len.is_null() {
            // SAFETY: non-NULL and writable per the contract.
            unsafe { len.write_unaligned(o.map_or(0, |o| o.out.text.len())) };
        }
        o.map_or(c"".as_ptr(), |o| o.text.as_ptr() as *const c_char)
    } => c"".as_ptr())
}

/// The new token ids of this delta, borrowed from `o`; their count goes to `*len` (when not
/// NULL). Returns NULL when there are none.
///
/// # Safety
/// `o` must be NULL or a live output; `len` NULL or writable. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_token_ids(o: *const lpx_output, len: *mut usize) -> *const u32 {
    ffi_guard!({
        // SAFETY: forwarded contract.
        let ids = unsafe { get(o) }.map_or(&[][..], |o| &o.out.token_ids[..]);
        if !len.is_null() {
            // SAFETY: non-NULL and writable per the contract.
            unsafe { len.write_unaligned(ids.len()) };
        }
        if ids.is_empty() {
            std::ptr::null()
        } else {
            ids.as_ptr()
        }
    } => std::ptr::null())
}

/// Log-probabilities of this delta's tokens (when the request asked for them), borrowed from
/// `o`; their count goes to `*len` (when not NULL). Returns NULL when there are none.
///
/// # Safety
/// `o` must be NULL or a live output; `len` NULL or writable. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_logprobs(
    o: *const lpx_output,
    len: *mut usize,
) -> *const lpx_token_logprob {
    ffi_guard!({
        // SAFETY: forwarded contract.
        let lps = unsafe { get(o) }.map_or(&[][..], |o| &o.logprobs[..]);
        if !len.is_null() {
            // SAFETY: non-NULL and writable per the contract.
            unsafe { len.write_unaligned(lps.len()) };
        }
        if lps.is_empty() {
            std::ptr::null()
        } else {
            lps.as_ptr()
        }
    } => std::ptr::null())
}

/// Token counts of the request so far (zeros for NULL).
///
/// # Safety
/// `o` must be NULL or a live output. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_usage(o: *const lpx_output) -> lpx_usage {
    ffi_guard!({
        // SAFETY: forwarded contract.
        unsafe { get(o) }.map_or(lpx_usage::default(), |o| lpx_usage {
            prompt_tokens: o.out.usage.prompt_tokens as u64,
            completion_tokens: o.out.usage.completion_tokens as u64,
        })
    } => lpx_usage::default())
}

/// Why the request failed (finish reason `LPX_FINISH_REASON_ERROR`): an error borrowed from
/// `o` — read it with `lpx_error_code` / `lpx_error_message`, never free it. NULL when the
/// request did not fail (or `o` is NULL).
///
/// # Safety
/// `o` must be NULL or a live output. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_error(o: *const lpx_output) -> *const lpx_error {
    ffi_guard!({
        // SAFETY: forwarded contract.
        unsafe { get(o) }
            .and_then(|o| o.error.as_deref())
            .map_or(std::ptr::null(), |e| e as *const lpx_error)
    } => std::ptr::null())
}

/// Shared body of the JSON getters: writes `f(o)` as an owned string to `*out` (NULL for `None`).
///
/// # Safety
/// `o` NULL or a live output; `out` NULL or writable.
unsafe fn json_out(
    o: *const lpx_output,
    out: *mut *mut c_char,
    f: impl FnOnce(&lpx_output) -> Option<serde_json::Value>,
) -> crate::error::Result<()> {
    // SAFETY: NULL or live per the contract.
    let o = unsafe { get(o) }.ok_or_else(|| super::guard::null_arg("o"))?;
    non_null(out, "out")?;
    let s = f(o).map_or(std::ptr::null_mut(), |v| {
        super::engine::owned_c_string(v.to_string())
    });
    // SAFETY: non-NULL and writable per the contract.
    unsafe { out.write_unaligned(s) };
    Ok(())
}

/// The OpenAI-shaped JSON of this output, written to `*out` (free with `lpx_string_free`):
/// for streamed requests (every `lpx_engine_submit` request, and `submit_json` bodies with
/// `"stream": true`) a `text_completion` / `chat.completion.chunk` chunk — one SSE `data:`
/// payload; for non-streamed `submit_json` requests the complete `text_completion` /
/// `chat.completion` object. Final outputs carry `usage` (with `stream_options.include_usage`
/// every chunk carries `"usage": null` instead, and `lpx_output_usage_json` gives the usage
/// chunk); failed ones an `error` object.
///
/// Errors: INVALID_ARGUMENT for NULL `o` or `out` (`*out` untouched). Thread-safe.
///
/// # Safety
/// `o` must be NULL or a live output; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_json(
    o: *const lpx_output,
    out: *mut *mut c_char,
) -> *mut lpx_error {
    // SAFETY: forwarded contract.
    ffi_guard!(unsafe {
        json_out(o, out, |o| {
            Some(response_json(&o.out, &o.shape, Some(&o.tokenizer)))
        })
    })
}

/// The usage chunk OpenAI streams after the last content chunk when the body asked for
/// `"stream_options": {"include_usage": true}`: `choices` empty, `usage` set. Written to `*out`
/// (free with `lpx_string_free`) for the final output of such a request — send it as one more
/// SSE `data:` payload after `lpx_output_json`'s; `*out` = NULL for every other output.
///
/// Errors: INVALID_ARGUMENT for NULL `o` or `out` (`*out` untouched). Thread-safe.
///
/// # Safety
/// `o` must be NULL or a live output; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_usage_json(
    o: *const lpx_output,
    out: *mut *mut c_char,
) -> *mut lpx_error {
    // SAFETY: forwarded contract.
    ffi_guard!(unsafe { json_out(o, out, |o| usage_chunk_json(&o.out, &o.shape)) })
}

/// Frees an output. NULL is fine; every pointer borrowed from it becomes invalid.
///
/// # Safety
/// `o` must be NULL or an output not freed before.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_free(o: *mut lpx_output) {
    ffi_guard!({
        if !o.is_null() {
            // SAFETY: created by Box::into_raw in lpx_engine_poll, freed once per the contract.
            drop(unsafe { Box::from_raw(o) });
        }
    } => ())
}
