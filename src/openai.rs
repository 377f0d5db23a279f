//! OpenAI wire format: `/v1/completions` and `/v1/chat/completions` request bodies to
//! [`Request`], and [`Output`]s to OpenAI response objects (`text_completion`,
//! `chat.completion`, `chat.completion.chunk`).
//!
//! Pure functions, no I/O; used by `lpx_engine_submit_json` / `lpx_output_json` and by servers.
//!
//! Rendering a request's result:
//! * not streamed: [`completion_json`] over every choice's merged output (index order);
//! * streamed: one [`chunk_json`] per output as they come (each chunk carries one choice; the
//!   choices of an `n > 1` request interleave), positioned by a [`StreamTracker`], then with
//!   `stream_options.include_usage` one [`usage_chunk_json`] after the request's last output
//!   ([`Output::done`]).

use serde_json::{json, Map, Value};

use crate::engine::{
    AdapterMix, FinishReason, Output, Prompt, PromptOutput, Request, Usage, MAX_CHOICES,
};
use crate::error::{Error, Result};
use crate::sampling::{ResponseFormat, SamplingParams};
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
    /// The engine request (with `n`, `best_of`, `echo`, `response_format`, `logit_bias`...).
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
    /// vLLM's `return_tokens_as_token_ids`: log-probability tokens are written `token_id:N`
    /// instead of their text.
    pub return_tokens_as_token_ids: bool,
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
/// naming it (like vLLM's strict mode), so that a client asking for tools or a suffix is told
/// instead of silently getting something else.
///
/// Honoured besides the sampling fields: `n` (1..=64 choices), `best_of` (completions, ≥ `n`,
/// ≤ 64, not streamed when > `n`), `echo` (completions; with `logprobs` the prompt tokens'
/// log-probabilities too), `logit_bias` (token id → bias in [-100, 100]), `response_format`
/// (`text`, `json_object`, `json_schema`) and vLLM's `guided_json`, `guided_regex`,
/// `guided_choice`, `guided_grammar` (at most one constraint per request), vLLM's
/// `return_tokens_as_token_ids`, and loraplex's `adapters` (an adapter mixture,
/// `[{"name": "a", "scale": 0.7}, {"name": "b", "scale": 0.3}]`, run on the base `model`).
///
/// The harmless fields, accepted with any value, and why:
/// * `user`: an end-user id for the provider's abuse monitoring; it never affects generation.
/// * `metadata`: tags for stored completions; loraplex stores nothing and tags do not affect
///   generation.
///
/// Fields accepted only at their do-nothing value: `suffix` = "", `store` = false (nothing is
/// stored), `service_tier` = "auto" or "default" (there is one tier), `tools` = [],
/// `tool_choice` = "none", `functions` = [], `function_call` = "none", and the fields routers
/// add for vLLM / SGLang replicas: `skip_special_tokens` = true, `no_stop_trim` = false,
/// `return_hidden_states` = false.
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
    ("logit_bias", Endpoints::Both, Policy::Honoured),
    ("adapters", Endpoints::Both, Policy::Honoured),
    ("response_format", Endpoints::Both, Policy::Honoured),
    ("guided_json", Endpoints::Both, Policy::Honoured),
    ("guided_regex", Endpoints::Both, Policy::Honoured),
    ("guided_choice", Endpoints::Both, Policy::Honoured),
    ("guided_grammar", Endpoints::Both, Policy::Honoured),
    (
        "return_tokens_as_token_ids",
        Endpoints::Both,
        Policy::Honoured,
    ),
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
    // Fields routers in front of vLLM / SGLang replicas (vllm-router, sglang-router) add to every
    // request at their defaults, which are what loraplex does.
    (
        "skip_special_tokens",
        Endpoints::Both,
        Policy::DefaultOnly(
            |v| v == true,
            "true (output text never holds special tokens)",
        ),
    ),
    (
        "no_stop_trim",
        Endpoints::Both,
        Policy::DefaultOnly(|v| v == false, "false (stop strings are trimmed)"),
    ),
    (
        "return_hidden_states",
        Endpoints::Both,
        Policy::DefaultOnly(|v| v == false, "false"),
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
    // Sorted: the message does not depend on the body's key order.
    unknown.sort();
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

/// The value of `key` unless absent or `null`.
fn present<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    o.get(key).filter(|v| !v.is_null())
}

/// A JSON Schema given as `field`: an object, or (vLLM's `guided_json`) a string holding one.
fn schema_value(v: &Value, field: &str, string_ok: bool) -> Result<Value> {
    match v {
        Value::Object(_) => Ok(v.clone()),
        Value::String(s) if string_ok => {
            let parsed: Value = serde_json::from_str(s).map_err(|e| {
                Error::invalid_argument(format!(
                    "field \"{field}\" is a string but not JSON (a JSON Schema was expected): {e}"
                ))
            })?;
            if !parsed.is_object() {
                return Err(type_err(field, "a JSON Schema object", &parsed));
            }
            Ok(parsed)
        }
        x => Err(type_err(
            field,
            if string_ok {
                "a JSON Schema (an object, or a string holding one)"
            } else {
                "a JSON Schema object"
            },
            x,
        )),
    }
}

