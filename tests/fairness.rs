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

/// The most sequences that shared a step while `reqs` ran together on an engine configured by
/// `tweak` (with room for 4 sequences a step).
fn max_step_seqs(reqs: &[Option<&str>], tweak: impl Fn(&mut EngineConfig)) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let (model, peft) = common::tiny_model_with_adapters(dir.path(), &["a", "b"], 10);
    let mut cfg = EngineConfig::new(&model);
    cfg.threads = 2;
    cfg.peft_source = vec![peft];
    cfg.max_num_seqs = 4;
    tweak(&mut cfg);
    let engine = Engine::new(cfg).unwrap();
    for name in ["a", "b"] {
        engine.generate(req(Some(name), 0, 1)).unwrap();
    }
    let ids: Vec<_> = reqs
        .iter()
        .enumerate()
        .map(|(k, m)| engine.submit(req(*m, k as u32, 300)).unwrap())
        .collect();
    for id in ids {
        let out = engine.wait(id).unwrap();
        assert_eq!(out.token_ids.len(), 300, "every request completes");
    }
    common::idle_stats(&engine).max_step_seqs
}

#[test]
fn a_running_cap_limits_an_adapters_share_of_the_batch() {
    let flood = [Some("a"); 4];
    assert_eq!(
        max_step_seqs(&flood, |_| {}),
        4,
        "uncapped, the 4 share steps"
    );
    assert_eq!(
        max_step_seqs(&flood, |c| c.max_running_per_adapter = 1),
        1,
        "capped at 1, they run one at a time"
    );
    // Per-adapter caps override the default; other tenants still fill the batch.
    let mixed = [Some("a"), Some("a"), Some("a"), Some("b"), Some("b"), None];
    assert_eq!(
        max_step_seqs(&mixed, |c| {
            c.max_running_per_adapter = 1;
            c.adapter_max_running.insert("b".into(), 2);
        }),
        4,
        "a 1 + b 2 + base 1"
    );
    // The served base model name caps the base model; 0 lifts a cap.
    let base = [None, None, None, Some("a")];
    assert_eq!(
        max_step_seqs(&base, |c| {
            c.served_model_name = Some("m".into());
            c.adapter_max_running.insert("m".into(), 1);
        }),
        2
    );
    assert_eq!(
        max_step_seqs(&flood, |c| {
            c.max_running_per_adapter = 1;
            c.adapter_max_running.insert("a".into(), 0);
        }),
        4
    );
}

#[test]
fn refusals_under_load_name_the_limit_and_estimate_the_wait() {
    use loraplex::ErrorCode;
    let dir = tempfile::tempdir().unwrap();
    let (model, peft) = common::tiny_model_with_adapters(dir.path(), &["a", "b"], 10);
    let mut cfg = EngineConfig::new(&model);
    cfg.threads = 2;
    cfg.peft_source = vec![peft];
    cfg.max_queue = 2;
    cfg.max_cpu_loras = 1;
    cfg.max_gpu_loras = 1;
    let engine = Engine::new(cfg).unwrap();
    // Some completions first, so the wait is estimated from a measured rate.
    for k in 0..4 {
        engine.generate(req(None, k, 2)).unwrap();
    }
    let long: Vec<_> = (0..2)
        .map(|k| engine.submit(req(Some("a"), 50 + k, 300)).unwrap())
        .collect();
    let e = engine.submit(req(None, 60, 4)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::QueueFull);
    let r = e
        .retry()
        .expect("a queue-full refusal carries a retry estimate");
    assert_eq!(r.limit, "max_queue");
    assert!(e.message().contains("max_queue (2)"), "{e}");
    assert!(
        r.after >= Duration::from_secs(1) && r.after <= Duration::from_secs(600),
        "{:?}",
        r.after
    );
    for id in long {
        engine.cancel(id).unwrap();
        let _ = engine.wait(id);
    }
    // The host cache holds one adapter, pinned by a running request: b is refused.
    let held = engine.submit(req(Some("a"), 70, 300)).unwrap();
    let e = engine.submit(req(Some("b"), 71, 4)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Capacity);
    assert_eq!(e.retry().map(|r| r.limit), Some("max_cpu_loras"));
    assert!(e.message().contains("max_cpu_loras (1)"), "{e}");
    engine.cancel(held).unwrap();
    // Other errors carry none.
    let e = engine.submit(req(Some("absent"), 72, 4)).unwrap_err();
    assert_eq!(e.retry(), None);
}
