//! The capacity planner (`plan_capacity`) against real engines:
//! * its byte breakdown equals `stats_json()["memory"]` of an engine built with the same config
//!   (weights bytes exactly), for every weight format, on the tiny fixture (dense safetensors,
//!   quantized at load with per-matrix fallbacks), a tied tiny model, a toy GGUF whose fused
//!   weights mix F32/F16 with ggml blocks of different types, and the SmolLM2 Q4_1 GGUF;
//! * each knob's largest value is exact: it fits and one more does not, checked against
//!   `MemoryPlan::size` directly and, at the boundary, against real engines;
//! * `required_bytes` is the smallest budget that fits;
//! * bad input is INVALID_ARGUMENT naming the field.

mod common;
mod gguf_support;

use std::path::PathBuf;

use loraplex::backend::WeightFormat;
use loraplex::cache::capacity::KnobBound;
use loraplex::cache::plan::ModelLen;
use loraplex::cache::MemoryPlan;
use loraplex::config::EngineConfig;
use loraplex::engine::Engine;
use loraplex::model::ModelConfig;
use loraplex::{plan_capacity, ErrorCode, Workload};

use common::{write_tiny_model, TinySpec};

fn tiny_fixture() -> Option<PathBuf> {
    Some(common::shared_dir()?.join("fixtures/tiny-llama/model"))
}

fn base_cfg(model: impl Into<PathBuf>) -> EngineConfig {
    let mut c = EngineConfig::new(model);
    c.threads = 2;
    c.max_num_seqs = 4;
    c.max_batch_tokens = 64;
    c.max_cpu_loras = 3;
    c.max_gpu_loras = 2;
    c.max_lora_rank = 8;
    c
}

fn workload(json: &str) -> Workload {
    Workload::from_json(json).unwrap()
}

/// Plans `w` on `cfg`, builds the engine the plan describes, and checks the plan's breakdown
/// against the engine's.
fn check_against_engine(cfg: &EngineConfig, w: &Workload) -> loraplex::CapacityPlan {
    let plan = plan_capacity(cfg, w).unwrap();
    let engine = Engine::new(w.apply(cfg).unwrap()).unwrap();
    let stats = engine.stats_json();
    let want = &stats["memory"];
    let got = serde_json::to_value(plan.memory.expect("the engine started")).unwrap();
    assert_eq!(
        &got,
        want,
        "{} {}",
        cfg.model.display(),
        cfg.weight_format.name()
    );
    assert_eq!(plan.kv.blocks, engine.stats().kv_blocks_total);
    assert_eq!(plan.workload.max_model_len, engine.max_model_len());
    assert_eq!(plan.total_bytes, plan.memory.map(|m| m.total()));
    assert_eq!(
        plan.total_bytes.map(|t| t as u64),
        stats["memory_total_bytes"].as_u64()
    );
    plan
}

