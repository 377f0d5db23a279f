//! `lpx_request`: defaults and conversion to [`Request`].

use std::ffi::c_char;

use super::guard::{ffi_guard, init_versioned, opt_str, req_str, slice, Versioned};
use super::types::{
    lpx_adapter_mix, lpx_logit_bias, lpx_message, lpx_request, lpx_response_format_type,
};
use crate::engine::{AdapterMix, Prompt, Request, MAX_CHOICES};
use crate::error::{Error, Result};
use crate::sampling::{ResponseFormat, SamplingParams, MAX_LOGPROBS};
use crate::tokenizer::ChatMessage;

/// End of the first layout's last field (`frequency_penalty`): callers built before `n`,
/// `logit_bias`, `response_format`, `echo` and `prompt_logprobs` were appended.
const V1_END: usize =
    std::mem::offset_of!(lpx_request, frequency_penalty) + std::mem::size_of::<f32>();
/// `sizeof(lpx_request)` of the first layout (its end rounded up to the struct's alignment,
/// which the appended fields did not change).
const V1_SIZE: usize = V1_END.next_multiple_of(std::mem::align_of::<lpx_request>());

impl Versioned for lpx_request {
    const NAME: &'static str = "lpx_request";
    const KNOWN_SIZES: &'static [usize] = &[
        V1_SIZE,
        // Before the adapter mixture (`adapters`, `adapters_len`) was appended.
        std::mem::offset_of!(lpx_request, adapters),
        std::mem::size_of::<lpx_request>(),
    ];
    fn field_bytes(size: usize) -> usize {
        if size == V1_SIZE {
            V1_END
        } else {
            size
        }
    }
    fn defaults() -> Self {
        let d = SamplingParams::default();
        Self {
            struct_size: std::mem::size_of::<Self>() as u32,
            model: std::ptr::null(),
            prompt: std::ptr::null(),
            prompt_tokens: std::ptr::null(),
            prompt_tokens_len: 0,
            messages: std::ptr::null(),
            messages_len: 0,
            max_tokens: d.max_tokens as u32,
            temperature: d.temperature,
            top_p: d.top_p,
            top_k: d.top_k as u32,
            min_p: d.min_p,
            seed: 0,
            has_seed: false,
            stop: std::ptr::null(),
            stop_len: 0,
            stop_token_ids: std::ptr::null(),
            stop_token_ids_len: 0,
            logprobs: -1,
            ignore_eos: d.ignore_eos,
            repetition_penalty: d.repetition_penalty,
            presence_penalty: d.presence_penalty,
            frequency_penalty: d.frequency_penalty,
            logit_bias: std::ptr::null(),
            logit_bias_len: 0,
            response_format_value: std::ptr::null(),
            response_format_choices: std::ptr::null(),
            response_format_choices_len: 0,
            n: 1,
            best_of: 0,
            response_format: lpx_response_format_type::Text as u32,
            prompt_logprobs: -1,
            echo: false,
            adapters: std::ptr::null(),
            adapters_len: 0,
        }
    }
}

/// Reads `logprobs`-style counts: -1 = none, 0..=MAX_LOGPROBS.
fn opt_count(v: i32, field: &str) -> Result<Option<usize>> {
    match v {
        -1 => Ok(None),
        n if (0..=MAX_LOGPROBS as i32).contains(&n) => Ok(Some(n as usize)),
        n => Err(Error::invalid_argument(format!(
            "{field} = {n}: must be -1 (none) or 0..={MAX_LOGPROBS}"
        ))),
    }
}

/// Converts `req->logit_bias`: every bias finite and in [-100, 100], every token id once.
///
/// # Safety
/// `r.logit_bias` must be NULL or valid for `r.logit_bias_len` entries for the call.
unsafe fn logit_bias(r: &lpx_request) -> Result<Vec<(u32, f32)>> {
    // SAFETY: forwarded contract.
    let b: &[lpx_logit_bias] = unsafe { slice(r.logit_bias, r.logit_bias_len, "req->logit_bias") }?;
    let mut seen = std::collections::HashMap::with_capacity(b.len());
    let mut out = Vec::with_capacity(b.len());
    for (i, e) in b.iter().enumerate() {
        if !(e.bias.is_finite() && (-100.0..=100.0).contains(&e.bias)) {
            return Err(Error::invalid_argument(format!(
                "req->logit_bias[{i}].bias = {}: must be in [-100, 100]",
                e.bias
            )));
        }
        if let Some(j) = seen.insert(e.token, i) {
            return Err(Error::invalid_argument(format!(
                "req->logit_bias[{i}].token = {}: already biased by req->logit_bias[{j}]",
                e.token
            )));
        }
        out.push((e.token, e.bias));
    }
    Ok(out)
}

