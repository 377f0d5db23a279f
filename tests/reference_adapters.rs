//! Adapters against HuggingFace PEFT (reads ../shared; skips when absent): every tiny-llama
//! variant (HF safetensors/.bin, rsLoRA, rank/alpha patterns, rank 64) and every NeMo/TRT-LLM
//! format fixture, plus SmolLM2 with hf-qv-r16-bin, must reproduce PEFT's last-position logits
//! within 3e-4 x std and its greedy tokens; the reference mixed batch (8 rows over base and all
//! adapters) runs concurrently and must equal PEFT's rows. The engine runs on
//! `LORAPLEX_TEST_DEVICE` (default cpu; on cuda the bf16-KV bound applies, see
//! `common::device_rel_tol`).

mod common;

use std::path::{Path, PathBuf};

use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, Prompt, Request};
use loraplex::sampling::SamplingParams;
use ndarray::Array2;
use serde_json::Value;

fn greedy() -> SamplingParams {
    SamplingParams {
        max_tokens: 24,
        temperature: 0.0,
        ignore_eos: true,
        return_last_logits: true,
        ..SamplingParams::default()
    }
}

fn engine(model: &Path, peft: &[PathBuf]) -> Engine {
    let mut cfg = EngineConfig::new(model);
    cfg.threads = 2;
    cfg.device = common::test_device();
    cfg.peft_source = peft.to_vec();
    cfg.max_lora_rank = 64;
    cfg.max_gpu_loras = 8;
    cfg.max_cpu_loras = 16;
    Engine::new(cfg).unwrap()
}

/// Runs every variant of `reference` except the base (all prompts of all variants submitted at
/// once, so adapters share batches) and compares. Returns failures.
fn check_variants(e: &Engine, reference: &Path, rel_tol: f32) -> Vec<String> {
    let rel_tol = common::device_rel_tol(rel_tol);
    let refj: Value = serde_json::from_str(&std::fs::read_to_string(reference).unwrap()).unwrap();
    let prompts = refj["prompts"].as_array().unwrap();
    let variants = refj["variants"].as_object().unwrap();
    let mut jobs = Vec::new();
    for (name, v) in variants {
        if name == "__base__" {
            continue;
        }
        for (p, prompt) in prompts.iter().enumerate() {
            let r = Request {
                model: Some(name.clone()),
                prompt: Prompt::Tokens(common::token_ids(&prompt["token_ids"])),
                sampling: greedy(),
                ..Request::default()
            };
            jobs.push((name.clone(), p, v.clone(), e.submit(r).unwrap()));
        }
    }
    let mut failures = Vec::new();
    for (name, p, v, id) in jobs {
        let o = match e.wait(id) {
            Ok(o) => o,
            Err(err) => {
                failures.push(format!("{name} prompt {p}: {err}"));
                continue;
            }
        };
        let logits: Array2<f32> = ndarray_npy::read_npy(
            reference
                .parent()
                .unwrap()
                .join(v["logits_file"].as_str().unwrap()),
        )
        .unwrap();
        let want = logits.row(p);
        failures.extend(common::check_against_reference(
            &format!("{name} prompt {p}"),
            &o,
            want.as_slice().unwrap(),
            &v["results"][p],
            rel_tol,
        ));
    }
    failures
}

#[test]
fn tiny_llama_hf_adapters_and_mixed_batch_match_peft() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let fx = shared.join("fixtures/tiny-llama");
    let e = engine(&fx.join("model"), &[fx.join("adapters")]);
    let mut failures = check_variants(&e, &fx.join("reference.json"), 3e-4);
    // The refused fixtures are refused with a message naming the field.
    for (bad, word) in [("bad-dora", "dora"), ("bad-embed", "embed")] {
        let r = Request {
            model: Some(bad.into()),
            prompt: Prompt::Tokens(vec![1, 2, 3]),
            sampling: greedy(),
            ..Request::default()
        };
        match e.submit(r).and_then(|id| e.wait(id)) {
            Ok(_) => failures.push(format!("{bad} was served")),
            Err(err) => assert!(
                err.message().to_lowercase().contains(word),
                "{bad}: {}",
                err.message()
            ),
        }
    }
    // The reference mixed batch: 8 rows, each a different adapter or base, submitted together.
    let refj: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("reference.json")).unwrap()).unwrap();
    let prompts = refj["prompts"].as_array().unwrap();
    let rows = refj["mixed_batch"]["rows"].as_array().unwrap();
    let submitted: Vec<_> = rows
        .iter()
        .map(|r| {
            let adapter = r["adapter"].as_str().unwrap();
            let p = r["prompt"].as_u64().unwrap() as usize;
            let model = (adapter != "__base__").then(|| adapter.to_string());
            e.submit(Request {
                model,
                prompt: Prompt::Tokens(common::token_ids(&prompts[p]["token_ids"])),
                sampling: greedy(),
                ..Request::default()
            })
            .unwrap()
        })
        .collect();
    for (r, id) in rows.iter().zip(submitted) {
        let o = e.wait(id).unwrap();
        let adapter = r["adapter"].as_str().unwrap();
        let p = r["prompt"].as_u64().unwrap() as usize;
        let single = &refj["variants"][adapter]["results"][p];
        let margins: Vec<f32> = single["step_top1_minus_top2"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        if let Err(m) = common::tokens_match(
            &o.token_ids,
            &common::token_ids(&r["new_token_ids"]),
            &margins,
            common::device_rel_tol(1e-4),
        ) {
            failures.push(format!("mixed row {} ({adapter}): {m}", r["row"]));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn tiny_llama_nemo_and_trtllm_formats_match_peft() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let fx = shared.join("fixtures/tiny-llama");
    let e = engine(&fx.join("model"), &[fx.join("adapters-formats")]);
    let failures = check_variants(&e, &fx.join("reference-formats.json"), 3e-4);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn smollm2_gguf_with_hf_bin_adapter_matches_peft() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let Some(gguf) = common::smollm2_gguf() else {
        return;
    };
    let r = shared.join("reference/smollm2-135m-instruct");
    let e = engine(&gguf, &[r.join("adapters")]);
    // Computed on the GGUF's quantized blocks: the activation-quantization bound of
    // tests/quant_model.rs (0.5 x std) instead of f32's 3e-4.
    let failures = check_variants(&e, &r.join("reference.json"), 0.5);
    assert!(failures.is_empty(), "{failures:#?}");
}
