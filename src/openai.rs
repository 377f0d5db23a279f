//! OpenAI wire format: `/v1/completions` and `/v1/chat/completions` request bodies to
//! [`Request`], and [`Output`]s to OpenAI response objects (`text_completion`,
//! `chat.completion`, `chat.completion.chunk`).
//!
//! Pure functions, no I/O; used by `lpx_engine_submit_json` / `lpx_output_json` and by servers.

use serde_json::{json, Map, Value};

use crate::engine::{FinishReason, Output, Prompt, Request};
use crate::error::{Error, Result};
use crate::sampling::SamplingParams;
use crate::tokenizer::{ChatMessage, Tokenizer};

/// Which endpoint a body is for (and which response shape to produce).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// `/v1/completions` (`prompt`).
    Completion,
    /// `/v1/chat/completions` (`messages`).
    Chat,
}

/// Default `max_tokens` of a chat request that sets none: effectively "until EOS or the
/// engine's `max_model_len`".
pub const CHAT_DEFAULT_MAX_TOKENS: usize = 1 << 20;

/// A parsed OpenAI request body.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiRequest {
    /// The engine request.
    pub request: Request,
    /// Completion (`prompt`) or chat (`messages`).
    pub kind: ApiKind,
    /// `stream` (SSE) was asked for.
    pub stream: bool,
    /// The `model` as the response must name it (the served name when absent).
    pub model: String,
}

/// Parses an OpenAI `/v1/completions` or `/v1/chat/completions` body (the kind is chosen by the
/// presence of `messages` or `prompt`). Unknown fields are tolerated. `model` equal to
/// `served_name` (or absent/empty) means the base model (`Request.model = None`).
///
/// # Errors
/// INVALID_ARGUMENT naming the field for malformed JSON, wrong types or values (`n` other than 1,
/// `logprobs` out of range...); UNSUPPORTED for `echo`, `best_of` > 1, several prompts, or
/// non-text content parts.
pub fn parse_openai(body: &str, served_name: &str) -> Result<OpenAiRequest> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| Error::invalid_argument(format!("request body is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::invalid_argument("request body must be a JSON object"))?;
    let kind = if obj.contains_key("messages") {
        ApiKind::Chat
    } else if obj.contains_key("prompt") {
        ApiKind::Completion
    } else {
        return Err(Error::invalid_argument(
            "request body needs \"prompt\" (completions) or \"messages\" (chat completions)",
        ));
    };
    let model_name = opt_str(obj, "model")?.filter(|s| !s.is_empty());
    let model = model_name.filter(|m| *m != served_name).map(str::to_string);
    let prompt = match kind {
        ApiKind::Completion => completion_prompt(obj.get("prompt").unwrap_or(&Value::Null))?,
        ApiKind::Chat => chat_messages(obj.get("messages").unwrap_or(&Value::Null))?,
    };
    let mut s = SamplingParams::default();
    if kind == ApiKind::Chat {
        s.max_tokens = CHAT_DEFAULT_MAX_TOKENS;
    }
    let max_key = if obj
        .get("max_completion_tokens")
        .is_some_and(|v| !v.is_null())
    {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    if let Some(n) = opt_uint(obj, max_key)? {
        s.max_tokens = n as usize;
    }
    if let Some(n) = opt_uint(obj, "n")? {
        if n != 1 {
            return Err(Error::invalid_argument(format!(
                "n = {n}: only n = 1 is supported"
            )));
        }
    }
    if let Some(n) = opt_uint(obj, "best_of")? {
        if n > 1 {
            return Err(Error::unsupported(format!("best_of = {n}: not supported")));
        }
    }
    if opt_bool(obj, "echo")? == Some(true) {
        return Err(Error::unsupported("echo = true: not supported"));
    }
    if let Some(x) = opt_f32(obj, "temperature")? {
        s.temperature = x;
    }
    if let Some(x) = opt_f32(obj, "top_p")? {
        s.top_p = x;
    }
    if let Some(x) = opt_int(obj, "top_k")? {
        // vLLM uses -1 for "off".
        s.top_k = if x < 0 { 0 } else { x as usize };
    }
    if let Some(x) = opt_f32(obj, "min_p")? {
        s.min_p = x;
    }
    s.seed = opt_int(obj, "seed")?.map(|x| x as u64);
    for (key, slot) in [
        ("presence_penalty", &mut s.presence_penalty),
        ("frequency_penalty", &mut s.frequency_penalty),
        ("repetition_penalty", &mut s.repetition_penalty),
    ] {
        if let Some(x) = opt_f32(obj, key)? {
            *slot = x;
        }
    }
    s.stop = match obj.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(x)) => vec![x.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| type_err(&format!("stop[{i}]"), "a string", x))
            })
            .collect::<Result<_>>()?,
        Some(x) => return Err(type_err("stop", "a string or an array of strings", x)),
    };
    if let Some(a) = obj.get("stop_token_ids").filter(|v| !v.is_null()) {
        s.stop_token_ids = token_array(a, "stop_token_ids")?;
    }
    if let Some(b) = opt_bool(obj, "ignore_eos")? {
        s.ignore_eos = b;
    }
    s.logprobs = match kind {
        ApiKind::Completion => opt_uint(obj, "logprobs")?.map(|n| n as usize),
        ApiKind::Chat => match opt_bool(obj, "logprobs")? {
            Some(true) => Some(opt_uint(obj, "top_logprobs")?.unwrap_or(0) as usize),
            _ => None,
        },
    };
    // Every sampling range (logprobs <= MAX_LOGPROBS among them) is checked in one place.
    s.validate()?;
    let stream = opt_bool(obj, "stream")?.unwrap_or(false);
    Ok(OpenAiRequest {
        request: Request {
            model,
            prompt,
            sampling: s,
        },
        kind,
        stream,
        model: model_name.unwrap_or(served_name).to_string(),
    })
}

