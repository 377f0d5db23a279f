//! Output constraints (`response_format`) in the engine: constrained and free rows of different
//! adapters in one batch, every row as it is alone, outputs that parse and validate, and invalid
//! formats refused at submission. The constraint compiler itself is tested in `constraints.rs`.

mod common;

use std::path::Path;

use loraplex::adapters::export::{export, ExportFormat};
use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, FinishReason, Output, Prompt, Request};
use loraplex::sampling::{ResponseFormat, SamplingParams};
use loraplex::ErrorCode;
use serde_json::{json, Value};

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
            "pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}},
                    "required": ["kind"], "additionalProperties": false}
        },
        "required": ["name", "age", "pet"],
        "additionalProperties": false
    })
}

fn validate(format: &ResponseFormat, text: &str) {
    match format {
        ResponseFormat::JsonSchema(s) => {
            let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(jsonschema::is_valid(s, &v), "{text} does not validate");
        }
        ResponseFormat::JsonObject => {
            let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(v.is_object(), "{text}");
        }
        ResponseFormat::Regex(r) => {
            let re = regex::Regex::new(&format!("^(?:{r})$")).unwrap();
            assert!(re.is_match(text), "{text:?} !~ {r}");
        }
        ResponseFormat::Choice(c) => assert!(c.iter().any(|x| x == text), "{text:?}"),
        _ => {}
    }
}

fn sampling(seed: u64, max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        temperature: 0.8,
        seed: Some(seed),
        logprobs: Some(1),
        ..SamplingParams::default()
    }
}

fn key(o: &Output) -> (Vec<u32>, Vec<u32>, String, Option<FinishReason>) {
    (
        o.token_ids.clone(),
        o.logprobs.iter().map(|l| l.logprob.to_bits()).collect(),
        o.text.clone(),
        o.finish_reason,
    )
}

fn tiny_with_adapters(dir: &Path) -> Engine {
    let model = dir.join("model");
    let peft = dir.join("loras");
    common::write_tiny_model(&model, common::TinySpec::default());
    let shape = common::tiny_shape(common::TinySpec::default());
    for (name, seed) in [("ad1", 3), ("ad2", 4)] {
        let a = common::random_adapter(&shape, [8; 7], seed, false, false);
        export(&a, &shape, ExportFormat::HfSafetensors, &peft.join(name)).unwrap();
    }
    let mut cfg = EngineConfig::new(&model);
    cfg.threads = 2;
    cfg.peft_source = vec![peft];
    Engine::new(cfg).unwrap()
}

#[test]
fn constrained_and_free_rows_of_different_adapters_share_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_with_adapters(dir.path());
    let formats = [
        (None, ResponseFormat::Text),
        (Some("ad1"), ResponseFormat::JsonSchema(schema())),
        (None, ResponseFormat::JsonSchema(schema())),
        (Some("ad2"), ResponseFormat::Text),
        (
            Some("ad2"),
            ResponseFormat::Regex("[0-9]{3}-[a-z]{2,4}".into()),
        ),
        (
            None,
            ResponseFormat::Choice(vec!["yes".into(), "no".into(), "maybe".into()]),
        ),
        (Some("ad1"), ResponseFormat::JsonObject),
    ];
    let make = |k: usize| {
        let (model, format) = &formats[k];
        Request {
            model: model.map(str::to_string),
            prompt: Prompt::Text(format!("request {k}: answer")),
            sampling: sampling(k as u64, 160),
            response_format: format.clone(),
            ..Request::default()
        }
    };
    let alone: Vec<Output> = (0..formats.len())
        .map(|k| engine.generate(make(k)).unwrap())
        .collect();
    // All at once: every run must give the alone results; how many rows share a step depends
    // on how fast the submissions arrive (the tiny model is quick), so run until a step held at
    // least 4 of them (the first run, unless the machine is very loaded).
    for attempt in 0..8 {
        let ids: Vec<_> = (0..formats.len())
            .map(|k| engine.submit(make(k)).unwrap())
            .collect();
        let together: Vec<Output> = ids.into_iter().map(|id| engine.wait(id).unwrap()).collect();
        for (k, (a, t)) in alone.iter().zip(&together).enumerate() {
            assert_eq!(
                key(a),
                key(t),
                "request {k} depends on its batch (run {attempt})"
            );
        }
        if engine.stats().max_step_seqs >= 4 {
            break;
        }
    }
    assert!(
        engine.stats().max_step_seqs >= 4,
        "the requests never shared steps"
    );
    for (k, a) in alone.iter().enumerate() {
        let format = &formats[k].1;
        // A random model writes JSON object keys of any length: json_object may run out of
        // tokens; the bounded formats always complete.
        if format.is_text()
            || (*format == ResponseFormat::JsonObject
                && a.finish_reason == Some(FinishReason::Length))
        {
            continue;
        }
        assert_eq!(
            a.finish_reason,
            Some(FinishReason::Stop),
            "request {k}: {:?}",
            a.text
        );
        validate(format, &a.text);
    }
}

#[test]
fn invalid_formats_are_refused_at_submission() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_with_adapters(dir.path());
    for (format, needle) in [
        (
            ResponseFormat::JsonSchema(json!({"type": "nonsense"})),
            "json_schema",
        ),
        (ResponseFormat::Regex("(unclosed".into()), "regex"),
        (ResponseFormat::Choice(vec![]), "choice"),
        (
            ResponseFormat::Grammar("start: undefined_rule".into()),
            "grammar",
        ),
    ] {
        let e = engine
            .submit(Request {
                prompt: Prompt::Text("x".into()),
                response_format: format.clone(),
                ..Request::default()
            })
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{format:?}: {e}");
        assert!(e.message().contains(needle), "{format:?}: {}", e.message());
    }
    let st = engine.stats();
    assert_eq!((st.running, st.waiting), (0, 0));
}

#[test]
fn smollm2_writes_schema_valid_json_greedy_sampled_and_in_several_choices() {
    let Some(gguf) = common::smollm2_gguf() else {
        return;
    };
    let mut cfg = EngineConfig::new(&gguf);
    cfg.threads = 2;
    let engine = Engine::new(cfg).unwrap();
    let chat = |q: &str| {
        Prompt::Chat(vec![loraplex::tokenizer::ChatMessage {
            role: "user".into(),
            content: q.into(),
        }])
    };
    let format = ResponseFormat::JsonSchema(schema());
    let greedy = engine
        .generate(Request {
            prompt: chat("Describe a person with a pet as JSON."),
            sampling: SamplingParams {
                max_tokens: 200,
                temperature: 0.0,
                ..SamplingParams::default()
            },
            response_format: format.clone(),
            ..Request::default()
        })
        .unwrap();
    eprintln!("greedy JSON: {}", greedy.text);
    assert_eq!(
        greedy.finish_reason,
        Some(FinishReason::Stop),
        "{:?}",
        greedy.text
    );
    validate(&format, &greedy.text);
    let outs = engine
        .generate_all(Request {
            prompt: chat("Give me a JSON object about a city."),
            sampling: sampling(5, 200),
            response_format: ResponseFormat::JsonObject,
            n: 3,
            ..Request::default()
        })
        .unwrap();
    for o in &outs {
        if o.finish_reason == Some(FinishReason::Stop) {
            validate(&ResponseFormat::JsonObject, &o.text);
        }
    }
    assert!(outs
        .iter()
        .any(|o| o.finish_reason == Some(FinishReason::Stop)));
}
