//! `make bench`: throughput of the engine, side by side with llama.cpp, written as a JSON report.
//!
//! Sections (`--sections`, default all):
//! - `weights`: on `--model`, for F32 and BF16 weights: prefill tokens/s of a 256-token prompt,
//!   decode tokens/s at batch 1, 8 and 32, batch-1 decode as a ratio to its memory floor
//!   (`copy bandwidth / weight bytes` steps per second).
//! - `lora`: on `--model`: cold adapter load per format, slot upload, base vs one adapter vs
//!   distinct adapters per batch, scaling with the number of distinct adapters.
//! - `structured`: on `--model`, decode tokens/s of a batch of 8 with a JSON-schema constraint
//!   vs without (interleaved rounds, medians, ratio). See structured.rs.
//! - `prefix`: on `--model`, 8 adapters x 4 requests sharing a 600-token system prompt: time to
//!   first token and throughput with the prefix cache vs without. See prefix.rs.
//! - `compare`: loraplex vs llama.cpp (`llama-batched-bench` from scripts/llama-cpp.sh) on the
//!   GGUF files of scripts/bench-models.sh: decode tokens/s at each `--batches` size and prefill
//!   tokens/s of each `--prefill` length, interleaved rounds (loraplex then llama.cpp per metric),
//!   medians and ratios; the memory floor from the measured read bandwidth and the file's tensor
//!   bytes; resident weight bytes vs file tensor bytes; distinct adapters vs all-base at batches 8
//!   and 32 (`--lora-batch`) on SmolLM2 BF16 and Q4_K_M (`--lora-model`), with `--big` also 8
//!   distinct rank-16 adapters at batch 8 on the 8B shape.
//!   See comparison.rs.
//!
//! ```text
//! bench [--model FILE] [--out bench-report.json] [--threads N] [--decode-tokens 64] [--quick]
//!       [--sections weights,lora,structured,prefix,compare] [--models LABEL|FILE,...] [--bench-dir models/bench]
//!       [--big] [--rounds 2] [--batches 1,8,32,64] [--prefill 256,512] [--weight-dtype bf16]
//!       [--llama-bin DIR] [--llama-omp-wait auto|default|passive|active]
//!       [--lora-batch 8,32] [--lora-model smollm2-135m-bf16,smollm2-135m-q4_k_m] [--lora-rank 8] [--compare-decode-tokens N]
//! ```
//! Threads default to the machine's cores (both engines get the same count). `--quick` also
//! shrinks the compare section (batches 1,8; prefill 256; 16 decode tokens; three SmolLM2 files)
//! unless those flags are given.

mod comparison;
mod fairness;
mod llama_cpp;
mod measure;
mod memory;
mod prefill_matmuls;
mod prefix;
mod structured;

use std::path::{Path, PathBuf};
use std::time::Instant;

use loraplex::backend::WeightFormat;
use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, Prompt, Request};
use serde_json::{json, Value};

use measure::{
    adapter_spec, decode_tps, decode_tps_models, params, prefill_tps, prompt, write_adapters,
};

