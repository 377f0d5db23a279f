//! The `structured` section: the cost of output constraints. A batch of 8 greedy requests on
//! `--model`, decoding the same number of tokens with and without a JSON-schema constraint
//! (a schema they cannot complete in that many tokens, so every row decodes all of them),
//! interleaved rounds, medians and their ratio.

use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, Request};
use loraplex::sampling::ResponseFormat;
use serde_json::{json, Value};

use crate::comparison::median;
use crate::measure::{decode_tps_requests, params, prompt};

/// A realistic schema (objects, arrays, integers, bounded strings, an enum) whose shortest
/// valid output is far longer than a bench decode: at least 200 items.
fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "minItems": 200,
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer", "minimum": 0},
                        "name": {"type": "string", "maxLength": 12},
                        "kind": {"enum": ["book", "film", "song"]}
                    },
                    "required": ["id", "name", "kind"],
                    "additionalProperties": false
                }
            }
        },
        "required": ["items"],
        "additionalProperties": false
    })
}

/// Runs the section: `rounds` interleaved rounds of free then constrained decoding.
pub fn run(
    model: &str,
    threads: usize,
    n: usize,
    rounds: usize,
) -> Result<Value, Box<dyn std::error::Error>> {
    const BATCH: usize = 8;
    let mut cfg = EngineConfig::new(model);
    cfg.threads = threads;
    let engine = Engine::new(cfg)?;
    let requests = |format: &ResponseFormat| -> Vec<Request> {
        (0..BATCH)
            .map(|i| Request {
                prompt: loraplex::engine::Prompt::Tokens(prompt(16, i)),
                sampling: params(n),
                response_format: format.clone(),
                ..Request::default()
            })
            .collect()
    };
    let constrained = ResponseFormat::JsonSchema(schema());
    // Warm-up (builds the constraint compiler), and a check that a constrained row decodes all
    // its tokens under the constraint rather than ending early.
    let sample = engine.generate(requests(&constrained).swap_remove(0))?;
    if sample.token_ids.len() != n || !sample.text.starts_with("{\"items\":[") {
        return Err(format!(
            "structured: a constrained row ended after {} of {n} tokens ({:?}): {:?}",
            sample.token_ids.len(),
            sample.finish_reason,
            sample.text
        )
        .into());
    }
    decode_tps_requests(&engine, requests(&constrained))?;
    let (mut free, mut json_tps) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        free.push(decode_tps_requests(
            &engine,
            requests(&ResponseFormat::Text),
        )?);
        json_tps.push(decode_tps_requests(&engine, requests(&constrained))?);
    }
    let (f, j) = (
        median(&free).unwrap_or(0.0),
        median(&json_tps).unwrap_or(0.0),
    );
    eprintln!(
        "structured: batch {BATCH} decode {f:.1} tok/s free, {j:.1} tok/s with a JSON schema ({:.2}x)",
        j / f
    );
    Ok(json!({
        "model": model,
        "batch": BATCH,
        "decode_tokens_per_request": n,
        "free_decode_tok_s": free,
        "json_schema_decode_tok_s": json_tps,
        "median_free_tok_s": f,
        "median_json_schema_tok_s": j,
        "json_schema_vs_free": j / f,
        "target": 0.9,
        "sample_constrained_output": sample.text,
        "note": "same prompts, greedy, every row decodes all its tokens (the schema needs at least 200 array items); masks are computed on another thread during the forward pass",
    }))
}
