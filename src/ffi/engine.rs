//! `lpx_engine`: creation, administration, submit / poll / cancel.

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::path::Path;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::error::lpx_error;
use super::guard::{ffi_guard, non_null, read_versioned, req_str};
use super::output::{lpx_output, Render};
use super::types::{lpx_engine_config, lpx_request};
use crate::engine::{Engine, Output, RequestId};
use crate::error::Result;
use crate::openai::{parse_openai, ApiKind, ResponseShape, StreamTracker};

/// Per-request state the C layer keeps: the response shape, the stream's progress (each
/// choice's first chunk, text offsets, the usage of every choice) and, for non-streamed
/// `submit_json` requests, every choice's deltas merged so far (one entry per index).
struct Pending {
    shape: ResponseShape,
    tracker: StreamTracker,
    merged: Vec<Output>,
}

/// A running engine: one base model plus its adapters, a worker thread and a request table.
/// Opaque; created by `lpx_engine_create`, freed by `lpx_engine_free`. Every `lpx_engine_*`
/// function except `lpx_engine_free` may be called concurrently from any thread.
pub struct lpx_engine {
    pub(crate) engine: Engine,
    pending: Mutex<HashMap<RequestId, Pending>>,
}

/// Moves `s` into a `char *` for the caller (free with `lpx_string_free`); NUL bytes inside
/// become '?'.
pub(crate) fn owned_c_string(s: String) -> *mut c_char {
    let bytes: Vec<u8> = s
        .into_bytes()
        .into_iter()
        .map(|b| if b == 0 { b'?' } else { b })
        .collect();
    CString::new(bytes).unwrap_or_default().into_raw()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Borrows the engine behind `e` (INVALID_ARGUMENT for NULL).
///
/// # Safety
/// `e` must be NULL or a live engine.
unsafe fn engine<'a>(e: *const lpx_engine) -> Result<&'a lpx_engine> {
    // SAFETY: NULL or live per the caller's contract.
    unsafe { e.as_ref() }.ok_or_else(|| super::guard::null_arg("e"))
}

/// Creates an engine from `*cfg`: loads the base model, registers the PEFT sources and starts
/// the worker. `*cfg` and its strings are borrowed for this call only. On success `*out`
/// receives the engine (free with `lpx_engine_free`); on error `*out` is untouched.
///
/// Errors: INVALID_ARGUMENT (NULL `cfg`/`out`, bad `struct_size`, invalid UTF-8 or values —
/// the message names the field), IO / INVALID_MODEL for the model, UNSUPPORTED for a device not
/// compiled in. Thread-safe.
///
/// # Safety
/// `cfg` must be NULL or an initialised config; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lpx_engine_create(
    cfg: *const lpx_engine_config,
    out: *mut *mut lpx_engine,
) -> *mut lpx_error {
    ffi_guard!({
        non_null(cfg, "cfg")?;
        non_null(out, "out")?;
        // SAFETY: forwarded contract.
        let rc = unsafe { super::config::read_config(cfg) }?;
        let engine = Engine::new(rc)?;
        let boxed = Box::new(lpx_engine {
            engine,
            pending: Mutex::new(HashMap::new()),
        });
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write_unaligned(Box::into_raw(boxed)) };
        Ok(())
    })
}

/// Frees an engine: cancels every request in flight, joins the worker and releases all memory.
/// NULL is fine. Must be called after every other call on this engine has returned; outputs
/// already returned stay valid until freed.
///
/// # Safety
/// `e` must be NULL or an engine not freed before.
#[no_mangle]
pub unsafe extern "C" fn lpx_engine_free(e: *mut lpx_engine) {
    ffi_guard!({
        if !e.is_null() {
            // SAFETY: created by Box::into_raw in lpx_engine_create, freed once per the contract.
            drop(unsafe { Box::from_raw(e) });
        }
    } => ())
}