/// Reads the adapter mixture (the engine checks names, count and scales).
///
/// # Safety
/// `r.adapters` must be NULL or valid for `r.adapters_len` entries whose names are NULL or
/// NUL-terminated strings, for the call.
unsafe fn adapter_mix(r: &lpx_request) -> Result<Vec<AdapterMix>> {
    // SAFETY: forwarded contract.
    let m: &[lpx_adapter_mix] = unsafe { slice(r.adapters, r.adapters_len, "req->adapters") }?;
    m.iter()
        .enumerate()
        .map(|(i, e)| {
            // SAFETY: forwarded contract.
            let name = unsafe { req_str(e.name, &format!("req->adapters[{i}].name")) }?;
            Ok(AdapterMix {
                name: name.to_string(),
                scale: e.scale,
            })
        })
        .collect()
}

/// Converts the response format fields; a value or choices the type does not take are refused
/// (naming them) rather than ignored.
///
/// # Safety
/// `r.response_format_value` must be NULL or a NUL-terminated string, and
/// `r.response_format_choices` NULL or valid for `r.response_format_choices_len` strings, for
/// the call.
unsafe fn response_format(r: &lpx_request) -> Result<ResponseFormat> {
    use lpx_response_format_type as T;
    const TYPES: [T; 6] = [
        T::Text,
        T::JsonObject,
        T::JsonSchema,
        T::Regex,
        T::Choice,
        T::Grammar,
    ];
    let name = |t: T| match t {
        T::Text => "LPX_RESPONSE_FORMAT_TYPE_TEXT",
        T::JsonObject => "LPX_RESPONSE_FORMAT_TYPE_JSON_OBJECT",
        T::JsonSchema => "LPX_RESPONSE_FORMAT_TYPE_JSON_SCHEMA",
        T::Regex => "LPX_RESPONSE_FORMAT_TYPE_REGEX",
        T::Choice => "LPX_RESPONSE_FORMAT_TYPE_CHOICE",
        T::Grammar => "LPX_RESPONSE_FORMAT_TYPE_GRAMMAR",
    };
    let ty = TYPES
        .into_iter()
        .find(|t| *t as u32 == r.response_format)
        .ok_or_else(|| {
            Error::invalid_argument(format!(
                "req->response_format = {}: not an lpx_response_format_type (0..=5)",
                r.response_format
            ))
        })?;
    // SAFETY: forwarded contract.
    let value = unsafe { opt_str(r.response_format_value, "req->response_format_value") }?;
    // SAFETY: forwarded contract.
    let choice_ptrs: &[*const c_char] = unsafe {
        slice(
            r.response_format_choices,
            r.response_format_choices_len,
            "req->response_format_choices",
        )
    }?;
    let takes_value = matches!(ty, T::JsonSchema | T::Regex | T::Grammar);
    if value.is_some() && !takes_value {
        return Err(Error::invalid_argument(format!(
            "req->response_format_value is set but req->response_format is {}, which takes \
             none (set it to NULL)",
            name(ty)
        )));
    }
    if !choice_ptrs.is_empty() && ty != T::Choice {
        return Err(Error::invalid_argument(format!(
            "req->response_format_choices is set but req->response_format is {} (choices \
             are for LPX_RESPONSE_FORMAT_TYPE_CHOICE)",
            name(ty)
        )));
    }
    let need = |v: Option<&str>, what: &str| {
        v.filter(|s| !s.trim().is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "req->response_format_value is NULL or empty: response_format {} needs {what}",
                    name(ty)
                ))
            })
    };
    Ok(match ty {
        T::Text => ResponseFormat::Text,
        T::JsonObject => ResponseFormat::JsonObject,
        T::JsonSchema => {
            let text = need(value, "the JSON Schema as JSON text")?;
            let schema: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                Error::invalid_argument(format!(
                    "req->response_format_value is not JSON (a JSON Schema was expected): {e}"
                ))
            })?;
            if !schema.is_object() {
                return Err(Error::invalid_argument(
                    "req->response_format_value must be a JSON Schema object",
                ));
            }
            ResponseFormat::JsonSchema(schema)
        }
        T::Regex => ResponseFormat::Regex(need(value, "a regular expression")?),
        T::Grammar => ResponseFormat::Grammar(need(value, "a Lark grammar")?),
        T::Choice => {
            if choice_ptrs.is_empty() {
                return Err(Error::invalid_argument(
                    "req->response_format_choices is empty: LPX_RESPONSE_FORMAT_TYPE_CHOICE needs \
                     at least one string",
                ));
            }
            let mut v = Vec::with_capacity(choice_ptrs.len());
            for (i, &p) in choice_ptrs.iter().enumerate() {
                // SAFETY: every choice is a NUL-terminated string valid for the call (our
                // contract; NULL is refused by `req_str`).
                let c = unsafe { req_str(p, &format!("req->response_format_choices[{i}]")) }?;
                v.push(c.to_string());
            }
            ResponseFormat::Choice(v)
        }
    })
}

