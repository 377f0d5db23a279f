//! `gpu_bench`: loraplex's throughput on one device (run by scripts/gpu-check.sh on a GPU
//! machine; it runs on "cpu" too, which is how it is tested), written as JSON.
//!
//! On `--model` (an HF directory: scripts/gpu/make_8b_shape.py writes a Llama-3-8B-shape one)
//! with the PEFT adapters under `--adapters` (64 rank-16 all-module adapters from the same
//! script), on `--device`:
//! - `upload_ms`: one adapter's host → device upload (`Backend::lora_load_slot` of the first
//!   adapter into a one-slot arena of the device), timed until the device has it: the upload,
//!   then a one-row `lora_apply` reading the slot and a download of its row (which waits for the
//!   upload on any stream ordering), minus the same apply + download alone; best of `--reps`.
//!   It includes the host staging (on a CUDA device: the f32 → bf16 conversion into pinned
//!   memory); `adapter_bytes` is the adapter in f32, `arena_bytes` what the device slot holds
//!   (bf16 on a CUDA device, half of it).
//! - `decode`: generated tokens/s at each `--batches` size with 0 (all base), 1 (every row the
//!   same adapter) and `--distinct` distinct adapters (row i uses adapter i mod distinct),
//!   measured as a difference that cancels prefill and start-up: the batch (fresh prompts of 16
//!   tokens) generating `4 + --decode-tokens` tokens minus the same batch generating 4, i.e.
//!   `batch · decode_tokens / (t_long − t_short)`; best of `--reps` pairs (null when no pair
//!   has a positive difference).
//! - `prefill`: tokens/s of one `--prefill`-token prompt (one output token), best of `--reps`,
//!   each rep a prompt with a different first token (no prefix-cache hit).
//! - `weight_bytes`, `kv_cache_bytes` and the engine's kernel path from its stats.
//!
//! ```text
//! gpu_bench --model DIR --adapters DIR [--device cuda:0] [--out gpu-bench.json]
//!           [--batches 1,32,128] [--distinct 64] [--decode-tokens 64] [--prefill 2048]
//!           [--weight-dtype bf16] [--kv-cache-gib 8] [--reps 3] [--threads 0] [--max-rank 16]
//! ```
//! Progress goes to stderr; the JSON is also printed to stdout.
//!
//! `--requests FILE` runs requests instead of the bench: FILE's `"requests"` (each
//! `{"model": adapter name or null, "prompt": [token ids], "max_tokens": n}`, as
//! scripts/gpu/hf_reference.py writes them) are submitted together (one mixed batch), greedy with
//! EOS ignored, and `--out` gets `{"rows": [{"token_ids", "last_logits"}], "max_step_seqs"}` in
//! their order (compared with HF PEFT by `hf_reference.py compare`; `max_step_seqs` says how many
//! of the requests shared a step).

use std::path::PathBuf;
use std::time::Instant;

use loraplex::adapters::{load_adapter, AdapterLimits, ModelShape};
use loraplex::backend::{
    Backend, LoraArgs, LoraBatch, LoraPrecision, LoraStackGeometry, LoraTarget, View, ViewMut,
    WeightFormat,
};
use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, Prompt, Request};
use loraplex::model::ModelConfig;
use loraplex::sampling::SamplingParams;
use serde_json::{json, Value};

struct Opts {
    model: PathBuf,
    adapters: PathBuf,
    device: String,
    out: PathBuf,
    batches: Vec<usize>,
    distinct: usize,
    decode_tokens: usize,
    prefill: usize,
    weight_format: WeightFormat,
    kv_cache_gib: f64,
    reps: usize,
    threads: usize,
    requests: Option<PathBuf>,
    max_rank: usize,
}