/// Parses OpenAI's `response_format`: `{"type": "text"}`, `{"type": "json_object"}` or
/// `{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}`.
fn parse_response_format(v: &Value) -> Result<ResponseFormat> {
    let o = v
        .as_object()
        .ok_or_else(|| type_err("response_format", "an object with a \"type\"", v))?;
    let ty = match o.get("type") {
        Some(Value::String(s)) => s.as_str(),
        None | Some(Value::Null) => {
            return Err(Error::invalid_argument(
                "field \"response_format.type\" is missing (text, json_object or json_schema)",
            ))
        }
        Some(x) => return Err(type_err("response_format.type", "a string", x)),
    };
    let keys: &[&str] = match ty {
        "text" | "json_object" => &["type"],
        "json_schema" => &["type", "json_schema"],
        other => {
            let other: String = other.chars().take(60).collect();
            return Err(Error::invalid_argument(format!(
                "field \"response_format.type\" = \"{other}\" is not supported (text, \
                 json_object or json_schema)"
            )));
        }
    };
    if let Some(k) = o
        .iter()
        .find(|(k, v)| !v.is_null() && !keys.contains(&k.as_str()))
        .map(|(k, _)| k)
    {
        return Err(Error::invalid_argument(format!(
            "field \"response_format.{k}\" is not supported with type \"{ty}\""
        )));
    }
    match ty {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        _ => {
            let js = present(o, "json_schema").ok_or_else(|| {
                Error::invalid_argument(
                    "field \"response_format.json_schema\" is missing (type json_schema needs \
                     {\"name\": ..., \"schema\": {...}})",
                )
            })?;
            let js = js
                .as_object()
                .ok_or_else(|| type_err("response_format.json_schema", "an object", js))?;
            for (k, v) in js.iter().filter(|(_, v)| !v.is_null()) {
                let field = format!("response_format.json_schema.{k}");
                match k.as_str() {
                    "name" | "description" if !v.is_string() => {
                        return Err(type_err(&field, "a string", v))
                    }
                    "strict" if !v.is_boolean() => return Err(type_err(&field, "a boolean", v)),
                    "name" | "description" | "strict" | "schema" => {}
                    _ => {
                        return Err(Error::invalid_argument(format!(
                            "field \"{field}\" is not supported (name, schema, strict, \
                             description)"
                        )))
                    }
                }
            }
            let schema = present(js, "schema").ok_or_else(|| {
                Error::invalid_argument("field \"response_format.json_schema.schema\" is missing")
            })?;
            Ok(ResponseFormat::JsonSchema(schema_value(
                schema,
                "response_format.json_schema.schema",
                false,
            )?))
        }
    }
}

/// The output constraint of a body: `response_format` or one of vLLM's `guided_*` fields (at
/// most one of them may constrain the output).
fn output_constraint(obj: &Map<String, Value>) -> Result<ResponseFormat> {
    let mut found: Vec<(&str, ResponseFormat)> = Vec::new();
    if let Some(v) = present(obj, "response_format") {
        let f = parse_response_format(v)?;
        if !f.is_text() {
            found.push(("response_format", f));
        }
    }
    if let Some(v) = present(obj, "guided_json") {
        found.push((
            "guided_json",
            ResponseFormat::JsonSchema(schema_value(v, "guided_json", true)?),
        ));
    }
    if let Some(v) = present(obj, "guided_regex") {
        let r = v
            .as_str()
            .ok_or_else(|| type_err("guided_regex", "a regular expression string", v))?;
        if r.is_empty() {
            return Err(Error::invalid_argument(
                "field \"guided_regex\" must not be empty",
            ));
        }
        found.push(("guided_regex", ResponseFormat::Regex(r.to_string())));
    }
    if let Some(v) = present(obj, "guided_choice") {
        let a = v
            .as_array()
            .ok_or_else(|| type_err("guided_choice", "an array of strings", v))?;
        if a.is_empty() {
            return Err(Error::invalid_argument(
                "field \"guided_choice\" must not be empty",
            ));
        }
        let choices = a
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| type_err(&format!("guided_choice[{i}]"), "a string", x))
            })
            .collect::<Result<Vec<_>>>()?;
        found.push(("guided_choice", ResponseFormat::Choice(choices)));
    }
    if let Some(v) = present(obj, "guided_grammar") {
        let g = v
            .as_str()
            .ok_or_else(|| type_err("guided_grammar", "a Lark grammar string", v))?;
        if g.trim().is_empty() {
            return Err(Error::invalid_argument(
                "field \"guided_grammar\" must not be empty",
            ));
        }
        found.push(("guided_grammar", ResponseFormat::Grammar(g.to_string())));
    }
    if found.len() > 1 {
        let names: Vec<String> = found.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        return Err(Error::invalid_argument(format!(
            "fields {} each constrain the output: give at most one of response_format, \
             guided_json, guided_regex, guided_choice and guided_grammar",
            names.join(" and ")
        )));
    }
    Ok(found.pop().map_or(ResponseFormat::Text, |(_, f)| f))
}

/// Parses `logit_bias`: an object mapping token ids (decimal strings) to biases (numbers; their
/// range is checked by [`SamplingParams::validate`]). Sorted by token id.
fn logit_bias(v: &Value) -> Result<Vec<(u32, f32)>> {
    let o = v.as_object().ok_or_else(|| {
        type_err(
            "logit_bias",
            "an object mapping token ids to biases in [-100, 100]",
            v,
        )
    })?;
    let mut out = Vec::with_capacity(o.len());
    for (k, x) in o {
        let key: String = k.chars().take(40).collect();
        let id = k
            .parse::<u32>()
            .ok()
            .filter(|_| k.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "field \"logit_bias\": key \"{key}\" is not a token id (a non-negative \
                     integer written as a string)"
                ))
            })?;
        let bias = x
            .as_f64()
            .ok_or_else(|| type_err(&format!("logit_bias.{key}"), "a number", x))?;
        out.push((id, bias as f32));
    }
    out.sort_by_key(|&(id, _)| id);
    Ok(out)
}

