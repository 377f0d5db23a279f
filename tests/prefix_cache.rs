//! The prefix cache on a tiny random model: outputs with cache hits are the same bits as without
//! the cache (alone and next to other traffic), the base model and each adapter generation have
//! their own blocks (a touched adapter with the same bytes keeps its generation and blocks), and
//! cached blocks are evicted (never those of running sequences) when the KV
//! cache needs room.

mod common;

use std::path::Path;

use loraplex::adapters::export::{export, ExportFormat};
use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, Output, Prompt, Request};
use loraplex::sampling::SamplingParams;

fn write_adapter(peft: &Path, name: &str, seed: u64) {
    let shape = common::tiny_shape(common::TinySpec::default());
    let a = common::random_adapter(&shape, [8; 7], seed, false, false);
    let dir = peft.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    export(&a, &shape, ExportFormat::HfSafetensors, &dir).unwrap();
}

struct Pair {
    _dir: tempfile::TempDir,
    peft: std::path::PathBuf,
    cached: Engine,
    plain: Engine,
}

/// The same model and adapters served with and without the prefix cache.
fn pair(tweak: impl Fn(&mut EngineConfig)) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let peft = dir.path().join("loras");
    common::write_tiny_model(&model, common::TinySpec::default());
    write_adapter(&peft, "ad1", 3);
    write_adapter(&peft, "ad2", 4);
    let make = |caching: bool| {
        let mut cfg = EngineConfig::new(&model);
        cfg.threads = 2;
        cfg.peft_source = vec![peft.clone()];
        cfg.max_batch_tokens = 40;
        cfg.prefix_caching = caching;
        tweak(&mut cfg);
        Engine::new(cfg).unwrap()
    };
    Pair {
        cached: make(true),
        plain: make(false),
        peft,
        _dir: dir,
    }
}

/// A system prompt of `len` tokens followed by a `salt`-specific question of 7 tokens.
fn prompt(len: usize, salt: u32) -> Vec<u32> {
    let mut p: Vec<u32> = (0..len).map(|k| ((k * 37 + 5) % 256) as u32).collect();
    p.extend((0..7).map(|k| (k * 13 + salt * 29) % 256));
    p
}

fn req(model: Option<&str>, p: Vec<u32>) -> Request {
    Request {
        model: model.map(str::to_string),
        prompt: Prompt::Tokens(p),
        sampling: SamplingParams {
            max_tokens: 12,
            temperature: 0.7,
            seed: Some(9),
            ignore_eos: true,
            logprobs: Some(2),
            return_last_logits: true,
            ..SamplingParams::default()
        },
        ..Request::default()
    }
}

fn bits(o: &Output) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    (
        o.token_ids.clone(),
        o.logprobs.iter().map(|l| l.logprob.to_bits()).collect(),
        o.last_logits
            .as_ref()
            .map(|v| v.iter().map(|x| x.to_bits()).collect())
            .unwrap_or_default(),
    )
}

/// Runs `r` on both engines; returns the prefix-cache hit tokens it got.
fn same_bits(p: &Pair, r: Request) -> u64 {
    let before = p.cached.stats().prefix_cache_hits;
    let a = p.cached.generate(r.clone()).unwrap();
    let b = p.plain.generate(r).unwrap();
    assert_eq!(bits(&a), bits(&b), "a cache hit changed the output");
    p.cached.stats().prefix_cache_hits - before
}

