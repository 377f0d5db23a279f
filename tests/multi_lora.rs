//! Multi-LoRA serving on a tiny random model with adapters written here in every format: mixed
//! batches equal one-at-a-time, CAPACITY (429) semantics, refresh while requests are in flight,
//! max rank, device-slot pressure, model list and stats.

mod common;

use std::path::Path;
use std::time::Duration;

use loraplex::adapters::export::{export, ExportFormat};
use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, FinishReason, Output, Prompt, Request};
use loraplex::sampling::SamplingParams;
use loraplex::ErrorCode;

const ALL7: [usize; 7] = [8, 8, 8, 8, 8, 8, 8];

struct Fixture {
    _dir: tempfile::TempDir,
    model: std::path::PathBuf,
    peft: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let peft = dir.path().join("loras");
    common::write_tiny_model(&model, common::TinySpec::default());
    std::fs::create_dir_all(&peft).unwrap();
    Fixture {
        model,
        peft,
        _dir: dir,
    }
}

fn write_adapter(peft: &Path, name: &str, ranks: [usize; 7], seed: u64, format: ExportFormat) {
    let shape = common::tiny_shape(common::TinySpec::default());
    let shared = matches!(
        format,
        ExportFormat::NemoFused | ExportFormat::NemoCanonical
    );
    let a = common::random_adapter(&shape, ranks, seed, false, shared);
    export(&a, &shape, format, &peft.join(name)).unwrap();
}

fn engine(f: &Fixture, tweak: impl FnOnce(&mut EngineConfig)) -> Engine {
    let mut cfg = EngineConfig::new(&f.model);
    cfg.threads = 2;
    cfg.peft_source = vec![f.peft.clone()];
    tweak(&mut cfg);
    Engine::new(cfg).unwrap()
}

fn req(model: Option<&str>, p: usize, n: usize) -> Request {
    let prompt: Vec<u32> = (0..(4 + p * 3))
        .map(|k| ((k * 31 + p * 17) % 256) as u32)
        .collect();
    Request {
        model: model.map(str::to_string),
        prompt: Prompt::Tokens(prompt),
        sampling: SamplingParams {
            max_tokens: n,
            temperature: 0.0,
            ignore_eos: true,
            return_last_logits: true,
            ..SamplingParams::default()
        },
        ..Request::default()
    }
}

fn six_adapters(peft: &Path) -> Vec<&'static str> {
    write_adapter(peft, "hf-st", ALL7, 1, ExportFormat::HfSafetensors);
    write_adapter(
        peft,
        "hf-bin",
        [16, 0, 16, 0, 0, 0, 0],
        2,
        ExportFormat::HfBin,
    );
    write_adapter(peft, "nemo-fused", ALL7, 3, ExportFormat::NemoFused);
    write_adapter(peft, "nemo-canon", ALL7, 4, ExportFormat::NemoCanonical);
    write_adapter(
        peft,
        "trt-npy",
        [4, 4, 4, 4, 0, 0, 0],
        5,
        ExportFormat::TrtNpy { shuffle_rows: true },
    );
    write_adapter(
        peft,
        "trt-bin",
        [0, 0, 0, 0, 8, 8, 8],
        6,
        ExportFormat::TrtBin,
    );
    vec![
        "hf-st",
        "hf-bin",
        "nemo-fused",
        "nemo-canon",
        "trt-npy",
        "trt-bin",
    ]
}

