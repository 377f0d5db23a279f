//! Loading a HuggingFace model directory accounts for every tensor and every config field the
//! engine relies on: unused tensors, Qwen2's biases, Mistral's sliding window and `eos_token_id`
//! lists are either honoured or refused with a message naming them (issue 8). Tiny random models are
//! generated here (tests/common).

mod common;

use std::path::Path;

use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, FinishReason, Prompt, Request};
use loraplex::sampling::SamplingParams;
use loraplex::ErrorCode;
use serde_json::{json, Value};

fn engine_cfg(dir: &Path) -> EngineConfig {
    let mut cfg = EngineConfig::new(dir);
    cfg.threads = 1;
    cfg
}

fn expect_err(dir: &Path, code: ErrorCode, needles: &[&str]) -> String {
    common::expect_err(Engine::new(engine_cfg(dir)), code, needles)
}

/// Rewrites `dir/config.json` with `edit` applied.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&p, v.to_string()).unwrap();
}

fn greedy(n: usize, ignore_eos: bool) -> SamplingParams {
    SamplingParams {
        max_tokens: n,
        temperature: 0.0,
        ignore_eos,
        ..SamplingParams::default()
    }
}

fn last_logits(e: &Engine) -> Vec<f32> {
    let mut p = greedy(3, true);
    p.return_last_logits = true;
    e.generate(Request::new(Prompt::Tokens(vec![5, 80, 13, 200]), p))
        .unwrap()
        .last_logits
        .unwrap()
}

#[test]
fn an_unused_tensor_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    common::write_tiny_model(&m, common::TinySpec::default());
    let mut t = common::tensors_of(&m);
    t.push((
        "model.layers.1.self_attn.q_proj.bias".into(),
        vec![32],
        vec![0.5; 32],
    ));
    common::write_safetensors(&m.join("model.safetensors"), &t);
    expect_err(
        &m,
        ErrorCode::InvalidModel,
        &["model.layers.1.self_attn.q_proj.bias", "not used"],
    );

    // The same in a sharded checkpoint: the extra tensor sits in the second shard.
    let s = dir.path().join("sharded");
    common::write_tiny_model(&s, common::TinySpec::default());
    std::fs::remove_file(s.join("model.safetensors")).unwrap();
    let mut map = serde_json::Map::new();
    let mut shards: [Vec<common::NamedTensor>; 2] = [Vec::new(), Vec::new()];
    for (i, x) in t.iter().enumerate() {
        let k = if x.0.ends_with(".bias") { 1 } else { i % 2 };
        map.insert(x.0.clone(), json!(format!("model-{k}.safetensors")));
        shards[k].push(x.clone());
    }
    for (k, shard) in shards.iter().enumerate() {
        common::write_safetensors(&s.join(format!("model-{k}.safetensors")), shard);
    }
    std::fs::write(
        s.join("model.safetensors.index.json"),
        json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    expect_err(
        &s,
        ErrorCode::InvalidModel,
        &["model.layers.1.self_attn.q_proj.bias"],
    );

    // A tensor held by two shards is ambiguous.
    let mut both = shards[0].clone();
    both.push(shards[1][0].clone());
    common::write_safetensors(&s.join("model-0.safetensors"), &both);
    expect_err(
        &s,
        ErrorCode::InvalidModel,
        &[&shards[1][0].0, "another shard"],
    );
}

