//! Test helpers: the shared fixtures directory, a tiny deterministic Llama written to disk, and
//! reference comparisons.
#![allow(dead_code)]

pub mod c_errors;
pub mod lora;
pub mod paged;
pub mod values;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// True when the tests run under CI (`CI=true` or `CI=1`, as CI services set it).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The one rule for a fixture, model or tool a test needs but cannot find (`what` names it and
/// says how to get it). Under CI it fails the test, naming what is missing; locally it prints
/// `skipping: <what>` and returns None, and the caller returns (skips).
pub fn missing<T>(what: impl std::fmt::Display) -> Option<T> {
    if under_ci() {
        panic!("missing under CI=true (tests must not skip there): {what}");
    }
    eprintln!("skipping: {what}");
    None
}

/// `../shared` (fixtures and references; `LORAPLEX_SHARED` overrides), or None when absent
/// (see [`missing`]: fails under CI, skips locally).
pub fn shared_dir() -> Option<PathBuf> {
    let p = std::env::var("LORAPLEX_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    if p.join("reference").is_dir() {
        Some(p)
    } else {
        missing(format!(
            "{} (fixtures and references) is absent; set LORAPLEX_SHARED",
            p.join("reference").display()
        ))
    }
}

/// The device the device-generic conformance tests run on: env `LORAPLEX_TEST_DEVICE`
/// (`"cpu"` when unset or empty), a `loraplex::backend::select` device string (`"cuda:0"` on a GPU
/// machine, see scripts/gpu-check.sh).
pub fn test_device() -> String {
    std::env::var("LORAPLEX_TEST_DEVICE")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "cpu".into())
}

/// True when [`test_device`] is a CUDA device, whose backend keeps the KV cache (and weights of
/// format BF16) in bf16.
pub fn device_is_cuda() -> bool {
    test_device().starts_with("cuda")
}

/// The logits tolerance (in units of the row's std) where the device stores activations in bf16:
/// a CUDA backend keeps K and V in bf16, so every attention input carries a relative rounding
/// error of up to 2^-9 per element (its adapter slots hold A and B in bf16 too: the same bound on
/// each LoRA weight). Through the layers of the tiny models that moves the logits
/// by a few bf16 ulps of their spread; `BF16_REL_TOL` = 5 · 2^-8 ≈ 2e-2 × std is that bound (a
/// wrong kernel moves logits by ~1 × std, so it still fails by orders of magnitude).
pub const BF16_REL_TOL: f32 = 5.0 / 256.0;

/// The tolerance for a logits comparison on [`test_device`]: `cpu_tol` unchanged on the CPU,
/// at least [`BF16_REL_TOL`] on a CUDA device (bf16 KV cache).
pub fn device_rel_tol(cpu_tol: f32) -> f32 {
    if device_is_cuda() {
        cpu_tol.max(BF16_REL_TOL)
    } else {
        cpu_tol
    }
}

/// The SmolLM2 GGUF fetched by `make model`, or None when absent (see [`missing`]: fails under
/// CI, skips locally).
pub fn smollm2_gguf() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        Some(p)
    } else {
        missing(format!("{} is absent (run `make model`)", p.display()))
    }
}

/// The SmolLM2 GGUF with its HuggingFace reference (`../shared/reference/smollm2-135m-instruct`):
/// the GGUF path, the reference directory (adapters, logits) and its parsed `reference.json`.
/// None when either is absent (see [`missing`]).
pub struct Smollm2Reference {
    pub gguf: PathBuf,
    pub dir: PathBuf,
    pub json: serde_json::Value,
}

/// See [`Smollm2Reference`].
pub fn smollm2_reference() -> Option<Smollm2Reference> {
    let dir = shared_dir()?.join("reference/smollm2-135m-instruct");
    let gguf = smollm2_gguf()?;
    let json = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
        .unwrap();
    Some(Smollm2Reference { gguf, dir, json })
}

/// Runs `round` (which submits a batch of `n` requests and checks each against its result
/// alone) until the engine reports that `n` sequences shared one step, at most `tries` times.
/// `max_step_seqs` only grows, so before the first round it must be below `n` (e.g. 1 after
/// one-at-a-time runs). Panics when the requests never shared a step (the batch then proved
/// nothing) or when more than `n` did.
pub fn until_shared(
    engine: &loraplex::engine::Engine,
    n: usize,
    tries: usize,
    mut round: impl FnMut(),
) {
    let before = engine.stats().max_step_seqs;
    assert!(
        before < n,
        "{before} sequences already shared a step before the batch"
    );
    let mut seen = before;
    for t in 1..=tries {
        round();
        seen = engine.stats().max_step_seqs;
        assert!(
            seen <= n,
            "{seen} sequences in one step, but only {n} were in flight or allowed"
        );
        if seen == n {
            return;
        }
        eprintln!("round {t}: at most {seen} of {n} requests shared a step; running it again");
    }
    panic!(
        "in {tries} rounds at most {seen} of {n} requests shared a step: the batch was never mixed"
    );
}