#[test]
fn hits_give_the_same_bits_and_are_counted() {
    let p = pair(|_| {});
    let bs = p.cached.stats().kv_block_size;
    let sys = 5 * bs + 3;
    assert_eq!(same_bits(&p, req(None, prompt(sys, 1))), 0, "cold cache");
    // Another question after the same system prompt reuses its 5 full blocks.
    assert_eq!(same_bits(&p, req(None, prompt(sys, 2))), (5 * bs) as u64);
    // The same prompt again reuses every full block before its last token.
    let total = sys + 7;
    let hit = same_bits(&p, req(None, prompt(sys, 1)));
    assert_eq!(hit, ((total - 1) / bs * bs) as u64);
    let st = common::idle_stats(&p.cached);
    assert_eq!(st.prefix_cache_queries, 3 * total as u64);
    assert!(st.prefix_cache_blocks > 0);
    assert_eq!(
        st.kv_blocks_free, st.kv_blocks_total,
        "cached blocks count as free"
    );
    let off = p.plain.stats();
    assert_eq!((off.prefix_cache_hits, off.prefix_cache_blocks), (0, 0));
    // The same counts in /metrics (vLLM's counter names) and the stats JSON.
    let metrics = p.cached.metrics_text();
    let sample = |name: &str| -> u64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(sample("vllm:prefix_cache_hits_total"), st.prefix_cache_hits);
    assert_eq!(
        sample("vllm:prefix_cache_queries_total"),
        st.prefix_cache_queries
    );
    assert!(metrics.contains("# TYPE vllm:prefix_cache_hits counter"));
    let js = p.cached.stats_json();
    assert_eq!(js["prefix_cache"]["hits"], st.prefix_cache_hits);
}

#[test]
fn the_base_and_each_adapter_generation_have_their_own_blocks() {
    let p = pair(|_| {});
    let bs = p.cached.stats().kv_block_size;
    let sys = 4 * bs;
    assert_eq!(same_bits(&p, req(Some("ad1"), prompt(sys, 1))), 0);
    assert_eq!(
        same_bits(&p, req(None, prompt(sys, 2))),
        0,
        "base must not hit ad1's blocks"
    );
    assert_eq!(
        same_bits(&p, req(Some("ad2"), prompt(sys, 3))),
        0,
        "ad2 must not hit ad1's"
    );
    assert_eq!(
        same_bits(&p, req(Some("ad1"), prompt(sys, 4))),
        (4 * bs) as u64
    );
    // A refreshed adapter is a new generation: its old blocks never serve it.
    write_adapter(&p.peft, "ad1", 77);
    p.cached.refresh().unwrap();
    p.plain.refresh().unwrap();
    assert_eq!(
        same_bits(&p, req(Some("ad1"), prompt(sys, 5))),
        0,
        "stale generation hit"
    );
    assert_eq!(
        same_bits(&p, req(Some("ad1"), prompt(sys, 6))),
        (4 * bs) as u64
    );
}

#[test]
fn hits_next_to_other_traffic_give_the_same_bits() {
    let p = pair(|_| {});
    let bs = p.cached.stats().kv_block_size;
    let sys = 3 * bs + 5;
    p.cached.generate(req(Some("ad2"), prompt(sys, 0))).unwrap();
    let batch: Vec<Request> = (1..7)
        .map(|k| {
            let model = [None, Some("ad1"), Some("ad2")][k as usize % 3];
            req(model, prompt(sys, k % 4))
        })
        .collect();
    let run = |e: &Engine| -> Vec<Output> {
        let ids: Vec<_> = batch.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
        ids.into_iter().map(|id| e.wait(id).unwrap()).collect()
    };
    let (a, b) = (run(&p.cached), run(&p.plain));
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(bits(x), bits(y), "request {k}");
    }
    assert!(p.cached.stats().prefix_cache_hits > 0);
}