#[test]
fn derivable_tensors_are_skipped_only_when_they_match() {
    let dir = tempfile::tempdir().unwrap();
    // Tied model with a duplicate lm_head equal to the embedding: loads and computes exactly what
    // the checkpoint without it computes.
    let spec = common::TinySpec {
        tied: true,
        ..common::TinySpec::default()
    };
    let plain = dir.path().join("plain");
    common::write_tiny_model(&plain, spec);
    let want = last_logits(&Engine::new(engine_cfg(&plain)).unwrap());
    let t = common::tensors_of(&plain);
    let embed = t
        .iter()
        .find(|x| x.0 == "model.embed_tokens.weight")
        .unwrap()
        .clone();

    let dup = dir.path().join("dup");
    common::write_tiny_model(&dup, spec);
    let mut with_head = t.clone();
    with_head.push(("lm_head.weight".into(), embed.1.clone(), embed.2.clone()));
    common::write_safetensors(&dup.join("model.safetensors"), &with_head);
    assert_eq!(last_logits(&Engine::new(engine_cfg(&dup)).unwrap()), want);

    // A different lm_head in a tied model would be silently replaced by transformers: refused.
    let mut other = embed.2.clone();
    other[7] += 0.25;
    with_head.pop();
    with_head.push(("lm_head.weight".into(), embed.1.clone(), other));
    common::write_safetensors(&dup.join("model.safetensors"), &with_head);
    expect_err(
        &dup,
        ErrorCode::InvalidModel,
        &["lm_head.weight", "tie_word_embeddings"],
    );

    // HF's saved RoPE buffer: skipped when it equals the frequencies from rope_theta = 10000 and
    // head_dim = 8, refused otherwise.
    let inv: Vec<f32> = (0..4)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / 8.0))
        .collect();
    let name = "model.layers.0.self_attn.rotary_emb.inv_freq";
    let mut with_buf = t.clone();
    with_buf.push((name.into(), vec![4], inv.clone()));
    common::write_safetensors(&dup.join("model.safetensors"), &with_buf);
    assert_eq!(last_logits(&Engine::new(engine_cfg(&dup)).unwrap()), want);
    with_buf.pop();
    with_buf.push((name.into(), vec![4], inv.iter().map(|f| f * 2.0).collect()));
    common::write_safetensors(&dup.join("model.safetensors"), &with_buf);
    expect_err(&dup, ErrorCode::InvalidModel, &[name, "rope_theta"]);
}

#[test]
fn a_layer_count_the_checkpoint_cannot_hold_is_refused_before_sizing() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_model(dir.path(), common::TinySpec::default());
    // 2 layers on disk (2 * 9 + 3 tensors): 1000 layers are refused by the count, before any
    // per-layer list is built (a huge count would otherwise exhaust memory first).
    edit_config(dir.path(), |c| {
        c.insert("num_hidden_layers".into(), json!(1000));
    });
    expect_err(
        dir.path(),
        ErrorCode::InvalidModel,
        &["num_hidden_layers is 1000", "too few for that many layers"],
    );
}

#[test]
fn qwen2_checkpoint_must_carry_its_biases() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_model(dir.path(), common::TinySpec::default());
    edit_config(dir.path(), |c| {
        c.insert("architectures".into(), json!(["Qwen2ForCausalLM"]));
        c.insert("model_type".into(), json!("qwen2"));
    });
    // A Llama checkpoint declared Qwen2 lacks the q/k/v biases Qwen2 adds: named, not ignored.
    expect_err(
        dir.path(),
        ErrorCode::InvalidModel,
        &["missing tensor", "self_attn.q_proj.bias"],
    );
    // Without `architectures`, model_type says it.
    edit_config(dir.path(), |c| {
        c.remove("architectures");
    });
    expect_err(dir.path(), ErrorCode::InvalidModel, &["q_proj.bias"]);
    // An unknown architecture keeps being refused naming it.
    edit_config(dir.path(), |c| {
        c.insert("architectures".into(), json!(["PhiForCausalLM"]));
    });
    expect_err(dir.path(), ErrorCode::Unsupported, &["PhiForCausalLM"]);
}

/// Last-position logits of `prompt` (3 greedy steps).
fn logits_of(e: &Engine, prompt: Vec<u32>) -> Vec<f32> {
    let mut p = greedy(3, true);
    p.return_last_logits = true;
    e.generate(Request::new(Prompt::Tokens(prompt), p))
        .unwrap()
        .last_logits
        .unwrap()
}