#[test]
fn mixed_batch_over_6_adapters_and_base_equals_one_at_a_time() {
    let f = fixture();
    let names = six_adapters(&f.peft);
    let e = engine(&f, |c| c.max_gpu_loras = 8);
    const GEN: usize = 40;
    let models: Vec<Option<&str>> = vec![
        None,
        Some(names[0]),
        Some(names[1]),
        Some(names[2]),
        Some(names[3]),
        Some(names[4]),
        Some(names[5]),
        Some(names[0]),
    ];
    let alone: Vec<Output> = models
        .iter()
        .enumerate()
        .map(|(i, m)| e.generate(req(*m, i, GEN)).unwrap())
        .collect();
    // Every adapter changes the output relative to the base model on the same prompt.
    for (i, m) in models.iter().enumerate().skip(1) {
        let base = e.generate(req(None, i, GEN)).unwrap();
        assert_ne!(
            base.last_logits, alone[i].last_logits,
            "adapter {m:?} had no effect"
        );
    }
    // The 8 requests run in one mixed step (checked from the step stats) and each equals alone.
    common::until_shared(&e, models.len(), 5, || {
        let ids: Vec<_> = models
            .iter()
            .enumerate()
            .map(|(i, m)| e.submit(req(*m, i, GEN)).unwrap())
            .collect();
        for (i, id) in ids.into_iter().enumerate() {
            let o = e.wait(id).unwrap();
            assert_eq!(
                o.token_ids, alone[i].token_ids,
                "row {i} ({:?}) tokens differ in the mixed batch",
                models[i]
            );
            assert_eq!(
                o.last_logits, alone[i].last_logits,
                "row {i} ({:?}) logits differ in the mixed batch",
                models[i]
            );
        }
    });
    let stats = e.stats_json();
    let adapters = stats["adapters"].as_array().unwrap();
    assert_eq!(adapters.len(), 6);
    for a in adapters {
        assert_eq!(a["state"], "ready", "{a}");
        assert!(a["bytes"].as_u64().unwrap() > 0);
        assert!(a["load_time_ms"].as_f64().is_some());
    }
    let models_json = e.models_json();
    let data = models_json["data"].as_array().unwrap();
    assert_eq!(data.len(), 7);
    assert_eq!(data[0]["parent"], serde_json::Value::Null);
    for d in &data[1..] {
        assert_eq!(d["parent"], data[0]["id"]);
        assert!(d["root"].as_str().unwrap().contains("loras"));
    }
}

#[test]
fn fewer_device_slots_than_adapters_still_serves_everyone_exactly() {
    let f = fixture();
    let names = six_adapters(&f.peft);
    let e = engine(&f, |c| {
        c.max_gpu_loras = 2;
        c.max_cpu_loras = 6;
    });
    let alone: Vec<Output> = names
        .iter()
        .enumerate()
        .map(|(i, m)| e.generate(req(Some(m), i, 10)).unwrap())
        .collect();
    // Two slots: two adapters' requests share a step, never three (checked from the stats).
    common::until_shared(&e, 2, 5, || {
        let ids: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, m)| e.submit(req(Some(m), i, 10)).unwrap())
            .collect();
        for (i, id) in ids.into_iter().enumerate() {
            let o = e.wait(id).unwrap();
            assert_eq!(
                o.token_ids, alone[i].token_ids,
                "{} differs under slot pressure",
                names[i]
            );
            assert_eq!(o.last_logits, alone[i].last_logits);
        }
    });
}

