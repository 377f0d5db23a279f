//! Runs a reference's prompts through the engine and writes a candidate for
//! `../shared/reference/compare.py`.
//!
//! ```text
//! reference_check --model <dir|file.gguf> --reference <reference.json> [--adapters <dir>]
//!                 --out <candidate.json> [--weights f32|bf16|q8_0|q4_k] [--threads N]
//! ```
//! Every prompt's `token_ids` is run greedily for as many tokens as the reference has (24), EOS
//! ignored, for the base model and every variant whose adapter directory is in `--adapters`
//! (refused adapters are recorded under `refused` with their error); logits of the last prompt
//! position go to `<out stem>.<variant>.npy`.
//! When the reference has a `mixed_batch`, its rows are submitted together so they share batches.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, Prompt, Request};
use loraplex::sampling::SamplingParams;
use serde_json::{json, Value};

struct Args {
    model: PathBuf,
    reference: PathBuf,
    adapters: Option<PathBuf>,
    out: PathBuf,
    weights: String,
    threads: usize,
    max_lora_rank: usize,
    max_gpu_loras: usize,
    max_cpu_loras: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut model, mut reference, mut adapters, mut out) = (None, None, None, None);
    let (mut weights, mut threads) = ("f32".to_string(), 0usize);
    let (mut max_lora_rank, mut max_gpu_loras, mut max_cpu_loras) = (64usize, 8usize, 16usize);
    let num = |v: String, flag: &str| {
        v.parse::<usize>()
            .map_err(|_| format!("{flag} needs a number"))
    };
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = Some(PathBuf::from(val()?)),
            "--reference" => reference = Some(PathBuf::from(val()?)),
            "--adapters" => adapters = Some(PathBuf::from(val()?)),
            "--out" => out = Some(PathBuf::from(val()?)),
            "--weights" => weights = val()?,
            "--threads" => threads = num(val()?, "--threads")?,
            "--max-lora-rank" => max_lora_rank = num(val()?, "--max-lora-rank")?,
            "--max-gpu-loras" => max_gpu_loras = num(val()?, "--max-gpu-loras")?,
            "--max-cpu-loras" => max_cpu_loras = num(val()?, "--max-cpu-loras")?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        model: model.ok_or("--model is required")?,
        reference: reference.ok_or("--reference is required")?,
        adapters,
        out: out.ok_or("--out is required")?,
        weights,
        threads,
        max_lora_rank,
        max_gpu_loras,
        max_cpu_loras,
    })
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams {
        max_tokens: n,
        temperature: 0.0,
        ignore_eos: true,
        return_last_logits: true,
        ..SamplingParams::default()
    }
}

fn token_ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

fn write_npy(path: &Path, rows: &[Vec<f32>]) -> Result<(), String> {
    let vocab = rows.first().map(|r| r.len()).unwrap_or(0);
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    let arr =
        ndarray::Array2::from_shape_vec((rows.len(), vocab), flat).map_err(|e| e.to_string())?;
    ndarray_npy::write_npy(path, &arr).map_err(|e| format!("{}: {e}", path.display()))
}

