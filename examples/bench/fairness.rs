//! The `fairness` section: fair admission under a flood. One adapter floods the queue (24
//! requests at once, 4 sequences run per step); meanwhile other tenants (two adapters and the
//! base model) send one short request at a time. Reported, as medians of interleaved rounds:
//! the trickle's time to first token and queueing delay in engine steps under the flood vs
//! on an idle engine, the wait a FIFO queue would impose (until the flood's last request
//! starts), and the flood's throughput with the trickle vs alone (mixed traffic must not lose
//! throughput).

use std::time::{Duration, Instant};

use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, Prompt, Request};
use serde_json::{json, Value};

use crate::comparison::median;
use crate::measure::{params, prompt, write_adapters};

const FLOOD: usize = 24;
const FLOOD_PROMPT: usize = 32;
const FLOOD_GEN: usize = 48;
const TRICKLE: usize = 6;
const TRICKLE_GEN: usize = 4;
const MAX_NUM_SEQS: usize = 4;

fn request(model: Option<&str>, len: usize, salt: usize, gen: usize) -> Request {
    Request {
        model: model.map(str::to_string),
        prompt: Prompt::Tokens(prompt(len, salt)),
        sampling: params(gen),
        ..Request::default()
    }
}

/// Time to first token (ms) and engine steps until it, of one trickle request.
fn trickle_one(engine: &Engine, r: Request) -> Result<(f64, f64), loraplex::Error> {
    let (t0, s0) = (Instant::now(), engine.stats().steps);
    let id = engine.submit(r)?;
    loop {
        if let Some(o) = engine.poll(id, Duration::from_millis(1))? {
            if !o.token_ids.is_empty() || o.done {
                let out = (
                    t0.elapsed().as_secs_f64() * 1e3,
                    (engine.stats().steps - s0) as f64,
                );
                if !o.done {
                    engine.wait(id)?;
                }
                return Ok(out);
            }
        }
    }
}

/// One flood round; with `trickle` names, sends those requests one after another while the
/// flood runs. Returns (flood generated tok/s, ms until the flood's last request started,
/// trickle TTFTs in ms, trickle queueing steps).
fn round(
    engine: &Engine,
    flood: &str,
    trickle: &[Option<String>],
    salt: usize,
) -> Result<(f64, f64, Vec<f64>, Vec<f64>), loraplex::Error> {
    let t0 = Instant::now();
    let ids: Vec<u64> = (0..FLOOD)
        .map(|k| {
            engine.submit(request(
                Some(flood),
                FLOOD_PROMPT,
                salt * 1000 + k,
                FLOOD_GEN,
            ))
        })
        .collect::<Result<_, _>>()?;
    let waiter = std::thread::scope(|s| -> Result<_, loraplex::Error> {
        let h = s.spawn(|| -> Result<(usize, f64), loraplex::Error> {
            let mut last_start = 0f64;
            let mut generated = 0;
            let mut started = vec![false; ids.len()];
            let mut done = vec![false; ids.len()];
            while done.iter().any(|d| !d) {
                for (k, &id) in ids.iter().enumerate() {
                    if done[k] {
                        continue;
                    }
                    if let Some(o) = engine.poll(id, Duration::from_millis(1))? {
                        if !started[k] && !o.token_ids.is_empty() {
                            started[k] = true;
                            last_start = t0.elapsed().as_secs_f64() * 1e3;
                        }
                        generated += o.token_ids.len();
                        done[k] = o.done;
                    }
                }
            }
            Ok((generated, last_start))
        });
        let (mut ttft, mut steps) = (Vec::new(), Vec::new());
        for (k, t) in trickle.iter().enumerate() {
            let r = request(t.as_deref(), 16, salt * 1000 + 500 + k, TRICKLE_GEN);
            let (ms, st) = trickle_one(engine, r)?;
            ttft.push(ms);
            steps.push(st);
        }
        let (generated, last_start) = h
            .join()
            .map_err(|_| loraplex::Error::internal("the flood's poller panicked"))??;
        Ok((generated, last_start, ttft, steps))
    })?;
    let (generated, last_start, ttft, steps) = waiter;
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    Ok((generated as f64 / secs, last_start, ttft, steps))
}

