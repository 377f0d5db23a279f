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
use crate::engine::{FinishReason, Output, TokenLogprob, Usage};
use crate::error::Error;
use crate::openai::{chunk_json, completion_json, usage_chunk_json, ChunkPosition, ResponseShape};
use crate::tokenizer::Tokenizer;

/// How an output's JSON is rendered (decided by `lpx_engine_poll`).
pub(crate) enum Render {
    /// A streamed chunk of one choice: its position in the choice's stream and the request's
    /// usage so far (for the `include_usage` chunk).
    Chunk {
        shape: ResponseShape,
        pos: ChunkPosition,
        total: Usage,
    },
    /// The complete object of a non-streamed request: every choice's merged output, in index
    /// order.
    Complete {
        shape: ResponseShape,
        all: Vec<Output>,
    },
}

/// C views of log-probabilities: the structs and the arrays their `top` pointers point into.
struct CLogprobs {
    entries: Vec<lpx_token_logprob>,
    /// Owns the arrays `entries[i].top` points into (never resized after construction).
    _tops: Vec<Vec<lpx_top_logprob>>,
}

impl CLogprobs {
    fn new(lps: &[TokenLogprob]) -> Self {
        let tops: Vec<Vec<lpx_top_logprob>> = lps
            .iter()
            .map(|l| {
                l.top
                    .iter()
                    .map(|&(token, logprob)| lpx_top_logprob { token, logprob })
                    .collect()
            })
            .collect();
        let entries = lps
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
        Self {
            entries,
            _tops: tops,
        }
    }
}

/// `s` plus a NUL terminator.
fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

/// A delta of one choice of a request's result (text, token ids, log-probabilities, usage,
/// finish reason, the prompt on the choice's first output when asked for). Opaque, immutable,
/// owned by the caller; free with `lpx_output_free`. Safe to read from any thread.
pub struct lpx_output {
    out: Output,
    /// `out.text` plus a NUL terminator.
    text: Vec<u8>,
    logprobs: CLogprobs,
    /// The prompt text plus a NUL terminator, when `out.prompt` is set.
    prompt_text: Option<Vec<u8>>,
    prompt_logprobs: CLogprobs,
    error: Option<Box<lpx_error>>,
    render: Render,
    tokenizer: Arc<Tokenizer>,
}

impl lpx_output {
    pub(crate) fn new(out: Output, render: Render, tokenizer: Arc<Tokenizer>) -> Self {
        let text = nul_terminated(&out.text);
        let logprobs = CLogprobs::new(&out.logprobs);
        let prompt_text = out.prompt.as_ref().map(|p| nul_terminated(&p.text));
        let prompt_logprobs = CLogprobs::new(out.prompt.as_ref().map_or(&[][..], |p| &p.logprobs));
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
            prompt_text,
            prompt_logprobs,
            error,
            render,
            tokenizer,
        }
    }
}

/// Writes `v.len()` to `*len` (when not NULL) and returns `v`'s address, NULL when empty.
///
/// # Safety
/// `len` must be NULL or writable.
unsafe fn array_out<T>(v: &[T], len: *mut usize) -> *const T {
    if !len.is_null() {
        // SAFETY: non-NULL and writable per the contract.
        unsafe { len.write_unaligned(v.len()) };
    }
    if v.is_empty() {
        std::ptr::null()
    } else {
        v.as_ptr()
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

/// Why this output's choice ended, or `LPX_FINISH_REASON_NONE` if more outputs of it will
/// follow (also for NULL). The request is over when `lpx_output_is_done` says so (with one
/// choice, at the same output).
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

/// True for the last output of this output's choice (finish reason set); false for NULL. With
/// `n` > 1 other choices may still follow: poll until `lpx_output_is_done`.
///
/// # Safety
/// `o` must be NULL or a live output. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_is_final(o: *const lpx_output) -> bool {
    // SAFETY: forwarded contract.
    ffi_guard!(unsafe { get(o) }.is_some_and(|o| o.out.is_final()) => true)
}

/// True for the request's last output: every choice has ended and the engine has forgotten the
/// id (polling it again is NOT_FOUND). False for NULL. A failed request ends with one output
/// whose finish reason is `LPX_FINISH_REASON_ERROR` and that is done.
///
/// # Safety
/// `o` must be NULL or a live output. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_is_done(o: *const lpx_output) -> bool {
    // SAFETY: forwarded contract.
    ffi_guard!(unsafe { get(o) }.is_some_and(|o| o.out.done) => true)
}

/// The choice this output belongs to, `0..n` (0 for NULL). Outputs of different choices of an
/// `n` > 1 request interleave; each output holds one choice's delta. The single output of a
/// non-streamed `lpx_engine_submit_json` request describes choice 0 through the accessors, and
/// every choice through `lpx_output_json`.
///
/// # Safety
/// `o` must be NULL or a live output. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_index(o: *const lpx_output) -> u32 {
    // SAFETY: forwarded contract.
    ffi_guard!(unsafe { get(o) }.map_or(0, |o| o.out.index as u32) => 0)
}