/// The `adapters` extension: `[{"name": "a", "scale": 0.7}, ...]` (`scale` defaults to 1; no
/// other keys). The engine checks the names, their number and the scales' values.
fn adapter_mix(v: &Value) -> Result<Vec<AdapterMix>> {
    let what = "an array of {\"name\": string, \"scale\": number} objects";
    let items = v.as_array().ok_or_else(|| type_err("adapters", what, v))?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = format!("adapters[{i}]");
        let o = item
            .as_object()
            .ok_or_else(|| type_err(&field, what, item))?;
        if let Some(k) = o.keys().find(|k| *k != "name" && *k != "scale") {
            let k: String = k.chars().take(40).collect();
            return Err(Error::invalid_argument(format!(
                "field \"{field}\": unknown key \"{k}\" (an entry has \"name\" and \"scale\")"
            )));
        }
        let name = match o.get("name") {
            Some(Value::String(n)) => n.clone(),
            Some(x) => return Err(type_err(&format!("{field}.name"), "a string", x)),
            None => {
                return Err(Error::invalid_argument(format!(
                    "field \"{field}\": \"name\" is missing"
                )))
            }
        };
        let scale = match o.get("scale") {
            None | Some(Value::Null) => 1.0,
            Some(x) => x
                .as_f64()
                .ok_or_else(|| type_err(&format!("{field}.scale"), "a number", x))?
                as f32,
        };
        out.push(AdapterMix { name, scale });
    }
    Ok(out)
}

/// Parses an OpenAI `/v1/completions` or `/v1/chat/completions` body (the kind is chosen by the
/// presence of `messages` or `prompt`; both at once is an error). `model` equal to
/// `served_name` (or absent/empty) means the base model (`Request.model = None`).
///
/// Fields loraplex does not honour are refused, not ignored: see [`FIELDS`] for the accepted
/// ones, the harmless ones (`user`, `metadata`) and those accepted only at their do-nothing value.
///
/// # Errors
/// INVALID_ARGUMENT naming the field for malformed JSON, unknown or unhonoured fields (`tools`,
/// `suffix`...), wrong types or values (`n` outside 1..=64, `best_of` below `n` or streamed, a
/// negative `seed`, `logprobs` out of range, a `logit_bias` key that is not a token id or a bias
/// outside [-100, 100], an unknown `response_format` type, two output constraints at once,
/// `stream_options` without `stream`...); UNSUPPORTED for several prompts or non-text content
/// parts. Schemas, regular expressions and grammars are compiled (and refused when invalid) by
/// the engine at submission.
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
    let stream = opt_bool(obj, "stream")?.unwrap_or(false);
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
    let n = match opt_uint(obj, "n")? {
        None => 1,
        Some(n) if (1..=MAX_CHOICES as u64).contains(&n) => n as usize,
        Some(n) => {
            return Err(Error::invalid_argument(format!(
                "field \"n\" = {n}: must be in 1..={MAX_CHOICES}"
            )))
        }
    };
    let best_of = match opt_uint(obj, "best_of")? {
        None => None,
        Some(b) if b > MAX_CHOICES as u64 => {
            return Err(Error::invalid_argument(format!(
                "field \"best_of\" = {b}: must be at most {MAX_CHOICES}"
            )))
        }
        Some(b) if (b as usize) < n => {
            return Err(Error::invalid_argument(format!(
                "field \"best_of\" = {b}: must be at least n ({n})"
            )))
        }
        Some(b) if b as usize > n && stream => {
            return Err(Error::invalid_argument(format!(
                "field \"best_of\" = {b} > n = {n} cannot be streamed (the best choices are \
                 known only when all have finished): drop \"stream\" or best_of"
            )))
        }
        Some(b) => (b as usize > n).then_some(b as usize),
    };
    let echo = opt_bool(obj, "echo")?.unwrap_or(false);
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
    // OpenAI's echo with logprobs returns the prompt tokens' log-probabilities too.
    if echo {
        s.prompt_logprobs = s.logprobs;
    }
    if let Some(v) = present(obj, "logit_bias") {
        s.logit_bias = logit_bias(v)?;
    }
    // Every sampling range (logprobs <= MAX_LOGPROBS, logit_bias in [-100, 100]...) is checked
    // in one place.
    s.validate()?;
    let response_format = output_constraint(obj)?;
    let include_usage = stream_include_usage(obj, stream)?;
    let return_tokens_as_token_ids = opt_bool(obj, "return_tokens_as_token_ids")?.unwrap_or(false);
    let adapters = match present(obj, "adapters") {
        Some(v) => adapter_mix(v)?,
        None => Vec::new(),
    };
    Ok(OpenAiRequest {
        request: Request {
            model,
            prompt,
            sampling: s,
            n,
            best_of,
            response_format,
            echo,
            adapters,
        },
        kind,
        stream,
        model: model_name.unwrap_or(served_name).to_string(),
        include_usage,
        return_tokens_as_token_ids,
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
    /// `echo` (completions): each choice's text starts with the prompt text and, with
    /// `logprobs`, its log-probabilities start with the prompt tokens'.
    pub echo: bool,
    /// Log-probabilities were asked for: every choice carries a `logprobs` object (`null`
    /// otherwise).
    pub logprobs: bool,
    /// Log-probability tokens are written `token_id:N` (vLLM's `return_tokens_as_token_ids`).
    pub tokens_as_ids: bool,
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
            echo: r.request.echo,
            logprobs: r.request.sampling.logprobs.is_some(),
            tokens_as_ids: r.return_tokens_as_token_ids,
        }
    }

    /// The shape of a request submitted without an OpenAI body (`lpx_engine_submit`): streamed
    /// chunks, chat chunks for a chat prompt and completion chunks otherwise, naming `model`.
    pub fn streamed(req: &Request, model: &str, created: u64) -> Self {
        Self {
            kind: match req.prompt {
                Prompt::Chat(_) => ApiKind::Chat,
                _ => ApiKind::Completion,
            },
            model: model.into(),
            created,
            stream: true,
            include_usage: false,
            echo: req.echo,
            logprobs: req.sampling.logprobs.is_some(),
            tokens_as_ids: false,
        }
    }

    fn object(&self, streamed: bool) -> (&'static str, &'static str) {
        match (self.kind, streamed) {
            (ApiKind::Completion, _) => ("cmpl", "text_completion"),
            (ApiKind::Chat, false) => ("chatcmpl", "chat.completion"),
            (ApiKind::Chat, true) => ("chatcmpl", "chat.completion.chunk"),
        }
    }

    /// The fields every response object of request `id` starts with.
    fn envelope(&self, id: u64, streamed: bool, choices: Vec<Value>) -> Value {
        let (prefix, object) = self.object(streamed);
        json!({
            "id": format!("{prefix}-{id}"),
            "object": object,
            "created": self.created,
            "model": &*self.model,
            "choices": choices,
        })
    }

    fn token(&self, tok: Option<&Tokenizer>, id: u32) -> String {
        if self.tokens_as_ids {
            format!("token_id:{id}")
        } else {
            token_text(tok, id)
        }
    }
}