/// Multi-LoRA measurements on `model`: rank-8 all-module adapters written to `dir`.
fn lora_section(
    model: &str,
    threads: usize,
    n: usize,
    quick: bool,
) -> Result<Value, Box<dyn std::error::Error>> {
    use loraplex::adapters::export::{export, ExportFormat};
    use loraplex::adapters::synth::synthesize;
    use loraplex::adapters::{load_adapter, AdapterLimits, ModelShape};
    use loraplex::backend::{Backend, LoraPrecision, LoraStackGeometry};

    let dir = std::path::Path::new("target/bench-adapters");
    let _ = std::fs::remove_dir_all(dir);
    let peft = dir.join("peft");
    std::fs::create_dir_all(&peft)?;
    let n_adapters = if quick { 8 } else { 32 };
    // The engine starts on an empty PEFT source; the adapters written below appear on refresh.
    let mut cfg = EngineConfig::new(model);
    cfg.threads = threads;
    cfg.peft_source = vec![peft.clone()];
    cfg.max_gpu_loras = n_adapters;
    cfg.max_cpu_loras = cfg.max_gpu_loras;
    cfg.max_lora_rank = 16;
    let engine = Engine::new(cfg)?;
    let shape = ModelShape::of(engine.model_config(), loraplex::tensor::DType::F32);
    let spec = adapter_spec(8);
    let names = write_adapters(&engine, &peft, n_adapters, 8)?;
    // Cold load (parse + validate + normalise) per format, best of 3.
    let a0 = synthesize("fmt", &shape, &spec, 7);
    let limits = AdapterLimits { max_lora_rank: 64 };
    let mut cold = serde_json::Map::new();
    let formats = [
        ("hf-safetensors", ExportFormat::HfSafetensors),
        ("hf-bin", ExportFormat::HfBin),
        ("nemo-fused", ExportFormat::NemoFused),
        ("nemo-canonical", ExportFormat::NemoCanonical),
        (
            "trtllm-npy",
            ExportFormat::TrtNpy {
                shuffle_rows: false,
            },
        ),
        ("trtllm-bin", ExportFormat::TrtBin),
    ];
    for (label, f) in formats {
        let d = dir.join(format!("fmt-{label}"));
        export(&a0, &shape, f, &d)?;
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            load_adapter(&d, label, &shape, &limits)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        eprintln!("[lora] cold load {label}: {:.1} ms", best * 1e3);
        cold.insert(label.into(), json!(best * 1e3));
    }
    // Host -> device slot upload into the engine's backend for the device, best of 5.
    let backend = loraplex::backend::select("cpu", threads)?;
    let mut stack = backend.alloc_lora_stack(LoraStackGeometry {
        num_slots: 1,
        max_rank: 16,
        num_layers: shape.num_layers,
        dims: shape.lora_dims(),
        precision: LoraPrecision::F32,
    })?;
    let layers = loraplex::cache::slot_data(&a0);
    let mut upload = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        backend.lora_load_slot(&mut stack, 0, &layers)?;
        upload = upload.min(t.elapsed().as_secs_f64());
    }
    eprintln!("[lora] host->device slot load: {:.2} ms", upload * 1e3);

    engine.refresh()?;
    // Warm every adapter (cold load happens on first use).
    let warm: Vec<Option<String>> = names.iter().cloned().map(Some).collect();
    decode_tps_models(&engine, &warm, 2)?;
    let mut batches = serde_json::Map::new();
    let one = |b: usize| vec![Some(names[0].clone()); b];
    let single_base = decode_tps_models(&engine, &[None], n)?;
    let single_lora = decode_tps_models(&engine, &one(1), n)?;
    eprintln!("[lora] batch 1: base {single_base:.1} tok/s, one adapter {single_lora:.1} tok/s");
    for b in [8usize, 32] {
        if b > n_adapters {
            continue;
        }
        let base = decode_tps(&engine, b, n)?;
        let same = decode_tps_models(&engine, &one(b), n)?;
        let distinct: Vec<Option<String>> = names.iter().take(b).cloned().map(Some).collect();
        let dist = decode_tps_models(&engine, &distinct, n)?;
        eprintln!(
            "[lora] batch {b}: base {base:.1}, one adapter {same:.1}, all distinct {dist:.1} tok/s"
        );
        batches.insert(
            format!("batch_{b}"),
            json!({"all_base": base, "all_one_adapter": same, "all_distinct_adapters": dist,
                   "distinct_over_base": dist / base, "one_adapter_over_base": same / base}),
        );
    }
    let mut scaling = Vec::new();
    let b = n_adapters.min(32);
    let mut k = 1;
    while k <= b {
        let models: Vec<Option<String>> = (0..b).map(|i| Some(names[i % k].clone())).collect();
        let tps = decode_tps_models(&engine, &models, n)?;
        eprintln!("[lora] batch {b} over {k} distinct adapters: {tps:.1} tok/s");
        scaling.push(json!({"distinct_adapters": k, "batch": b, "tokens_per_s": tps}));
        k *= 2;
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(json!({
        "adapter": {"rank": 8, "targets": "all 7", "bytes": a0.bytes()},
        "single_sequence": {"base": single_base, "one_adapter": single_lora, "one_adapter_over_base": single_lora / single_base},
        "decode": batches,
        "scaling_distinct_adapters": scaling,
        "cold_load_ms": cold,
        "host_to_device_slot_load_ms": upload * 1e3,
    }))
}

