//! Engine behaviour on a tiny random model generated here: batching invariance, preemption,
//! sampling determinism, stops, cancellation, bad inputs.

mod common;

use std::time::Duration;

use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, FinishReason, Prompt, Request};
use loraplex::sampling::SamplingParams;
use loraplex::tokenizer::ChatMessage;
use loraplex::ErrorCode;
use serde_json::json;

use common::tiny_engine;

fn greedy(n: usize) -> SamplingParams {
    SamplingParams {
        max_tokens: n,
        temperature: 0.0,
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

fn prompt(i: usize) -> Vec<u32> {
    (0..(3 + i * 5))
        .map(|k| ((k * 37 + i * 11) % 256) as u32)
        .collect()
}

#[test]
fn batch_of_8_starting_at_different_times_matches_alone() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path(), |c| c.max_batch_tokens = 24);
    const GEN: usize = 200;
    let alone: Vec<_> = (0..8)
        .map(|i| {
            let mut p = greedy(GEN);
            p.return_last_logits = true;
            engine
                .generate(Request::new(Prompt::Tokens(prompt(i)), p))
                .unwrap()
        })
        .collect();
    // Alone, a request takes one step per 24-token prefill chunk, then one per generated token
    // after the first; a step never exceeds max_batch_tokens rows.
    let st = engine.stats();
    let want_steps: usize = (0..8).map(|i| prompt(i).len().div_ceil(24) + GEN - 1).sum();
    assert_eq!(
        st.steps, want_steps as u64,
        "steps run one request at a time"
    );
    assert_eq!((st.max_step_seqs, st.max_step_rows), (1, 24));
    let step = engine.stats_json()["step"].clone();
    assert_eq!(
        (&step["max_seqs"], &step["max_rows"], &step["last_rows"]),
        (&json!(1), &json!(24), &json!(1)),
        "stats JSON reports the step sizes: {step}"
    );
    assert_eq!(
        (st.last_step_seqs, st.last_step_rows),
        (1, 1),
        "a decode step"
    );
    // Start the 8 requests at different steps, so prefill chunks and decode rows mix, and check
    // that all 8 ran in one step.
    common::until_shared(&engine, 8, 5, || {
        let mut ids = Vec::new();
        for i in 0..8 {
            let mut p = greedy(GEN);
            p.return_last_logits = true;
            let steps = engine.stats().steps;
            ids.push(
                engine
                    .submit(Request::new(Prompt::Tokens(prompt(i)), p))
                    .unwrap(),
            );
            // Next submit after the worker ran a step (bounded, in case the worker died: the
            // wait below then reports the error).
            for _ in 0..100_000 {
                if engine.stats().steps != steps {
                    break;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        for (i, id) in ids.into_iter().enumerate() {
            let o = engine.wait(id).unwrap();
            assert_eq!(
                o.token_ids, alone[i].token_ids,
                "request {i} differs in a batch"
            );
            assert_eq!(
                o.last_logits, alone[i].last_logits,
                "request {i} logits differ in a batch (bitwise)"
            );
            assert_eq!(o.finish_reason, Some(FinishReason::Length));
            assert_eq!(o.usage.completion_tokens, GEN);
            assert_eq!(o.usage.prompt_tokens, prompt(i).len());
        }
    });
    assert!(
        engine.stats().max_step_rows <= 24,
        "a step exceeded max_batch_tokens"
    );
}

#[test]
fn preemption_under_kv_pressure_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = common::TinySpec::default();
    // KV for ~64 tokens: 8 requests of ~40 tokens cannot all fit at once.
    let bytes_per_token = 2 * spec.layers * spec.kv_heads * spec.head_dim * 4;
    let engine = tiny_engine(dir.path(), |c| {
        c.kv_block_size = 4;
        c.kv_cache_bytes = bytes_per_token * 64;
    });
    let alone: Vec<_> = (0..8)
        .map(|i| {
            engine
                .generate(Request::new(Prompt::Tokens(prompt(i % 4)), greedy(16)))
                .unwrap()
        })
        .collect();
    let ids: Vec<_> = (0..8)
        .map(|i| {
            engine
                .submit(Request::new(Prompt::Tokens(prompt(i % 4)), greedy(16)))
                .unwrap()
        })
        .collect();
    for (i, id) in ids.into_iter().enumerate() {
        let o = engine.wait(id).unwrap();
        assert_eq!(
            o.token_ids, alone[i].token_ids,
            "request {i} changed by preemption"
        );
    }
    // A request that can never fit is failed with a clear error, and the engine keeps serving.
    let err = engine
        .generate(Request::new(Prompt::Tokens(prompt(0)), greedy(200)))
        .unwrap_err();
    assert!(err.message().contains("KV cache"), "{}", err.message());
    assert!(engine
        .generate(Request::new(Prompt::Tokens(prompt(1)), greedy(4)))
        .is_ok());
}

#[test]
fn seeded_sampling_is_reproducible_and_batch_independent() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path(), |_| {});
    let params = |seed| SamplingParams {
        max_tokens: 24,
        temperature: 1.0,
        top_p: 0.95,
        top_k: 50,
        seed: Some(seed),
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let a = engine
        .generate(Request::new(Prompt::Tokens(prompt(2)), params(42)))
        .unwrap();
    let ids: Vec<_> = (0..4)
        .map(|i| {
            engine
                .submit(Request::new(
                    Prompt::Tokens(prompt(2)),
                    params(if i == 2 { 42 } else { i }),
                ))
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = ids.into_iter().map(|id| engine.wait(id).unwrap()).collect();
    assert_eq!(outs[2].token_ids, a.token_ids);
    assert!(outs
        .iter()
        .enumerate()
        .any(|(i, o)| i != 2 && o.token_ids != a.token_ids));
}

#[test]
fn stops_logprobs_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path(), |_| {});
    let full = engine
        .generate(Request::new(Prompt::Text("hello".into()), greedy(12)))
        .unwrap();
    assert_eq!(full.token_ids.len(), 12);
    // Stop token id: ends at its first occurrence, finish reason stop.
    let stop_tok = full.token_ids[5];
    let first = full.token_ids.iter().position(|&t| t == stop_tok).unwrap();
    let mut p = greedy(12);
    p.stop_token_ids = vec![stop_tok];
    let o = engine
        .generate(Request::new(Prompt::Text("hello".into()), p))
        .unwrap();
    assert_eq!(o.finish_reason, Some(FinishReason::Stop));
    assert_eq!(o.token_ids, full.token_ids[..=first].to_vec());
    // Stop string: text ends before it, never includes it.
    if full.text.chars().count() > 4 {
        let stop: String = full.text.chars().skip(2).take(2).collect();
        let mut p = greedy(12);
        p.stop = vec![stop.clone()];
        let o = engine
            .generate(Request::new(Prompt::Text("hello".into()), p))
            .unwrap();
        assert_eq!(o.finish_reason, Some(FinishReason::Stop));
        assert!(!o.text.contains(&stop));
        assert!(full.text.starts_with(&o.text));
    }
    // Logprobs: one entry per token with top-n alternatives, greedy token first.
    let mut p = greedy(6);
    p.logprobs = Some(3);
    let o = engine
        .generate(Request::new(Prompt::Text("hello".into()), p))
        .unwrap();
    assert_eq!(o.logprobs.len(), 6);
    for lp in &o.logprobs {
        assert_eq!(lp.top.len(), 3);
        assert_eq!(lp.top[0].0, lp.token);
        assert!(lp.logprob <= 0.0);
    }
    // Chat messages go through the chat template.
    let o = engine
        .generate(Request::new(
            Prompt::Chat(vec![ChatMessage {
                role: "user".into(),
                content: "hi".into(),
            }]),
            greedy(3),
        ))
        .unwrap();
    assert!(o.usage.prompt_tokens > 5);
}

#[test]
fn cancel_and_bad_inputs_keep_the_engine_serving() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path(), |c| c.max_model_len = 64);
    let id = engine
        .submit(Request::new(Prompt::Tokens(prompt(1)), greedy(10_000)))
        .unwrap();
    engine.cancel(id).unwrap();
    engine.cancel(id).unwrap();
    let o = engine.wait(id).unwrap();
    assert_eq!(o.finish_reason, Some(FinishReason::Cancelled));
    assert_eq!(
        engine.poll(id, Duration::ZERO).unwrap_err().code(),
        ErrorCode::NotFound
    );

    let long = Request::new(Prompt::Tokens(vec![1; 64]), greedy(4));
    let e = engine.submit(long).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(e.message().contains("max_model_len 64"), "{}", e.message());
    let e = engine
        .submit(Request::new(Prompt::Tokens(vec![9999]), greedy(4)))
        .unwrap_err();
    assert!(e.message().contains("9999"), "{}", e.message());
    let e = engine
        .submit(Request::new(Prompt::Tokens(vec![]), greedy(4)))
        .unwrap_err();
    assert!(e.message().contains("prompt"), "{}", e.message());
    let mut p = greedy(4);
    p.temperature = -1.0;
    let e = engine
        .submit(Request::new(Prompt::Tokens(vec![1, 2]), p))
        .unwrap_err();
    assert!(e.message().contains("temperature"), "{}", e.message());
    let mut p = greedy(4);
    p.top_p = 1.5;
    let e = engine
        .submit(Request::new(Prompt::Tokens(vec![1, 2]), p))
        .unwrap_err();
    assert!(e.message().contains("top_p"), "{}", e.message());
    let r = Request {
        model: Some("nope".into()),
        prompt: Prompt::Tokens(vec![1]),
        sampling: greedy(2),
        ..Request::default()
    };
    assert_eq!(engine.submit(r).unwrap_err().code(), ErrorCode::NotFound);
    // Length is capped by max_model_len.
    let o = engine
        .generate(Request::new(Prompt::Tokens(vec![1; 60]), greedy(100)))
        .unwrap();
    assert_eq!(o.finish_reason, Some(FinishReason::Length));
    assert_eq!(o.usage.completion_tokens, 4);
    // Dropping the engine with a request in flight must cancel it and join the worker: this
    // fails by hanging or panicking (the C-level check of the final outputs is in
    // tests/ffi_contract.rs).
    let _in_flight = engine
        .submit(Request::new(Prompt::Tokens(prompt(0)), greedy(10_000)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    drop(engine);
}

#[test]
fn bad_models_give_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let e = Engine::new(EngineConfig::new(&missing)).err().unwrap();
    assert!(e.message().contains("nothing-here"), "{}", e.message());

    let m = dir.path().join("m");
    common::write_tiny_model(&m, common::TinySpec::default());
    let cfg_path = m.join("config.json");
    let good = std::fs::read_to_string(&cfg_path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    let e = Engine::new(EngineConfig::new(&m)).err().unwrap();
    assert!(e.message().contains("hidden_size"), "{}", e.message());

    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    let e = Engine::new(EngineConfig::new(&m)).err().unwrap();
    assert_eq!(e.code(), ErrorCode::Unsupported);
    assert!(e.message().contains("GPT2LMHeadModel"), "{}", e.message());
    std::fs::write(&cfg_path, &good).unwrap();

    let st = m.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let e = Engine::new(EngineConfig::new(&m)).err().unwrap();
    assert!(e.message().contains("model.safetensors"), "{}", e.message());
    std::fs::remove_file(&st).unwrap();
    let e = Engine::new(EngineConfig::new(&m)).err().unwrap();
    assert!(e.message().contains("model.safetensors"), "{}", e.message());

    let mut c = EngineConfig::new(&m);
    c.max_num_seqs = 0;
    let e = Engine::new(c).err().unwrap();
    assert!(e.message().contains("max_num_seqs"), "{}", e.message());
    let mut c = EngineConfig::new(&m);
    c.device = "cuda:0".into();
    #[cfg(not(feature = "cuda"))]
    assert_eq!(Engine::new(c).err().unwrap().code(), ErrorCode::Unsupported);
    // With the CUDA backend compiled in: a DEVICE error where no driver or device is found
    // (this test does not need a GPU; where one is, the engine may start).
    #[cfg(feature = "cuda")]
    if let Err(e) = Engine::new(c) {
        assert_eq!(e.code(), ErrorCode::Device, "{}", e.message());
        assert!(e.message().contains("cuda:0"), "{}", e.message());
    }
}

#[test]
fn memory_budget_sizes_the_kv_cache_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_model(dir.path(), common::TinySpec::default());
    let mut cfg = EngineConfig::new(dir.path());
    cfg.threads = 1;
    cfg.memory_budget_bytes = 64 << 20;
    let e = Engine::new(cfg.clone()).unwrap();
    let mem = e.stats_json()["memory"].clone();
    let part = |k: &str| mem[k].as_u64().unwrap();
    let others = part("weights_bytes")
        + part("host_adapter_cache_bytes")
        + part("device_adapter_cache_bytes")
        + part("activations_bytes");
    let kv = part("kv_cache_bytes");
    assert!(kv > 0 && others + kv <= 64 << 20, "{mem}");
    // What is left over is less than one KV block.
    let spec = common::TinySpec::default();
    let block = 2 * spec.layers * 16 * spec.kv_heads * spec.head_dim * 4;
    assert!((64 << 20) - (others + kv) < block as u64, "{mem}");
    assert!(e
        .generate(Request::new(Prompt::Tokens(prompt(1)), greedy(4)))
        .is_ok());
    drop(e);
    cfg.memory_budget_bytes = 1 << 20;
    let err = Engine::new(cfg).err().unwrap();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(
        err.message().contains("memory_budget_bytes 1048576"),
        "{}",
        err.message()
    );
}