/// [`parse_openai`] keeping only the engine request.
///
/// # Errors
/// As [`parse_openai`].
pub fn request_from_openai(body: &str, served_name: &str) -> Result<Request> {
    parse_openai(body, served_name).map(|r| r.request)
}

fn type_err(field: &str, want: &str, got: &Value) -> Error {
    let got = got.to_string();
    let got: String = got.chars().take(60).collect();
    Error::invalid_argument(format!("field \"{field}\" must be {want} (got {got})"))
}

fn opt_str<'a>(o: &'a Map<String, Value>, k: &str) -> Result<Option<&'a str>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(x) => Err(type_err(k, "a string", x)),
    }
}

fn opt_bool(o: &Map<String, Value>, k: &str) -> Result<Option<bool>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(x) => Err(type_err(k, "a boolean", x)),
    }
}

fn opt_f32(o: &Map<String, Value>, k: &str) -> Result<Option<f32>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| type_err(k, "a number", &Value::Number(n.clone()))),
        Some(x) => Err(type_err(k, "a number", x)),
    }
}

fn opt_int(o: &Map<String, Value>, k: &str) -> Result<Option<i64>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(u) = n.as_u64() {
                // Seeds may use the full u64 range.
                Ok(Some(u as i64))
            } else {
                Err(type_err(k, "an integer", &Value::Number(n.clone())))
            }
        }
        Some(x) => Err(type_err(k, "an integer", x)),
    }
}

fn opt_uint(o: &Map<String, Value>, k: &str) -> Result<Option<u64>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| type_err(k, "a non-negative integer", v)),
    }
}

fn token_array(v: &Value, field: &str) -> Result<Vec<u32>> {
    let a = v
        .as_array()
        .ok_or_else(|| type_err(field, "an array of token ids", v))?;
    a.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| type_err(&format!("{field}[{i}]"), "a token id", x))
        })
        .collect()
}

fn completion_prompt(v: &Value) -> Result<Prompt> {
    match v {
        Value::String(s) => Ok(Prompt::Text(s.clone())),
        Value::Array(a) if a.is_empty() => Err(Error::invalid_argument(
            "field \"prompt\" must not be empty",
        )),
        Value::Array(a) => match &a[0] {
            Value::Number(_) => Ok(Prompt::Tokens(token_array(v, "prompt")?)),
            Value::String(_) | Value::Array(_) if a.len() > 1 => Err(Error::unsupported(format!(
                "field \"prompt\": {} prompts in one request; send one prompt per request",
                a.len()
            ))),
            Value::String(s) => Ok(Prompt::Text(s.clone())),
            inner @ Value::Array(_) => Ok(Prompt::Tokens(token_array(inner, "prompt[0]")?)),
            x => Err(type_err("prompt[0]", "a string or a token id", x)),
        },
        x => Err(type_err("prompt", "a string or an array of token ids", x)),
    }
}

