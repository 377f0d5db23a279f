//! Adapter mixtures through the engine on a tiny random model: a request naming several adapters
//! with scales runs on `W + Σ sᵢ·Bᵢ·Aᵢ` (checked against one adapter whose rank holds both,
//! i.e. the merged delta), a one-adapter mixture at scale 1 is bitwise the adapter itself,
//! mixture rows are bitwise the same in a mixed batch as alone, the prefix cache keeps mixtures
//! apart, and bad mixtures are refused naming the field.

mod common;

use loraplex::adapters::export::{export, ExportFormat};
use loraplex::adapters::{LoraModule, NormalizedAdapter};
use loraplex::config::EngineConfig;
use loraplex::engine::{AdapterMix, Engine, Output, Prompt, Request};
use loraplex::sampling::SamplingParams;
use loraplex::ErrorCode;

const W_A: f32 = 0.7;
const W_B: f32 = -0.45;

/// The adapter whose delta is `w_a·Δa + w_b·Δb`: ranks stacked (`A = [A_a; A_b]`), the scales
/// folded into `B = [w_a·s_a·B_a | w_b·s_b·B_b]`, own scale 1.
fn stacked(a: &NormalizedAdapter, b: &NormalizedAdapter) -> NormalizedAdapter {
    let layers = a
        .layers
        .iter()
        .zip(&b.layers)
        .map(|(ma, mb)| {
            std::array::from_fn(|t| match (&ma[t], &mb[t]) {
                (Some(x), Some(y)) => Some(stack_module(x, y)),
                _ => None,
            })
        })
        .collect();
    NormalizedAdapter {
        name: "stacked".into(),
        layers,
        ..a.clone()
    }
}