fn parse_args() -> Result<Opts, Box<dyn std::error::Error>> {
    let mut o = Opts {
        model: PathBuf::new(),
        adapters: PathBuf::new(),
        device: "cuda:0".into(),
        out: "gpu-bench.json".into(),
        batches: vec![1, 32, 128],
        distinct: 64,
        decode_tokens: 64,
        prefill: 2048,
        weight_format: WeightFormat::BF16,
        kv_cache_gib: 8.0,
        reps: 3,
        threads: 0,
        requests: None,
        max_rank: 16,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => o.model = val()?.into(),
            "--adapters" => o.adapters = val()?.into(),
            "--device" => o.device = val()?,
            "--out" => o.out = val()?.into(),
            "--batches" => {
                o.batches = val()?
                    .split(',')
                    .map(|b| b.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--distinct" => o.distinct = val()?.parse()?,
            "--decode-tokens" => o.decode_tokens = val()?.parse()?,
            "--prefill" => o.prefill = val()?.parse()?,
            "--weight-dtype" => {
                let v = val()?;
                o.weight_format =
                    WeightFormat::parse(&v).ok_or_else(|| format!("--weight-dtype {v:?}"))?
            }
            "--kv-cache-gib" => o.kv_cache_gib = val()?.parse()?,
            "--reps" => o.reps = val()?.parse::<usize>()?.max(1),
            "--threads" => o.threads = val()?.parse()?,
            "--requests" => o.requests = Some(val()?.into()),
            "--max-rank" => o.max_rank = val()?.parse()?,
            _ => return Err(format!("unknown flag {flag} (see the doc comment)").into()),
        }
    }
    if o.model.as_os_str().is_empty() || o.adapters.as_os_str().is_empty() {
        return Err("--model and --adapters are required".into());
    }
    Ok(o)
}

/// The adapter directories under `dir`, sorted by name.
fn adapter_names(dir: &std::path::Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.path().join("adapter_config.json").is_file() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(format!("no PEFT adapter directories under {}", dir.display()).into());
    }
    Ok(names)
}

/// Best-of-`reps` host → device upload of the first adapter in ms (see the module docs).
fn upload_ms(
    o: &Opts,
    shape: &ModelShape,
    first: &str,
) -> Result<Value, Box<dyn std::error::Error>> {
    let adapter = load_adapter(
        &o.adapters.join(first),
        first,
        shape,
        &AdapterLimits { max_lora_rank: 64 },
    )?;
    let rank = adapter.max_rank();
    let be = loraplex::backend::select(&o.device, o.threads)?;
    let geom = LoraStackGeometry {
        num_slots: 1,
        max_rank: rank,
        num_layers: shape.num_layers,
        dims: shape.lora_dims(),
        precision: LoraPrecision::Bf16,
    };
    let mut stack = be.alloc_lora_stack(geom)?;
    let layers = loraplex::cache::slot_data(&adapter);
    let (inp, out) = geom.dims[LoraTarget::Down.index()];
    let x = be.upload(&vec![0.5f32; inp])?;
    let mut y = be.alloc(out)?;
    let mut host = vec![0f32; out];
    let batch = LoraBatch::from_slots(vec![0]);
    // One row through the slot's last module, read back: waits for everything before it.
    let mut fence = |stack: &<loraplex::backend::DeviceBackend as Backend>::LoraStack,
                     y: &mut <loraplex::backend::DeviceBackend as Backend>::Buf|
     -> loraplex::Result<()> {
        be.lora_apply(
            View::new(&x, 1, inp, 0),
            ViewMut::new(y, 1, out, 0),
            &LoraArgs {
                batch: &batch,
                stack,
                layer: shape.num_layers - 1,
                target: LoraTarget::Down,
            },
        );
        be.download(y, &mut host)
    };
    be.lora_load_slot(&mut stack, 0, &layers)?; // warm-up (first-touch allocations, JIT)
    fence(&stack, &mut y)?;
    let (mut with, mut alone) = (f64::MAX, f64::MAX);
    for _ in 0..o.reps.max(5) {
        let t = Instant::now();
        be.lora_load_slot(&mut stack, 0, &layers)?;
        fence(&stack, &mut y)?;
        with = with.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        fence(&stack, &mut y)?;
        alone = alone.min(t.elapsed().as_secs_f64());
    }
    let bytes = adapter.bytes();
    let arena_bytes = be.lora_stack_bytes(&stack);
    let ms = ((with - alone).max(0.0)) * 1e3;
    eprintln!(
        "[upload] {first}: rank {rank}, {bytes} bytes ({arena_bytes} on the device): {ms:.3} ms (upload+fence {:.3} ms, fence {:.3} ms)",
        with * 1e3,
        alone * 1e3
    );
    Ok(
        json!({"adapter": first, "rank": rank, "adapter_bytes": bytes, "arena_bytes": arena_bytes,
              "upload_ms": ms,
              "upload_and_fence_ms": with * 1e3, "fence_ms": alone * 1e3}),
    )
}