/// Converts a C request; errors name the field (`req->stop[2]`, `req->messages[0].role`...).
/// Sampling ranges are checked by the engine at submit.
///
/// # Safety
/// Every pointer of `r` must be NULL or valid for its stated length for the call.
pub(crate) unsafe fn to_rust(r: &lpx_request) -> Result<Request> {
    // SAFETY: `r.model` is NULL or a NUL-terminated string valid for the call (our contract).
    let model = unsafe { opt_str(r.model, "req->model") }?
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    // SAFETY: as above, for `r.prompt`.
    let text = unsafe { opt_str(r.prompt, "req->prompt") }?;
    // SAFETY: `r.prompt_tokens` is NULL or valid for `r.prompt_tokens_len` values (our contract).
    let toks = unsafe { slice(r.prompt_tokens, r.prompt_tokens_len, "req->prompt_tokens") }?;
    // SAFETY: `r.messages` is NULL or valid for `r.messages_len` entries (our contract).
    let msgs: &[lpx_message] = unsafe { slice(r.messages, r.messages_len, "req->messages") }?;
    let given = [text.is_some(), !toks.is_empty(), !msgs.is_empty()]
        .iter()
        .filter(|&&b| b)
        .count();
    if given != 1 {
        return Err(Error::invalid_argument(format!(
            "req: set exactly one of prompt, prompt_tokens or messages ({given} are set)"
        )));
    }
    let prompt = if let Some(t) = text {
        Prompt::Text(t.to_string())
    } else if !toks.is_empty() {
        Prompt::Tokens(toks.to_vec())
    } else {
        let mut v = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter().enumerate() {
            // SAFETY: each message's strings are NUL-terminated and valid for the call (our
            // contract; NULL is refused by `req_str`).
            let role = unsafe { req_str(m.role, &format!("req->messages[{i}].role")) }?;
            // SAFETY: as above.
            let content = unsafe { req_str(m.content, &format!("req->messages[{i}].content")) }?;
            v.push(ChatMessage {
                role: role.to_string(),
                content: content.to_string(),
            });
        }
        Prompt::Chat(v)
    };
    // SAFETY: `r.stop` is NULL or valid for `r.stop_len` pointers (our contract).
    let stop_ptrs = unsafe { slice(r.stop, r.stop_len, "req->stop") }?;
    let mut stop = Vec::with_capacity(stop_ptrs.len());
    for (i, &p) in stop_ptrs.iter().enumerate() {
        // SAFETY: every stop string is NUL-terminated and valid for the call (our contract).
        stop.push(unsafe { req_str(p, &format!("req->stop[{i}]")) }?.to_string());
    }
    // SAFETY: `r.stop_token_ids` is NULL or valid for `r.stop_token_ids_len` values.
    let stop_token_ids = unsafe {
        slice(
            r.stop_token_ids,
            r.stop_token_ids_len,
            "req->stop_token_ids",
        )
    }?
    .to_vec();
    let logprobs = match r.logprobs {
        -1 => None,
        n if n >= 0 => Some(n as usize),
        n => {
            return Err(Error::invalid_argument(format!(
                "req->logprobs = {n}: must be -1 (none) or 0..={MAX_LOGPROBS}"
            )))
        }
    };
    let prompt_logprobs = opt_count(r.prompt_logprobs, "req->prompt_logprobs")?;
    let n = r.n as usize;
    if !(1..=MAX_CHOICES).contains(&n) {
        return Err(Error::invalid_argument(format!(
            "req->n = {n}: must be in 1..={MAX_CHOICES}"
        )));
    }
    let best_of = match r.best_of as usize {
        0 => None,
        b if b < n || b > MAX_CHOICES => {
            return Err(Error::invalid_argument(format!(
                "req->best_of = {b}: must be 0 (= n) or in n ({n})..={MAX_CHOICES}"
            )))
        }
        b => (b > n).then_some(b),
    };
    // SAFETY: `r.logit_bias` is NULL or valid for `r.logit_bias_len` entries (our contract).
    let logit_bias = unsafe { logit_bias(r) }?;
    // SAFETY: the response format's strings are valid for the call (our contract).
    let response_format = unsafe { response_format(r) }?;
    // SAFETY: `r.adapters` is NULL or valid for `r.adapters_len` entries (our contract).
    let adapters = unsafe { adapter_mix(r) }?;
    let sampling = SamplingParams {
        max_tokens: r.max_tokens as usize,
        temperature: r.temperature,
        top_p: r.top_p,
        top_k: r.top_k as usize,
        min_p: r.min_p,
        seed: r.has_seed.then_some(r.seed),
        stop,
        stop_token_ids,
        ignore_eos: r.ignore_eos,
        logprobs,
        repetition_penalty: r.repetition_penalty,
        presence_penalty: r.presence_penalty,
        frequency_penalty: r.frequency_penalty,
        return_last_logits: false,
        logit_bias,
        prompt_logprobs,
    };
    Ok(Request {
        model,
        prompt,
        sampling,
        n,
        best_of,
        response_format,
        echo: r.echo,
        adapters,
    })
}

