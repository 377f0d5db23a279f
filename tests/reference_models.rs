//! Real-model conformance (reads ../shared/fixtures and ../shared/reference; skips when absent):
//! tiny-llama (HF safetensors) must reproduce HuggingFace transformers' last-position logits
//! within 3e-4 x std of the row and the same 24 greedy tokens (except after a step whose
//! reference margin is below that tolerance); SmolLM2-135M-Instruct (GGUF, computed on its
//! Q4_1/Q8_0 blocks) within the activation-quantization bound of tests/quant_model.rs.
//! Weights stored in bf16 or quantized at load (q8_0, q4_k) get looser, measured tolerances.
//! The engine runs on `LORAPLEX_TEST_DEVICE` (default cpu; on cuda the bf16-KV bound applies,
//! see `common::device_rel_tol`).

mod common;

use std::path::Path;

use loraplex::backend::WeightFormat;
use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, Prompt, Request};
use loraplex::sampling::SamplingParams;
use ndarray::Array2;
use serde_json::Value;

fn check(model: &Path, reference: &Path, format: WeightFormat, rel_tol: f32) {
    let refj: Value = serde_json::from_str(&std::fs::read_to_string(reference).unwrap()).unwrap();
    let logits: Array2<f32> = ndarray_npy::read_npy(
        reference.parent().unwrap().join(
            refj["variants"]["__base__"]["logits_file"]
                .as_str()
                .unwrap(),
        ),
    )
    .unwrap();
    let mut cfg = EngineConfig::new(model);
    cfg.threads = 2;
    cfg.device = common::test_device();
    cfg.weight_format = format;
    let rel_tol = common::device_rel_tol(rel_tol);
    let engine = Engine::new(cfg).unwrap();
    let prompts = refj["prompts"].as_array().unwrap();
    let results = refj["variants"]["__base__"]["results"].as_array().unwrap();
    // Submit all prompts at once: they share batches, and must still match single-request HF.
    let ids: Vec<_> = prompts
        .iter()
        .map(|p| {
            let ids: Vec<u32> = p["token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let sp = SamplingParams {
                max_tokens: 24,
                temperature: 0.0,
                ignore_eos: true,
                return_last_logits: true,
                ..SamplingParams::default()
            };
            engine
                .submit(Request::new(Prompt::Tokens(ids), sp))
                .unwrap()
        })
        .collect();
    let mut failures = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let o = engine.wait(id).unwrap();
        let want = logits.row(i);
        failures.extend(common::check_against_reference(
            &format!("prompt {i}"),
            &o,
            want.as_slice().unwrap(),
            &results[i],
            rel_tol,
        ));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn tiny_llama_hf_matches_transformers() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let fx = shared.join("fixtures/tiny-llama");
    check(
        &fx.join("model"),
        &fx.join("reference.json"),
        WeightFormat::F32,
        3e-4,
    );
}

/// SmolLM2's GGUF runs on its quantized blocks with 8-bit activations (issue 9), so
/// its logits are within the activation-quantization bound of tests/quant_model.rs (0.5 x std),
/// not the f32 3e-4; the dequantized f32 path keeps its 3e-4 check in tests/lora_model.rs. The
/// weight format (F32/BF16) does not apply to quantized tensors, so one run covers both.
#[test]
fn smollm2_gguf_matches_transformers() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let Some(gguf) = common::smollm2_gguf() else {
        return;
    };
    check(
        &gguf,
        &shared.join("reference/smollm2-135m-instruct/reference.json"),
        WeightFormat::BF16,
        0.5,
    );
}

#[test]
fn tiny_llama_quantized_at_load_stays_close() {
    // Against transformers on the f32 weights, so the bound is the weights' quantization error
    // on this model (the exact checks against transformers on the same quantized file are in
    // tests/quantized_models.rs). Q8_0 weights (relative error ~2^-8) moved these logits by up
    // to 4.7e-2 x std (measured): tolerance 8e-2. Under q4_k tiny-llama's 64 columns are not a
    // 256-block, so its matrices take llama.cpp's Q5_0 fallback (~2^-5; the head Q8_0, the
    // 176-column down_proj stays f32): measured up to 0.53 x std, tolerance 0.8. Tokens must
    // agree except after a step whose margin is below the tolerance.
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let fx = shared.join("fixtures/tiny-llama");
    for (format, tol) in [(WeightFormat::Q8_0, 8e-2), (WeightFormat::Q4K, 0.8)] {
        check(&fx.join("model"), &fx.join("reference.json"), format, tol);
    }
}
