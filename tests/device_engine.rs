//! CPU = device: the same requests (base model and adapters, submitted together so they share
//! batches) on an engine on "cpu" and one on `LORAPLEX_TEST_DEVICE` give logits within the bf16
//! bound (`common::BF16_REL_TOL` × the row's std: a CUDA backend keeps K/V in bf16) and the same
//! greedy tokens, except after a step whose CPU top-1/top-2 margin is below that bound. Logits
//! are compared teacher-forced: for every step k of the CPU's greedy continuation, the context
//! `prompt + cpu_tokens[..k]` runs on both engines with one new token. Skipped when the test
//! device is the CPU (nothing to compare). Models: a generated tiny Llama with three generated
//! rank-8 adapters, and the tiny-llama fixture with its PEFT adapters (../shared; skipped when
//! absent, failing under CI).

mod common;

use std::path::{Path, PathBuf};

use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, Prompt, Request};
use loraplex::sampling::SamplingParams;

const STEPS: usize = 12;

fn engine(model: &Path, peft: &[PathBuf], device: &str) -> Engine {
    let mut cfg = EngineConfig::new(model);
    cfg.threads = 2;
    cfg.device = device.into();
    cfg.peft_source = peft.to_vec();
    cfg.max_lora_rank = 64;
    cfg.max_gpu_loras = 8;
    cfg.max_cpu_loras = 16;
    Engine::new(cfg).unwrap_or_else(|e| panic!("engine on {device}: {e}"))
}

fn params(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        temperature: 0.0,
        ignore_eos: true,
        return_last_logits: true,
        ..SamplingParams::default()
    }
}

/// Submits every `(adapter, tokens, max_tokens)` at once and waits for all: (tokens, last logits).
fn run_all(e: &Engine, jobs: &[(Option<String>, Vec<u32>, usize)]) -> Vec<(Vec<u32>, Vec<f32>)> {
    let ids: Vec<_> = jobs
        .iter()
        .map(|(model, toks, n)| {
            e.submit(Request {
                model: model.clone(),
                prompt: Prompt::Tokens(toks.clone()),
                sampling: params(*n),
                ..Request::default()
            })
            .unwrap()
        })
        .collect();
    ids.into_iter()
        .map(|id| {
            let o = e.wait(id).unwrap();
            (o.token_ids, o.last_logits.expect("last logits requested"))
        })
        .collect()
}

/// top-1 minus top-2 of a logits row.
fn margin(row: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in row {
        if v > a {
            b = a;
            a = v;
        } else if v > b {
            b = v;
        }
    }
    a - b
}

/// Runs `prompts` × `adapters` (None = base) on both engines; returns the failures.
fn compare(
    label: &str,
    cpu: &Engine,
    gpu: &Engine,
    adapters: &[Option<String>],
    prompts: &[Vec<u32>],
) -> Vec<String> {
    let free: Vec<_> = adapters
        .iter()
        .flat_map(|a| prompts.iter().map(move |p| (a.clone(), p.clone(), STEPS)))
        .collect();
    let on_cpu = run_all(cpu, &free);
    let on_gpu = run_all(gpu, &free);
    // Teacher-forced contexts along the CPU's continuation.
    let forced: Vec<_> = free
        .iter()
        .zip(&on_cpu)
        .flat_map(|((a, p, _), (toks, _))| {
            (0..STEPS).map(move |k| {
                let mut ctx = p.clone();
                ctx.extend_from_slice(&toks[..k]);
                (a.clone(), ctx, 1)
            })
        })
        .collect();
    let f_cpu = run_all(cpu, &forced);
    let f_gpu = run_all(gpu, &forced);
    let mut failures = Vec::new();
    let mut worst = 0f32;
    for (j, (a, _, _)) in free.iter().enumerate() {
        let name = a.as_deref().unwrap_or("base");
        let mut margins = Vec::new();
        for k in 0..STEPS {
            let (c, g) = (&f_cpu[j * STEPS + k].1, &f_gpu[j * STEPS + k].1);
            let d = common::max_rel_diff(g, c);
            worst = worst.max(d);
            if d > common::BF16_REL_TOL {
                failures.push(format!(
                    "{label} {name} request {j} step {k}: logits max|diff| {d:.3e} x std > {:.3e}",
                    common::BF16_REL_TOL
                ));
            }
            margins.push(margin(c) / common::std_dev(c));
        }
        // Margins in units of the row's std, like the tolerance.
        if let Err(m) =
            common::tokens_match(&on_gpu[j].0, &on_cpu[j].0, &margins, common::BF16_REL_TOL)
        {
            failures.push(format!("{label} {name} request {j}: {m}"));
        }
    }
    println!(
        "{label}: worst logits max|diff| {worst:.3e} x std over {} rows",
        forced.len()
    );
    failures
}

#[test]
fn device_matches_cpu_on_tiny_models() {
    let device = common::test_device();
    if device == "cpu" {
        eprintln!("skipping: LORAPLEX_TEST_DEVICE is cpu (nothing to compare)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c"];
    let (model, peft) = common::tiny_model_with_adapters(dir.path(), &names, 70);
    let prompts: Vec<Vec<u32>> = (0..3)
        .map(|i| {
            (0..(5 + 17 * i))
                .map(|k| ((k * 37 + i * 11) % 256) as u32)
                .collect()
        })
        .collect();
    let mut adapters: Vec<Option<String>> = vec![None];
    adapters.extend(names.iter().map(|n| Some(n.to_string())));
    let peft = [peft];
    let cpu = engine(&model, &peft, "cpu");
    let gpu = engine(&model, &peft, &device);
    let mut failures = compare("generated", &cpu, &gpu, &adapters, &prompts);
    drop((cpu, gpu));

    if let Some(shared) = common::shared_dir() {
        let fx = shared.join("fixtures/tiny-llama");
        let refj: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fx.join("reference.json")).unwrap())
                .unwrap();
        let prompts: Vec<Vec<u32>> = refj["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| common::token_ids(&p["token_ids"]))
            .collect();
        let mut adapters: Vec<Option<String>> = vec![None];
        adapters.extend(
            refj["variants"]
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "__base__")
                .map(|k| Some(k.clone())),
        );
        let peft = [fx.join("adapters")];
        let cpu = engine(&fx.join("model"), &peft, "cpu");
        let gpu = engine(&fx.join("model"), &peft, &device);
        failures.extend(compare("tiny-llama", &cpu, &gpu, &adapters, &prompts));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