/// Greedy sampling of exactly `max_tokens` tokens (EOS ignored).
fn params(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        temperature: 0.0,
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

/// Seconds for `b` requests (row i on adapter `i mod k`, base when `k` is 0) of 16-token prompts
/// (salted by `salt`) generating `n` tokens each, submitted together, until all are done.
fn batch_seconds(
    engine: &Engine,
    names: &[String],
    b: usize,
    k: usize,
    n: usize,
    salt: usize,
) -> loraplex::Result<f64> {
    let vocab = engine.model_config().vocab_size;
    let t = Instant::now();
    let ids: Vec<_> = (0..b)
        .map(|i| {
            engine.submit(Request {
                model: (k > 0).then(|| names[i % k].clone()),
                prompt: Prompt::Tokens(prompt(16, salt + i, vocab)),
                sampling: params(n),
                ..Request::default()
            })
        })
        .collect::<Result<_, _>>()?;
    for id in ids {
        engine.wait(id)?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// A `len`-token prompt over `vocab` (ids from 3 up, away from the special tokens); `salt`
/// changes the first token.
fn prompt(len: usize, salt: usize, vocab: usize) -> Vec<u32> {
    let span = vocab.saturating_sub(3).max(1);
    (0..len)
        .map(|k| (3 + (k * 7919 + salt * 104_729 + k * salt * 613) % span) as u32)
        .collect()
}

/// The engine configuration shared by the bench and `--requests`.
/// `slots` device adapter slots at rank `--max-rank` (each slot reserves every module at that
/// rank: keep both as small as the run needs).
fn engine_config(o: &Opts, slots: usize, max_batch: usize) -> EngineConfig {
    let mut cfg = EngineConfig::new(&o.model);
    cfg.device = o.device.clone();
    cfg.threads = o.threads;
    cfg.weight_format = o.weight_format;
    cfg.peft_source = vec![o.adapters.clone()];
    cfg.max_gpu_loras = slots.max(1);
    cfg.max_cpu_loras = cfg.max_gpu_loras;
    cfg.max_lora_rank = o.max_rank;
    cfg.max_num_seqs = max_batch.max(1);
    cfg.max_batch_tokens = o.prefill.max(max_batch).max(512);
    cfg.max_model_len = o.prefill + o.decode_tokens + 64;
    cfg.kv_cache_bytes = (o.kv_cache_gib * (1u64 << 30) as f64) as usize;
    cfg
}

/// `--requests`: see the module docs.
fn run_requests(o: &Opts, file: &std::path::Path) -> Result<Value, Box<dyn std::error::Error>> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(file)?)?;
    let reqs = doc["requests"]
        .as_array()
        .ok_or_else(|| format!("{}: no \"requests\" array", file.display()))?;
    let distinct: std::collections::HashSet<&str> =
        reqs.iter().filter_map(|r| r["model"].as_str()).collect();
    let mut cfg = engine_config(o, distinct.len(), reqs.len());
    let longest = reqs
        .iter()
        .map(|r| {
            r["prompt"].as_array().map_or(0, |p| p.len())
                + r["max_tokens"].as_u64().unwrap_or(0) as usize
        })
        .max()
        .unwrap_or(0);
    cfg.max_model_len = cfg.max_model_len.max(longest + 16);
    let engine = Engine::new(cfg)?;
    let mut ids = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let prompt: Vec<u32> = r["prompt"]
            .as_array()
            .ok_or_else(|| format!("request {i}: no prompt"))?
            .iter()
            .map(|t| t.as_u64().map(|t| t as u32))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("request {i}: prompt ids must be integers"))?;
        let mut sp = params(r["max_tokens"].as_u64().unwrap_or(16) as usize);
        sp.return_last_logits = true;
        ids.push(engine.submit(Request {
            model: r["model"].as_str().map(String::from),
            prompt: Prompt::Tokens(prompt),
            sampling: sp,
            ..Request::default()
        })?);
    }
    let mut rows = Vec::new();
    for id in ids {
        let out = engine.wait(id)?;
        rows.push(json!({"token_ids": out.token_ids, "last_logits": out.last_logits}));
    }
    eprintln!(
        "[requests] {} rows on {} (max step {} sequences)",
        rows.len(),
        o.device,
        engine.stats().max_step_seqs
    );
    let n = rows.len();
    let report = json!({"device": o.device, "weight_dtype": o.weight_format.name(),
                        "max_step_seqs": engine.stats().max_step_seqs, "rows": rows});
    std::fs::write(&o.out, serde_json::to_string(&report)?)?;
    Ok(json!({"rows": n}))
}

