//! The model zoo against HuggingFace transformers + PEFT (fixtures in tests/fixtures/zoo, written
//! by scripts/zoo-reference.py): tiny random Qwen2 (q/k/v biases), Qwen3 (q/k norms, head_dim 32
//! with hidden 64 / 4 heads), Mistral (sliding window 8, shorter than every prompt), Llama-3.1
//! (llama3 rope_scaling) and Qwen2 with a per-layer window. Each loads from its HF directory and
//! from its GGUF file and must reproduce transformers' last-position logits within 3e-4 x std
//! and its 16 greedy tokens, for the base model and its LoRA adapter with all prompts of both
//! submitted at once (mixed batches). Other architectures and unused tensors are refused,
//! naming them.

mod common;

use std::path::{Path, PathBuf};

use loraplex::backend::WeightFormat;
use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, Prompt, Request};
use loraplex::model::{ModelConfig, ModelFiles};
use loraplex::sampling::SamplingParams;
use loraplex::ErrorCode;
use ndarray::Array2;
use serde_json::{json, Value};

fn zoo(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/zoo")
        .join(name)
}

fn reference(dir: &Path, file: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap()
}

fn engine(model: &Path, adapters: Option<PathBuf>) -> Engine {
    engine_as(model, adapters, WeightFormat::F32)
}

fn engine_as(model: &Path, adapters: Option<PathBuf>, format: WeightFormat) -> Engine {
    engine_with(model, adapters, |c| c.weight_format = format)
}

fn engine_with(
    model: &Path,
    adapters: Option<PathBuf>,
    edit: impl FnOnce(&mut EngineConfig),
) -> Engine {
    let mut cfg = EngineConfig::new(model);
    cfg.threads = 2;
    cfg.peft_source = adapters.into_iter().collect();
    edit(&mut cfg);
    Engine::new(cfg).unwrap()
}

/// Runs every prompt of every variant of `refj` (whose files are under `dir`) at once on the
/// engine for `model` (adapters from `dir/adapters`), and compares with the reference. Returns
/// the failures.
fn check(model: &Path, dir: &Path, refj: &Value) -> Vec<String> {
    check_on(&engine(model, Some(dir.join("adapters"))), model, dir, refj)
}

/// [`check`] on a given engine.
fn check_on(e: &Engine, model: &Path, dir: &Path, refj: &Value) -> Vec<String> {
    let n = refj["new_tokens"].as_u64().unwrap() as usize;
    let sampling = SamplingParams {
        max_tokens: n,
        temperature: 0.0,
        ignore_eos: true,
        return_last_logits: true,
        ..SamplingParams::default()
    };
    let prompts = refj["prompts"].as_array().unwrap();
    let mut jobs = Vec::new();
    for (name, v) in refj["variants"].as_object().unwrap() {
        for (p, prompt) in prompts.iter().enumerate() {
            let r = Request {
                model: (name != "__base__").then(|| name.clone()),
                prompt: Prompt::Tokens(common::token_ids(&prompt["token_ids"])),
                sampling: sampling.clone(),
                ..Request::default()
            };
            jobs.push((name.clone(), p, v.clone(), e.submit(r).unwrap()));
        }
    }
    let mut failures = Vec::new();
    for (name, p, v, id) in jobs {
        let o = match e.wait(id) {
            Ok(o) => o,
            Err(err) => {
                failures.push(format!("{name} prompt {p}: {err}"));
                continue;
            }
        };
        let logits: Array2<f32> =
            ndarray_npy::read_npy(dir.join(v["logits_file"].as_str().unwrap())).unwrap();
        failures.extend(common::check_against_reference(
            &format!("{} {name} prompt {p}", model.display()),
            &o,
            logits.row(p).as_slice().unwrap(),
            &v["results"][p],
            3e-4,
        ));
    }
    failures
}