/// The `weights` section: F32 and BF16 weights of `model` (F32 only with `quick`).
fn weights_section(
    model: &str,
    threads: usize,
    n: usize,
    quick: bool,
    copy_bw: f64,
) -> Result<Value, Box<dyn std::error::Error>> {
    let mut formats = serde_json::Map::new();
    let fmts: &[(&str, WeightFormat)] = if quick {
        &[("f32", WeightFormat::F32)]
    } else {
        &[("f32", WeightFormat::F32), ("bf16", WeightFormat::BF16)]
    };
    for &(name, wf) in fmts {
        let mut cfg = EngineConfig::new(model);
        cfg.threads = threads;
        cfg.weight_format = wf;
        cfg.max_batch_tokens = 512;
        let engine = Engine::new(cfg)?;
        let wbytes = engine.stats().weight_bytes as f64;
        let floor = copy_bw * 1e9 / wbytes;
        // Warm up (page in weights, grow buffers).
        engine.generate(Request::new(Prompt::Tokens(prompt(32, 99)), params(4)))?;
        let prefill = prefill_tps(&engine, 256, if quick { 1 } else { 3 })?;
        eprintln!("[{name}] prefill 256: {prefill:.0} tok/s");
        let mut decode = serde_json::Map::new();
        for b in [1usize, 8, 32] {
            let tps = decode_tps(&engine, b, n)?;
            eprintln!("[{name}] decode batch {b}: {tps:.1} tok/s");
            decode.insert(
                format!("batch_{b}"),
                json!({"tokens_per_s": tps, "ratio_to_floor_steps": tps / b as f64 / floor}),
            );
        }
        let b1 = decode["batch_1"]["tokens_per_s"].as_f64().unwrap_or(0.0);
        formats.insert(
            name.into(),
            json!({
                "weight_bytes": wbytes,
                "decode_floor_tokens_per_s_batch_1": floor,
                "decode_batch_1_ratio_to_floor": b1 / floor,
                "prefill_256_tokens_per_s": prefill,
                "decode": decode,
            }),
        );
    }
    Ok(json!({
        "model": model,
        "note": "floor = memory copy bandwidth / weight bytes (one decode step streams every weight once)",
        "formats": formats,
    }))
}

fn list<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<Vec<T>, String> {
    let v = v.ok_or(format!("{flag} needs a value"))?;
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| format!("{flag}: \"{s}\" is not valid"))
        })
        .collect()
}

/// The compare section's models with `--quick`: one loadable float file, one loadable legacy
/// quant, one K-quant (reported as an error until loraplex reads K-quants).
const QUICK_MODELS: [&str; 3] = [
    "smollm2-135m-bf16",
    "smollm2-135m-q8_0",
    "smollm2-135m-q4_k_m",
];