/// Adds a PEFT source directory at runtime (each immediate sub-directory is one adapter named
/// after it), rescanned every `refresh_ms` milliseconds (0 = only on `lpx_engine_refresh`).
/// `dir` is borrowed for the call.
///
/// Errors: INVALID_ARGUMENT (NULL, invalid UTF-8, already registered), IO (unreadable
/// directory). Thread-safe.
///
/// # Safety
/// `e` NULL or live; `dir` NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn lpx_engine_register_peft_source(
    e: *mut lpx_engine,
    dir: *const c_char,
    refresh_ms: u32,
) -> *mut lpx_error {
    ffi_guard!({
        // SAFETY: forwarded contract.
        let e = unsafe { engine(e) }?;
        // SAFETY: forwarded contract.
        let dir = unsafe { req_str(dir, "dir") }?;
        let every = (refresh_ms > 0).then(|| Duration::from_millis(u64::from(refresh_ms)));
        e.engine.register_peft_source(Path::new(dir), every)
    })
}

/// Rescans every PEFT source now: new adapters appear, changed ones get a new generation,
/// removed ones disappear (requests in flight finish on what they started with).
///
/// Errors: INVALID_ARGUMENT (NULL `e`), IO. Thread-safe.
///
/// # Safety
/// `e` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn lpx_engine_refresh(e: *mut lpx_engine) -> *mut lpx_error {
    ffi_guard!({
        // SAFETY: forwarded contract.
        unsafe { engine(e) }?.engine.refresh().map(|_| ())
    })
}

/// Shared body of the three text getters.
///
/// # Safety
/// `e` NULL or live; `out` NULL or writable.
unsafe fn text_out(
    e: *const lpx_engine,
    out: *mut *mut c_char,
    f: impl FnOnce(&Engine) -> String,
) -> Result<()> {
    // SAFETY: forwarded contract.
    let e = unsafe { engine(e) }?;
    non_null(out, "out")?;
    let s = owned_c_string(f(&e.engine));
    // SAFETY: non-NULL and writable per the contract.
    unsafe { out.write_unaligned(s) };
    Ok(())
}

/// The OpenAI `/v1/models` body (`{"object":"list","data":[...]}`: the base model, then every
/// adapter with `parent` = the base) written to `*out`; free with `lpx_string_free`.
///
/// Errors: INVALID_ARGUMENT for NULL `e`/`out` (`*out` untouched). Thread-safe.
///
/// # Safety
/// `e` NULL or live; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lpx_engine_models_json(
    e: *mut lpx_engine,
    out: *mut *mut c_char,
) -> *mut lpx_error {
    // SAFETY: forwarded contract.
    ffi_guard!(unsafe { text_out(e, out, |g| g.models_json().to_string()) })
}

/// Engine state as JSON (queues, KV cache, memory by tier, adapter tiers) written to `*out`;
/// free with `lpx_string_free`.
///
/// Errors: INVALID_ARGUMENT for NULL `e`/`out` (`*out` untouched). Thread-safe.
///
/// # Safety
/// `e` NULL or live; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lpx_engine_stats_json(
    e: *mut lpx_engine,
    out: *mut *mut c_char,
) -> *mut lpx_error {
    // SAFETY: forwarded contract.
    ffi_guard!(unsafe { text_out(e, out, |g| g.stats_json().to_string()) })
}

/// Prometheus text exposition of the engine's metrics written to `*out`; free with
/// `lpx_string_free`.
///
/// Errors: INVALID_ARGUMENT for NULL `e`/`out` (`*out` untouched). Thread-safe.
///
/// # Safety
/// `e` NULL or live; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lpx_engine_metrics_text(
    e: *mut lpx_engine,
    out: *mut *mut c_char,
) -> *mut lpx_error {
    // SAFETY: forwarded contract.
    ffi_guard!(unsafe { text_out(e, out, |g| g.metrics_text()) })
}

impl lpx_engine {
    fn submit_with(&self, req: crate::engine::Request, shape: ResponseShape) -> Result<RequestId> {
        // Hold the table lock across submit so that a poll racing with this submit finds the
        // entry as soon as the id exists.
        let mut pending = self.pending.lock();
        let id = self.engine.submit(req)?;
        pending.insert(
            id,
            Pending {
                shape,
                tracker: StreamTracker::new(),
                merged: Vec::new(),
            },
        );
        Ok(id)
    }
}