fn stack_module(x: &LoraModule, y: &LoraModule) -> LoraModule {
    let rank = x.rank + y.rank;
    let mut a = x.a.clone();
    a.extend_from_slice(&y.a);
    let mut b = Vec::with_capacity(x.out_dim * rank);
    for o in 0..x.out_dim {
        b.extend(
            x.b[o * x.rank..(o + 1) * x.rank]
                .iter()
                .map(|v| v * W_A * x.scale),
        );
        b.extend(
            y.b[o * y.rank..(o + 1) * y.rank]
                .iter()
                .map(|v| v * W_B * y.scale),
        );
    }
    LoraModule {
        rank,
        a,
        b,
        scale: 1.0,
        ..x.clone()
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    engine: Engine,
}

/// A tiny model with adapters `a`, `b`, `c` and `ab` (= the stacked `W_A·a + W_B·b`).
fn setup(tweak: impl Fn(&mut EngineConfig)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let peft = dir.path().join("loras");
    let spec = common::TinySpec::default();
    common::write_tiny_model(&model, spec);
    let shape = common::tiny_shape(spec);
    let a = common::random_adapter(&shape, [4; 7], 21, false, false);
    let b = common::random_adapter(&shape, [4; 7], 22, false, false);
    let c = common::random_adapter(&shape, [8; 7], 23, false, false);
    let ab = stacked(&a, &b);
    for (name, ad) in [("a", &a), ("b", &b), ("c", &c), ("ab", &ab)] {
        export(ad, &shape, ExportFormat::HfSafetensors, &peft.join(name)).unwrap();
    }
    let mut cfg = EngineConfig::new(&model);
    cfg.threads = 2;
    cfg.peft_source = vec![peft];
    tweak(&mut cfg);
    Setup {
        engine: Engine::new(cfg).unwrap(),
        _dir: dir,
    }
}

fn req(model: Option<&str>, mix: &[(&str, f32)], salt: u32, max_tokens: usize) -> Request {
    Request {
        model: model.map(str::to_string),
        prompt: Prompt::Tokens(
            (0..11 + salt % 5)
                .map(|k| (k * 17 + salt * 7) % 256)
                .collect(),
        ),
        sampling: SamplingParams {
            max_tokens,
            temperature: 0.0,
            ignore_eos: true,
            logprobs: Some(0),
            return_last_logits: true,
            ..SamplingParams::default()
        },
        adapters: mix
            .iter()
            .map(|&(name, scale)| AdapterMix {
                name: name.into(),
                scale,
            })
            .collect(),
        ..Request::default()
    }
}

#[test]
fn a_mixture_is_the_merged_delta() {
    let s = setup(|_| {});
    for salt in 0..3 {
        let mix = s
            .engine
            .generate(req(None, &[("a", W_A), ("b", W_B)], salt, 1))
            .unwrap();
        let merged = s.engine.generate(req(Some("ab"), &[], salt, 1)).unwrap();
        let only_a = s.engine.generate(req(Some("a"), &[], salt, 1)).unwrap();
        let (got, want) = (mix.last_logits.unwrap(), merged.last_logits.unwrap());
        let d = common::max_rel_diff(&got, &want);
        assert!(d <= 5e-5, "prompt {salt}: mixture vs merged {d:.2e} x std");
        // The mixture is not just one of its parts.
        let far = common::max_rel_diff(&only_a.last_logits.unwrap(), &want);
        assert!(far > 1e-2, "prompt {salt}: {far:.2e}");
    }
}

#[test]
fn one_adapter_at_scale_one_is_the_adapter_and_mixture_rows_are_batch_invariant() {
    let s = setup(|c| c.max_num_seqs = 16);
    let e = &s.engine;
    let plain = e.generate(req(Some("a"), &[], 1, 12)).unwrap();
    let mixed = e.generate(req(None, &[("a", 1.0)], 1, 12)).unwrap();
    assert!(
        common::same_output_bits(&plain, &mixed),
        "a 1-adapter mixture at scale 1 differs from the adapter"
    );
    // The base model's served name may stand next to a mixture.
    let served = e.served_name();
    let named = e
        .generate(req(Some(&served), &[("a", 1.0)], 1, 12))
        .unwrap();
    assert!(common::same_output_bits(&plain, &named));
    // A batch of base, single adapters and mixtures (shared adapters, other scales and orders):
    // each row is the same bits as the request alone.
    let batch: Vec<Request> = vec![
        req(None, &[("a", W_A), ("b", W_B)], 2, 16),
        req(Some("a"), &[], 3, 16),
        req(None, &[], 4, 16),
        req(None, &[("b", 0.25), ("a", 2.0), ("c", -1.0)], 5, 16),
        req(Some("c"), &[], 6, 16),
        req(None, &[("a", W_A), ("b", W_B)], 7, 16),
        req(None, &[("c", 0.5)], 8, 16),
    ];
    let alone: Vec<Output> = batch
        .iter()
        .map(|r| e.generate(r.clone()).unwrap())
        .collect();
    let ids: Vec<u64> = batch.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
    for (k, id) in ids.into_iter().enumerate() {
        let out = e.wait(id).unwrap();
        assert!(
            common::same_output_bits(&out, &alone[k]),
            "request {k} differs in the batch"
        );
    }
    assert!(
        common::idle_stats(e).max_step_seqs >= 4,
        "the requests shared steps"
    );
}

#[test]
fn the_prefix_cache_keeps_mixtures_apart() {
    let s = setup(|c| c.kv_block_size = 4);
    let e = &s.engine;
    let hits = |e: &Engine| common::idle_stats(e).prefix_cache_hits;
    let first = e
        .generate(req(None, &[("a", W_A), ("b", W_B)], 9, 2))
        .unwrap();
    let h0 = hits(e);
    // Other scales, another order, one part alone: no hit on the mixture's blocks.
    for mix in [
        &[("a", W_A), ("b", 0.5)][..],
        &[("b", W_B), ("a", W_A)][..],
        &[("a", W_A)][..],
    ] {
        e.generate(req(None, mix, 9, 2)).unwrap();
    }
    e.generate(req(Some("a"), &[], 9, 2)).unwrap();
    assert_eq!(hits(e), h0, "another mixture hit the first one's blocks");
    // The same mixture hits, with the same bits.
    let again = e
        .generate(req(None, &[("a", W_A), ("b", W_B)], 9, 2))
        .unwrap();
    assert!(hits(e) > h0, "the same mixture missed");
    assert!(common::same_output_bits(&first, &again));
}

#[test]
fn bad_mixtures_are_refused_naming_the_field() {
    let s = setup(|c| c.max_gpu_loras = 3);
    let e = &s.engine;
    let cases: Vec<(Request, ErrorCode, &str)> = vec![
        (
            req(Some("a"), &[("b", 1.0)], 0, 1),
            ErrorCode::InvalidArgument,
            "model names \"a\"",
        ),
        (
            req(
                None,
                &[("a", 1.0), ("b", 1.0), ("c", 1.0), ("ab", 1.0)],
                0,
                1,
            ),
            ErrorCode::InvalidArgument,
            "at most 3 (the smaller of 4 and max_gpu_loras 3)",
        ),
        (
            req(None, &[("a", 1.0), ("a", 2.0)], 0, 1),
            ErrorCode::InvalidArgument,
            "adapters[1].name: \"a\" is listed twice",
        ),
        (
            req(None, &[("a", f32::NAN)], 0, 1),
            ErrorCode::InvalidArgument,
            "adapters[0].scale",
        ),
        (
            req(None, &[("", 1.0)], 0, 1),
            ErrorCode::InvalidArgument,
            "adapters[0].name",
        ),
        (
            req(None, &[("a", 1.0), ("nope", 1.0)], 0, 1),
            ErrorCode::NotFound,
            "\"nope\" not found",
        ),
    ];
    for (r, code, needle) in cases {
        let e2 = e.submit(r).unwrap_err();
        assert_eq!(e2.code(), code, "{e2}");
        assert!(e2.message().contains(needle), "{needle}: {e2}");
    }
    // A refused mixture leaves no pins behind: the host cache can still take every adapter.
    let st = e.stats_json();
    for a in st["adapters"].as_array().unwrap() {
        assert_eq!(a["pins"], 0, "{a}");
    }
    e.generate(req(None, &[("a", 1.0), ("b", 1.0), ("c", 1.0)], 0, 1))
        .unwrap();
}

/// The mixture through the OpenAI body.
#[test]
fn openai_body_adapters() {
    let s = setup(|_| {});
    let e = &s.engine;
    let served = e.served_name();
    let body = format!(
        r#"{{"model": "{served}", "prompt": [1, 2, 3, 4], "max_tokens": 3, "temperature": 0,
            "adapters": [{{"name": "a", "scale": 0.7}}, {{"name": "b", "scale": -0.45}}]}}"#
    );
    let r = loraplex::openai::request_from_openai(&body, &served).unwrap();
    assert_eq!(
        r.adapters,
        vec![
            AdapterMix {
                name: "a".into(),
                scale: 0.7
            },
            AdapterMix {
                name: "b".into(),
                scale: -0.45
            }
        ]
    );
    let mut via_api = req(None, &[("a", 0.7), ("b", -0.45)], 0, 3);
    via_api.prompt = Prompt::Tokens(vec![1, 2, 3, 4]);
    via_api.sampling.logprobs = None;
    via_api.sampling.return_last_logits = false;
    via_api.sampling.ignore_eos = false;
    let (x, y) = (e.generate(r).unwrap(), e.generate(via_api).unwrap());
    assert_eq!(x.token_ids, y.token_ids);
    for (bad, needle) in [
        (r#""adapters": {"name": "a"}"#, "field \"adapters\""),
        (
            r#""adapters": [{"name": "a", "weight": 1}]"#,
            "unknown key \"weight\"",
        ),
        (r#""adapters": [{"scale": 1}]"#, "\"name\" is missing"),
        (
            r#""adapters": [{"name": "a", "scale": "x"}]"#,
            "adapters[0].scale",
        ),
    ] {
        let body = format!(r#"{{"prompt": "hi", {bad}}}"#);
        let err = loraplex::openai::request_from_openai(&body, &served).unwrap_err();
        assert!(err.message().contains(needle), "{bad}: {err}");
    }
}