fn run() -> Result<Value, Box<dyn std::error::Error>> {
    let o = parse_args()?;
    let mcfg = ModelConfig::from_hf_dir(&o.model)?;
    let shape = ModelShape::of(&mcfg, loraplex::tensor::DType::F32);
    let names = adapter_names(&o.adapters)?;
    if let Some(file) = &o.requests {
        return run_requests(&o, file);
    }
    let upload = upload_ms(&o, &shape, &names[0])?;

    let max_batch = o.batches.iter().copied().max().unwrap_or(1);
    let cfg = engine_config(&o, o.distinct.min(names.len()), max_batch);
    let t = Instant::now();
    let engine = Engine::new(cfg)?;
    let load_s = t.elapsed().as_secs_f64();
    let vocab = mcfg.vocab_size;
    let stats = engine.stats();
    eprintln!(
        "[engine] {} on {}: {:.1} s to load, {} weight bytes, {} KV bytes",
        o.model.display(),
        o.device,
        load_s,
        stats.weight_bytes,
        stats.kv_cache_bytes
    );
    let distinct = o.distinct.min(names.len());
    // Warm every adapter used below (a cold load parses files; the bench measures steps).
    let warm: Vec<_> = names[..distinct]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            engine.submit(Request {
                model: Some(n.clone()),
                prompt: Prompt::Tokens(prompt(8, i, vocab)),
                sampling: params(1),
                ..Request::default()
            })
        })
        .collect::<Result<_, _>>()?;
    for id in warm {
        engine.wait(id)?;
    }
    let mut decode = Vec::new();
    for &b in &o.batches {
        let mut row = serde_json::Map::new();
        row.insert("batch".into(), json!(b));
        for (label, k) in [("base", 0usize), ("one_adapter", 1), ("distinct", distinct)] {
            // A pair whose difference is not positive (timing noise swamped the decode steps:
            // only on tiny models) measures nothing; none such gives null.
            let mut tps: Option<f64> = None;
            for r in 0..o.reps {
                let salt = 10_000 * (r + 1) + 1000 * k;
                let short = batch_seconds(&engine, &names, b, k, 4, salt)?;
                let long = batch_seconds(&engine, &names, b, k, 4 + o.decode_tokens, salt + 500)?;
                if long > short {
                    let v = (b * o.decode_tokens) as f64 / (long - short);
                    tps = Some(tps.map_or(v, |t| t.max(v)));
                }
            }
            eprintln!("[decode] batch {b} {label} ({k} adapters): {tps:?} tok/s");
            row.insert(format!("{label}_tok_s"), json!(tps));
        }
        row.insert("distinct_adapters".into(), json!(distinct.min(b)));
        decode.push(Value::Object(row));
    }
    let mut prefill = 0f64;
    for r in 0..o.reps {
        let t = Instant::now();
        engine.generate(Request::new(
            Prompt::Tokens(prompt(o.prefill, 5000 + r, vocab)),
            params(1),
        ))?;
        prefill = prefill.max(o.prefill as f64 / t.elapsed().as_secs_f64().max(1e-9));
    }
    eprintln!("[prefill] {} tokens: {prefill:.1} tok/s", o.prefill);
    let stats = engine.stats();
    let report = json!({
        "device": o.device,
        "model": o.model.display().to_string(),
        "weight_dtype": o.weight_format.name(),
        "weight_bytes": stats.weight_bytes,
        "kv_cache_bytes": stats.kv_cache_bytes,
        "stats": engine.stats_json(),
        "load_s": load_s,
        "decode_tokens": o.decode_tokens,
        "decode": decode,
        "prefill": {"tokens": o.prefill, "tok_s": prefill},
        "upload": upload,
    });
    std::fs::write(&o.out, serde_json::to_string_pretty(&report)?)?;
    Ok(report)
}

fn main() {
    match run() {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("gpu_bench: {e}");
            std::process::exit(1);
        }
    }
}