#[test]
fn sharded_and_bf16_safetensors_load_like_the_single_file() {
    use loraplex::model::ModelFiles;
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single");
    common::write_tiny_model(&single, common::TinySpec::default());
    let whole = ModelFiles::load(&single).unwrap();
    // Split the same tensors over two shards with an index.
    let sharded = dir.path().join("sharded");
    common::write_tiny_model(&sharded, common::TinySpec::default());
    std::fs::remove_file(sharded.join("model.safetensors")).unwrap();
    let mut names: Vec<&String> = whole.tensors.keys().collect();
    names.sort();
    let mut map = serde_json::Map::new();
    let mut shards: [Vec<common::NamedTensor>; 2] = [Vec::new(), Vec::new()];
    for (i, n) in names.iter().enumerate() {
        let t = &whole.tensors[*n];
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        map.insert(n.to_string(), serde_json::json!(file));
        shards[i % 2].push((n.to_string(), t.shape.clone(), t.to_f32_vec()));
    }
    for (k, s) in shards.iter().enumerate() {
        common::write_safetensors(
            &sharded.join(format!("model-0000{}-of-00002.safetensors", k + 1)),
            s,
        );
    }
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let e1 = Engine::new(EngineConfig::new(&single)).unwrap();
    let e2 = Engine::new(EngineConfig::new(&sharded)).unwrap();
    let mut p = greedy(8);
    p.return_last_logits = true;
    let a = e1
        .generate(Request::new(Prompt::Tokens(prompt(3)), p.clone()))
        .unwrap();
    let b = e2
        .generate(Request::new(Prompt::Tokens(prompt(3)), p.clone()))
        .unwrap();
    assert_eq!(a.last_logits, b.last_logits);
    // A shard named in the index but missing is an error naming it.
    std::fs::remove_file(sharded.join("model-00002-of-00002.safetensors")).unwrap();
    let err = Engine::new(EngineConfig::new(&sharded)).err().unwrap();
    assert!(
        err.message().contains("model-00002-of-00002.safetensors"),
        "{}",
        err.message()
    );

    // BF16 safetensors: tensors stored as bf16 load and run (values are the bf16-rounded ones).
    let bf = dir.path().join("bf16");
    common::write_tiny_model(&bf, common::TinySpec::default());
    let bytes: Vec<Vec<u8>> = names
        .iter()
        .map(|n| {
            whole.tensors[*n]
                .to_f32_vec()
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect()
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = names
        .iter()
        .zip(&bytes)
        .map(|(n, b)| {
            let shape = whole.tensors[*n].shape.clone();
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, shape, b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &bf.join("model.safetensors")).unwrap();
    let loaded = ModelFiles::load(&bf).unwrap();
    let t = &loaded.tensors["model.layers.0.self_attn.q_proj.weight"];
    assert_eq!(t.dtype(), Some(loraplex::tensor::DType::BF16));
    let e3 = Engine::new(EngineConfig::new(&bf)).unwrap();
    let c = e3
        .generate(Request::new(Prompt::Tokens(prompt(3)), p))
        .unwrap();
    let (la, lc) = (a.last_logits.unwrap(), c.last_logits.unwrap());
    let max = la
        .iter()
        .zip(&lc)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        max > 0.0 && max < 0.05 * common::std_dev(&la) + 0.05,
        "bf16 logits drift {max}"
    );
}