/// The HF directory and (when the reference names one) the GGUF file both match.
fn check_both(name: &str) {
    let dir = zoo(name);
    let refj = reference(&dir, "reference.json");
    // The fixture's tokenizer (SmolLM2's, cut to 512 ids) encodes the prompts as HF did.
    let files = ModelFiles::load(&dir.join("model")).unwrap();
    for p in refj["prompts"].as_array().unwrap() {
        let got = files
            .tokenizer
            .encode(p["text"].as_str().unwrap(), false)
            .unwrap();
        assert_eq!(
            got,
            common::token_ids(&p["token_ids"]),
            "{name}: {}",
            p["text"]
        );
    }
    let mut failures = check(&dir.join("model"), &dir, &refj);
    if let Some(g) = refj["gguf"].as_str() {
        // The GGUF's tokenizer (tokenizer.ggml.pre "qwen2" in the qwen2 file, "smollm"
        // elsewhere) encodes as transformers' AutoTokenizer does (Qwen2Tokenizer for qwen2).
        let gguf = ModelFiles::load(&dir.join(g)).unwrap();
        for p in refj["prompts"].as_array().unwrap() {
            let text = p["text"].as_str().unwrap();
            let got = gguf.tokenizer.encode(text, false).unwrap();
            assert_eq!(
                got,
                common::token_ids(&p["hf_tokenizer_ids"]),
                "{g}: {text}"
            );
        }
        failures.extend(check(&dir.join(g), &dir, &refj));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn qwen2_biases_match_transformers() {
    check_both("qwen2");
}

#[test]
fn qwen3_qk_norms_and_head_dim_match_transformers() {
    check_both("qwen3");
}

#[test]
fn mistral_sliding_window_matches_transformers() {
    let dir = zoo("mistral");
    let refj = reference(&dir, "reference.json");
    // The window changes these outputs (checked by the script against full attention), and the
    // engine does not cap the length at it.
    assert!(refj["full_attention_max_logit_change"].as_f64().unwrap() > 0.1);
    let e = engine(&dir.join("model"), None);
    assert_eq!(e.model_config().sliding_window, Some(8));
    assert_eq!(e.max_model_len(), 2048);
    assert_eq!(
        e.stats_json()["limits"]["max_model_len_bound"],
        "max_position_embeddings"
    );
    drop(e);
    check_both("mistral");
    // Chunked prefill (5-token chunks) over 4-token KV blocks: the window spans chunks and
    // blocks, and rows of different requests share steps.
    let e = engine_with(&dir.join("model"), Some(dir.join("adapters")), |c| {
        c.max_batch_tokens = 5;
        c.kv_block_size = 4;
    });
    let failures = check_on(&e, &dir.join("model"), &dir, &refj);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn llama3_rope_scaling_matches_transformers() {
    let dir = zoo("llama3");
    let refj = reference(&dir, "reference.json");
    // inv_freq from config.json (llama3 formula) and from the GGUF's rope_freqs factors both
    // equal transformers' buffer (float32 there, f64 here: within a few ulps).
    let want: Vec<f64> = refj["inv_freq"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let hf = ModelConfig::from_hf_dir(&dir.join("model")).unwrap();
    let gguf = ModelFiles::load(&dir.join("llama3.gguf")).unwrap().config;
    assert!(matches!(
        gguf.rope_scaling,
        loraplex::model::RopeScaling::FreqFactors(_)
    ));
    for (what, got) in [("hf", hf.rope_inv_freq()), ("gguf", gguf.rope_inv_freq())] {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= 1e-6 * w,
                "{what} inv_freq[{i}] {g} vs {w}"
            );
        }
    }
    // The scaling matters: plain RoPE frequencies differ in the low-frequency half.
    let plain = ModelConfig {
        rope_scaling: loraplex::model::RopeScaling::None,
        ..hf.clone()
    }
    .rope_inv_freq();
    assert!((plain[7] as f64 / want[7] - 8.0).abs() < 1e-4);
    check_both("llama3");
}

/// A copy of the fixture model `name` in a temp dir with `edit` applied to its config.json.
fn edited_copy(
    name: &str,
    tmp: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> PathBuf {
    let src = zoo(name).join("model");
    let dst = tmp.join(format!("{name}-edited"));
    std::fs::create_dir_all(&dst).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
    }
    let p = dst.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&p, v.to_string()).unwrap();
    dst
}

#[test]
fn qwen2_per_layer_window_matches_transformers() {
    let dir = zoo("qwen2");
    let refj = reference(&dir, "reference-swa.json");
    assert!(refj["full_attention_max_logit_change"].as_f64().unwrap() > 0.1);
    let tmp = tempfile::tempdir().unwrap();
    let overrides = refj["config_overrides"].as_object().unwrap().clone();
    let model = edited_copy("qwen2", tmp.path(), |c| c.extend(overrides));
    let cfg = ModelConfig::from_hf_dir(&model).unwrap();
    assert_eq!((cfg.layer_window(0), cfg.layer_window(1)), (None, Some(6)));
    let failures = check(&model, &dir, &refj);
    assert!(failures.is_empty(), "{failures:#?}");
}

fn expect_err(model: &Path, code: ErrorCode, needles: &[&str]) -> String {
    let mut cfg = EngineConfig::new(model);
    cfg.threads = 1;
    common::expect_err(Engine::new(cfg), code, needles)
}

#[test]
fn other_architectures_are_refused_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    for (class, model_type) in [
        ("Gemma2ForCausalLM", "gemma2"),
        ("PhiForCausalLM", "phi"),
        ("MixtralForCausalLM", "mixtral"),
        ("Qwen2MoeForCausalLM", "qwen2_moe"),
    ] {
        let m = edited_copy("qwen2", tmp.path(), |c| {
            c.insert("architectures".into(), json!([class]));
            c.insert("model_type".into(), json!(model_type));
        });
        expect_err(&m, ErrorCode::Unsupported, &[class]);
        let m = edited_copy("qwen2", tmp.path(), |c| {
            c.remove("architectures");
            c.insert("model_type".into(), json!(model_type));
        });
        expect_err(&m, ErrorCode::Unsupported, &[model_type]);
    }
    // A GGUF of another architecture: the qwen2 file with general.architecture = "gemma" (same
    // length, patched in place).
    let mut bytes = std::fs::read(zoo("qwen2").join("qwen2.gguf")).unwrap();
    let key = b"general.architecture";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // value type (u32 8 = string), length (u64 5), then the bytes.
    assert_eq!(&bytes[at + 12..at + 17], b"qwen2");
    bytes[at + 12..at + 17].copy_from_slice(b"gemma");
    let g = tmp.path().join("gemma.gguf");
    std::fs::write(&g, bytes).unwrap();
    expect_err(
        &g,
        ErrorCode::Unsupported,
        &["gemma", "general.architecture"],
    );
}