/// Shape of a generated tiny model.
#[derive(Clone, Copy)]
pub struct TinySpec {
    pub hidden: usize,
    pub inter: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub tied: bool,
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            hidden: 32,
            inter: 48,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            tied: false,
            seed: 1,
        }
    }
}

/// A byte-level BPE tokenizer.json with the 256 byte tokens plus `<|endoftext|>` (id 256) and
/// `<|im_start|>`/`<|im_end|>` (257, 258); no merges. Vocab 259.
pub fn byte_tokenizer_json() -> serde_json::Value {
    // GPT-2 byte-to-unicode table.
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut pairs: Vec<(u32, u32)> = bs.into_iter().zip(cs).collect();
    pairs.sort();
    let mut vocab = serde_json::Map::new();
    for (b, c) in pairs {
        vocab.insert(char::from_u32(c).unwrap().to_string(), json!(b));
    }
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    for (i, s) in specials.iter().enumerate() {
        vocab.insert(s.to_string(), json!(256 + i));
    }
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": 256 + i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
}

/// The engine's stats once it is idle: nothing running or waiting and every KV block free
/// (the worker publishes its stats after a step, so right after a request's last output they
/// may still show it). Gives up after 5 s and returns the last stats, so that a leak fails the
/// caller's assertion instead of hanging.
pub fn idle_stats(engine: &loraplex::engine::Engine) -> loraplex::engine::EngineStats {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let s = engine.stats();
        let idle = s.running == 0 && s.waiting == 0 && s.kv_blocks_free == s.kv_blocks_total;
        if idle || std::time::Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// An engine (2 threads, on [`test_device`]) on the default tiny model written to `dir`, its
/// config adjusted by `tweak`.
pub fn tiny_engine(
    dir: &Path,
    tweak: impl FnOnce(&mut loraplex::config::EngineConfig),
) -> loraplex::engine::Engine {
    write_tiny_model(dir, TinySpec::default());
    let mut cfg = loraplex::config::EngineConfig::new(dir);
    cfg.threads = 2;
    cfg.device = test_device();
    tweak(&mut cfg);
    loraplex::engine::Engine::new(cfg).unwrap()
}

/// Writes a random tiny Llama (config.json, model.safetensors, tokenizer files) into `dir`.
pub fn write_tiny_model(dir: &Path, spec: TinySpec) {
    std::fs::create_dir_all(dir).unwrap();
    let vocab = 259usize;
    let cfg = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": spec.hidden, "intermediate_size": spec.inter, "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads, "num_key_value_heads": spec.kv_heads, "head_dim": spec.head_dim,
        "vocab_size": vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 512,
        "tie_word_embeddings": spec.tied, "bos_token_id": 257, "eos_token_id": 258, "hidden_act": "silu",
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        byte_tokenizer_json().to_string(),
    )
    .unwrap();
    let tcfg = json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template":
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"});
    std::fs::write(dir.join("tokenizer_config.json"), tcfg.to_string()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let rand_t = |tensors: &mut Vec<(String, Vec<usize>, Vec<f32>)>,
                  name: String,
                  shape: Vec<usize>,
                  std: f32,
                  rng: &mut ChaCha8Rng| {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| (rng.gen::<f32>() * 2.0 - 1.0) * std * 1.732)
            .collect();
        tensors.push((name, shape, data));
    };
    let (h, i, q, kv) = (
        spec.hidden,
        spec.inter,
        spec.heads * spec.head_dim,
        spec.kv_heads * spec.head_dim,
    );
    rand_t(
        &mut tensors,
        "model.embed_tokens.weight".into(),
        vec![vocab, h],
        1.0,
        &mut rng,
    );
    if !spec.tied {
        rand_t(
            &mut tensors,
            "lm_head.weight".into(),
            vec![vocab, h],
            0.2,
            &mut rng,
        );
    }
    for l in 0..spec.layers {
        let p = format!("model.layers.{l}");
        rand_t(
            &mut tensors,
            format!("{p}.self_attn.q_proj.weight"),
            vec![q, h],
            0.3,
            &mut rng,
        );
        rand_t(
            &mut tensors,
            format!("{p}.self_attn.k_proj.weight"),
            vec![kv, h],
            0.3,
            &mut rng,
        );
        rand_t(
            &mut tensors,
            format!("{p}.self_attn.v_proj.weight"),
            vec![kv, h],
            0.3,
            &mut rng,
        );
        rand_t(
            &mut tensors,
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, q],
            0.3,
            &mut rng,
        );
        rand_t(
            &mut tensors,
            format!("{p}.mlp.gate_proj.weight"),
            vec![i, h],
            0.3,
            &mut rng,
        );
        rand_t(
            &mut tensors,
            format!("{p}.mlp.up_proj.weight"),
            vec![i, h],
            0.3,
            &mut rng,
        );
        rand_t(
            &mut tensors,
            format!("{p}.mlp.down_proj.weight"),
            vec![h, i],
            0.3,
            &mut rng,
        );
        let ones: Vec<f32> = (0..h)
            .map(|_| 1.0 + (rng.gen::<f32>() - 0.5) * 0.2)
            .collect();
        tensors.push((format!("{p}.input_layernorm.weight"), vec![h], ones.clone()));
        tensors.push((
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            ones,
        ));
    }
    tensors.push(("model.norm.weight".into(), vec![h], vec![1.0; h]));
    write_safetensors(&dir.join("model.safetensors"), &tensors);
}