/// Writes the defaults into the caller's `lpx_request` of `size` bytes; pass `sizeof *req`,
/// as the header's `lpx_request_init(req)` macro does. The defaults: no prompt, base model,
/// max_tokens 16, temperature 1, top_p 1, no top_k/min_p, engine-chosen seed, no stops, no
/// log-probabilities (-1), penalties off, one choice (n 1, best_of 0), no logit biases, free
/// text (`LPX_RESPONSE_FORMAT_TYPE_TEXT`), no echo, no prompt log-probabilities (-1).
///
/// Only the fields of the layout `size` denotes are written, and `struct_size` is set to that
/// layout's size: a `size` this library knows (the current `sizeof(lpx_request)` or an older
/// header's, e.g. 152 bytes on 64-bit platforms before `logit_bias`... were appended) → that
/// layout; a larger `size` (a header newer than this library) → this library's layout, the
/// bytes after it untouched (the newer fields are then ignored by `lpx_engine_submit`).
///
/// Errors: INVALID_ARGUMENT for a NULL `req`, or for a `size` that is no layout (smaller than
/// the first, or between two known ones; the message names it and the known sizes): then
/// nothing is written. With `sizeof *req` and a non-NULL `req` it never fails. The error is
/// owned by the caller (`lpx_error_free`). Thread-safe: writes `*req` only.
///
/// # Safety
/// `req` must be NULL or point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn lpx_request_init_sized(
    req: *mut lpx_request,
    size: usize,
) -> *mut super::error::lpx_error {
    ffi_guard!({
        // SAFETY: `req` is NULL (refused) or has `size` writable bytes (our contract).
        unsafe { init_versioned(req, size, "lpx_request_init_sized", "req") }
    })
}

/// Binary compatibility: initialises the FIRST `lpx_request` layout only (the fields up to
/// `frequency_penalty`, `struct_size` = its size, 152 bytes on 64-bit platforms), the layout
/// every binary built against a header older than the appended fields passed to this symbol,
/// and writes nothing after it. Code compiled against this header does not call it: the
/// `lpx_request_init(req)` macro (end of the header) calls `lpx_request_init_sized(req,
/// sizeof *(req))`. `(lpx_request_init)(req)` or the function's address still reach this
/// symbol, with this first-layout behaviour. NULL `req` is ignored. Thread-safe.
///
/// # Safety
/// `req` must be NULL or point to the first layout's size of writable bytes.
#[no_mangle]
pub unsafe extern "C" fn lpx_request_init(req: *mut lpx_request) {
    ffi_guard!({
        if !req.is_null() {
            let first = <lpx_request as Versioned>::KNOWN_SIZES[0];
            // SAFETY: non-NULL, with `first` writable bytes per the contract; the first known
            // size is a layout, so this cannot fail.
            let _ = unsafe { init_versioned(req, first, "lpx_request_init", "req") };
        }
    } => ())
}