/// Queues a request; its id (never 0) goes to `*id`. `*req` and everything it points to are
/// borrowed for this call only. Outputs are streamed: poll with `lpx_engine_poll` until
/// `lpx_output_is_done` (each output is one choice's delta; with `n` > 1 the choices
/// interleave, and with `best_of` > `n` they come after all have finished).
///
/// Errors: INVALID_ARGUMENT (NULL, bad `struct_size`, not exactly one prompt kind, invalid
/// UTF-8, sampling values out of range, `n` / `best_of` out of range, a logit bias out of
/// range, twice or outside the vocabulary, an invalid or ill-formed response format (a schema,
/// regular expression or grammar that does not compile), empty or over-long prompt — the
/// message names the field), NOT_FOUND (unknown model/adapter), CAPACITY (host adapter cache
/// full of active adapters), QUEUE_FULL, ENGINE_FAILED. On error `*id` is untouched.
/// Thread-safe.
///
/// # Safety
/// `e` NULL or live; `req` NULL or initialised; `id` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lpx_engine_submit(
    e: *mut lpx_engine,
    req: *const lpx_request,
    id: *mut u64,
) -> *mut lpx_error {
    ffi_guard!({
        // SAFETY: forwarded contract.
        let e = unsafe { engine(e) }?;
        non_null(req, "req")?;
        non_null(id, "id")?;
        // SAFETY: non-NULL and initialised per the contract.
        let c = unsafe { read_versioned(req, "req") }?;
        // SAFETY: the request's pointers are valid per the contract.
        let r = unsafe { super::request::to_rust(&c) }?;
        let model = r.model.clone().unwrap_or_else(|| e.engine.served_name());
        let shape = ResponseShape::streamed(&r, &model, now_secs());
        let rid = e.submit_with(r, shape)?;
        // SAFETY: non-NULL and writable per the contract.
        unsafe { id.write_unaligned(rid) };
        Ok(())
    })
}

/// Queues an OpenAI `/v1/completions` (`prompt`) or `/v1/chat/completions` (`messages`) body;
/// its id goes to `*id`. With `"stream": true` polls return deltas, one choice each, until
/// `lpx_output_is_done` (`lpx_output_json` gives chunks); otherwise polls return nothing until
/// the single output that is done, whose `lpx_output_json` is the complete object with every
/// choice.
///
/// Honoured besides the sampling fields: `n`, `best_of`, `echo`, `logit_bias`,
/// `response_format` (`json_object`, `json_schema`), vLLM's `guided_json`, `guided_regex`,
/// `guided_choice`, `guided_grammar` and `return_tokens_as_token_ids`, and
/// `"stream_options": {"include_usage": true}` (`lpx_output_usage_json`). Fields the engine does
/// not honour are refused, not ignored: INVALID_ARGUMENT names every unknown field; `user` and
/// `metadata` are accepted as harmless, and a few fields only at their do-nothing value
/// (`tools` = [], `tool_choice` = "none", `suffix` = "", `store` = false...; see
/// `loraplex::openai::parse_openai`).
///
/// Errors: as `lpx_engine_submit`, plus INVALID_ARGUMENT naming the JSON field at fault (a
/// negative `seed`, `n` = 0, a streamed `best_of` > `n`, an unknown `response_format` type, an
/// invalid schema...) and UNSUPPORTED for several prompts. On error `*id` is untouched.
/// Thread-safe.
///
/// # Safety
/// `e` NULL or live; `openai_body` NULL or a NUL-terminated string; `id` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lpx_engine_submit_json(
    e: *mut lpx_engine,
    openai_body: *const c_char,
    id: *mut u64,
) -> *mut lpx_error {
    ffi_guard!({
        // SAFETY: forwarded contract.
        let e = unsafe { engine(e) }?;
        // SAFETY: forwarded contract.
        let body = unsafe { req_str(openai_body, "openai_body") }?;
        non_null(id, "id")?;
        let p = parse_openai(body, &e.engine.served_name())?;
        let shape = ResponseShape::of(&p, now_secs());
        let rid = e.submit_with(p.request, shape)?;
        // SAFETY: non-NULL and writable per the contract.
        unsafe { id.write_unaligned(rid) };
        Ok(())
    })
}