/// The default llama.cpp tools directory: $LLAMA_CPP_BIN, else scripts/llama-cpp.sh's cache.
fn default_llama_bin() -> PathBuf {
    std::env::var_os("LLAMA_CPP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".cache/llama.cpp/0.3.36/build/bin"))
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut model = String::from("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut out = String::from("bench-report.json");
    let (mut threads, mut n, mut quick, mut big) = (cores, 64usize, false, false);
    let mut sections: Vec<String> = vec![
        "weights".into(),
        "lora".into(),
        "structured".into(),
        "prefix".into(),
        "fairness".into(),
        "compare".into(),
    ];
    let mut wanted: Option<Vec<String>> = None;
    let mut bench_dir = PathBuf::from("models/bench");
    let mut llama_bin = default_llama_bin();
    let mut opts = comparison::Options {
        threads: 0,
        rounds: 2,
        decode_tokens: 0,
        batches: vec![1, 8, 32, 64],
        prefill: vec![256, 512, 2048],
        weight_dtype: "bf16".into(),
        lora_runs: Vec::new(),
        llama_wait: None,
    };
    let mut compare_tokens: Option<usize> = None;
    // The distinct-adapters measurements: on these models (SmolLM2 in bf16 and Q4_K_M unless
    // given), at these batch sizes, with adapters of this rank.
    let (mut lora_batch, mut lora_rank) = (vec![8usize, 32], 8usize);
    let mut lora_models: Option<Vec<String>> = None;
    let mut given: Vec<&'static str> = Vec::new();
    while let Some(a) = args.next() {
        for f in ["--batches", "--prefill"] {
            if a == f {
                given.push(f);
            }
        }
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = val()?,
            "--out" => out = val()?,
            "--threads" => threads = val()?.parse()?,
            "--decode-tokens" => n = val()?.parse()?,
            "--compare-decode-tokens" => compare_tokens = Some(val()?.parse()?),
            "--quick" => quick = true,
            "--big" => big = true,
            "--sections" => sections = list(&a, Some(val()?))?,
            "--models" => wanted = Some(list(&a, Some(val()?))?),
            "--bench-dir" => bench_dir = PathBuf::from(val()?),
            "--llama-bin" => llama_bin = PathBuf::from(val()?),
            "--rounds" => opts.rounds = val()?.parse()?,
            "--batches" => opts.batches = list(&a, Some(val()?))?,
            "--prefill" => opts.prefill = list(&a, Some(val()?))?,
            "--weight-dtype" => opts.weight_dtype = val()?,
            "--lora-batch" => lora_batch = list(&a, Some(val()?))?,
            "--lora-model" => lora_models = Some(list(&a, Some(val()?))?),
            "--lora-rank" => lora_rank = val()?.parse()?,
            "--llama-omp-wait" => {
                opts.llama_wait = match val()?.as_str() {
                    "auto" => None,
                    "default" => Some(llama_cpp::WaitPolicy::Default),
                    "passive" => Some(llama_cpp::WaitPolicy::Passive),
                    "active" => Some(llama_cpp::WaitPolicy::Active),
                    v => {
                        return Err(format!(
                            "--llama-omp-wait: \"{v}\" is not auto, default, passive or active"
                        )
                        .into())
                    }
                }
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    for s in &sections {
        if ![
            "weights",
            "lora",
            "structured",
            "prefix",
            "fairness",
            "compare",
        ]
        .contains(&s.as_str())
        {
            return Err(format!(
                "--sections: unknown section \"{s}\" (weights, lora, structured, prefix, fairness, compare)"
            )
            .into());
        }
    }
    if opts.rounds < 2 {
        eprintln!("bench: note: --rounds {} (the report's medians need at least 2 rounds to mean anything)", opts.rounds);
    }
    opts.threads = threads;
    opts.decode_tokens = compare_tokens.unwrap_or(n);
    let given_models = lora_models.is_some();
    let lora_models = lora_models
        .unwrap_or_else(|| vec!["smollm2-135m-bf16".into(), "smollm2-135m-q4_k_m".into()]);
    opts.lora_runs = lora_models
        .into_iter()
        .map(|model| comparison::LoraRun {
            model,
            batches: lora_batch.clone(),
            rank: lora_rank,
        })
        .collect();
    if big && !given_models {
        // The 8B shape: 8 distinct rank-16 adapters in one batch (issue 9's serving case).
        opts.lora_runs.push(comparison::LoraRun {
            model: comparison::MODEL_8B.into(),
            batches: vec![8],
            rank: 16,
        });
    }
    if quick {
        // A quick look: fewer metrics and models unless they were given explicitly.
        if !given.contains(&"--batches") {
            opts.batches = vec![1, 8];
        }
        if !given.contains(&"--prefill") {
            opts.prefill = vec![256];
        }
        if compare_tokens.is_none() {
            opts.decode_tokens = n.min(16);
        }
        if wanted.is_none() {
            wanted = Some(QUICK_MODELS.iter().map(|s| s.to_string()).collect());
        }
    }
    let has = |s: &str| sections.iter().any(|x| x == s);

    let copy_bw = memory::copy_bandwidth_gbs();
    let read_bw = memory::read_bandwidth_gbs(threads, 10);
    eprintln!("memory copy bandwidth: {copy_bw:.1} GB/s, read bandwidth ({threads} threads): {read_bw:.1} GB/s");
    let mut report = json!({
        "threads": threads,
        "cores": cores,
        "decode_tokens_per_request": n,
        "memory_copy_bandwidth_gb_s": copy_bw,
        "memory_read_bandwidth_gb_s": read_bw,
        "note": "every number and ratio here is measured in this run on a shared machine whose speed drifts; compare ratios, not absolute numbers. copy bandwidth = bytes copied per second by a 256 MiB memcpy (traffic is 2x); read bandwidth = peak streaming read of a 512 MiB buffer with `threads` threads, sampled before every compared model (compare.memory_read_bandwidth_samples_gb_s)",
        "sections": sections,
    });
    if has("weights") {
        report["weights"] = weights_section(&model, threads, n, quick, copy_bw)?;
    }
    if has("lora") {
        report["multi_lora"] = lora_section(&model, threads, n, quick)?;
    }
    if has("structured") {
        report["structured"] = structured::run(&model, threads, n, opts.rounds)?;
    }
    if has("prefix") {
        report["prefix_cache"] = prefix::run(&model, threads, opts.rounds)?;
    }
    if has("fairness") {
        report["fairness"] = fairness::run(&model, threads, opts.rounds)?;
    }
    if has("compare") {
        let all = comparison::default_models(&bench_dir, big);
        let models: Vec<comparison::BenchModel> = match &wanted {
            None => all,
            Some(w) => w
                .iter()
                .map(|name| {
                    all.iter()
                        .find(|m| &m.label == name)
                        .map(|m| comparison::BenchModel {
                            label: m.label.clone(),
                            path: m.path.clone(),
                            provenance: m.provenance.clone(),
                        })
                        .unwrap_or_else(|| comparison::BenchModel {
                            label: Path::new(name)
                                .file_stem()
                                .map_or(name.clone(), |s| s.to_string_lossy().into_owned()),
                            path: PathBuf::from(name),
                            provenance: "given on the command line".into(),
                        })
                })
                .collect(),
        };
        let llama = llama_cpp::LlamaCpp::new(&llama_bin);
        if let Err(e) = &llama {
            eprintln!("bench: llama.cpp: {e}");
        }
        let cmp = comparison::run(
            llama.as_ref().map_err(|e| e.clone()),
            &models,
            &opts,
            read_bw,
        );
        eprintln!("\n{}", comparison::table(&cmp));
        report["compare"] = cmp;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    eprintln!("wrote {out}");
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}