#[test]
fn capacity_is_refused_exactly_when_active_adapters_exceed_max_cpu_loras() {
    let f = fixture();
    let names = six_adapters(&f.peft);
    let e = engine(&f, |c| {
        c.max_cpu_loras = 2;
        c.max_gpu_loras = 2;
    });
    let long = |m: &str| req(Some(m), 1, 400);
    let a = e.submit(long(names[0])).unwrap();
    let b = e.submit(long(names[1])).unwrap();
    // A second request for an active adapter is fine; a third distinct one is the 429.
    let a2 = e.submit(req(Some(names[0]), 2, 3)).unwrap();
    let err = e.submit(req(Some(names[2]), 3, 3)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Capacity);
    assert!(
        err.message().contains("limit max_cpu_loras (2)"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains(names[0]) && err.message().contains(names[1]),
        "{}",
        err.message()
    );
    // The admitted requests are not disturbed.
    assert_eq!(
        e.wait(a2).unwrap().finish_reason,
        Some(FinishReason::Length)
    );
    e.cancel(a).unwrap();
    assert_eq!(
        e.wait(a).unwrap().finish_reason,
        Some(FinishReason::Cancelled)
    );
    // Now one adapter is unpinned: the new one evicts it.
    let c = e.submit(req(Some(names[2]), 3, 3)).unwrap();
    assert_eq!(e.wait(c).unwrap().usage.completion_tokens, 3);
    e.cancel(b).unwrap();
    e.wait(b).unwrap();
    // Base requests never count against the adapter cache.
    assert!(e.generate(req(None, 0, 2)).is_ok());
}

#[test]
fn max_rank_refuses_only_the_adapter_over_it() {
    let f = fixture();
    write_adapter(&f.peft, "r4", [4; 7], 11, ExportFormat::HfSafetensors);
    write_adapter(&f.peft, "r8", [8; 7], 12, ExportFormat::HfSafetensors);
    write_adapter(&f.peft, "r16", [16; 7], 13, ExportFormat::HfSafetensors);
    write_adapter(
        &f.peft,
        "r64",
        [64, 0, 64, 0, 0, 0, 0],
        14,
        ExportFormat::HfSafetensors,
    );
    let e = engine(&f, |c| c.max_lora_rank = 32);
    let ids: Vec<_> = ["r4", "r8", "r16", "r64"]
        .iter()
        .enumerate()
        .map(|(i, m)| e.submit(req(Some(m), i, 6)).unwrap())
        .collect();
    for (i, id) in ids.into_iter().enumerate() {
        let r = e.wait(id);
        if i == 3 {
            let err = r.unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidAdapter);
            assert!(
                err.message().contains("64") && err.message().contains("32"),
                "{}",
                err.message()
            );
        } else {
            assert_eq!(r.unwrap().usage.completion_tokens, 6);
        }
    }
    // A refused generation fails fast afterwards, and the others keep serving.
    let again = e.submit(req(Some("r64"), 0, 2)).and_then(|id| e.wait(id));
    assert_eq!(again.unwrap_err().code(), ErrorCode::InvalidAdapter);
    assert!(e.generate(req(Some("r16"), 0, 2)).is_ok());
}

#[test]
fn zero_b_adapter_reproduces_the_base_model_exactly() {
    let f = fixture();
    let shape = common::tiny_shape(common::TinySpec::default());
    let a = common::random_adapter(&shape, ALL7, 21, true, false);
    export(
        &a,
        &shape,
        ExportFormat::HfSafetensors,
        &f.peft.join("zero"),
    )
    .unwrap();
    let e = engine(&f, |_| {});
    let base = e.generate(req(None, 2, 8)).unwrap();
    let z = e.generate(req(Some("zero"), 2, 8)).unwrap();
    assert_eq!(base.token_ids, z.token_ids);
    assert_eq!(base.last_logits, z.last_logits);
}