fn run(args: Args) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.reference)
        .map_err(|e| format!("{}: {e}", args.reference.display()))?;
    let reference: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", args.reference.display()))?;
    let mut cfg = EngineConfig::new(&args.model);
    cfg.threads = args.threads;
    cfg.weight_format = loraplex::backend::WeightFormat::parse(&args.weights)
        .ok_or_else(|| format!("--weights {}: not f32, bf16, q8_0 or q4_k", args.weights))?;
    if let Some(a) = &args.adapters {
        cfg.peft_source = vec![a.clone()];
    }
    cfg.max_lora_rank = args.max_lora_rank;
    cfg.max_gpu_loras = args.max_gpu_loras;
    cfg.max_cpu_loras = args.max_cpu_loras.max(args.max_gpu_loras);
    let engine = Engine::new(cfg).map_err(|e| e.to_string())?;
    let prompts = reference["prompts"]
        .as_array()
        .ok_or("reference has no prompts")?;
    let n_new = reference["generation"]["max_new_tokens"]
        .as_u64()
        .unwrap_or(24) as usize;
    let mut variants = serde_json::Map::new();
    let stem = args
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "candidate".into());
    let out_dir = args.out.parent().unwrap_or(Path::new(".")).to_path_buf();
    let t0 = std::time::Instant::now();
    // Every variant whose adapter the engine serves (plus the base), all prompts submitted
    // together so they batch; results in prompt order. A refused adapter is recorded with its error.
    let served: std::collections::HashSet<String> = engine.models_json()["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut refused = serde_json::Map::new();
    let names: Vec<String> = reference["variants"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let mut jobs = Vec::new();
    for name in &names {
        let model = (name != "__base__").then(|| name.clone());
        if model.is_some() && !served.contains(name) {
            continue;
        }
        let mut ids = Vec::new();
        for p in prompts {
            let req = Request {
                model: model.clone(),
                prompt: Prompt::Tokens(token_ids(&p["token_ids"])),
                sampling: greedy(n_new),
                ..Request::default()
            };
            match engine.submit(req) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    refused.insert(name.clone(), json!(e.to_string()));
                    break;
                }
            }
        }
        jobs.push((name.clone(), ids));
    }
    for (name, ids) in jobs {
        let mut results = Vec::new();
        let mut logits = Vec::new();
        let mut failed = None;
        for (i, id) in ids.into_iter().enumerate() {
            match engine.wait(id) {
                Ok(o) => {
                    results
                        .push(json!({"prompt": i, "new_token_ids": o.token_ids, "text": o.text}));
                    logits.push(o.last_logits.ok_or("engine returned no logits")?);
                }
                Err(e) => failed = Some(e.to_string()),
            }
        }
        if let Some(e) = failed {
            eprintln!("variant {name}: refused: {e}");
            refused.insert(name, json!(e));
            continue;
        }
        if refused.contains_key(&name) {
            continue;
        }
        let npy = format!("{stem}.{name}.npy");
        write_npy(&out_dir.join(&npy), &logits)?;
        variants.insert(name, json!({"results": results, "logits_file": npy}));
    }
    let mut cand = json!({"variants": variants, "refused": refused});
    if let Some(rows) = reference["mixed_batch"]["rows"].as_array() {
        let mut submitted = Vec::new();
        for r in rows {
            let variant = r["adapter"].as_str().unwrap_or("__base__");
            let p = r["prompt"].as_u64().unwrap_or(0) as usize;
            let model = (variant != "__base__").then(|| variant.to_string());
            let req = Request {
                model,
                prompt: Prompt::Tokens(token_ids(&prompts[p]["token_ids"])),
                sampling: greedy(n_new),
                ..Request::default()
            };
            match engine.submit(req) {
                Ok(id) => submitted.push((r["row"].clone(), Some(id), String::new())),
                Err(e) => submitted.push((r["row"].clone(), None, e.to_string())),
            }
        }
        let mut out_rows = Vec::new();
        for (row, id, err) in submitted {
            match id {
                Some(id) => {
                    let o = engine.wait(id).map_err(|e| e.to_string())?;
                    out_rows.push(json!({"row": row, "new_token_ids": o.token_ids}));
                }
                None => eprintln!("mixed row {row}: not run: {err}"),
            }
        }
        cand["mixed_batch"] = json!({"rows": out_rows});
    }
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&cand).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", args.out.display()))?;
    eprintln!(
        "wrote {} in {:.2}s",
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("reference_check: {e}");
            }
            eprintln!("usage: reference_check --model <dir|file.gguf> --reference <reference.json> [--adapters <dir>] --out <candidate.json> [--weights f32|bf16|q8_0|q4_k] [--threads N] [--max-lora-rank N] [--max-gpu-loras N] [--max-cpu-loras N]");
            ExitCode::FAILURE
        }
    }
}