/// A tensor to write: name, shape, f32 values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// The tensors of the model in `dir` as f32, sorted by name.
pub fn tensors_of(dir: &Path) -> Vec<NamedTensor> {
    let files = loraplex::model::ModelFiles::load(dir).unwrap();
    let mut v: Vec<NamedTensor> = files
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.shape.clone(), t.to_f32_vec()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Token ids from a JSON array of numbers (the reference fixtures' `token_ids`).
pub fn token_ids(v: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Writes f32 tensors to a safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[NamedTensor]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None::<HashMap<String, String>>, path).unwrap();
}

/// Standard deviation of a row.
pub fn std_dev(x: &[f32]) -> f32 {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    (x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt() as f32
}

/// `max |got - want|` in units of the standard deviation of `want`.
pub fn max_rel_diff(got: &[f32], want: &[f32]) -> f32 {
    let std = std_dev(want);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
        / std
}

/// Compares greedy tokens with the reference: equal, or a divergence where the reference margin
/// at that step is below `margin_tol`. Returns a description of the failure, if any.
pub fn tokens_match(
    got: &[u32],
    want: &[u32],
    margins: &[f32],
    margin_tol: f32,
) -> Result<(), String> {
    for k in 0..want.len() {
        match got.get(k) {
            None => {
                return Err(format!(
                    "only {} tokens, reference has {}",
                    got.len(),
                    want.len()
                ))
            }
            Some(&g) if g != want[k] => {
                let m = margins.get(k).copied().unwrap_or(0.0);
                if m < margin_tol {
                    return Ok(());
                }
                return Err(format!(
                    "token {k}: got {g}, reference {} (margin {m:.3e} > tol {margin_tol:.1e})",
                    want[k]
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The adapter shape of `TinySpec`.
pub fn tiny_shape(spec: TinySpec) -> loraplex::adapters::ModelShape {
    loraplex::adapters::ModelShape {
        num_layers: spec.layers,
        hidden_size: spec.hidden,
        intermediate_size: spec.inter,
        num_heads: spec.heads,
        num_kv_heads: spec.kv_heads,
        head_dim: spec.head_dim,
        dtype: loraplex::tensor::DType::F32,
    }
}

/// Writes a random rank-8 adapter (all seven modules, `seed`) for the default [`TinySpec`] model
/// as an HF safetensors adapter directory at `dir`.
pub fn export_tiny_adapter(dir: &Path, seed: u64) {
    let shape = tiny_shape(TinySpec::default());
    let adapter = random_adapter(&shape, [8; 7], seed, false, false);
    loraplex::adapters::export::export(
        &adapter,
        &shape,
        loraplex::adapters::export::ExportFormat::HfSafetensors,
        dir,
    )
    .unwrap();
}

/// The default tiny model in `dir/model` and, under the PEFT source `dir/loras`, one adapter
/// per name ([`export_tiny_adapter`], seeds `first_seed`, `first_seed + 1`, ...); returns
/// (model dir, PEFT source).
pub fn tiny_model_with_adapters(dir: &Path, names: &[&str], first_seed: u64) -> (PathBuf, PathBuf) {
    let model = dir.join("model");
    let peft = dir.join("loras");
    write_tiny_model(&model, TinySpec::default());
    for (k, name) in names.iter().enumerate() {
        export_tiny_adapter(&peft.join(name), first_seed + k as u64);
    }
    (model, peft)
}

/// A random adapter: `ranks[t]` per target (0 = not adapted; the adapted ones share one rank,
/// the largest given), scale 2. NeMo's fused layout needs q/k/v (and gate/up) to share A:
/// `shared_a` does that. `zero_b` gives an adapter that must reproduce the base model.
pub fn random_adapter(
    shape: &loraplex::adapters::ModelShape,
    ranks: [usize; 7],
    seed: u64,
    zero_b: bool,
    shared_a: bool,
) -> loraplex::adapters::NormalizedAdapter {
    use loraplex::backend::LoraTarget;
    let targets: Vec<LoraTarget> = LoraTarget::ALL
        .iter()
        .copied()
        .filter(|t| ranks[t.index()] > 0)
        .collect();
    let spec = loraplex::adapters::synth::SynthSpec {
        rank: ranks.iter().copied().max().unwrap_or(1),
        scale: 2.0,
        targets: &targets,
        shared_a,
        strength: if zero_b { 0.0 } else { 0.5 },
    };
    loraplex::adapters::synth::synthesize(&format!("random-{seed}"), shape, &spec, seed)
}

/// Checks one engine output against a reference result (`{"new_token_ids", "step_top1_minus_top2"}`)
/// and the reference's last-position logits row: max |diff| ≤ `rel_tol` × std of the row, and the
/// same greedy tokens except after a step whose reference margin is below that tolerance.
/// Returns the failures, each prefixed by `label`.
pub fn check_against_reference(
    label: &str,
    out: &loraplex::engine::Output,
    want_logits: &[f32],
    result: &serde_json::Value,
    rel_tol: f32,
) -> Vec<String> {
    let mut failures = Vec::new();
    let Some(got) = out.last_logits.as_ref() else {
        return vec![format!("{label}: no logits returned")];
    };
    let tol = rel_tol * std_dev(want_logits);
    let d = got
        .iter()
        .zip(want_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("{label}: max|diff| {d:.2e} (tol {tol:.2e})");
    if d > tol {
        failures.push(format!("{label}: logits max|diff| {d:.3e} > {tol:.3e}"));
    }
    let ids: Vec<u32> = result["new_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let margins: Vec<f32> = result["step_top1_minus_top2"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    if let Err(m) = tokens_match(&out.token_ids, &ids, &margins, tol) {
        failures.push(format!("{label}: {m}"));
    }
    failures
}

/// The error of `r`, checked: its code is `code` and its message contains every needle.
/// Returns the message.
pub fn expect_err<T>(
    r: loraplex::Result<T>,
    code: loraplex::ErrorCode,
    needles: &[&str],
) -> String {
    let e = match r {
        Ok(_) => panic!("expected an error containing {needles:?}"),
        Err(e) => e,
    };
    let msg = e.message().to_string();
    assert_eq!(e.code(), code, "wrong code for: {msg}");
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} does not contain {n:?}");
    }
    msg
}

/// Sets the modification time of every file in `dir` to `secs` after the epoch (a metadata-only
/// change, like `touch -d`).
pub fn touch_files(dir: &Path, secs: u64) {
    for e in std::fs::read_dir(dir).unwrap() {
        let f = std::fs::File::options()
            .write(true)
            .open(e.unwrap().path())
            .unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
            .unwrap();
    }
}

/// Replaces `dir/file` by a renamed copy of its own bytes: a new inode, the same content.
pub fn replace_with_same_bytes(dir: &Path, file: &str) {
    let bytes = std::fs::read(dir.join(file)).unwrap();
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

/// Whether two outputs are bit for bit the same: token ids, log-probabilities and (when requested)
/// the last position's logits.
pub fn same_output_bits(x: &loraplex::engine::Output, y: &loraplex::engine::Output) -> bool {
    let lp = |o: &loraplex::engine::Output| {
        o.logprobs
            .iter()
            .map(|l| l.logprob.to_bits())
            .collect::<Vec<_>>()
    };
    let logits = |o: &loraplex::engine::Output| {
        o.last_logits
            .as_ref()
            .map(|l| l.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
    };
    x.token_ids == y.token_ids && lp(x) == lp(y) && logits(x) == logits(y)
}
