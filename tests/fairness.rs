//! Fair admission among adapters on a tiny random model: a flood of one adapter's requests does
//! not hold back another adapter's or the base model's requests for more than a few steps
//! (asserted in engine steps, not seconds).

mod common;

use std::time::Duration;

use loraplex::adapters::export::{export, ExportFormat};
use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, Prompt, Request};
use loraplex::sampling::SamplingParams;

/// Tokens each flood request generates.
const FLOOD_TOKENS: usize = 400;

fn req(model: Option<&str>, salt: u32, max_tokens: usize) -> Request {
    Request {
        model: model.map(str::to_string),
        prompt: Prompt::Tokens((0..12).map(|k| (k * 7 + salt * 13) % 256).collect()),
        sampling: SamplingParams {
            max_tokens,
            temperature: 0.0,
            ignore_eos: true,
            ..SamplingParams::default()
        },
        ..Request::default()
    }
}

/// Steps from submitting `r` until its first output arrives.
fn queueing_steps(engine: &Engine, r: Request) -> u64 {
    let before = engine.stats().steps;
    let id = engine.submit(r).unwrap();
    loop {
        if let Some(o) = engine.poll(id, Duration::from_millis(50)).unwrap() {
            if !o.token_ids.is_empty() || o.done {
                let steps = engine.stats().steps - before;
                engine.cancel(id).unwrap();
                return steps;
            }
        }
    }
}

#[test]
fn a_flooding_adapter_delays_others_by_a_bounded_number_of_steps() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let peft = dir.path().join("loras");
    // Wider than the default tiny model, so a step takes long enough (a fraction of a
    // millisecond) that the steps the worker runs while this thread is descheduled stay few.
    let spec = common::TinySpec {
        hidden: 256,
        inter: 512,
        layers: 4,
        heads: 8,
        kv_heads: 4,
        head_dim: 32,
        ..common::TinySpec::default()
    };
    common::write_tiny_model(&model, spec);
    let shape = common::tiny_shape(spec);
    for (name, seed) in [("flood", 3), ("trickle", 4)] {
        let a = common::random_adapter(&shape, [8; 7], seed, false, false);
        export(&a, &shape, ExportFormat::HfSafetensors, &peft.join(name)).unwrap();
    }
    let mut cfg = EngineConfig::new(&model);
    cfg.threads = 2;
    cfg.peft_source = vec![peft];
    cfg.max_num_seqs = 2;
    let engine = Engine::new(cfg).unwrap();
    // Both adapters loaded first: a trickle request whose adapter is still loading waits for
    // the load, not for admission.
    for name in ["flood", "trickle"] {
        engine.generate(req(Some(name), 0, 1)).unwrap();
    }
    // 40 long flood requests: 2 run at a time, the rest wait (~19 x 400 steps of backlog).
    let flood: Vec<_> = (0..40)
        .map(|k| engine.submit(req(Some("flood"), k, FLOOD_TOKENS)).unwrap())
        .collect();
    while engine.stats().running < 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Each trickle request is admitted as soon as a running flood request ends: after at most
    // one flood generation, never behind the backlog (FIFO: about 19 generations). The bound
    // leaves room for the steps the worker runs between the output and the test reading the
    // step count (a tiny model runs thousands of steps per second).
    let bound = 2 * FLOOD_TOKENS as u64;
    for k in 0..3 {
        let s = queueing_steps(&engine, req(Some("trickle"), 100 + k, 4));
        assert!(s <= bound, "trickle request {k} waited {s} steps");
        let s = queueing_steps(&engine, req(None, 200 + k, 4));
        assert!(s <= bound, "base request {k} waited {s} steps");
    }
    assert!(
        engine.stats().waiting > 20,
        "the flood's backlog was still there: the trickle really overtook it"
    );
    for id in flood {
        engine.cancel(id).unwrap();
    }
}