/// Where a streamed output stands in its choice's stream (what its chunk needs besides the
/// output): from [`StreamTracker::advance`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkPosition {
    /// The choice's first chunk: a chat chunk announces the role (`"role": "assistant"`).
    pub first: bool,
    /// Characters of this choice's text streamed before this chunk: the completions
    /// `logprobs.text_offset` continue from it.
    pub text_offset: usize,
}

/// The progress of one choice in a [`StreamTracker`].
#[derive(Debug, Clone, Copy, Default)]
struct ChoiceProgress {
    started: bool,
    chars: usize,
    completion_tokens: usize,
}

/// One streamed request's progress: which choices have started, how much text each has
/// streamed and how many tokens each has generated. Feed it every output of the request in the
/// order they come ([`StreamTracker::advance`]); [`StreamTracker::usage`] is the request's
/// usage (for [`usage_chunk_json`]).
#[derive(Debug, Clone, Default)]
pub struct StreamTracker {
    prompt_tokens: usize,
    choices: Vec<ChoiceProgress>,
}

impl StreamTracker {
    /// A request with nothing streamed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `out`, the next output of its choice, and returns where its chunk stands.
    pub fn advance(&mut self, out: &Output, shape: &ResponseShape) -> ChunkPosition {
        let i = out.index.min(MAX_CHOICES);
        if self.choices.len() <= i {
            self.choices.resize(i + 1, ChoiceProgress::default());
        }
        let c = &mut self.choices[i];
        let pos = ChunkPosition {
            first: !c.started,
            text_offset: c.chars,
        };
        c.started = true;
        if shape.echo {
            c.chars += out.prompt.as_ref().map_or(0, |p| p.text.chars().count());
        }
        c.chars += out.text.chars().count();
        // Usage counts are cumulative per choice; a failure's output carries zeros.
        c.completion_tokens = c.completion_tokens.max(out.usage.completion_tokens);
        self.prompt_tokens = self.prompt_tokens.max(out.usage.prompt_tokens);
        pos
    }

    /// The request's usage so far: the prompt tokens once, the completion tokens of every
    /// choice summed.
    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.choices.iter().map(|c| c.completion_tokens).sum(),
        }
    }
}

/// The usage of a request from its choices' (merged or last) outputs: the prompt tokens once,
/// the completion tokens of every choice summed.
pub fn total_usage(outs: &[Output]) -> Usage {
    Usage {
        prompt_tokens: outs
            .iter()
            .map(|o| o.usage.prompt_tokens)
            .max()
            .unwrap_or(0),
        completion_tokens: outs.iter().map(|o| o.usage.completion_tokens).sum(),
    }
}