#[test]
fn refresh_adds_changes_and_deletes_while_requests_are_in_flight() {
    let f = fixture();
    write_adapter(&f.peft, "keep", ALL7, 31, ExportFormat::HfSafetensors);
    write_adapter(&f.peft, "change", ALL7, 32, ExportFormat::HfSafetensors);
    write_adapter(&f.peft, "gone", ALL7, 33, ExportFormat::HfSafetensors);
    let e = engine(&f, |_| {});
    let before_change = e.generate(req(Some("change"), 1, 480)).unwrap();
    let before_gone = e.generate(req(Some("gone"), 2, 480)).unwrap();
    assert_eq!(
        e.submit(req(Some("new"), 0, 2)).unwrap_err().code(),
        ErrorCode::NotFound
    );

    // The directory changes first (the engine sees none of them before the refresh), so that
    // the refresh follows as soon as both requests run: a 480-token request on the tiny model
    // can finish in less time than writing the adapters takes.
    std::fs::remove_dir_all(f.peft.join("change")).unwrap();
    write_adapter(&f.peft, "change", ALL7, 99, ExportFormat::HfSafetensors);
    std::fs::remove_dir_all(f.peft.join("gone")).unwrap();
    write_adapter(
        &f.peft,
        "new",
        ALL7,
        34,
        ExportFormat::TrtNpy {
            shuffle_rows: false,
        },
    );
    // A directory still being written (no weights yet) is not picked up.
    std::fs::create_dir_all(f.peft.join("half")).unwrap();
    std::fs::write(f.peft.join("half/adapter_config.json"), b"{\"r\": 8").unwrap();
    // Requests in flight on the old generation / the deleted adapter.
    let in_change = e.submit(req(Some("change"), 1, 480)).unwrap();
    let in_gone = e.submit(req(Some("gone"), 2, 480)).unwrap();
    // Wait until both are generating (their adapter is loaded and pinned), still far from done.
    for _ in 0..500 {
        if e.stats().running == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        e.stats().running,
        2,
        "both requests should be in flight during the refresh"
    );
    let report = e.refresh().unwrap();
    let st = e.stats();
    assert!(
        st.running + st.waiting >= 1,
        "requests finished before the refresh; the test proves nothing"
    );
    assert_eq!(report["added"], serde_json::json!(["new"]), "{report}");
    assert_eq!(report["changed"], serde_json::json!(["change"]), "{report}");
    assert_eq!(report["removed"], serde_json::json!(["gone"]), "{report}");

    // In-flight requests finish on what they started with, losing nothing.
    let o = e.wait(in_change).unwrap();
    assert_eq!(o.token_ids, before_change.token_ids);
    let o = e.wait(in_gone).unwrap();
    assert_eq!(o.token_ids, before_gone.token_ids);
    // New requests see the new state.
    let after = e.generate(req(Some("change"), 1, 480)).unwrap();
    assert_ne!(
        after.last_logits, before_change.last_logits,
        "changed adapter still served from the old generation"
    );
    assert_eq!(
        e.submit(req(Some("gone"), 0, 2)).unwrap_err().code(),
        ErrorCode::NotFound
    );
    assert!(e.generate(req(Some("new"), 0, 4)).is_ok());
    assert!(e.generate(req(Some("keep"), 0, 4)).is_ok());
    assert_eq!(
        e.submit(req(Some("half"), 0, 2)).unwrap_err().code(),
        ErrorCode::NotFound
    );
}

