//! `make bench`: throughput of the engine on a real model, written as a JSON report.
//!
//! Measures, in one run and side by side: the machine's memory copy bandwidth; prefill tokens/s
//! for a 256-token prompt; decode tokens/s at batch 1, 8 and 32; for F32 and BF16 weights. The
//! decode floor for a weight format is `bandwidth / weight bytes` steps per second (each step
//! streams every weight once); batch-1 decode is reported as a ratio to it.
//!
//! ```text
//! bench --model <dir|file.gguf> [--out bench-report.json] [--threads 2] [--decode-tokens 64] [--quick]
//! ```

use std::time::{Duration, Instant};

use loraplex::backend::WeightFormat;
use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, Prompt, Request};
use loraplex::sampling::SamplingParams;
use serde_json::{json, Value};

fn copy_bandwidth_gbs() -> f64 {
    let n = 256 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    // A copy reads n bytes and writes n bytes.
    (2 * n) as f64 / best / 1e9
}

fn params(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        temperature: 0.0,
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

fn prompt(len: usize, salt: usize) -> Vec<u32> {
    (0..len)
        .map(|k| (100 + (k * 7919 + salt * 104_729) % 20_000) as u32)
        .collect()
}

/// Best-of-`reps` prefill throughput for a `len`-token prompt (one request, one output token).
fn prefill_tps(engine: &Engine, len: usize, reps: usize) -> Result<f64, loraplex::Error> {
    let mut best = f64::MAX;
    for r in 0..reps {
        let t = Instant::now();
        engine.generate(Request::new(Prompt::Tokens(prompt(len, r)), params(1)))?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(len as f64 / best)
}

/// Decode throughput with `batch` concurrent requests: generated tokens per second measured from
/// the moment every request has its first token until all have `n` tokens.
fn decode_tps(engine: &Engine, batch: usize, n: usize) -> Result<f64, loraplex::Error> {
    let ids: Vec<_> = (0..batch)
        .map(|i| engine.submit(Request::new(Prompt::Tokens(prompt(16, i)), params(n))))
        .collect::<Result<_, _>>()?;
    let mut got = vec![0usize; batch];
    let mut done = vec![false; batch];
    let mut t_all_started: Option<(Instant, usize)> = None;
    while done.iter().any(|d| !d) {
        for (i, &id) in ids.iter().enumerate() {
            if done[i] {
                continue;
            }
            if let Some(o) = engine.poll(id, Duration::from_millis(1))? {
                got[i] += o.token_ids.len();
                if o.is_final() {
                    done[i] = true;
                }
            }
        }
        if t_all_started.is_none() && got.iter().all(|&g| g > 0) {
            t_all_started = Some((Instant::now(), got.iter().sum()));
        }
    }
    let (t0, base) = t_all_started.unwrap_or((Instant::now(), 0));
    let total: usize = got.iter().sum();
    Ok((total - base) as f64 / t0.elapsed().as_secs_f64().max(1e-9))
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut out, mut threads, mut n, mut quick) = (
        String::from("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        String::from("bench-report.json"),
        2usize,
        64usize,
        false,
    );
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model = args.next().ok_or("--model needs a value")?,
            "--out" => out = args.next().ok_or("--out needs a value")?,
            "--threads" => threads = args.next().ok_or("--threads needs a value")?.parse()?,
            "--decode-tokens" => {
                n = args
                    .next()
                    .ok_or("--decode-tokens needs a value")?
                    .parse()?
            }
            "--quick" => quick = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let bw = copy_bandwidth_gbs();
    eprintln!("memory copy bandwidth: {bw:.1} GB/s");
    let mut formats = serde_json::Map::new();
    let fmts: &[(&str, WeightFormat)] = if quick {
        &[("f32", WeightFormat::F32)]
    } else {
        &[("f32", WeightFormat::F32), ("bf16", WeightFormat::BF16)]
    };
    for &(name, wf) in fmts {
        let mut cfg = EngineConfig::new(&model);
        cfg.threads = threads;
        cfg.weight_format = wf;
        cfg.max_batch_tokens = 512;
        let engine = Engine::new(cfg)?;
        let wbytes = engine.stats().weight_bytes as f64;
        let floor = bw * 1e9 / wbytes;
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
    let report: Value = json!({
        "model": model,
        "threads": threads,
        "decode_tokens_per_request": n,
        "memory_copy_bandwidth_gb_s": bw,
        "note": "floor = bandwidth / weight bytes (one decode step streams every weight once); ratios are measured in this run",
        "quoted_not_measured_llama_cpp_same_machine_class": {"decode_batch_1": 40.5, "decode_batch_8": 189.0, "decode_batch_32": 364.0, "prefill": 826.0},
        "weights": formats,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("wrote {out}");
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}
