//! Where adapters live while requests wait, on a tiny random model: the adapters of queued
//! requests are uploaded to free device slots before the requests are admitted (prefetch), and
//! adapters whose files hash the same share one host copy and one device slot whatever their
//! names.

mod common;

use std::path::Path;

use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, EngineStats, Prompt, Request};
use loraplex::sampling::SamplingParams;

fn req(model: &str, salt: u32, max_tokens: usize) -> Request {
    Request {
        model: Some(model.to_string()),
        prompt: Prompt::Tokens((0..9).map(|k| (k * 11 + salt * 5) % 256).collect()),
        sampling: SamplingParams {
            max_tokens,
            temperature: 0.0,
            ignore_eos: true,
            logprobs: Some(0),
            ..SamplingParams::default()
        },
        ..Request::default()
    }
}

fn engine(model: &Path, peft: &Path, tweak: impl Fn(&mut EngineConfig)) -> Engine {
    let mut cfg = EngineConfig::new(model);
    cfg.threads = 2;
    cfg.peft_source = vec![peft.to_path_buf()];
    tweak(&mut cfg);
    Engine::new(cfg).unwrap()
}

fn counts(s: &EngineStats) -> [u64; 4] {
    [
        s.adapter_admissions,
        s.adapter_admissions_resident,
        s.adapter_prefetches,
        s.device_uploads,
    ]
}

#[test]
fn a_waiting_requests_adapter_is_uploaded_before_its_admission() {
    let dir = tempfile::tempdir().unwrap();
    let (model, peft) = common::tiny_model_with_adapters(dir.path(), &["a", "b", "c"], 30);
    let e = engine(&model, &peft, |c| {
        c.max_num_seqs = 1;
        c.max_gpu_loras = 2;
        c.max_cpu_loras = 3;
    });
    // b, c, a run in turn: all three loaded on the host; b, the least recently used, left its
    // device slot to a.
    for name in ["b", "c", "a"] {
        e.generate(req(name, 0, 1)).unwrap();
    }
    // (Whether those three were prefetched depends on when their loads finished.)
    let before = counts(&common::idle_stats(&e));
    assert_eq!(before[0], 3);
    // A long request of c runs alone (one sequence per step); b's request waits behind it.
    let long = e.submit(req("c", 1, 300)).unwrap();
    let short = e.submit(req("b", 2, 6)).unwrap();
    e.wait(long).unwrap();
    let got = e.wait(short).unwrap();
    let after = counts(&common::idle_stats(&e));
    let diff: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    // Both admissions found their adapters resident: c was, b was prefetched into a's idle
    // slot while the long request ran; one upload in all.
    assert_eq!(
        diff,
        [2, 2, 1, 1],
        "admissions, resident, prefetches, uploads"
    );
    let stats = e.stats_json();
    assert_eq!(stats["device_cache"]["prefetches"], after[2]);
    assert_eq!(stats["device_cache"]["admissions_resident"], after[1]);
    let metrics = e.metrics_text();
    assert!(
        metrics.contains(&format!(
            "loraplex:adapter_prefetches_total{{model_name=\"model\"}} {}",
            after[2]
        )),
        "{metrics}"
    );
    // The prefetched weights are the right ones: the same bits as on a fresh engine.
    let fresh = engine(&model, &peft, |_| {});
    assert!(common::same_output_bits(
        &got,
        &fresh.generate(req("b", 2, 6)).unwrap()
    ));
}

#[test]
fn adapters_with_the_same_files_share_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (model, peft) = common::tiny_model_with_adapters(dir.path(), &["a", "b"], 30);
    // "a-copy" holds the same bytes as "a" under another name.
    let copy = peft.join("a-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in std::fs::read_dir(peft.join("a")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
    }
    let e = engine(&model, &peft, |c| c.max_gpu_loras = 2);
    let a = e.generate(req("a", 3, 8)).unwrap();
    let a_copy = e.generate(req("a-copy", 3, 8)).unwrap();
    assert!(common::same_output_bits(&a, &a_copy));
    let s = common::idle_stats(&e);
    assert_eq!(s.device_uploads, 1, "the copy was uploaded again");
    let j = e.stats_json();
    assert_eq!(j["host_cache"]["entries"], 2);
    assert_eq!(j["host_cache"]["distinct_copies"], 1, "{}", j["host_cache"]);
    let slot = |name: &str| {
        j["adapters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .unwrap()["device_slot"]
            .clone()
    };
    assert!(
        slot("a").is_u64() && slot("a") == slot("a-copy"),
        "{}",
        j["adapters"]
    );
    // Another adapter still takes its own slot and copy.
    let b = e.generate(req("b", 3, 8)).unwrap();
    assert!(!common::same_output_bits(&a, &b));
    assert_eq!(common::idle_stats(&e).device_uploads, 2);
    assert_eq!(e.stats_json()["host_cache"]["distinct_copies"], 2);
    // A mixture of the two names uses the one slot twice: the delta doubles, like scale 2.
    let mut mix = req("", 3, 8);
    mix.model = None;
    mix.adapters = vec![
        loraplex::engine::AdapterMix {
            name: "a".into(),
            scale: 1.0,
        },
        loraplex::engine::AdapterMix {
            name: "a-copy".into(),
            scale: 1.0,
        },
    ];
    let mut twice = mix.clone();
    twice.adapters = vec![loraplex::engine::AdapterMix {
        name: "a".into(),
        scale: 2.0,
    }];
    let (m, t) = (e.generate(mix).unwrap(), e.generate(twice).unwrap());
    assert_eq!(m.token_ids, t.token_ids);
}
