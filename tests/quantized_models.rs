//! Whole-model conformance of quantized GGUFs (reads ../shared and models/; skips when absent,
//! fails under CI): SmolLM2-135M-Instruct re-quantized in process by loraplex's quantizer to
//! Q8_0, Q4_0, Q4_K_M, Q5_K_M and Q6_K (`model::gguf::requantize`), loaded with its weights kept
//! quantized, against HuggingFace transformers loading the very same file (which expands every
//! tensor to float32): `tests/fixtures/quant-models/<scheme>.json`, written by
//! `scripts/quant-model-reference.py`. The file's sha256 must equal the fixture's, so a change to
//! the quantizer cannot silently compare against stale numbers.
//!
//! Every scheme runs base and `hf-qv-r16-bin` rows for the 5 reference prompts in one mixed batch.
//!
//! Tolerance. loraplex quantizes activations per 32-element block to int8 before the integer dot
//! products (round to nearest, scale amax/127: at most amax/254 per element; the per-matmul
//! bound |x|∞/254 · Σ|w| is derived and tested in tests/quant_ops.rs), while transformers
//! multiplies the same weights in float32. How that error compounds over 30 layers has no
//! closed form here, and SmolLM2's activations carry large outliers inside a block (which is
//! what sets the step), so the whole-model bound is calibrated, as in tests/quant_model.rs:
//! [`REL_TOL`] = 0.5 × std of the reference row on the reference's top 32 last-position logits
//! (measured worst over 5 schemes × 10 rows: 0.41 × std, Q8_0 base prompt 3), and greedy tokens
//! equal except after a step whose reference margin is below that bound. With the weights
//! expanded to f32 the same files match to 4e-5 absolute (the oracle itself is exact).

mod common;

use std::path::Path;

use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, Prompt, Request};
use loraplex::model::gguf::requantize::{requantize_gguf, QuantScheme};
use loraplex::sampling::SamplingParams;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Logit tolerance as a fraction of the reference row's standard deviation (see module docs).
const REL_TOL: f32 = 0.5;

fn fixture(scheme: QuantScheme) -> Option<Value> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/quant-models")
        .join(format!("{}.json", scheme.name()));
    let Ok(text) = std::fs::read_to_string(&p) else {
        return common::missing(format!(
            "{} (run scripts/quant-model-reference.py)",
            p.display()
        ));
    };
    Some(serde_json::from_str(&text).unwrap())
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Runs one scheme; returns failures.
fn check_scheme(scheme: QuantScheme, r: &common::Smollm2Reference, dir: &Path) -> Vec<String> {
    let Some(fx) = fixture(scheme) else {
        return Vec::new();
    };
    let gguf = dir.join(format!("smollm2.{}.gguf", scheme.name()));
    let written = requantize_gguf(&r.gguf, &gguf, scheme).unwrap();
    assert_eq!(
        sha256(&gguf),
        fx["gguf_sha256"].as_str().unwrap(),
        "{}: the quantizer's output changed; rerun scripts/quant-model-reference.py",
        scheme.name()
    );
    let prompts = &r.json;
    let mut cfg = EngineConfig::new(&gguf);
    cfg.threads = 2;
    cfg.peft_source = vec![r.dir.join("adapters")];
    cfg.max_lora_rank = 16;
    let e = Engine::new(cfg).unwrap();
    let stats = e.stats_json();
    // Weights stay in the file's blocks: resident matrix bytes are the file's tensor bytes less
    // the f32 norms (which live in activation-sized buffers).
    let resident = stats["memory"]["weights_bytes"].as_u64().unwrap();
    println!(
        "{}: weights {resident} B, file tensors {} B",
        scheme.name(),
        written.tensor_bytes
    );
    assert!(
        resident <= written.tensor_bytes && resident * 100 >= written.tensor_bytes * 99,
        "{}: resident weights {resident} B vs file tensors {} B",
        scheme.name(),
        written.tensor_bytes
    );
    let mut jobs = Vec::new();
    for (variant, results) in fx["variants"].as_object().unwrap() {
        for res in results.as_array().unwrap() {
            let p = res["prompt"].as_u64().unwrap() as usize;
            let req = Request {
                model: (variant != "__base__").then(|| variant.clone()),
                prompt: Prompt::Tokens(common::token_ids(&prompts["prompts"][p]["token_ids"])),
                sampling: SamplingParams {
                    max_tokens: 24,
                    temperature: 0.0,
                    ignore_eos: true,
                    return_last_logits: true,
                    ..SamplingParams::default()
                },
                ..Request::default()
            };
            jobs.push((
                format!("{} {variant} prompt {p}", scheme.name()),
                res,
                e.submit(req).unwrap(),
            ));
        }
    }
    let mut failures = Vec::new();
    for (label, res, id) in jobs {
        let out = e.wait(id).unwrap();
        let tol = REL_TOL * res["last_logits_std"].as_f64().unwrap() as f32;
        let got = out.last_logits.as_ref().expect("logits requested");
        let mut worst = 0f32;
        for pair in res["last_logits_top32"].as_array().unwrap() {
            let (i, v) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap() as f32,
            );
            worst = worst.max((got[i] - v).abs());
        }
        println!("{label}: top-32 logits max|diff| {worst:.3e} (tol {tol:.3e})");
        if worst > tol {
            failures.push(format!("{label}: logits max|diff| {worst:.3e} > {tol:.3e}"));
        }
        let margins = floats(&res["step_top1_minus_top2"]);
        if let Err(m) = common::tokens_match(
            &out.token_ids,
            &common::token_ids(&res["new_token_ids"]),
            &margins,
            tol,
        ) {
            failures.push(format!("{label}: {m}"));
        }
    }
    failures
}

#[test]
fn smollm2_requantized_matches_transformers_on_the_same_files() {
    let Some(r) = common::smollm2_reference() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for scheme in QuantScheme::ALL {
        failures.extend(check_scheme(scheme, &r, dir.path()));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