#[test]
fn breakdown_equals_the_engine_for_every_weight_format() {
    let Some(tiny) = tiny_fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tied = dir.path().join("tied");
    write_tiny_model(
        &tied,
        TinySpec {
            hidden: 64,
            inter: 256,
            tied: true,
            ..TinySpec::default()
        },
    );
    let w = workload(r#"{"max_num_seqs": 3, "max_model_len": 100, "max_lora_rank": 4}"#);
    for model in [tiny.clone(), tied] {
        let mut weights = Vec::new();
        for format in WeightFormat::ALL {
            let mut cfg = base_cfg(&model);
            cfg.weight_format = format;
            let plan = check_against_engine(&cfg, &w);
            assert!(plan.fits, "{:?}", plan.reason);
            assert_eq!(plan.workload.weight_dtype, format.name());
            weights.push(plan.memory.unwrap().weights_bytes);
        }
        // f32 > bf16 > q8_0 > q4_k: each format really changes the count.
        assert!(
            weights.windows(2).all(|p| p[0] > p[1]),
            "{}: {weights:?}",
            model.display()
        );
    }
    // Under a budget the KV cache takes the rest; the breakdown still matches.
    let mut cfg = base_cfg(&tiny);
    cfg.weight_format = WeightFormat::Q8_0;
    let free = plan_capacity(&cfg, &w).unwrap();
    cfg.memory_budget_bytes = free.required_bytes + 5 * free.kv.block_bytes + 3;
    let plan = check_against_engine(&cfg, &w);
    assert!(plan.fits);
    assert_eq!(plan.kv.blocks, plan.kv.blocks_needed + 5);
}

#[test]
fn breakdown_equals_the_engine_for_a_gguf_of_mixed_types() {
    // Per layer: q, k F32 and v F16 (a dense fused qkv), o BF16, gate Q8_0 with up Q4_0 (a
    // fused weight kept in blocks of two types), down Q4_1; an untied and a tied head.
    let dir = tempfile::tempdir().unwrap();
    for tied in [false, true] {
        let path = gguf_support::toy(tied)
            .writer
            .write(dir.path(), &format!("toy-{tied}.gguf"));
        let mut weights = Vec::new();
        for format in WeightFormat::ALL {
            let mut cfg = base_cfg(&path);
            cfg.weight_format = format;
            let plan = check_against_engine(&cfg, &workload(r#"{"max_model_len": 64}"#));
            weights.push(plan.memory.unwrap().weights_bytes);
        }
        assert!(weights.windows(2).all(|p| p[0] > p[1]), "{weights:?}");
    }
}

#[test]
fn breakdown_equals_the_engine_for_the_smollm2_gguf() {
    let Some(gguf) = common::smollm2_gguf() else {
        return;
    };
    let w = workload(r#"{"max_model_len": 256, "max_num_seqs": 2}"#);
    for format in WeightFormat::ALL {
        let mut cfg = base_cfg(&gguf);
        cfg.weight_format = format;
        let plan = check_against_engine(&cfg, &w);
        assert!(plan.fits, "{:?}", plan.reason);
        // SmolLM2-135M: 30 layers, 3 KV heads of 64, 16-token blocks, f32 K and V.
        assert_eq!(plan.kv.block_bytes, 2 * 30 * 16 * 3 * 64 * 4);
        assert_eq!(plan.workload.max_position_embeddings, 8192);
    }
}

/// The planner's fit rule restated on `MemoryPlan::size`: the engine starts and its KV cache
/// holds `max_num_seqs` sequences of `max_model_len` tokens in whole blocks.
fn fits_by_hand(cfg: &EngineConfig, model: &ModelConfig, weights: usize) -> bool {
    let Ok(len) = ModelLen::resolve(cfg.max_model_len, model) else {
        return false;
    };
    if cfg.validate().is_err() {
        return false;
    }
    match MemoryPlan::size(cfg, model, len, weights) {
        Ok(s) => s.kv.num_blocks >= cfg.max_num_seqs * len.tokens.div_ceil(cfg.kv_block_size),
        Err(_) => false,
    }
}

#[test]
fn largest_knobs_are_exact() {
    let Some(tiny) = tiny_fixture() else { return };
    let model = ModelConfig::from_hf_dir(&tiny).unwrap();
    let mut cfg = base_cfg(&tiny);
    cfg.weight_format = WeightFormat::BF16;
    let w0 = workload(r#"{"max_num_seqs": 2, "max_model_len": 128, "max_lora_rank": 8}"#);
    let need = plan_capacity(&cfg, &w0).unwrap().required_bytes;
    // A budget with room to spare for every knob.
    let mut w = w0.clone();
    w.memory_budget_bytes = Some(need * 3);
    let plan = plan_capacity(&cfg, &w).unwrap();
    assert!(plan.fits);
    let weights = plan.memory.unwrap().weights_bytes;
    let planned = w.apply(&cfg).unwrap();
    let l = plan.largest;
    type Set = fn(&mut EngineConfig, usize);
    let knobs: [(&str, loraplex::cache::capacity::KnobLimit, Set); 6] = [
        ("max_lora_rank", l.max_lora_rank, |c, v| c.max_lora_rank = v),
        ("max_gpu_loras", l.max_gpu_loras, |c, v| c.max_gpu_loras = v),
        ("max_cpu_loras", l.max_cpu_loras, |c, v| c.max_cpu_loras = v),
        ("max_num_seqs", l.max_num_seqs, |c, v| c.max_num_seqs = v),
        ("max_model_len", l.max_model_len, |c, v| c.max_model_len = v),
        ("max_batch_tokens", l.max_batch_tokens, |c, v| {
            c.max_batch_tokens = v
        }),
    ];
    for (name, limit, set) in knobs {
        let v = limit.value.unwrap_or_else(|| panic!("{name}: {limit:?}"));
        let mut c = planned.clone();
        set(&mut c, v);
        assert!(fits_by_hand(&c, &model, weights), "{name} = {v} must fit");
        set(&mut c, v + 1);
        assert!(
            !fits_by_hand(&c, &model, weights),
            "{name} = {} must not fit",
            v + 1
        );
        // The planner agrees at the boundary, through its own workload path.
        let mut at = serde_json::to_value(&w).unwrap();
        at[name] = v.into();
        let p = plan_capacity(&cfg, &workload(&at.to_string())).unwrap();
        assert!(p.fits, "{name} = {v}: {:?}", p.reason);
        match limit.bound {
            KnobBound::MaxCpuLoras => assert_eq!(v, planned.max_cpu_loras),
            KnobBound::MaxPositionEmbeddings => assert_eq!(v, model.max_position_embeddings),
            KnobBound::MemoryBudget | KnobBound::KvCache => {
                at[name] = (v + 1).into();
                let p = plan_capacity(&cfg, &workload(&at.to_string())).unwrap();
                assert!(!p.fits, "{name} = {}", v + 1);
                let reason = p.reason.unwrap();
                let part = match limit.bound {
                    KnobBound::MemoryBudget => "memory_budget_bytes",
                    _ => "KV cache",
                };
                assert!(reason.contains(part), "{name}: {reason}");
            }
            other => panic!("{name}: unexpected bound {other:?}"),
        }
    }
    // Budget-bound knobs leave the KV cache short; the context hits the model's limit first.
    assert_eq!(l.max_num_seqs.bound, KnobBound::KvCache);
    assert_eq!(l.max_gpu_loras.bound, KnobBound::MaxCpuLoras);

    // A real engine at the boundary: `max_num_seqs` sequences of 128 tokens fit its KV cache,
    // one more does not.
    let seqs = l.max_num_seqs.value.unwrap();
    let per_seq = 128usize.div_ceil(planned.kv_block_size);
    for (n, holds) in [(seqs, true), (seqs + 1, false)] {
        let mut c = planned.clone();
        c.max_num_seqs = n;
        let e = Engine::new(c).unwrap();
        let blocks = e.stats().kv_blocks_total;
        assert_eq!(
            blocks >= n * per_seq,
            holds,
            "{n} sequences, {blocks} blocks"
        );
    }
    // With the KV cache fixed, the budget alone bounds the rank: the engine refuses one more.
    let mut fixed = planned.clone();
    fixed.kv_cache_bytes = plan.memory.unwrap().kv_cache_bytes;
    let p = plan_capacity(&fixed, &Workload::default()).unwrap();
    let rank = p.largest.max_lora_rank;
    assert_eq!(rank.bound, KnobBound::MemoryBudget);
    let rank = rank.value.unwrap();
    let mut c = fixed.clone();
    c.max_lora_rank = rank;
    Engine::new(c.clone()).unwrap();
    c.max_lora_rank = rank + 1;
    let e = Engine::new(c)
        .err()
        .expect("one rank more exceeds the budget");
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(e.message().contains("memory_budget_bytes"), "{e}");
}

#[test]
fn required_bytes_is_the_smallest_budget_that_fits() {
    let Some(tiny) = tiny_fixture() else { return };
    let cfg = base_cfg(&tiny);
    let w = workload(r#"{"max_num_seqs": 3, "max_model_len": 70}"#);
    let free = plan_capacity(&cfg, &w).unwrap();
    assert!(free.fits);
    // 3 sequences of 70 tokens: 5 blocks each.
    assert_eq!(free.kv.blocks_needed, 15);
    assert_eq!(free.kv.tokens_needed, 210);
    assert_eq!(free.required.kv_cache_bytes, 15 * free.kv.block_bytes);
    let mut at = w.clone();
    at.memory_budget_bytes = Some(free.required_bytes);
    let p = plan_capacity(&cfg, &at).unwrap();
    assert!(p.fits, "{:?}", p.reason);
    assert_eq!(p.memory, Some(free.required));
    at.memory_budget_bytes = Some(free.required_bytes - 1);
    let p = plan_capacity(&cfg, &at).unwrap();
    assert!(!p.fits);
    assert_eq!(p.kv.blocks, 14);
    let reason = p.reason.unwrap();
    assert!(
        reason.contains("KV cache holds 14 blocks") && reason.contains("need 15 blocks"),
        "{reason}"
    );
    // A budget below the other parts: the engine would not start; the reason lists the parts.
    let others = free.required_bytes - free.required.kv_cache_bytes;
    at.memory_budget_bytes = Some(others - 1);
    let p = plan_capacity(&cfg, &at).unwrap();
    assert!(!p.fits);
    assert_eq!(p.memory, None);
    assert_eq!(p.kv.blocks, 0);
    let reason = p.reason.unwrap();
    assert!(
        reason.contains("memory_budget_bytes") && reason.contains("weights"),
        "{reason}"
    );
}

#[test]
fn without_a_budget_only_the_kv_cache_bounds_anything() {
    let Some(tiny) = tiny_fixture() else { return };
    let cfg = base_cfg(&tiny);
    let p = plan_capacity(&cfg, &Workload::default()).unwrap();
    assert!(p.fits, "{:?}", p.reason);
    // Automatic context: the model's 2048 positions.
    assert_eq!(p.workload.max_model_len, 2048);
    let l = p.largest;
    for limit in [l.max_lora_rank, l.max_cpu_loras, l.max_batch_tokens] {
        assert_eq!((limit.value, limit.bound), (None, KnobBound::Unbounded));
    }
    // The default KV cache is capped at 1 GiB: sequences of 2048 tokens are bounded by it.
    let seqs = l.max_num_seqs;
    assert_eq!(seqs.bound, KnobBound::KvCache);
    let per_seq = 2048 / 16 * p.kv.block_bytes;
    assert_eq!(seqs.value, Some((1 << 30) / per_seq));
    // The context is bounded by the model, not memory, at 4 sequences.
    assert_eq!(
        (l.max_model_len.value, l.max_model_len.bound),
        (Some(2048), KnobBound::MaxPositionEmbeddings)
    );
}

fn expect_invalid(cfg: &EngineConfig, json: &str, needle: &str) {
    let e = Workload::from_json(json)
        .and_then(|w| plan_capacity(cfg, &w))
        .err()
        .unwrap_or_else(|| panic!("{json} must fail"));
    assert_eq!(e.code(), ErrorCode::InvalidArgument, "{json}: {e}");
    assert!(e.message().contains(needle), "{json}: {e}");
}

#[test]
fn bad_input_names_the_field() {
    let Some(tiny) = tiny_fixture() else { return };
    let cfg = base_cfg(&tiny);
    expect_invalid(&cfg, r#"{"max_num_seqs": -1}"#, "\"max_num_seqs\"");
    expect_invalid(&cfg, r#"{"max_lora_rank": "big"}"#, "\"max_lora_rank\"");
    expect_invalid(&cfg, r#"{"max_lora_rank": 1.5}"#, "\"max_lora_rank\"");
    expect_invalid(&cfg, r#"{"sequences": 4}"#, "unknown key \"sequences\"");
    expect_invalid(&cfg, "[1]", "expected a JSON object");
    expect_invalid(&cfg, "{", "workload: invalid JSON");
    expect_invalid(&cfg, r#"{"max_num_seqs": 0}"#, "max_num_seqs must be > 0");
    expect_invalid(&cfg, r#"{"max_lora_rank": 16777217}"#, "max_lora_rank");
    expect_invalid(
        &cfg,
        r#"{"max_model_len": 4096}"#,
        "max_position_embeddings 2048",
    );
    expect_invalid(
        &cfg,
        r#"{"max_gpu_loras": 4, "max_cpu_loras": 3}"#,
        "max_gpu_loras (4) must not exceed max_cpu_loras (3)",
    );
    let mut huge = cfg.clone();
    huge.kv_block_size = 1 << 25;
    expect_invalid(
        &huge,
        "",
        "kv_block_size 33554432 exceeds the planner's limit",
    );
    let mut bad = cfg.clone();
    bad.device = "tpu".into();
    expect_invalid(&bad, "", "device \"tpu\"");
    // Null and empty mean "the config's value".
    let p = plan_capacity(&cfg, &workload(r#"{"max_num_seqs": null}"#)).unwrap();
    assert_eq!(p.workload.max_num_seqs, cfg.max_num_seqs);
    assert_eq!(workload("  "), Workload::default());
    // A model that is not there is an IO error naming the path.
    let missing = base_cfg("/nonexistent/model.gguf");
    let e = plan_capacity(&missing, &Workload::default()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Io);
    assert!(e.message().contains("/nonexistent/model.gguf"), "{e}");
    let mut cuda = cfg.clone();
    cuda.device = "cuda:0".into();
    #[cfg(not(feature = "cuda"))]
    {
        let e = plan_capacity(&cuda, &Workload::default()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unsupported, "{e}");
    }
    // With the CUDA backend compiled in, a dense model plans on cuda:N with a bf16 KV cache
    // (half the bytes per block of the cpu plan).
    #[cfg(feature = "cuda")]
    {
        let on_gpu = plan_capacity(&cuda, &Workload::default()).unwrap();
        let on_cpu = plan_capacity(&cfg, &Workload::default()).unwrap();
        assert_eq!(on_gpu.kv.block_bytes * 2, on_cpu.kv.block_bytes);
    }
}