fn chat_messages(v: &Value) -> Result<Prompt> {
    let a = v
        .as_array()
        .ok_or_else(|| type_err("messages", "an array of messages", v))?;
    if a.is_empty() {
        return Err(Error::invalid_argument(
            "field \"messages\" must not be empty",
        ));
    }
    let mut out = Vec::with_capacity(a.len());
    for (i, m) in a.iter().enumerate() {
        let o = m
            .as_object()
            .ok_or_else(|| type_err(&format!("messages[{i}]"), "an object", m))?;
        let role = match o.get("role") {
            Some(Value::String(s)) => s.clone(),
            Some(x) => return Err(type_err(&format!("messages[{i}].role"), "a string", x)),
            None => {
                return Err(Error::invalid_argument(format!(
                    "field \"messages[{i}].role\" is missing"
                )))
            }
        };
        let content = match o.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    let field = format!("messages[{i}].content[{j}]");
                    let ty = p.get("type").and_then(Value::as_str);
                    match (ty, p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => text.push_str(t),
                        (Some("text"), x) => {
                            return Err(type_err(
                                &format!("{field}.text"),
                                "a string",
                                x.unwrap_or(&Value::Null),
                            ))
                        }
                        (Some(other), _) => {
                            return Err(Error::unsupported(format!(
                                "field \"{field}\": content type \"{other}\" is not supported (text only)"
                            )))
                        }
                        (None, _) => {
                            return Err(type_err(&field, "an object with \"type\": \"text\"", p))
                        }
                    }
                }
                text
            }
            Some(x) => {
                return Err(type_err(
                    &format!("messages[{i}].content"),
                    "a string or an array of content parts",
                    x,
                ))
            }
        };
        out.push(ChatMessage { role, content });
    }
    Ok(Prompt::Chat(out))
}

fn token_text(tok: Option<&Tokenizer>, id: u32) -> String {
    tok.and_then(|t| t.decode(&[id], false).ok())
        .unwrap_or_else(|| format!("token_id:{id}"))
}

fn finish_value(out: &Output) -> Value {
    match out.finish_reason {
        None => Value::Null,
        Some(r) => Value::String(r.as_str().to_string()),
    }
}

