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
    /// `stream_options.include_usage`: a streamed response ends with a chunk holding `usage`
    /// and no choices ([`usage_chunk_json`]), and the other chunks carry `"usage": null`.
    pub include_usage: bool,
}

/// Which endpoints take a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoints {
    Both,
    Completion,
    Chat,
}

impl Endpoints {
    fn take(self, kind: ApiKind) -> bool {
        matches!(
            (self, kind),
            (Endpoints::Both, _)
                | (Endpoints::Completion, ApiKind::Completion)
                | (Endpoints::Chat, ApiKind::Chat)
        )
    }
}

/// How a request field is treated. `null` is always the same as an absent field.
#[derive(Clone, Copy)]
enum Policy {
    /// Read by [`parse_openai`], which checks its value.
    Honoured,
    /// Accepted and ignored because it cannot change the response's content.
    Harmless,
    /// Accepted only at the value that asks for nothing (described by the `&str`); any other
    /// value is refused, because ignoring it would change what the client gets.
    DefaultOnly(fn(&Value) -> bool, &'static str),
}

/// Every request field loraplex accepts; any other field is refused with INVALID_ARGUMENT
/// naming it (like vLLM's strict mode), so that a client asking for JSON mode, tools or logit
/// biases is told instead of silently getting something else.
///
/// The harmless fields, accepted with any value, and why:
/// * `user`: an end-user id for the provider's abuse monitoring; it never affects generation.
/// * `metadata`: tags for stored completions; loraplex stores nothing and tags do not affect
///   generation.
///
/// Fields accepted only at their do-nothing value: `n` = 1, `echo` = false and `best_of` ≤ 1
/// (checked with their own messages), `suffix` = "", `store` = false (nothing is stored),
/// `service_tier` = "auto" or "default" (there is one tier), `logit_bias` = {},
/// `response_format` = {"type": "text"}, `tools` = [], `tool_choice` = "none",
/// `functions` = [], `function_call` = "none".
const FIELDS: &[(&str, Endpoints, Policy)] = &[
    ("model", Endpoints::Both, Policy::Honoured),
    ("prompt", Endpoints::Completion, Policy::Honoured),
    ("messages", Endpoints::Chat, Policy::Honoured),
    ("max_tokens", Endpoints::Both, Policy::Honoured),
    ("max_completion_tokens", Endpoints::Both, Policy::Honoured),
    ("temperature", Endpoints::Both, Policy::Honoured),
    ("top_p", Endpoints::Both, Policy::Honoured),
    ("top_k", Endpoints::Both, Policy::Honoured),
    ("min_p", Endpoints::Both, Policy::Honoured),
    ("seed", Endpoints::Both, Policy::Honoured),
    ("presence_penalty", Endpoints::Both, Policy::Honoured),
    ("frequency_penalty", Endpoints::Both, Policy::Honoured),
    ("repetition_penalty", Endpoints::Both, Policy::Honoured),
    ("stop", Endpoints::Both, Policy::Honoured),
    ("stop_token_ids", Endpoints::Both, Policy::Honoured),
    ("ignore_eos", Endpoints::Both, Policy::Honoured),
    ("logprobs", Endpoints::Both, Policy::Honoured),
    ("top_logprobs", Endpoints::Chat, Policy::Honoured),
    ("stream", Endpoints::Both, Policy::Honoured),
    ("stream_options", Endpoints::Both, Policy::Honoured),
    ("n", Endpoints::Both, Policy::Honoured),
    ("echo", Endpoints::Completion, Policy::Honoured),
    ("best_of", Endpoints::Completion, Policy::Honoured),
    ("user", Endpoints::Both, Policy::Harmless),
    ("metadata", Endpoints::Both, Policy::Harmless),
    (
        "suffix",
        Endpoints::Completion,
        Policy::DefaultOnly(|v| v == "", "\"\""),
    ),
    (
        "store",
        Endpoints::Both,
        Policy::DefaultOnly(|v| v == false, "false (loraplex stores nothing)"),
    ),
    (
        "service_tier",
        Endpoints::Both,
        Policy::DefaultOnly(
            |v| v == "auto" || v == "default",
            "\"auto\" or \"default\" (there is one tier)",
        ),
    ),
    (
        "logit_bias",
        Endpoints::Both,
        Policy::DefaultOnly(|v| v.as_object().is_some_and(Map::is_empty), "{}"),
    ),
    (
        "response_format",
        Endpoints::Both,
        Policy::DefaultOnly(
            |v| *v == json!({"type": "text"}),
            "{\"type\": \"text\"} (no JSON mode or schemas)",
        ),
    ),
    (
        "tools",
        Endpoints::Both,
        Policy::DefaultOnly(empty_array, "[] (no tool calling)"),
    ),
    (
        "tool_choice",
        Endpoints::Both,
        Policy::DefaultOnly(|v| v == "none", "\"none\" (no tool calling)"),
    ),
    (
        "functions",
        Endpoints::Both,
        Policy::DefaultOnly(empty_array, "[] (no function calling)"),
    ),
    (
        "function_call",
        Endpoints::Both,
        Policy::DefaultOnly(|v| v == "none", "\"none\" (no function calling)"),
    ),
];

fn empty_array(v: &Value) -> bool {
    v.as_array().is_some_and(Vec::is_empty)
}

/// Refuses every field of `obj` that [`FIELDS`] does not accept for `kind`, or accepts only at a
/// value it does not have. The message names every such field.
fn check_fields(obj: &Map<String, Value>, kind: ApiKind) -> Result<()> {
    let mut unknown = Vec::new();
    for (key, value) in obj {
        if value.is_null() {
            continue;
        }
        let policy = FIELDS
            .iter()
            .find(|(name, takes, _)| name == key && takes.take(kind))
            .map(|&(_, _, p)| p);
        match policy {
            Some(Policy::Honoured | Policy::Harmless) => {}
            Some(Policy::DefaultOnly(ok, want)) => {
                if !ok(value) {
                    let got: String = value.to_string().chars().take(60).collect();
                    return Err(Error::invalid_argument(format!(
                        "field \"{key}\" = {got} is not supported: loraplex accepts only {want} \
                         (or null), and refuses rather than ignores it"
                    )));
                }
            }
            None => unknown.push(format!("\"{key}\"")),
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    let endpoint = match kind {
        ApiKind::Completion => "/v1/completions",
        ApiKind::Chat => "/v1/chat/completions",
    };
    Err(Error::invalid_argument(format!(
        "{} {}: not supported by loraplex on {endpoint} (unknown or unhonoured fields are \
         refused rather than ignored)",
        if unknown.len() == 1 {
            "field"
        } else {
            "fields"
        },
        unknown.join(", ")
    )))
}

/// Reads `stream_options` (only `include_usage`, and only with `stream: true`).
fn stream_include_usage(obj: &Map<String, Value>, stream: bool) -> Result<bool> {
    let Some(v) = obj.get("stream_options").filter(|v| !v.is_null()) else {
        return Ok(false);
    };
    let o = v
        .as_object()
        .ok_or_else(|| type_err("stream_options", "an object", v))?;
    if let Some(k) = o.keys().find(|k| *k != "include_usage") {
        return Err(Error::invalid_argument(format!(
            "field \"stream_options.{k}\" is not supported (only include_usage is)"
        )));
    }
    if !stream {
        return Err(Error::invalid_argument(
            "field \"stream_options\" is only allowed with \"stream\": true",
        ));
    }
    match o.get("include_usage") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(x) => Err(type_err("stream_options.include_usage", "a boolean", x)),
    }
}

/// Parses an OpenAI `/v1/completions` or `/v1/chat/completions` body (the kind is chosen by the
/// presence of `messages` or `prompt`; both at once is an error). `model` equal to
/// `served_name` (or absent/empty) means the base model (`Request.model = None`).
///
/// Fields loraplex does not honour are refused, not ignored: see [`FIELDS`] for the accepted
/// ones, the harmless ones (`user`, `metadata`) and those accepted only at their do-nothing value.
///
/// # Errors
/// INVALID_ARGUMENT naming the field for malformed JSON, unknown or unhonoured fields, wrong
/// types or values (`n` other than 1, a negative `seed`, `logprobs` out of range,
/// `stream_options` without `stream`...); UNSUPPORTED for `echo`, `best_of` > 1, several prompts,
/// or non-text content parts.
pub fn parse_openai(body: &str, served_name: &str) -> Result<OpenAiRequest> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| Error::invalid_argument(format!("request body is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::invalid_argument("request body must be a JSON object"))?;
    let kind = match (obj.contains_key("messages"), obj.contains_key("prompt")) {
        (true, false) => ApiKind::Chat,
        (false, true) => ApiKind::Completion,
        (true, true) => return Err(Error::invalid_argument(
            "request body has both \"prompt\" (completions) and \"messages\" (chat completions)",
        )),
        (false, false) => {
            return Err(Error::invalid_argument(
                "request body needs \"prompt\" (completions) or \"messages\" (chat completions)",
            ))
        }
    };
    check_fields(obj, kind)?;
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
                "field \"n\" = {n} is not supported: only n = 1 is"
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
        s.top_k = match x {
            -1 => 0,
            x => usize::try_from(x).map_err(|_| {
                Error::invalid_argument(format!(
                    "field \"top_k\" = {x}: must be -1 (off), 0 (off) or a positive count"
                ))
            })?,
        };
    }
    if let Some(x) = opt_f32(obj, "min_p")? {
        s.min_p = x;
    }
    // The full u64 range; a negative seed is refused rather than wrapped.
    s.seed = opt_uint(obj, "seed")?;
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
        ApiKind::Chat => {
            let top = opt_uint(obj, "top_logprobs")?;
            match (opt_bool(obj, "logprobs")?, top) {
                (Some(true), top) => Some(top.unwrap_or(0) as usize),
                (_, Some(n)) if n > 0 => {
                    return Err(Error::invalid_argument(format!(
                        "field \"top_logprobs\" = {n} needs \"logprobs\": true"
                    )))
                }
                _ => None,
            }
        }
    };
    // Every sampling range (logprobs <= MAX_LOGPROBS among them) is checked in one place.
    s.validate()?;
    let stream = opt_bool(obj, "stream")?.unwrap_or(false);
    let include_usage = stream_include_usage(obj, stream)?;
    Ok(OpenAiRequest {
        request: Request {
            model,
            prompt,
            sampling: s,
        },
        kind,
        stream,
        model: model_name.unwrap_or(served_name).to_string(),
        include_usage,
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
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| type_err(k, "an integer", &Value::Number(n.clone()))),
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
        // `name`, `tool_calls`, `tool_call_id`... would change what the model sees or is
        // asked to do: refused like unknown request fields.
        if let Some(k) = o
            .iter()
            .find(|(k, v)| !v.is_null() && *k != "role" && *k != "content")
            .map(|(k, _)| k)
        {
            return Err(Error::invalid_argument(format!(
                "field \"messages[{i}].{k}\" is not supported (a message has role and content)"
            )));
        }
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

/// How a request was asked for: the shape of its response objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseShape {
    /// Completion or chat objects.
    pub kind: ApiKind,
    /// The `model` the response names.
    pub model: std::sync::Arc<str>,
    /// The `created` timestamp (Unix seconds).
    pub created: u64,
    /// Streamed chunks (`stream: true`) or one complete object.
    pub stream: bool,
    /// `stream_options.include_usage` (only with `stream`): every chunk carries `"usage": null`
    /// and [`usage_chunk_json`] gives the final usage chunk.
    pub include_usage: bool,
}

impl ResponseShape {
    /// The shape a parsed body asks for.
    pub fn of(r: &OpenAiRequest, created: u64) -> Self {
        Self {
            kind: r.kind,
            model: r.model.as_str().into(),
            created,
            stream: r.stream,
            include_usage: r.stream && r.include_usage,
        }
    }

    fn object(&self) -> (&'static str, &'static str) {
        match (self.kind, self.stream) {
            (ApiKind::Completion, _) => ("cmpl", "text_completion"),
            (ApiKind::Chat, false) => ("chatcmpl", "chat.completion"),
            (ApiKind::Chat, true) => ("chatcmpl", "chat.completion.chunk"),
        }
    }

    /// The fields every response object of request `id` starts with.
    fn envelope(&self, id: u64, choices: Vec<Value>) -> Value {
        let (prefix, object) = self.object();
        json!({
            "id": format!("{prefix}-{id}"),
            "object": object,
            "created": self.created,
            "model": &*self.model,
            "choices": choices,
        })
    }
}

fn usage_json(out: &Output) -> Value {
    let p = out.usage.prompt_tokens;
    let c = out.usage.completion_tokens;
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

/// Builds the OpenAI response object for `out`: with `stream` a chunk carrying this delta
/// (`text_completion` or `chat.completion.chunk`), otherwise the complete object
/// (`text_completion` or `chat.completion`) made of this output's content (pass the merged output
/// of the whole request). `usage` is present on final outputs (always when not streaming); a
/// failed request also carries `"error": {"code", "message"}`. `tokenizer` turns log-probability
/// token ids into text (without it: `token_id:N`). Same as [`response_json`] without
/// `include_usage`.
pub fn output_json(
    out: &Output,
    kind: ApiKind,
    model: &str,
    created: u64,
    stream: bool,
    tokenizer: Option<&Tokenizer>,
) -> Value {
    let shape = ResponseShape {
        kind,
        model: model.into(),
        created,
        stream,
        include_usage: false,
    };
    response_json(out, &shape, tokenizer)
}

/// Builds the OpenAI response object for `out` in `shape` (see [`output_json`]). With
/// `shape.include_usage` every chunk carries `"usage": null` (the usage comes in the separate
/// [`usage_chunk_json`]); otherwise a streamed final chunk carries `usage` (a loraplex extension
/// that OpenAI clients ignore).
pub fn response_json(out: &Output, shape: &ResponseShape, tokenizer: Option<&Tokenizer>) -> Value {
    let choice = match (shape.kind, shape.stream) {
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
    let mut v = shape.envelope(out.id, vec![choice]);
    if shape.stream && shape.include_usage {
        v["usage"] = Value::Null;
    } else if !shape.stream || out.is_final() {
        v["usage"] = usage_json(out);
    }
    if out.finish_reason == Some(FinishReason::Error) {
        if let Some(e) = &out.error {
            v["error"] = json!({"code": e.code() as u32, "message": e.message()});
        }
    }
    v
}

/// The chunk OpenAI streams last when `stream_options.include_usage` is set: empty `choices` and
/// the request's `usage`. `Some` only for the final output of such a request.
pub fn usage_chunk_json(out: &Output, shape: &ResponseShape) -> Option<Value> {
    if !(shape.stream && shape.include_usage && out.is_final()) {
        return None;
    }
    let mut v = shape.envelope(out.id, Vec::new());
    v["usage"] = usage_json(out);
    Some(v)
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
                "frequency_penalty":-0.5,"stream":true,"user":"x"}"#,
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
                "\"n\" = 2",
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

    #[test]
    fn unknown_and_unhonoured_fields_are_refused_naming_them() {
        let cases = [
            (r#"{"prompt":"a","foo":1}"#, "\"foo\""),
            (r#"{"prompt":"a","foo":1,"bar":2}"#, "\"bar\", \"foo\""),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#,
                "\"tools\"",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"tool_choice":"auto"}"#,
                "\"tool_choice\"",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#,
                "\"response_format\"",
            ),
            (
                r#"{"prompt":"a","logit_bias":{"50256":-100}}"#,
                "\"logit_bias\"",
            ),
            (r#"{"prompt":"a","suffix":"end"}"#, "\"suffix\""),
            (
                r#"{"prompt":"a","functions":[{"name":"f"}]}"#,
                "\"functions\"",
            ),
            (
                r#"{"prompt":"a","function_call":"auto"}"#,
                "\"function_call\"",
            ),
            (r#"{"prompt":"a","store":true}"#, "\"store\""),
            (
                r#"{"prompt":"a","service_tier":"priority"}"#,
                "\"service_tier\"",
            ),
            // Fields of the other endpoint.
            (
                r#"{"messages":[{"role":"user","content":"x"}],"echo":false}"#,
                "\"echo\"",
            ),
            (r#"{"prompt":"a","top_logprobs":2}"#, "\"top_logprobs\""),
            (
                r#"{"prompt":"a","messages":[{"role":"user","content":"x"}]}"#,
                "both",
            ),
            (r#"{"prompt":"a","seed":-1}"#, "\"seed\""),
            (
                r#"{"messages":[{"role":"user","content":"x","name":"bob"}]}"#,
                "messages[0].name",
            ),
            (r#"{"prompt":"a","top_k":-2}"#, "\"top_k\""),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"top_logprobs":2}"#,
                "\"top_logprobs\"",
            ),
            (
                r#"{"prompt":"a","stream":true,"stream_options":{"include_usage":true,"x":1}}"#,
                "stream_options.x",
            ),
            (
                r#"{"prompt":"a","stream_options":{"include_usage":true}}"#,
                "\"stream_options\"",
            ),
            (
                r#"{"prompt":"a","stream":true,"stream_options":{"include_usage":1}}"#,
                "stream_options.include_usage",
            ),
        ];
        for (body, needle) in cases {
            let e = parse_openai(body, "base").unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidArgument, "{body}: {e}");
            assert!(e.message().contains(needle), "{body}: {e}");
        }
    }

    #[test]
    fn harmless_fields_and_do_nothing_values_are_accepted() {
        for body in [
            r#"{"prompt":"a","user":"u-1","metadata":{"k":"v"},"store":false,"service_tier":"auto"}"#,
            r#"{"prompt":"a","n":1,"echo":false,"best_of":1,"suffix":"","logit_bias":{}}"#,
            r#"{"prompt":"a","tools":[],"tool_choice":"none","functions":[],"function_call":"none"}"#,
            r#"{"prompt":"a","response_format":{"type":"text"},"service_tier":"default"}"#,
            r#"{"prompt":"a","tools":null,"logit_bias":null,"suffix":null,"stream_options":null}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"logprobs":false,"top_logprobs":0}"#,
            r#"{"prompt":"a","top_k":-1,"seed":18446744073709551615}"#,
        ] {
            let r = parse_openai(body, "base");
            assert!(r.is_ok(), "{body}: {r:?}");
        }
        let r = parse_openai(r#"{"prompt":"a","seed":18446744073709551615}"#, "b").unwrap();
        assert_eq!(r.request.sampling.seed, Some(u64::MAX));
        let r = parse_openai(r#"{"prompt":"a","top_k":-1}"#, "b").unwrap();
        assert_eq!(r.request.sampling.top_k, 0);
    }

    #[test]
    fn include_usage_ends_the_stream_with_a_usage_chunk() {
        let body = r#"{"messages":[{"role":"user","content":"x"}],"stream":true,
                      "stream_options":{"include_usage":true}}"#;
        let r = parse_openai(body, "base").unwrap();
        assert!(r.include_usage);
        let shape = ResponseShape::of(&r, 5);
        for final_ in [false, true] {
            let v = response_json(&sample_output(final_), &shape, None);
            assert_eq!(v["object"], "chat.completion.chunk");
            assert!(v["usage"].is_null(), "{v}");
            assert!(v.as_object().unwrap().contains_key("usage"), "{v}");
        }
        assert_eq!(usage_chunk_json(&sample_output(false), &shape), None);
        let u = usage_chunk_json(&sample_output(true), &shape).unwrap();
        assert_eq!(u["object"], "chat.completion.chunk");
        assert_eq!(u["id"], "chatcmpl-7");
        assert_eq!(u["model"], "base");
        assert_eq!(u["choices"], json!([]));
        assert_eq!(u["usage"]["total_tokens"], 5);

        // Completions too; include_usage false and no stream_options mean no usage chunk.
        for (body, want) in [
            (
                r#"{"prompt":"a","stream":true,"stream_options":{"include_usage":true}}"#,
                true,
            ),
            (
                r#"{"prompt":"a","stream":true,"stream_options":{"include_usage":false}}"#,
                false,
            ),
            (r#"{"prompt":"a","stream":true}"#, false),
            (r#"{"prompt":"a"}"#, false),
        ] {
            let r = parse_openai(body, "base").unwrap();
            let shape = ResponseShape::of(&r, 5);
            let u = usage_chunk_json(&sample_output(true), &shape);
            assert_eq!(u.is_some(), want, "{body}");
            if let Some(u) = u {
                assert_eq!(u["object"], "text_completion");
                assert_eq!(u["choices"], json!([]));
            }
            // Without include_usage the final chunk keeps its usage.
            let v = response_json(&sample_output(true), &shape, None);
            assert_eq!(v["usage"].is_null(), want, "{body}: {v}");
        }
    }
}
