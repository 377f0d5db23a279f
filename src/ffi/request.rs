//! `lpx_request`: defaults and conversion to [`Request`].

use super::guard::{ffi_guard, opt_str, req_str, slice, Versioned};
use super::types::{lpx_message, lpx_request};
use crate::engine::{Prompt, Request};
use crate::error::{Error, Result};
use crate::sampling::SamplingParams;
use crate::tokenizer::ChatMessage;

impl Versioned for lpx_request {
    const NAME: &'static str = "lpx_request";
    const KNOWN_SIZES: &'static [usize] = &[std::mem::size_of::<lpx_request>()];
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
        }
    }
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
                "req->logprobs = {n}: must be -1 (none) or 0..={}",
                crate::sampling::MAX_LOGPROBS
            )))
        }
    };
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
    };
    Ok(Request {
        model,
        prompt,
        sampling,
    })
}

/// Writes the defaults into `*req` (including `struct_size = sizeof(lpx_request)`): no prompt,
/// base model, max_tokens 16, temperature 1, top_p 1, no top_k/min_p, engine-chosen seed, no
/// stops, no log-probabilities (-1), penalties off. NULL `req` is ignored.
///
/// # Safety
/// `req` must be NULL or point to writable memory of `sizeof(lpx_request)` bytes as declared by
/// the header this library was built with. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn lpx_request_init(req: *mut lpx_request) {
    ffi_guard!({
        if !req.is_null() {
            // SAFETY: non-NULL, writable, correctly sized per the contract.
            unsafe { req.write_unaligned(lpx_request::defaults()) };
        }
    } => ())
}