#[test]
fn unused_or_missing_architecture_tensors_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    // Qwen3 has no biases: an o_proj bias is unused.
    let m = edited_copy("qwen3", tmp.path(), |_| {});
    let mut t = common::tensors_of(&m);
    t.push((
        "model.layers.1.self_attn.o_proj.bias".into(),
        vec![64],
        vec![0.5; 64],
    ));
    common::write_safetensors(&m.join("model.safetensors"), &t);
    expect_err(
        &m,
        ErrorCode::InvalidModel,
        &["model.layers.1.self_attn.o_proj.bias", "not used", "Qwen3"],
    );
    // The Qwen3 checkpoint declared as Llama: its q/k norms are unused.
    let m = edited_copy("qwen3", tmp.path(), |c| {
        c.insert("architectures".into(), json!(["LlamaForCausalLM"]));
        c.insert("model_type".into(), json!("llama"));
    });
    expect_err(
        &m,
        ErrorCode::InvalidModel,
        &["self_attn.k_norm.weight", "not used", "Llama"],
    );
    // Qwen2 without one of its biases: missing, named.
    let m = edited_copy("qwen2", tmp.path(), |_| {});
    let mut t = common::tensors_of(&m);
    t.retain(|x| x.0 != "model.layers.0.self_attn.v_proj.bias");
    common::write_safetensors(&m.join("model.safetensors"), &t);
    expect_err(
        &m,
        ErrorCode::InvalidModel,
        &["missing tensor", "model.layers.0.self_attn.v_proj.bias"],
    );
}

#[test]
fn quantized_weights_keep_every_family_close() {
    // Load-time Q8_0 rounds every matrix (biases and norms stay f32): the logits stay within
    // 0.1 x std of transformers' for each family (measured: at most 0.052 x std on these random
    // models, whose weights are not smooth like trained ones).
    for name in ["qwen2", "qwen3", "mistral", "llama3"] {
        let dir = zoo(name);
        let refj = reference(&dir, "reference.json");
        let e = engine_as(&dir.join("model"), None, WeightFormat::Q8_0);
        let logits: Array2<f32> = ndarray_npy::read_npy(dir.join("logits/__base__.npy")).unwrap();
        for (p, prompt) in refj["prompts"].as_array().unwrap().iter().enumerate() {
            let sp = SamplingParams {
                max_tokens: 1,
                temperature: 0.0,
                ignore_eos: true,
                return_last_logits: true,
                ..SamplingParams::default()
            };
            let o = e
                .generate(Request::new(
                    Prompt::Tokens(common::token_ids(&prompt["token_ids"])),
                    sp,
                ))
                .unwrap();
            let want = logits.row(p);
            let got = o.last_logits.unwrap();
            let tol = 1e-1 * common::std_dev(want.as_slice().unwrap());
            let d = got
                .iter()
                .zip(want.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            println!("{name} q8_0 prompt {p}: max|diff| {d:.2e} (tol {tol:.2e})");
            assert!(d <= tol, "{name} q8_0 prompt {p}: {d} > {tol}");
        }
    }
}