#[test]
fn cached_blocks_are_evicted_for_room_and_running_sequences_keep_theirs() {
    // 12 blocks: a few prompts' worth; every new prompt evicts older cached blocks.
    let spec = common::TinySpec::default();
    let per_token = 2 * spec.layers * spec.kv_heads * spec.head_dim * 4;
    let p = pair(|c| {
        c.kv_block_size = 8;
        c.kv_cache_bytes = per_token * 8 * 12;
    });
    for round in 0..3 {
        for salt in 0..6u32 {
            let sys = 24 + salt as usize * 8;
            let mut pr = prompt(sys, salt);
            pr[0] = 200 + salt; // distinct system prompts
            same_bits(&p, req(None, pr));
        }
        let st = p.cached.stats();
        assert!(
            st.prefix_cache_blocks <= st.kv_blocks_total,
            "round {round}"
        );
    }
    // Concurrent requests under pressure (preemption and eviction at once) lose nothing.
    let batch: Vec<Request> = (0..5).map(|k| req(None, prompt(30, k))).collect();
    let run = |e: &Engine| -> Vec<Output> {
        let ids: Vec<_> = batch.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
        ids.into_iter().map(|id| e.wait(id).unwrap()).collect()
    };
    let (a, b) = (run(&p.cached), run(&p.plain));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(bits(x), bits(y));
    }
    let st = common::idle_stats(&p.cached);
    assert_eq!(st.kv_blocks_free, st.kv_blocks_total, "no block leaked");
}

#[test]
fn prompt_logprobs_are_computed_even_when_the_prefix_is_cached() {
    let p = pair(|_| {});
    let bs = p.cached.stats().kv_block_size;
    let pr = prompt(3 * bs + 2, 1);
    let with_lp = |r: Request| Request {
        sampling: SamplingParams {
            prompt_logprobs: Some(2),
            ..r.sampling
        },
        echo: true,
        ..r
    };
    p.cached.generate(req(None, pr.clone())).unwrap();
    let before = p.cached.stats().prefix_cache_hits;
    let a = p.cached.generate(with_lp(req(None, pr.clone()))).unwrap();
    let b = p.plain.generate(with_lp(req(None, pr.clone()))).unwrap();
    assert_eq!(
        p.cached.stats().prefix_cache_hits,
        before,
        "no reuse without the prompt rows"
    );
    let (pa, pb) = (a.prompt.unwrap(), b.prompt.unwrap());
    assert_eq!(pa.logprobs.len(), pr.len() - 1);
    assert_eq!(pa.logprobs, pb.logprobs);
    // Its blocks are cached all the same: the next plain request reuses them.
    assert!(same_bits(&p, req(None, pr)) > 0);
}

#[test]
fn a_touched_adapter_keeps_its_blocks_and_new_bytes_do_not() {
    let p = pair(|_| {});
    let bs = p.cached.stats().kv_block_size;
    let r = || req(Some("ad1"), prompt(4 * bs, 1));
    let generation = || {
        let js = p.cached.stats_json();
        let a = js["adapters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "ad1")
            .cloned();
        let a = a.unwrap();
        (a["generation"].as_u64().unwrap(), a["content_hash"].clone())
    };
    let first = bits(&p.plain.generate(r()).unwrap());
    assert_eq!(same_bits(&p, r()), 0, "cold cache");
    let g0 = generation();
    assert!(g0.1.is_string(), "not loaded: {g0:?}");

    // A touch and an atomic replace with the same bytes: the same generation, its blocks hit.
    let dir = p.peft.join("ad1");
    common::touch_files(&dir, 2_000_000);
    common::replace_with_same_bytes(&dir, "adapter_model.safetensors");
    let report = p.cached.refresh().unwrap();
    assert_eq!(report["changed"], serde_json::json!([]), "{report}");
    p.plain.refresh().unwrap();
    assert_eq!(generation(), g0);
    assert_eq!(
        same_bits(&p, r()),
        (4 * bs) as u64,
        "touched adapter lost its blocks"
    );
    assert_eq!(bits(&p.plain.generate(r()).unwrap()), first);

    // New bytes: a new generation with the new weights, the old blocks never hit.
    write_adapter(&p.peft, "ad1", 77);
    let report = p.cached.refresh().unwrap();
    assert_eq!(report["changed"], serde_json::json!(["ad1"]), "{report}");
    p.plain.refresh().unwrap();
    assert_eq!(same_bits(&p, r()), 0, "stale generation hit");
    assert_ne!(
        bits(&p.plain.generate(r()).unwrap()),
        first,
        "old weights served"
    );
    let g1 = generation();
    assert!(g1.0 > g0.0 && g1.1 != g0.1, "{g0:?} -> {g1:?}");
}
