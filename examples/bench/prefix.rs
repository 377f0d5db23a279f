//! The `prefix` section: the prefix cache on multi-tenant traffic. 8 adapters × 4 requests, all
//! sharing one 600-token system prompt (a fresh one each round, so every round starts cold),
//! each with its own 16-token question, submitted at once; time to first token and throughput
//! with the cache (the default) and without, interleaved rounds, medians.

use std::time::{Duration, Instant};

use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, Prompt, Request};
use serde_json::{json, Value};

use crate::comparison::median;
use crate::measure::{params, prompt, write_adapters};

const ADAPTERS: usize = 8;
const PER_ADAPTER: usize = 4;
const SYSTEM: usize = 600;
const QUESTION: usize = 16;
const GEN: usize = 16;

/// One round on `engine`: (median time to first token in ms, generated tokens/s, requests/s).
fn round(
    engine: &Engine,
    names: &[String],
    salt: usize,
) -> Result<(f64, f64, f64), loraplex::Error> {
    let system = prompt(SYSTEM, salt);
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for (a, name) in names.iter().enumerate() {
        for q in 0..PER_ADAPTER {
            let mut tokens = system.clone();
            tokens.extend(prompt(QUESTION, 50_000 + salt * 64 + a * PER_ADAPTER + q));
            ids.push(engine.submit(Request {
                model: Some(name.clone()),
                prompt: Prompt::Tokens(tokens),
                sampling: params(GEN),
                ..Request::default()
            })?);
        }
    }
    let mut first: Vec<Option<f64>> = vec![None; ids.len()];
    let mut done = vec![false; ids.len()];
    let mut generated = 0usize;
    while done.iter().any(|d| !d) {
        for (k, &id) in ids.iter().enumerate() {
            if done[k] {
                continue;
            }
            if let Some(o) = engine.poll(id, Duration::from_millis(1))? {
                if first[k].is_none() && !o.token_ids.is_empty() {
                    first[k] = Some(t0.elapsed().as_secs_f64() * 1e3);
                }
                generated += o.token_ids.len();
                done[k] = o.done;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    let ttft: Vec<f64> = first.into_iter().flatten().collect();
    Ok((
        median(&ttft).unwrap_or(0.0),
        generated as f64 / secs,
        ids.len() as f64 / secs,
    ))
}

/// Time to first token (ms) of one request alone on `engine`: the 600-token system prompt of
/// `salt` and a question of `question`, under the adapter `name`.
fn single_ttft(
    engine: &Engine,
    name: &str,
    salt: usize,
    question: usize,
) -> Result<f64, loraplex::Error> {
    let mut tokens = prompt(SYSTEM, salt);
    tokens.extend(prompt(QUESTION, question));
    let t0 = Instant::now();
    let id = engine.submit(Request {
        model: Some(name.to_string()),
        prompt: Prompt::Tokens(tokens),
        sampling: params(1),
        ..Request::default()
    })?;
    engine.wait(id)?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

/// Runs the section on `model` with `rounds` interleaved rounds.
pub fn run(
    model: &str,
    threads: usize,
    rounds: usize,
) -> Result<Value, Box<dyn std::error::Error>> {
    let dir = std::path::Path::new("target/bench-prefix");
    let _ = std::fs::remove_dir_all(dir);
    let peft = dir.join("peft");
    std::fs::create_dir_all(&peft)?;
    let make = |caching: bool| -> Result<Engine, loraplex::Error> {
        let mut cfg = EngineConfig::new(model);
        cfg.threads = threads;
        cfg.peft_source = vec![peft.clone()];
        cfg.max_gpu_loras = ADAPTERS;
        cfg.max_cpu_loras = ADAPTERS;
        cfg.prefix_caching = caching;
        Engine::new(cfg)
    };
    let cached = make(true)?;
    let plain = make(false)?;
    let names = write_adapters(&cached, &peft, ADAPTERS, 8)?;
    cached.refresh()?;
    plain.refresh()?;
    // Warm-up: loads every adapter into both engines.
    round(&cached, &names, 9_999)?;
    round(&plain, &names, 9_998)?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for r in 0..rounds.max(1) {
        without.push(round(&plain, &names, 2 * r)?);
        with.push(round(&cached, &names, 2 * r + 1)?);
    }
    // One request alone: a miss (a system prompt never seen) then a hit (the same system prompt,
    // another question), interleaved.
    let (mut miss, mut hit) = (Vec::new(), Vec::new());
    for r in 0..rounds.max(1) {
        let salt = 70_000 + r;
        miss.push(single_ttft(&cached, &names[r % ADAPTERS], salt, 1)?);
        hit.push(single_ttft(&cached, &names[r % ADAPTERS], salt, 2)?);
    }
    let (miss_ms, hit_ms) = (median(&miss).unwrap_or(0.0), median(&hit).unwrap_or(0.0));
    eprintln!(
        "prefix: one request alone, TTFT {miss_ms:.1} ms on a miss vs {hit_ms:.1} ms on a hit of the {SYSTEM}-token prefix ({:.1}x lower)",
        miss_ms / hit_ms.max(1e-9)
    );
    let med = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
        median(&v.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0)
    };
    let (ttft_on, ttft_off) = (med(&with, |x| x.0), med(&without, |x| x.0));
    let (tps_on, tps_off) = (med(&with, |x| x.1), med(&without, |x| x.1));
    let st = cached.stats();
    eprintln!(
        "prefix: {ADAPTERS} adapters x {PER_ADAPTER} requests, {SYSTEM}-token shared system prompt: TTFT {ttft_on:.0} ms with the cache vs {ttft_off:.0} ms without ({:.2}x), throughput {tps_on:.1} vs {tps_off:.1} tok/s ({:.2}x)",
        ttft_off / ttft_on.max(1e-9),
        tps_on / tps_off.max(1e-9)
    );
    Ok(json!({
        "model": model,
        "workload": format!("{ADAPTERS} adapters x {PER_ADAPTER} requests submitted at once; {SYSTEM}-token system prompt shared by all (new each round) + a {QUESTION}-token question each; {GEN} tokens generated each"),
        "with_cache": {"median_ttft_ms": ttft_on, "median_generated_tok_s": tps_on,
                        "rounds_ttft_ms_tok_s_req_s": with},
        "without_cache": {"median_ttft_ms": ttft_off, "median_generated_tok_s": tps_off,
                           "rounds_ttft_ms_tok_s_req_s": without},
        "ttft_speedup": ttft_off / ttft_on.max(1e-9),
        "single_request": {"miss_ttft_ms": miss, "hit_ttft_ms": hit,
                           "median_miss_ttft_ms": miss_ms, "median_hit_ttft_ms": hit_ms,
                           "miss_over_hit": miss_ms / hit_ms.max(1e-9), "target": 5.0},
        "throughput_speedup": tps_on / tps_off.max(1e-9),
        "cache_hit_tokens": st.prefix_cache_hits,
        "cache_query_tokens": st.prefix_cache_queries,
    }))
}