fn usage_value(u: Usage) -> Value {
    let (p, c) = (u.prompt_tokens, u.completion_tokens);
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

fn top_map(top: &[(u32, f32)], shape: &ResponseShape, tok: Option<&Tokenizer>) -> Value {
    let mut m = Map::new();
    for &(t, lp) in top {
        m.insert(shape.token(tok, t), json!(lp));
    }
    Value::Object(m)
}

/// The legacy completions `logprobs` object: with `prompt` (echo) the prompt tokens first (the
/// first one without a log-probability: `null`), then the generated tokens; `text_offset` counts
/// characters from `offset`.
fn completion_logprobs(
    out: &Output,
    prompt: Option<&PromptOutput>,
    offset: usize,
    shape: &ResponseShape,
    tok: Option<&Tokenizer>,
) -> Value {
    if !shape.logprobs {
        return Value::Null;
    }
    let mut tokens = Vec::new();
    let mut lps = Vec::new();
    let mut tops = Vec::new();
    if let Some(p) = prompt {
        for (i, &id) in p.token_ids.iter().enumerate() {
            tokens.push(shape.token(tok, id));
            match i.checked_sub(1).and_then(|j| p.logprobs.get(j)) {
                Some(l) => {
                    lps.push(json!(l.logprob));
                    tops.push(top_map(&l.top, shape, tok));
                }
                None => {
                    lps.push(Value::Null);
                    tops.push(Value::Null);
                }
            }
        }
    }
    for l in &out.logprobs {
        tokens.push(shape.token(tok, l.token));
        lps.push(json!(l.logprob));
        tops.push(top_map(&l.top, shape, tok));
    }
    let mut offsets = Vec::with_capacity(tokens.len());
    let mut off = offset;
    for t in &tokens {
        offsets.push(off);
        off += t.chars().count();
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

fn chat_logprobs(out: &Output, shape: &ResponseShape, tok: Option<&Tokenizer>) -> Value {
    if !shape.logprobs {
        return Value::Null;
    }
    let entry = |t: u32, lp: f32| {
        let s = shape.token(tok, t);
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

/// One choice of a response object: the complete choice (`streamed` false) or this delta's.
fn choice_json(
    out: &Output,
    pos: ChunkPosition,
    shape: &ResponseShape,
    streamed: bool,
    tok: Option<&Tokenizer>,
) -> Value {
    let echoed = if shape.echo {
        out.prompt.as_ref()
    } else {
        None
    };
    match (shape.kind, streamed) {
        (ApiKind::Completion, _) => {
            let text = match echoed {
                Some(p) => format!("{}{}", p.text, out.text),
                None => out.text.clone(),
            };
            json!({
                "index": out.index, "text": text,
                "logprobs": completion_logprobs(out, echoed, pos.text_offset, shape, tok),
                "finish_reason": finish_value(out),
            })
        }
        (ApiKind::Chat, false) => json!({
            "index": out.index, "message": {"role": "assistant", "content": out.text},
            "logprobs": chat_logprobs(out, shape, tok), "finish_reason": finish_value(out),
        }),
        (ApiKind::Chat, true) => {
            let mut delta = json!({"content": out.text});
            if pos.first {
                delta["role"] = json!("assistant");
            }
            json!({"index": out.index, "delta": delta, "logprobs": chat_logprobs(out, shape, tok),
                   "finish_reason": finish_value(out)})
        }
    }
}

/// Adds `"error": {"code", "message"}` when one of `outs` failed.
fn attach_error<'a>(v: &mut Value, outs: impl IntoIterator<Item = &'a Output>) {
    let failed = outs
        .into_iter()
        .filter(|o| o.finish_reason == Some(FinishReason::Error))
        .find_map(|o| o.error.as_ref());
    if let Some(e) = failed {
        v["error"] = json!({"code": e.code() as u32, "message": e.message()});
    }
}

/// The complete (non-streamed) `text_completion` / `chat.completion` object of a request from
/// its choices' merged outputs, one per choice in index order (as
/// [`crate::engine::Engine::wait_all`] returns them). `usage` counts the prompt once and the
/// completion tokens of every choice; with `echo` each choice's text (and, with `logprobs`, its
/// log-probabilities) starts with the prompt's. A failed request also carries `"error":
/// {"code", "message"}`. `tokenizer` turns log-probability token ids into text (without it:
/// `token_id:N`).
pub fn completion_json(outs: &[Output], shape: &ResponseShape, tok: Option<&Tokenizer>) -> Value {
    let id = outs.first().map_or(0, |o| o.id);
    let choices = outs
        .iter()
        .map(|o| choice_json(o, ChunkPosition::default(), shape, false, tok))
        .collect();
    let mut v = shape.envelope(id, false, choices);
    v["usage"] = usage_value(total_usage(outs));
    attach_error(&mut v, outs);
    v
}

/// One streamed chunk (`text_completion` / `chat.completion.chunk`) carrying `out`, a delta of
/// choice `out.index`, at `pos` (from [`StreamTracker::advance`]): a chat chunk announces the
/// role on the choice's first chunk; with `echo` the choice's first chunk starts with the
/// prompt. Chunks carry no `usage` (OpenAI's rule: the usage comes in the separate
/// [`usage_chunk_json`], and with `include_usage` every chunk says `"usage": null`). A failed
/// request's chunk also carries `"error": {"code", "message"}`.
pub fn chunk_json(
    out: &Output,
    pos: ChunkPosition,
    shape: &ResponseShape,
    tok: Option<&Tokenizer>,
) -> Value {
    let mut v = shape.envelope(out.id, true, vec![choice_json(out, pos, shape, true, tok)]);
    if shape.include_usage {
        v["usage"] = Value::Null;
    }
    attach_error(&mut v, [out]);
    v
}

/// Builds the OpenAI response object for `out` in `shape`: with `shape.stream` the chunk of
/// this delta ([`chunk_json`]; the role is announced when `out` holds every token of its choice
/// so far), otherwise the complete object made of this one output ([`completion_json`]; pass
/// the merged output of a one-choice request). For several choices use [`completion_json`] and
/// [`chunk_json`] with a [`StreamTracker`].
pub fn response_json(out: &Output, shape: &ResponseShape, tokenizer: Option<&Tokenizer>) -> Value {
    if shape.stream {
        let pos = ChunkPosition {
            first: out.usage.completion_tokens == out.token_ids.len(),
            text_offset: 0,
        };
        chunk_json(out, pos, shape, tokenizer)
    } else {
        completion_json(std::slice::from_ref(out), shape, tokenizer)
    }
}

/// [`response_json`] for a shape given field by field (no `echo`, no `include_usage`;
/// log-probabilities rendered when `out` has some).
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
        echo: false,
        logprobs: !out.logprobs.is_empty(),
        tokens_as_ids: false,
    };
    response_json(out, &shape, tokenizer)
}

/// The chunk OpenAI streams last when `stream_options.include_usage` is set: empty `choices` and
/// the request's `usage` (`total`: every choice's, e.g. [`StreamTracker::usage`]). `Some` only
/// for the request's last output ([`Output::done`]) of such a request.
pub fn usage_chunk_json(out: &Output, total: Usage, shape: &ResponseShape) -> Option<Value> {
    if !(shape.stream && shape.include_usage && out.done) {
        return None;
    }
    let mut v = shape.envelope(out.id, true, Vec::new());
    v["usage"] = usage_value(total);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::TokenLogprob;
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
                r#"{"prompt":"a","n":0}"#,
                ErrorCode::InvalidArgument,
                "\"n\" = 0",
            ),
            (
                r#"{"prompt":"a","n":65}"#,
                ErrorCode::InvalidArgument,
                "\"n\" = 65",
            ),
            (
                r#"{"prompt":"a","echo":1}"#,
                ErrorCode::InvalidArgument,
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
            o.done = true;
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
        // A streamed chunk carries no usage (OpenAI sends it only in the include_usage chunk).
        assert!(v.get("usage").is_none(), "{v}");
        let v = output_json(&o, ApiKind::Completion, "m", 0, false, None);
        assert_eq!(v["error"]["code"], 5);
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
                r#"{"messages":[{"role":"user","content":"x"}],"tool_choice":{"type":"function"}}"#,
                "\"tool_choice\"",
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
                r#"{"prompt":"a","skip_special_tokens":false}"#,
                "\"skip_special_tokens\"",
            ),
            (r#"{"prompt":"a","no_stop_trim":true}"#, "\"no_stop_trim\""),
            (
                r#"{"prompt":"a","return_hidden_states":true}"#,
                "\"return_hidden_states\"",
            ),
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
            // What vllm-router / sglang-router add to every request.
            r#"{"prompt":"a","skip_special_tokens":true,"no_stop_trim":false,"return_hidden_states":false}"#,
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
        let early = sample_output(false);
        assert_eq!(usage_chunk_json(&early, early.usage, &shape), None);
        let last = sample_output(true);
        let u = usage_chunk_json(&last, last.usage, &shape).unwrap();
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
            let last = sample_output(true);
            let u = usage_chunk_json(&last, last.usage, &shape);
            assert_eq!(u.is_some(), want, "{body}");
            if let Some(u) = u {
                assert_eq!(u["object"], "text_completion");
                assert_eq!(u["choices"], json!([]));
            }
            // A streamed final chunk carries "usage": null with include_usage and no usage
            // otherwise (as OpenAI); the complete object always has it.
            let v = response_json(&last, &shape, None);
            match (shape.stream, want) {
                (true, true) => assert!(v["usage"].is_null() && v.get("usage").is_some(), "{v}"),
                (true, false) => assert!(v.get("usage").is_none(), "{body}: {v}"),
                (false, _) => assert_eq!(v["usage"]["total_tokens"], 5, "{v}"),
            }
        }
    }

    fn constraint(body: &str) -> ResponseFormat {
        parse_openai(body, "base").unwrap().request.response_format
    }

    fn refused(body: &str) -> String {
        let e = parse_openai(body, "base").unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{body}: {e}");
        e.message().to_string()
    }

    #[test]
    fn response_format_and_guided_fields_become_constraints() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        for body in [
            json!({"messages": [{"role": "user", "content": "x"}], "response_format":
                {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema,
                 "strict": true, "description": "d"}}}),
            json!({"prompt": "x", "response_format": {"type": "json_schema",
                "json_schema": {"schema": schema}}}),
            json!({"prompt": "x", "guided_json": schema}),
            json!({"prompt": "x", "guided_json": schema.to_string()}),
            json!({"prompt": "x", "guided_json": schema, "response_format": {"type": "text"}}),
        ] {
            assert_eq!(
                constraint(&body.to_string()),
                ResponseFormat::JsonSchema(schema.clone()),
                "{body}"
            );
        }
        assert_eq!(
            constraint(
                r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#
            ),
            ResponseFormat::JsonObject
        );
        assert_eq!(
            constraint(r#"{"prompt":"x","response_format":{"type":"text"}}"#),
            ResponseFormat::Text
        );
        assert_eq!(constraint(r#"{"prompt":"x"}"#), ResponseFormat::Text);
        assert_eq!(
            constraint(r#"{"prompt":"x","guided_regex":"[0-9]{3}"}"#),
            ResponseFormat::Regex("[0-9]{3}".into())
        );
        assert_eq!(
            constraint(r#"{"prompt":"x","guided_choice":["yes","no"]}"#),
            ResponseFormat::Choice(vec!["yes".into(), "no".into()])
        );
        assert_eq!(
            constraint(r#"{"prompt":"x","guided_grammar":"start: \"a\"+"}"#),
            ResponseFormat::Grammar("start: \"a\"+".into())
        );
    }

    #[test]
    fn bad_constraints_are_refused_naming_the_problem() {
        let chat =
            |rest: &str| format!(r#"{{"messages":[{{"role":"user","content":"x"}}],{rest}}}"#);
        for (body, needles) in [
            (
                chat(r#""response_format":{"type":"nonsense"}"#),
                &["response_format.type", "nonsense"][..],
            ),
            (chat(r#""response_format":{}"#), &["response_format.type"]),
            (chat(r#""response_format":"json""#), &["response_format"]),
            (
                chat(r#""response_format":{"type":"json_schema"}"#),
                &["response_format.json_schema"],
            ),
            (
                chat(r#""response_format":{"type":"json_schema","json_schema":{"name":"n"}}"#),
                &["response_format.json_schema.schema"],
            ),
            (
                chat(r#""response_format":{"type":"json_schema","json_schema":{"schema":3}}"#),
                &["response_format.json_schema.schema"],
            ),
            (
                chat(
                    r#""response_format":{"type":"json_schema","json_schema":{"schema":{},"x":1}}"#,
                ),
                &["response_format.json_schema.x"],
            ),
            (
                chat(
                    r#""response_format":{"type":"json_schema","json_schema":{"schema":{},"strict":"yes"}}"#,
                ),
                &["response_format.json_schema.strict"],
            ),
            (
                chat(r#""response_format":{"type":"json_object","json_schema":{}}"#),
                &["response_format.json_schema"],
            ),
            (chat(r#""guided_json":"{not json""#), &["guided_json"]),
            (chat(r#""guided_json":[1]"#), &["guided_json"]),
            (chat(r#""guided_regex":5"#), &["guided_regex"]),
            (chat(r#""guided_regex":"""#), &["guided_regex"]),
            (chat(r#""guided_choice":[]"#), &["guided_choice"]),
            (chat(r#""guided_choice":["a",2]"#), &["guided_choice[1]"]),
            (chat(r#""guided_grammar":" ""#), &["guided_grammar"]),
            (
                chat(r#""response_format":{"type":"json_object"},"guided_regex":"a""#),
                &["\"response_format\" and \"guided_regex\""],
            ),
            (
                chat(r#""guided_choice":["a"],"guided_json":{}"#),
                &["\"guided_json\" and \"guided_choice\""],
            ),
            (
                chat(r#""guided_decoding_backend":"xgrammar""#),
                &["guided_decoding_backend"],
            ),
        ] {
            let m = refused(&body);
            for n in needles {
                assert!(m.contains(n), "{body}: {m} lacks {n}");
            }
        }
    }

    #[test]
    fn n_best_of_echo_and_logit_bias() {
        let r = parse_openai(r#"{"prompt":"a","n":3,"seed":1}"#, "b").unwrap();
        assert_eq!((r.request.n, r.request.best_of), (3, None));
        let r = parse_openai(
            r#"{"messages":[{"role":"user","content":"x"}],"n":64}"#,
            "b",
        );
        assert_eq!(r.unwrap().request.n, 64);
        let r = parse_openai(r#"{"prompt":"a","best_of":3}"#, "b").unwrap();
        assert_eq!((r.request.n, r.request.best_of), (1, Some(3)));
        assert_eq!(r.request.num_sequences(), 3);
        let r = parse_openai(r#"{"prompt":"a","n":2,"best_of":2,"stream":true}"#, "b").unwrap();
        assert_eq!((r.request.n, r.request.best_of), (2, None));
        for (body, needle) in [
            (r#"{"prompt":"a","n":3,"best_of":2}"#, "\"best_of\" = 2"),
            (r#"{"prompt":"a","best_of":65}"#, "\"best_of\" = 65"),
            (r#"{"prompt":"a","best_of":0}"#, "\"best_of\" = 0"),
            (r#"{"prompt":"a","best_of":3,"stream":true}"#, "streamed"),
            (r#"{"prompt":"a","n":-1}"#, "\"n\""),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"best_of":2}"#,
                "\"best_of\"",
            ),
            (
                r#"{"prompt":"a","logit_bias":{"abc":1}}"#,
                "key \"abc\" is not a token id",
            ),
            (r#"{"prompt":"a","logit_bias":{"-1":1}}"#, "key \"-1\""),
            (r#"{"prompt":"a","logit_bias":{"+1":1}}"#, "key \"+1\""),
            (r#"{"prompt":"a","logit_bias":{"5":"x"}}"#, "logit_bias.5"),
            (r#"{"prompt":"a","logit_bias":{"5":101}}"#, "logit_bias[5]"),
            (
                r#"{"prompt":"a","logit_bias":{"5":-100.5}}"#,
                "logit_bias[5]",
            ),
            (r#"{"prompt":"a","logit_bias":[1]}"#, "logit_bias"),
            (
                r#"{"prompt":"a","tools":[{"type":"function"}]}"#,
                "\"tools\"",
            ),
            (r#"{"prompt":"a","suffix":"x"}"#, "\"suffix\""),
        ] {
            let m = refused(body);
            assert!(m.contains(needle), "{body}: {m}");
        }
        let r = parse_openai(
            r#"{"prompt":"a","logit_bias":{"7":100,"3":-100,"12":0.5}}"#,
            "b",
        )
        .unwrap();
        assert_eq!(
            r.request.sampling.logit_bias,
            vec![(3, -100.0), (7, 100.0), (12, 0.5)]
        );
        let r = parse_openai(r#"{"prompt":"a","echo":true,"logprobs":2}"#, "b").unwrap();
        assert!(r.request.echo);
        assert_eq!(r.request.sampling.prompt_logprobs, Some(2));
        assert!(ResponseShape::of(&r, 0).echo);
        let r = parse_openai(r#"{"prompt":"a","echo":true}"#, "b").unwrap();
        assert!(r.request.echo);
        assert_eq!(r.request.sampling.prompt_logprobs, None);
        let r = parse_openai(r#"{"prompt":"a","return_tokens_as_token_ids":true}"#, "b").unwrap();
        assert!(r.return_tokens_as_token_ids);
        assert!(ResponseShape::of(&r, 0).tokens_as_ids);
    }

    /// A finished choice `index` of request 7 with `text` and two tokens.
    fn choice(index: usize, text: &str, completion_tokens: usize) -> Output {
        let mut o = sample_output(true);
        o.index = index;
        o.text = text.into();
        o.usage.completion_tokens = completion_tokens;
        o.done = false;
        o
    }

    #[test]
    fn several_choices_render_with_their_indices_and_summed_usage() {
        for kind_body in [
            r#"{"prompt":"p","n":3}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"n":3}"#,
        ] {
            let r = parse_openai(kind_body, "base").unwrap();
            let shape = ResponseShape::of(&r, 1);
            let mut outs = vec![choice(0, "a", 2), choice(1, "b", 4), choice(2, "c", 1)];
            outs[2].done = true;
            let v = completion_json(&outs, &shape, None);
            assert_eq!(v["choices"].as_array().unwrap().len(), 3, "{v}");
            for (i, want) in ["a", "b", "c"].iter().enumerate() {
                let c = &v["choices"][i];
                assert_eq!(c["index"], i, "{v}");
                let text = if r.kind == ApiKind::Chat {
                    &c["message"]["content"]
                } else {
                    &c["text"]
                };
                assert_eq!(text, want, "{v}");
            }
            assert_eq!(v["usage"]["prompt_tokens"], 3, "{v}");
            assert_eq!(v["usage"]["completion_tokens"], 7, "{v}");
            assert_eq!(v["usage"]["total_tokens"], 10, "{v}");
            assert!(v["choices"][0]["logprobs"].is_null(), "{v}");
        }
    }

    #[test]
    fn streamed_choices_interleave_with_roles_and_one_usage_chunk() {
        let body = r#"{"messages":[{"role":"user","content":"x"}],"n":2,"stream":true,
                       "stream_options":{"include_usage":true}}"#;
        let r = parse_openai(body, "base").unwrap();
        let shape = ResponseShape::of(&r, 1);
        let mut t = StreamTracker::new();
        let delta = |index: usize, text: &str, tokens: usize, finish: bool, done: bool| {
            let mut o = Output::new(
                7,
                Usage {
                    prompt_tokens: 3,
                    completion_tokens: tokens,
                },
            );
            o.index = index;
            o.text = text.into();
            o.token_ids = vec![1; text.len()];
            o.finish_reason = finish.then_some(FinishReason::Stop);
            o.done = done;
            o
        };
        let seq = [
            delta(0, "a", 1, false, false),
            delta(1, "b", 1, false, false),
            delta(0, "c", 2, true, false),
            delta(1, "de", 3, true, true),
        ];
        let mut roles = Vec::new();
        let mut usage_chunks = Vec::new();
        for o in &seq {
            let pos = t.advance(o, &shape);
            let v = chunk_json(o, pos, &shape, None);
            assert_eq!(v["object"], "chat.completion.chunk");
            assert_eq!(v["choices"][0]["index"], o.index, "{v}");
            assert!(v["usage"].is_null() && v.get("usage").is_some(), "{v}");
            roles.push(v["choices"][0]["delta"]["role"] == "assistant");
            if let Some(u) = usage_chunk_json(o, t.usage(), &shape) {
                usage_chunks.push(u);
            }
        }
        assert_eq!(roles, vec![true, true, false, false]);
        assert_eq!(usage_chunks.len(), 1);
        assert_eq!(usage_chunks[0]["usage"]["completion_tokens"], 5);
        assert_eq!(usage_chunks[0]["usage"]["prompt_tokens"], 3);
        assert_eq!(usage_chunks[0]["choices"], json!([]));
    }

    #[test]
    fn echo_prepends_the_prompt_and_its_logprobs() {
        let prompt = PromptOutput {
            text: "Hi you".into(),
            token_ids: vec![10, 11],
            logprobs: vec![TokenLogprob {
                token: 11,
                logprob: -1.5,
                top: vec![(12, -0.5), (11, -1.5)],
            }],
        };
        let mut out = sample_output(true);
        out.prompt = Some(prompt.clone());
        // echo + logprobs, not streamed.
        let r = parse_openai(r#"{"prompt":"Hi you","echo":true,"logprobs":2}"#, "b").unwrap();
        let shape = ResponseShape::of(&r, 0);
        let v = completion_json(std::slice::from_ref(&out), &shape, None);
        let c = &v["choices"][0];
        assert_eq!(c["text"], "Hi youhi", "{v}");
        let lp = &c["logprobs"];
        assert_eq!(
            lp["tokens"],
            json!(["token_id:10", "token_id:11", "token_id:104", "token_id:105"])
        );
        assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null());
        assert_eq!(lp["token_logprobs"][1], -1.5);
        assert_eq!(lp["top_logprobs"][1]["token_id:12"], -0.5);
        assert_eq!(lp["token_logprobs"][3], -0.25);
        assert_eq!(lp["text_offset"], json!([0, 11, 22, 34]));
        // echo without logprobs: the text only.
        let r = parse_openai(r#"{"prompt":"Hi you","echo":true}"#, "b").unwrap();
        let shape = ResponseShape::of(&r, 0);
        let v = completion_json(std::slice::from_ref(&out), &shape, None);
        assert_eq!(v["choices"][0]["text"], "Hi youhi");
        assert!(v["choices"][0]["logprobs"].is_null());
        // Streamed: the prompt starts the first chunk; later offsets continue after it.
        let r = parse_openai(
            r#"{"prompt":"Hi you","echo":true,"logprobs":0,"stream":true}"#,
            "b",
        )
        .unwrap();
        let shape = ResponseShape::of(&r, 0);
        let mut t = StreamTracker::new();
        let mut first = sample_output(false);
        first.prompt = Some(prompt);
        let pos = t.advance(&first, &shape);
        let v = chunk_json(&first, pos, &shape, None);
        assert_eq!(v["choices"][0]["text"], "Hi youhi");
        assert_eq!(v["choices"][0]["logprobs"]["tokens"][0], "token_id:10");
        let mut next = sample_output(true);
        next.text = "!".into();
        let pos = t.advance(&next, &shape);
        assert_eq!(pos.text_offset, "Hi youhi".len());
        let v = chunk_json(&next, pos, &shape, None);
        assert_eq!(v["choices"][0]["text"], "!");
        assert_eq!(v["choices"][0]["logprobs"]["text_offset"][0], 8);
        // Without echo a prompt carried by the output (prompt_logprobs) is not rendered.
        let r = parse_openai(r#"{"prompt":"Hi you","logprobs":1}"#, "b").unwrap();
        let v = completion_json(std::slice::from_ref(&out), &ResponseShape::of(&r, 0), None);
        assert_eq!(v["choices"][0]["text"], "hi");
        assert_eq!(
            v["choices"][0]["logprobs"]["tokens"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
}