/// Runs the section on `model` with `rounds` interleaved rounds.
pub fn run(
    model: &str,
    threads: usize,
    rounds: usize,
) -> Result<Value, Box<dyn std::error::Error>> {
    let dir = std::path::Path::new("target/bench-fairness");
    let _ = std::fs::remove_dir_all(dir);
    let peft = dir.join("peft");
    std::fs::create_dir_all(&peft)?;
    let mut cfg = EngineConfig::new(model);
    cfg.threads = threads;
    cfg.peft_source = vec![peft.clone()];
    cfg.max_num_seqs = MAX_NUM_SEQS;
    cfg.max_gpu_loras = 4;
    cfg.max_cpu_loras = 4;
    let engine = Engine::new(cfg)?;
    let names = write_adapters(&engine, &peft, 3, 8)?;
    engine.refresh()?;
    let flood = names[0].clone();
    let trickle: Vec<Option<String>> = (0..TRICKLE)
        .map(|k| match k % 3 {
            0 => Some(names[1].clone()),
            1 => Some(names[2].clone()),
            _ => None,
        })
        .collect();
    // Warm-up: loads the adapters.
    for t in &trickle {
        trickle_one(&engine, request(t.as_deref(), 16, 1, 1))?;
    }
    round(&engine, &flood, &[], 1)?;
    let (mut alone_ttft, mut mixed, mut flood_only) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds.max(1) {
        for (k, t) in trickle.iter().enumerate() {
            alone_ttft.push(
                trickle_one(
                    &engine,
                    request(t.as_deref(), 16, 90_000 + r * 100 + k, TRICKLE_GEN),
                )?
                .0,
            );
        }
        flood_only.push(round(&engine, &flood, &[], 10 + 2 * r)?);
        mixed.push(round(&engine, &flood, &trickle, 11 + 2 * r)?);
    }
    let ttft: Vec<f64> = mixed.iter().flat_map(|x| x.2.iter().copied()).collect();
    let steps: Vec<f64> = mixed.iter().flat_map(|x| x.3.iter().copied()).collect();
    let max_steps = steps.iter().copied().fold(0f64, f64::max);
    let med = |v: &[f64]| median(v).unwrap_or(0.0);
    let (ttft_m, alone_m) = (med(&ttft), med(&alone_ttft));
    let fifo_wait = med(&mixed.iter().map(|x| x.1).collect::<Vec<_>>());
    let tps_mixed = med(&mixed.iter().map(|x| x.0).collect::<Vec<_>>());
    let tps_flood = med(&flood_only.iter().map(|x| x.0).collect::<Vec<_>>());
    eprintln!(
        "fairness: trickle TTFT under a {FLOOD}-request flood {ttft_m:.0} ms (alone {alone_m:.0} ms; a FIFO queue would wait ~{fifo_wait:.0} ms, {:.1}x longer), queueing steps median {:.0} max {max_steps:.0}; flood throughput {tps_mixed:.1} tok/s with the trickle vs {tps_flood:.1} alone ({:.2}x)",
        fifo_wait / ttft_m.max(1e-9),
        med(&steps),
        tps_mixed / tps_flood.max(1e-9)
    );
    Ok(json!({
        "model": model,
        "workload": format!("one adapter floods {FLOOD} requests at once ({FLOOD_PROMPT}-token prompts, {FLOOD_GEN} tokens each), {MAX_NUM_SEQS} sequences per step; meanwhile {TRICKLE} short requests ({TRICKLE_GEN} tokens) of two other adapters and the base model, one at a time"),
        "trickle_median_ttft_ms": ttft_m,
        "trickle_alone_median_ttft_ms": alone_m,
        "trickle_queueing_steps_median": med(&steps),
        "trickle_queueing_steps_max": max_steps,
        "fifo_wait_ms": fifo_wait,
        "fifo_wait_note": "time until the flood's last request started: what a request queued behind the flood would wait in FIFO order",
        "fifo_wait_over_trickle_ttft": fifo_wait / ttft_m.max(1e-9),
        "flood_tok_s_with_trickle": tps_mixed,
        "flood_tok_s_alone": tps_flood,
        "mixed_over_alone_throughput": tps_mixed / tps_flood.max(1e-9),
        "rounds": rounds,
    }))
}