#[test]
fn mistral_sliding_window_is_applied_and_does_not_cap_the_length() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_model(dir.path(), common::TinySpec::default());
    let short: Vec<u32> = (0..30).map(|i| i * 7 % 256).collect();
    let long: Vec<u32> = (0..70).map(|i| i * 11 % 256).collect();
    let full = Engine::new(engine_cfg(dir.path())).unwrap();
    let (full_short, full_long) = (
        logits_of(&full, short.clone()),
        logits_of(&full, long.clone()),
    );
    drop(full);
    edit_config(dir.path(), |c| {
        c.insert("architectures".into(), json!(["MistralForCausalLM"]));
        c.insert("model_type".into(), json!("mistral"));
        c.insert("sliding_window".into(), json!(40));
    });
    // The length is bounded by max_position_embeddings (512), not the window, and stats say so.
    let e = Engine::new(engine_cfg(dir.path())).unwrap();
    assert_eq!(e.max_model_len(), 512);
    let limits = e.stats_json()["limits"].clone();
    assert_eq!(
        limits["max_model_len_bound"], "max_position_embeddings",
        "{limits}"
    );
    // Inside the window attention is unchanged (bit for bit); past it, it differs.
    assert_eq!(logits_of(&e, short.clone()), full_short);
    let windowed = logits_of(&e, long);
    assert_ne!(windowed, full_long);
    assert!(windowed.iter().all(|v| v.is_finite()));
    // Generation runs past the window.
    let o = e
        .generate(Request::new(Prompt::Tokens(short), greedy(100, true)))
        .unwrap();
    assert_eq!(o.token_ids.len(), 100);
    assert_eq!(o.finish_reason, Some(FinishReason::Length));
    drop(e);

    // A configured length above the window is fine.
    let mut cfg = engine_cfg(dir.path());
    cfg.max_model_len = 100;
    assert_eq!(Engine::new(cfg).unwrap().max_model_len(), 100);

    // `sliding_window: null` is no window.
    edit_config(dir.path(), |c| {
        c.insert("sliding_window".into(), Value::Null);
    });
    let e = Engine::new(engine_cfg(dir.path())).unwrap();
    assert_eq!(e.model_config().sliding_window, None);
    drop(e);

    // Nonsense is named.
    for bad in [json!(0), json!(-4), json!("4096"), json!(40.5)] {
        edit_config(dir.path(), |c| {
            c.insert("sliding_window".into(), bad.clone());
        });
        expect_err(dir.path(), ErrorCode::InvalidModel, &["sliding_window"]);
    }
}

#[test]
fn eos_token_id_list_stops_on_every_id() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_model(dir.path(), common::TinySpec::default());
    let prompt = Prompt::Tokens(vec![3, 100, 42, 7, 250]);
    // What the model generates with no EOS at all.
    edit_config(dir.path(), |c| {
        c.insert("eos_token_id".into(), Value::Null);
    });
    let free = Engine::new(engine_cfg(dir.path()))
        .unwrap()
        .generate(Request::new(prompt.clone(), greedy(12, false)))
        .unwrap();
    assert_eq!(free.token_ids.len(), 12, "no EOS: runs to max_tokens");
    // b: a generated token after the first, at its first occurrence; a: a token never generated.
    let k = (1..12)
        .find(|&k| !free.token_ids[..k].contains(&free.token_ids[k]))
        .expect("a token that first appears after step 0");
    let b = free.token_ids[k];
    let a = (0..259u32).find(|t| !free.token_ids.contains(t)).unwrap();
    edit_config(dir.path(), |c| {
        c.insert("eos_token_id".into(), json!([a, b]));
    });
    let e = Engine::new(engine_cfg(dir.path())).unwrap();
    assert_eq!(e.model_config().eos_token_ids, vec![a, b]);
    let o = e
        .generate(Request::new(prompt.clone(), greedy(12, false)))
        .unwrap();
    assert_eq!(o.token_ids, free.token_ids[..=k].to_vec());
    assert_eq!(o.finish_reason, Some(FinishReason::Stop));
    // With the order swapped, b still stops it (every id counts, not only the first).
    drop(e);
    edit_config(dir.path(), |c| {
        c.insert("eos_token_id".into(), json!([b, a]));
    });
    let o = Engine::new(engine_cfg(dir.path()))
        .unwrap()
        .generate(Request::new(prompt, greedy(12, false)))
        .unwrap();
    assert_eq!(o.token_ids.len(), k + 1);
    assert_eq!(o.finish_reason, Some(FinishReason::Stop));
}

#[test]
fn eos_token_id_that_is_not_a_token_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_model(dir.path(), common::TinySpec::default());
    // (value, field named, offending value shown)
    for (bad, needle, shown) in [
        (json!("258"), "eos_token_id", "\"258\""),
        (json!(258.0), "eos_token_id", "258.0"),
        (json!({"id": 258}), "eos_token_id", "{\"id\":258}"),
        (json!(-1), "eos_token_id", "-1"),
        (json!(true), "eos_token_id", "true"),
        (json!([258, "x"]), "eos_token_id[1]", "\"x\""),
        (json!([[258]]), "eos_token_id[0]", "[258]"),
    ] {
        edit_config(dir.path(), |c| {
            c.insert("eos_token_id".into(), bad.clone());
        });
        expect_err(dir.path(), ErrorCode::InvalidModel, &[needle, shown]);
    }
}