/// Waits up to `timeout_ms` (0 = don't block) for news about request `id`. On success `*out`
/// is a new output holding what arrived for one choice (its consecutive deltas merged; see
/// `lpx_output_index`), or NULL when nothing arrived in time. The caller frees the output with
/// `lpx_output_free`. After the request's last output (`lpx_output_is_done`) the id is
/// forgotten.
///
/// Errors: INVALID_ARGUMENT (NULL `e`/`out`), NOT_FOUND (unknown, finished or never submitted
/// id). On error `*out` is untouched. Thread-safe; several threads may poll different ids.
///
/// # Safety
/// `e` NULL or live; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lpx_engine_poll(
    e: *mut lpx_engine,
    id: u64,
    timeout_ms: u32,
    out: *mut *mut lpx_output,
) -> *mut lpx_error {
    ffi_guard!({
        // SAFETY: forwarded contract.
        let e = unsafe { engine(e) }?;
        non_null(out, "out")?;
        let result = e.poll(id, Duration::from_millis(u64::from(timeout_ms)))?;
        let p = result.map_or(std::ptr::null_mut(), |o| Box::into_raw(Box::new(o)));
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write_unaligned(p) };
        Ok(())
    })
}

impl lpx_engine {
    fn poll(&self, id: RequestId, timeout: Duration) -> Result<Option<lpx_output>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(o) = self.engine.poll(id, left)? else {
                return Ok(None);
            };
            let tokenizer = self.engine.tokenizer().clone();
            let mut pending = self.pending.lock();
            let Some(p) = pending.get_mut(&id) else {
                // Not submitted through this table (cannot happen: submit inserts under the
                // lock); render it as a plain completion chunk.
                let shape = ResponseShape {
                    kind: ApiKind::Completion,
                    model: self.engine.served_name().into(),
                    created: now_secs(),
                    stream: true,
                    include_usage: false,
                    echo: false,
                    logprobs: !o.logprobs.is_empty(),
                    tokens_as_ids: false,
                };
                let mut t = StreamTracker::new();
                let pos = t.advance(&o, &shape);
                let render = Render::Chunk {
                    shape,
                    pos,
                    total: t.usage(),
                };
                return Ok(Some(lpx_output::new(o, render, tokenizer)));
            };
            if p.shape.stream {
                let pos = p.tracker.advance(&o, &p.shape);
                let render = Render::Chunk {
                    shape: p.shape.clone(),
                    pos,
                    total: p.tracker.usage(),
                };
                if o.done {
                    pending.remove(&id);
                }
                return Ok(Some(lpx_output::new(o, render, tokenizer)));
            }
            // Not streamed: merge per choice until the request is done.
            let done = o.done;
            match p.merged.iter_mut().find(|m| m.index == o.index) {
                Some(m) => m.merge(o),
                None => p.merged.push(o),
            }
            if !done {
                continue;
            }
            let Some(mut p) = pending.remove(&id) else {
                continue;
            };
            drop(pending);
            p.merged.sort_by_key(|m| m.index);
            // The accessors describe choice 0 (the only one of an n = 1 request) and report
            // the request as done; the JSON holds every choice.
            let mut first = p.merged[0].clone();
            first.done = true;
            if first.finish_reason.is_none() {
                // A failure ends the request with an output of its own (possibly of another
                // choice): the accessors report it.
                if let Some(failed) = p
                    .merged
                    .iter()
                    .find(|m| m.finish_reason == Some(crate::engine::FinishReason::Error))
                {
                    first.finish_reason = failed.finish_reason;
                    first.error = failed.error.clone();
                }
            }
            let render = Render::Complete {
                shape: p.shape,
                all: p.merged,
            };
            return Ok(Some(lpx_output::new(first, render, tokenizer)));
        }
    }
}

/// Cancels request `id`: its final output (finish reason CANCELLED) follows. Idempotent:
/// unknown or finished ids are fine.
///
/// Errors: INVALID_ARGUMENT for NULL `e`. Thread-safe.
///
/// # Safety
/// `e` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn lpx_engine_cancel(e: *mut lpx_engine, id: u64) -> *mut lpx_error {
    ffi_guard!({
        // SAFETY: forwarded contract.
        unsafe { engine(e) }?.engine.cancel(id)
    })
}

/// Frees a string returned by loraplex (`char *` out-params). NULL is fine.
///
/// # Safety
/// `s` must be NULL or a string from loraplex not freed before.
#[no_mangle]
pub unsafe extern "C" fn lpx_string_free(s: *mut c_char) {
    ffi_guard!({
        if !s.is_null() {
            // SAFETY: created by CString::into_raw in this library, freed once per contract.
            drop(unsafe { CString::from_raw(s) });
        }
    } => ())
}

// lpx_engine_* may be called from any thread at once.
const _: fn() = || {
    fn sync<T: Send + Sync>() {}
    sync::<lpx_engine>();
};