/// The prompt text, on each choice's first output when the request asked for `echo` or
/// `prompt_logprobs`: the request's own text for a text prompt, otherwise its tokens decoded
/// (special tokens included). UTF-8, NUL-terminated, borrowed from `o`; its length in bytes
/// goes to `*len` (when not NULL). NULL (length 0) when the output carries no prompt.
///
/// # Safety
/// `o` must be NULL or a live output; `len` NULL or writable. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_prompt_text(
    o: *const lpx_output,
    len: *mut usize,
) -> *const c_char {
    ffi_guard!({
        // SAFETY: forwarded contract.
        let t = unsafe { get(o) }.and_then(|o| o.prompt_text.as_deref());
        if !len.is_null() {
            // SAFETY: non-NULL and writable per the contract.
            unsafe { len.write_unaligned(t.map_or(0, |t| t.len() - 1)) };
        }
        t.map_or(std::ptr::null(), |t| t.as_ptr() as *const c_char)
    } => std::ptr::null())
}

/// The prompt token ids (with the prompt text, see `lpx_output_prompt_text`), borrowed from
/// `o`; their count goes to `*len` (when not NULL). NULL when the output carries no prompt.
///
/// # Safety
/// `o` must be NULL or a live output; `len` NULL or writable. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_prompt_token_ids(
    o: *const lpx_output,
    len: *mut usize,
) -> *const u32 {
    ffi_guard!({
        // SAFETY: forwarded contract.
        let ids = unsafe { get(o) }
            .and_then(|o| o.out.prompt.as_ref())
            .map_or(&[][..], |p| &p.token_ids[..]);
        // SAFETY: forwarded contract.
        unsafe { array_out(ids, len) }
    } => std::ptr::null())
}

/// Log-probabilities of the prompt tokens (when the request set `prompt_logprobs`): one entry
/// per prompt token after the first (`lpx_output_prompt_token_ids(o)[1..]`), each the token's
/// log-probability given the tokens before it and its `prompt_logprobs` most likely
/// alternatives. Borrowed from `o`; their count goes to `*len` (when not NULL). NULL when there
/// are none.
///
/// # Safety
/// `o` must be NULL or a live output; `len` NULL or writable. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_prompt_logprobs(
    o: *const lpx_output,
    len: *mut usize,
) -> *const lpx_token_logprob {
    ffi_guard!({
        // SAFETY: forwarded contract.
        let lps = unsafe { get(o) }.map_or(&[][..], |o| &o.prompt_logprobs.entries[..]);
        // SAFETY: forwarded contract.
        unsafe { array_out(lps, len) }
    } => std::ptr::null())
}

/// The sum of the natural-log probabilities of this output's choice's generated tokens so far
/// (whether or not log-probabilities were asked for); 0 for NULL.
///
/// # Safety
/// `o` must be NULL or a live output. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_output_cumulative_logprob(o: *const lpx_output) -> f64 {
    // SAFETY: forwarded contract.
    ffi_guard!(unsafe { get(o) }.map_or(0.0, |o| o.out.cumulative_logprob) => 0.0)
}

/// The new text of this delta: UTF-8, NUL-terminated, borrowed from `o` (valid until
/// `lpx_output_free`). Concatenating the text of every delta of one choice
/// (`lpx_output_index`) gives that choice's completion (without the echoed prompt). Generated
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
        // SAFETY: forwarded contract.
        unsafe { array_out(ids, len) }
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
        let lps = unsafe { get(o) }.map_or(&[][..], |o| &o.logprobs.entries[..]);
        // SAFETY: forwarded contract.
        unsafe { array_out(lps, len) }
    } => std::ptr::null())
}

/// Token counts so far of this output's choice: the prompt tokens and the choice's generated
/// tokens (zeros for NULL). A request's usage is the prompt tokens once plus every choice's
/// completion tokens (what `lpx_output_json` of a complete object and `lpx_output_usage_json`
/// report).
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
/// `"stream": true`) a `text_completion` / `chat.completion.chunk` chunk of this output's
/// choice — one SSE `data:` payload (chunks carry no `usage`, as OpenAI's: with
/// `stream_options.include_usage` they carry `"usage": null` and `lpx_output_usage_json` gives
/// the usage chunk); for non-streamed `submit_json` requests the complete `text_completion` /
/// `chat.completion` object with every choice and the request's `usage`. Failed requests carry
/// an `error` object.
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
            let tok = Some(&*o.tokenizer);
            Some(match &o.render {
                Render::Chunk { shape, pos, .. } => chunk_json(&o.out, *pos, shape, tok),
                Render::Complete { shape, all } => completion_json(all, shape, tok),
            })
        })
    })
}

/// The usage chunk OpenAI streams after the last content chunk when the body asked for
/// `"stream_options": {"include_usage": true}`: `choices` empty, `usage` set. Written to `*out`
/// (free with `lpx_string_free`) for the request's last output (`lpx_output_is_done`) of such a
/// request, with the usage of every choice — send it as one more SSE `data:` payload after
/// `lpx_output_json`'s; `*out` = NULL for every other output.
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
    ffi_guard!(unsafe {
        json_out(o, out, |o| match &o.render {
            Render::Chunk { shape, total, .. } => usage_chunk_json(&o.out, *total, shape),
            Render::Complete { .. } => None,
        })
    })
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