#[test]
fn runtime_registration_metrics_and_periodic_refresh() {
    let f = fixture();
    let e = engine(&f, |c| c.peft_source.clear());
    assert_eq!(e.models_json()["data"].as_array().unwrap().len(), 1);
    write_adapter(&f.peft, "one", ALL7, 41, ExportFormat::HfSafetensors);
    e.register_peft_source(&f.peft, Some(Duration::from_millis(50)))
        .unwrap();
    assert_eq!(
        e.register_peft_source(&f.peft, None).unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    assert_eq!(e.models_json()["data"].as_array().unwrap().len(), 2);
    // The periodic refresh picks up a new adapter without an explicit refresh.
    write_adapter(&f.peft, "two", ALL7, 42, ExportFormat::HfSafetensors);
    let mut seen = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(20));
        if e.models_json()["data"].as_array().unwrap().len() == 3 {
            seen = true;
            break;
        }
    }
    assert!(seen, "periodic refresh did not pick up the new adapter");
    // Long enough that it still runs when its first output arrives (the stats behind the
    // metrics are published before a step emits outputs).
    let id = e.submit(req(Some("two"), 0, 400)).unwrap();
    let mut saw_running = false;
    loop {
        let o = e.poll(id, Duration::from_millis(100)).unwrap();
        if o.as_ref().is_some_and(|o| !o.token_ids.is_empty()) {
            saw_running = e.metrics_text().contains("running_lora_adapters=\"two\"");
        }
        if o.is_some_and(|o| o.done) || saw_running {
            break;
        }
    }
    e.cancel(id).unwrap();
    let _ = e.wait(id);
    common::idle_stats(&e);
    assert!(saw_running, "metrics never showed the running adapter");
    let m = e.metrics_text();
    assert!(m.contains("vllm:lora_requests_info{max_lora=\"8\""), "{m}");
    assert!(m.contains("vllm:num_requests_waiting"), "{m}");
    let stats = e.stats_json();
    let two = stats["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "two")
        .unwrap()
        .clone();
    assert_eq!(two["tier"], "device", "{two}");
    assert_eq!(two["pinned"], false);
    assert!(stats["memory"]["kv_cache_bytes"].as_u64().unwrap() > 0);
    assert!(
        stats["memory"]["device_adapter_cache_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[test]
fn a_hot_adapter_cannot_starve_a_cold_one() {
    let f = fixture();
    write_adapter(&f.peft, "hot", ALL7, 51, ExportFormat::HfSafetensors);
    write_adapter(&f.peft, "cold", ALL7, 52, ExportFormat::HfSafetensors);
    // One device slot: the cold adapter can only run once every hot request has drained. Twice
    // as many hot requests as can run keep hot ones waiting at all times, so without fair
    // admission a waiting hot request would always take the place of a finished one.
    let e = engine(&f, |c| {
        c.max_gpu_loras = 1;
        c.max_cpu_loras = 2;
        c.max_num_seqs = 4;
    });
    // Staggered lengths, so hot requests never all finish in the same step.
    let hot_req = |k: usize| req(Some("hot"), k % 4, 20 + (k * 7) % 41);
    let mut hot: Vec<u64> = (0..16).map(|i| e.submit(hot_req(i)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(5));
    let cold = e.submit(req(Some("cold"), 1, 6)).unwrap();
    // Keep the hot adapter busy: every finished hot request is replaced at once.
    let mut hot_done = 0;
    let mut cold_done = false;
    while !cold_done && hot_done < 2000 {
        if let Some(o) = e.poll(cold, Duration::ZERO).unwrap() {
            cold_done = o.is_final();
        }
        for h in hot.iter_mut() {
            if let Some(o) = e.poll(*h, Duration::ZERO).unwrap() {
                if o.is_final() {
                    hot_done += 1;
                    *h = e.submit(hot_req(hot_done)).unwrap();
                }
            }
        }
    }
    eprintln!("cold finished after {hot_done} hot requests");
    assert!(
        cold_done,
        "the cold adapter's request starved behind {hot_done} hot requests"
    );
    for h in hot {
        e.cancel(h).unwrap();
        e.wait(h).unwrap();
    }
}

#[test]
fn a_request_that_cannot_fit_does_not_leave_its_adapter_slot_empty_under_the_next() {
    // One device slot, held by a request of "b" while two requests of "a" queue behind it: x can
    // never fit the KV cache, y can. When b ends, both are admitted in the same step: x claims
    // the slot for "a" (an upload), is then failed as unfittable, and y, which found "a" already
    // in the slot, must still get the weights uploaded (not run on b's).
    let f = fixture();
    write_adapter(&f.peft, "a", ALL7, 61, ExportFormat::HfSafetensors);
    write_adapter(&f.peft, "b", ALL7, 62, ExportFormat::HfSafetensors);
    let spec = common::TinySpec::default();
    let bytes_per_token = 2 * spec.layers * spec.kv_heads * spec.head_dim * 4;
    let e = engine(&f, |c| {
        c.max_gpu_loras = 1;
        c.kv_block_size = 4;
        c.kv_cache_bytes = bytes_per_token * 64;
    });
    let b = e.submit(req(Some("b"), 0, 56)).unwrap();
    for _ in 0..10_000 {
        if e.stats().running == 1 {
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let mut x = req(Some("a"), 0, 2);
    x.prompt = Prompt::Tokens((0..100).map(|k| (k * 13 % 256) as u32).collect());
    let x = e.submit(x).unwrap();
    let y = e.submit(req(Some("a"), 1, 6)).unwrap();
    let err = e.wait(x).unwrap_err();
    assert!(err.message().contains("KV cache"), "{}", err.message());
    let got = e.wait(y).unwrap();
    assert_eq!(e.wait(b).unwrap().usage.completion_tokens, 56);
    let alone = e.generate(req(Some("a"), 1, 6)).unwrap();
    assert_eq!(
        got.last_logits, alone.last_logits,
        "y ran on a device slot that never received its adapter"
    );
    assert_eq!(got.token_ids, alone.token_ids);
}