fn completion_logprobs(out: &Output, tok: Option<&Tokenizer>) -> Value {
    if out.logprobs.is_empty() {
        return Value::Null;
    }
    let tokens: Vec<String> = out
        .logprobs
        .iter()
        .map(|l| token_text(tok, l.token))
        .collect();
    let lps: Vec<f32> = out.logprobs.iter().map(|l| l.logprob).collect();
    let tops: Vec<Value> = out
        .logprobs
        .iter()
        .map(|l| {
            let mut m = Map::new();
            for &(t, lp) in &l.top {
                m.insert(token_text(tok, t), json!(lp));
            }
            Value::Object(m)
        })
        .collect();
    let mut offsets = Vec::with_capacity(tokens.len());
    let mut off = 0usize;
    for t in &tokens {
        offsets.push(off);
        off += t.len();
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

fn chat_logprobs(out: &Output, tok: Option<&Tokenizer>) -> Value {
    if out.logprobs.is_empty() {
        return Value::Null;
    }
    let entry = |t: u32, lp: f32| {
        let s = token_text(tok, t);
        json!({"token": s, "logprob": lp, "bytes": s.as_bytes()})
    };
    let content: Vec<Value> = out
        .logprobs
        .iter()
        .map(|l| {
            let mut e = entry(l.token, l.logprob);
            let top: Vec<Value> = l.top.iter().map(|&(t, lp)| entry(t, lp)).collect();
            e["top_logprobs"] = Value::Array(top);
            e
        })
        .collect();
    json!({"content": content})
}

/// Builds the OpenAI response object for `out`: with `stream` a chunk carrying this delta
/// (`text_completion` or `chat.completion.chunk`), otherwise the complete object
/// (`text_completion` or `chat.completion`) made of this output's content (pass the merged output
/// of the whole request). `usage` is present on final outputs (always when not streaming); a
/// failed request also carries `"error": {"code", "message"}`. `tokenizer` turns log-probability
/// token ids into text (without it: `token_id:N`).
pub fn output_json(
    out: &Output,
    kind: ApiKind,
    model: &str,
    created: u64,
    stream: bool,
    tokenizer: Option<&Tokenizer>,
) -> Value {
    let choice = match (kind, stream) {
        (ApiKind::Completion, _) => json!({
            "index": 0, "text": out.text, "logprobs": completion_logprobs(out, tokenizer),
            "finish_reason": finish_value(out),
        }),
        (ApiKind::Chat, false) => json!({
            "index": 0, "message": {"role": "assistant", "content": out.text},
            "logprobs": chat_logprobs(out, tokenizer), "finish_reason": finish_value(out),
        }),
        (ApiKind::Chat, true) => {
            let mut delta = json!({"content": out.text});
            // The first delta of a request (it holds every token so far) announces the role.
            if out.usage.completion_tokens == out.token_ids.len() {
                delta["role"] = json!("assistant");
            }
            json!({"index": 0, "delta": delta, "logprobs": chat_logprobs(out, tokenizer),
                   "finish_reason": finish_value(out)})
        }
    };
    let (prefix, object) = match (kind, stream) {
        (ApiKind::Completion, _) => ("cmpl", "text_completion"),
        (ApiKind::Chat, false) => ("chatcmpl", "chat.completion"),
        (ApiKind::Chat, true) => ("chatcmpl", "chat.completion.chunk"),
    };
    let mut v = json!({
        "id": format!("{prefix}-{}", out.id),
        "object": object,
        "created": created,
        "model": model,
        "choices": [choice],
    });
    if !stream || out.is_final() {
        let p = out.usage.prompt_tokens;
        let c = out.usage.completion_tokens;
        v["usage"] = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});
    }
    if out.finish_reason == Some(FinishReason::Error) {
        if let Some(e) = &out.error {
            v["error"] = json!({"code": e.code() as u32, "message": e.message()});
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{TokenLogprob, Usage};
    use crate::ErrorCode;

    #[test]
    fn completion_body_maps_every_field() {
        let r = parse_openai(
            r#"{"model":"base","prompt":"hi","max_tokens":7,"temperature":0.5,"top_p":0.9,
                "n":1,"stop":["a","b"],"seed":42,"logprobs":3,"presence_penalty":0.5,
                "frequency_penalty":-0.5,"stream":true,"user":"x","unknown":{"y":1}}"#,
            "base",
        )
        .unwrap();
        assert_eq!(r.kind, ApiKind::Completion);
        assert!(r.stream);
        assert_eq!(r.model, "base");
        assert_eq!(r.request.model, None);
        assert_eq!(r.request.prompt, Prompt::Text("hi".into()));
        let s = &r.request.sampling;
        assert_eq!(s.max_tokens, 7);
        assert_eq!(s.temperature, 0.5);
        assert_eq!(s.top_p, 0.9);
        assert_eq!(s.stop, vec!["a", "b"]);
        assert_eq!(s.seed, Some(42));
        assert_eq!(s.logprobs, Some(3));
        assert_eq!(s.presence_penalty, 0.5);
        assert_eq!(s.frequency_penalty, -0.5);
    }

    #[test]
    fn token_prompts_and_adapter_model() {
        let r = parse_openai(
            r#"{"model":"sql-lora","prompt":[1,2,3],"stop":"x"}"#,
            "base",
        )
        .unwrap();
        assert_eq!(r.request.prompt, Prompt::Tokens(vec![1, 2, 3]));
        assert_eq!(r.request.model.as_deref(), Some("sql-lora"));
        assert_eq!(r.model, "sql-lora");
        assert_eq!(r.request.sampling.stop, vec!["x"]);
        assert_eq!(r.request.sampling.max_tokens, 16);
        let r = parse_openai(r#"{"prompt":[[5,6]]}"#, "base").unwrap();
        assert_eq!(r.request.prompt, Prompt::Tokens(vec![5, 6]));
        assert_eq!(r.model, "base");
    }

    #[test]
    fn chat_body_with_parts_and_logprobs() {
        let r = parse_openai(
            r#"{"messages":[{"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                "max_completion_tokens":9,"logprobs":true,"top_logprobs":2}"#,
            "base",
        )
        .unwrap();
        assert_eq!(r.kind, ApiKind::Chat);
        assert!(!r.stream);
        match &r.request.prompt {
            Prompt::Chat(m) => {
                assert_eq!(m.len(), 2);
                assert_eq!(m[1].content, "ab");
                assert_eq!(m[0].role, "system");
            }
            p => panic!("{p:?}"),
        }
        assert_eq!(r.request.sampling.max_tokens, 9);
        assert_eq!(r.request.sampling.logprobs, Some(2));
        let r = parse_openai(r#"{"messages":[{"role":"user","content":"x"}]}"#, "b").unwrap();
        assert_eq!(r.request.sampling.max_tokens, CHAT_DEFAULT_MAX_TOKENS);
        assert_eq!(r.request.sampling.logprobs, None);
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let cases = [
            (r#"[1]"#, ErrorCode::InvalidArgument, "JSON object"),
            (r#"{"x":1}"#, ErrorCode::InvalidArgument, "prompt"),
            (
                r#"{"prompt":"a","max_tokens":"3"}"#,
                ErrorCode::InvalidArgument,
                "max_tokens",
            ),
            (
                r#"{"prompt":"a","temperature":"hot"}"#,
                ErrorCode::InvalidArgument,
                "temperature",
            ),
            (
                r#"{"prompt":"a","n":2}"#,
                ErrorCode::InvalidArgument,
                "n = 2",
            ),
            (
                r#"{"prompt":"a","echo":true}"#,
                ErrorCode::Unsupported,
                "echo",
            ),
            (
                r#"{"prompt":"a","stop":[1]}"#,
                ErrorCode::InvalidArgument,
                "stop[0]",
            ),
            (r#"{"prompt":["a","b"]}"#, ErrorCode::Unsupported, "prompt"),
            (
                r#"{"prompt":[1,-2]}"#,
                ErrorCode::InvalidArgument,
                "prompt[1]",
            ),
            (
                r#"{"prompt":"a","logprobs":21}"#,
                ErrorCode::InvalidArgument,
                "logprobs",
            ),
            (
                r#"{"prompt":"a","model":3}"#,
                ErrorCode::InvalidArgument,
                "model",
            ),
            (
                r#"{"prompt":"a","stream":"yes"}"#,
                ErrorCode::InvalidArgument,
                "stream",
            ),
            (r#"{"messages":[]}"#, ErrorCode::InvalidArgument, "messages"),
            (
                r#"{"messages":[{"content":"x"}]}"#,
                ErrorCode::InvalidArgument,
                "messages[0].role",
            ),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                ErrorCode::Unsupported,
                "messages[0].content[0]",
            ),
            (
                r#"{"messages":[{"role":"user","content":5}]}"#,
                ErrorCode::InvalidArgument,
                "messages[0].content",
            ),
            (r#"{"prompt": "#, ErrorCode::InvalidArgument, "JSON"),
        ];
        for (body, code, needle) in cases {
            let e = parse_openai(body, "base").unwrap_err();
            assert_eq!(e.code(), code, "{body}: {e}");
            assert!(e.message().contains(needle), "{body}: {e}");
        }
    }

    fn sample_output(final_: bool) -> Output {
        let mut o = Output::new(
            7,
            Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
            },
        );
        o.text = "hi".into();
        o.token_ids = vec![104, 105];
        o.logprobs = vec![
            TokenLogprob {
                token: 104,
                logprob: -0.5,
                top: vec![(104, -0.5), (1, -2.0)],
            },
            TokenLogprob {
                token: 105,
                logprob: -0.25,
                top: vec![],
            },
        ];
        if final_ {
            o.finish_reason = Some(FinishReason::Length);
        }
        o
    }

    #[test]
    fn completion_and_chat_shapes() {
        let v = output_json(
            &sample_output(true),
            ApiKind::Completion,
            "m",
            5,
            false,
            None,
        );
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["id"], "cmpl-7");
        assert_eq!(v["created"], 5);
        assert_eq!(v["choices"][0]["text"], "hi");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 5);
        assert_eq!(v["choices"][0]["logprobs"]["token_logprobs"][1], -0.25);
        assert_eq!(v["choices"][0]["logprobs"]["tokens"][0], "token_id:104");
        assert_eq!(v["choices"][0]["logprobs"]["text_offset"][1], 12);

        let v = output_json(&sample_output(true), ApiKind::Chat, "m", 5, false, None);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "hi");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(
            v["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1]["logprob"],
            -2.0
        );

        let v = output_json(&sample_output(false), ApiKind::Chat, "m", 5, true, None);
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["choices"][0]["delta"]["content"], "hi");
        assert_eq!(v["choices"][0]["delta"]["role"], "assistant");
        assert!(v["choices"][0]["finish_reason"].is_null());
        assert!(v.get("usage").is_none());
    }

    #[test]
    fn failed_output_carries_the_error() {
        let mut o = Output::new(9, Usage::default());
        o.finish_reason = Some(FinishReason::Error);
        o.error = Some(Error::new(ErrorCode::Capacity, "host cache full"));
        let v = output_json(&o, ApiKind::Completion, "m", 0, true, None);
        assert_eq!(v["choices"][0]["finish_reason"], "error");
        assert_eq!(v["error"]["code"], 5);
        assert_eq!(v["error"]["message"], "host cache full");
        assert_eq!(v["usage"]["total_tokens"], 0);
    }
}
