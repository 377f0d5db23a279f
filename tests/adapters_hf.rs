//! HF PEFT adapters, the torch zip reader, validation, detection and inspection against the
//! shared fixtures. Reads ../shared (tiny-llama fixtures and the SmolLM2 reference); each test
//! skips with a message when it is absent.

mod common;

use std::path::{Path, PathBuf};

use loraplex::adapters::hf_config::HfConfig;
use loraplex::adapters::inspect::{inspect, summary_json};
use loraplex::adapters::safetensors_check::read_safetensors;
use loraplex::adapters::torch_pickle::read_torch_zip;
use loraplex::adapters::{
    detect_format, load_adapter, AdapterFormat, AdapterLimits, ModelShape, NormalizedAdapter,
};
use loraplex::backend::LoraTarget;
use loraplex::tensor::{DType, HostTensor, TensorData};
use loraplex::ErrorCode;
use serde_json::Value;

/// The shared fixtures (skips, saying so, when absent; honours LORAPLEX_SHARED).
fn shared() -> Option<PathBuf> {
    common::shared_dir()
}

fn shape_of(reference: &Value) -> ModelShape {
    let c = &reference["model_config"];
    let u = |k: &str| c[k].as_u64().unwrap() as usize;
    ModelShape {
        num_layers: u("num_hidden_layers"),
        hidden_size: u("hidden_size"),
        intermediate_size: u("intermediate_size"),
        num_heads: u("num_attention_heads"),
        num_kv_heads: u("num_key_value_heads"),
        head_dim: u("head_dim"),
        dtype: DType::F32,
    }
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn limits(max: usize) -> AdapterLimits {
    AdapterLimits { max_lora_rank: max }
}

fn target_of(module_key: &str) -> (usize, LoraTarget) {
    let parts: Vec<&str> = module_key.split('.').collect();
    let layer = parts[2].parse().unwrap();
    let t = LoraTarget::ALL
        .into_iter()
        .find(|t| t.hf_name() == parts[4])
        .unwrap();
    (layer, t)
}

/// Every module's rank and scale equal PEFT's, and there are no other modules.
fn check_against_reference(a: &NormalizedAdapter, spec: &Value) {
    let mods = spec["modules"].as_object().unwrap();
    assert_eq!(a.modules().count(), mods.len(), "{}", a.name);
    assert_eq!(
        mods.len() as u64,
        spec["num_lora_modules"].as_u64().unwrap()
    );
    for (key, m) in mods {
        let (layer, t) = target_of(key);
        let got = a.layers[layer][t.index()].as_ref().unwrap();
        assert_eq!(
            got.rank as u64,
            m["r"].as_u64().unwrap(),
            "{} {key}",
            a.name
        );
        let want = m["scaling"].as_f64().unwrap() as f32;
        assert_eq!(got.scale, want, "{} {key}", a.name);
    }
}

fn check_variants(root: &Path) -> usize {
    let reference = read_json(&root.join("reference.json"));
    let shape = shape_of(&reference);
    let mut n = 0;
    for (name, v) in reference["variants"].as_object().unwrap() {
        let Some(spec) = v.get("adapter").filter(|s| !s.is_null()) else {
            continue;
        };
        let dir = root.join(spec["dir"].as_str().unwrap());
        let a =
            load_adapter(&dir, name, &shape, &limits(64)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(a.name, *name);
        assert_eq!(a.generation.len(), 64);
        let files: Vec<&str> = spec["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        let want_fmt = if files.contains(&"adapter_model.bin") {
            AdapterFormat::HfBin
        } else {
            AdapterFormat::HfSafetensors
        };
        assert_eq!(a.format, want_fmt);
        check_against_reference(&a, spec);
        n += 1;
    }
    n
}

#[test]
fn tiny_llama_adapters_match_peft_reference() {
    let Some(sh) = shared() else { return };
    assert_eq!(check_variants(&sh.join("fixtures/tiny-llama")), 5);
}

#[test]
fn smollm2_bin_adapter_matches_peft_reference() {
    let Some(sh) = shared() else { return };
    assert_eq!(
        check_variants(&sh.join("reference/smollm2-135m-instruct")),
        1
    );
}

#[test]
fn invalid_fixture_adapters_are_refused_naming_the_field() {
    let Some(sh) = shared() else { return };
    let root = sh.join("fixtures/tiny-llama");
    let reference = read_json(&root.join("reference.json"));
    let shape = shape_of(&reference);
    let invalid = reference["invalid_adapters"].as_object().unwrap();
    assert_eq!(invalid.len(), 2);
    for (name, v) in invalid {
        let dir = root.join(v["dir"].as_str().unwrap());
        let e = load_adapter(&dir, name, &shape, &limits(64)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidAdapter, "{name}: {e}");
        let msg = e.message();
        assert!(msg.contains(&format!("adapter '{name}'")), "{msg}");
        match name.as_str() {
            "bad-dora" => assert!(msg.contains("use_dora") && msg.contains("DoRA"), "{msg}"),
            "bad-embed" => {
                assert!(
                    msg.contains("target_modules") && msg.contains("embed_tokens"),
                    "{msg}"
                )
            }
            other => panic!("unexpected invalid adapter {other}"),
        }
    }
}

#[test]
fn rank_above_limit_is_refused_naming_module_rank_and_limit() {
    let Some(sh) = shared() else { return };
    let root = sh.join("fixtures/tiny-llama");
    let shape = shape_of(&read_json(&root.join("reference.json")));
    let e = load_adapter(&root.join("adapters/hf-r64"), "hf-r64", &shape, &limits(32)).unwrap_err();
    let msg = e.message();
    assert_eq!(e.code(), ErrorCode::InvalidAdapter);
    assert!(
        msg.contains("layer 0 q_proj") && msg.contains("rank 64") && msg.contains("32"),
        "{msg}"
    );
    load_adapter(&root.join("adapters/hf-r64"), "hf-r64", &shape, &limits(64)).unwrap();
}

fn to_safetensors(tensors: &[(String, HostTensor)]) -> Vec<u8> {
    use safetensors::tensor::TensorView;
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| {
            let TensorData::F32(v) = &t.data else {
                panic!("fixture is f32")
            };
            let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (k.clone(), b, t.shape.clone())
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, b, s)| {
            (
                k.clone(),
                TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn bin_and_safetensors_reencoding_agree() {
    let Some(sh) = shared() else { return };
    let root = sh.join("fixtures/tiny-llama");
    let shape = shape_of(&read_json(&root.join("reference.json")));
    let src = root.join("adapters/hf-qv-r16-bin");
    let bin = std::fs::read(src.join("adapter_model.bin")).unwrap();
    let tensors = read_torch_zip(&bin, "adapter_model.bin").unwrap();
    let st = to_safetensors(&tensors);
    // The safetensors reader gives back exactly the same tensors.
    let mut back = read_safetensors(&st, "re-encoded").unwrap();
    let mut orig = tensors.clone();
    back.sort_by(|a, b| a.0.cmp(&b.0));
    orig.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(back, orig);

    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("adapter_config.json"),
        tmp.path().join("adapter_config.json"),
    )
    .unwrap();
    std::fs::write(tmp.path().join("adapter_model.safetensors"), &st).unwrap();
    let a = load_adapter(&src, "x", &shape, &limits(64)).unwrap();
    let b = load_adapter(tmp.path(), "x", &shape, &limits(64)).unwrap();
    assert_eq!(a.format, AdapterFormat::HfBin);
    assert_eq!(b.format, AdapterFormat::HfSafetensors);
    assert_eq!(a.layers, b.layers);
    assert_ne!(a.generation, b.generation);
    // A is [r, in] = [16, 64] holding the file's lora_A row-major.
    let q = a.layers[0][LoraTarget::Q.index()].as_ref().unwrap();
    let (k, t) = &tensors[0];
    assert!(k.ends_with("layers.0.self_attn.q_proj.lora_A.weight"));
    assert_eq!(q.a, t.to_f32_vec());
    assert_eq!((q.rank, q.in_dim, q.out_dim), (16, 64, 64));
}

#[test]
fn rank_pattern_first_match_in_file_order_wins() {
    let cfg = |pat: &str| {
        let text = format!(
            r#"{{"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":["q_proj"],
                "rank_pattern":{pat},"alpha_pattern":{{"layers.1.self_attn.q_proj":4}}}}"#
        );
        HfConfig::parse(text.as_bytes(), "t").unwrap()
    };
    let key = "model.layers.0.self_attn.q_proj";
    let a = cfg(r#"{"q_proj":4,"model.layers.0.self_attn.q_proj":2}"#);
    assert_eq!(a.rank_alpha(key), (4, 16.0));
    let b = cfg(r#"{"model.layers.0.self_attn.q_proj":2,"q_proj":4}"#);
    assert_eq!(b.rank_alpha(key), (2, 16.0));
    assert_eq!(b.scale(key), 8.0);
    // Patterns match whole dotted components: layer 1 does not match layer 11.
    assert_eq!(b.rank_alpha("model.layers.1.self_attn.q_proj"), (4, 4.0));
    assert_eq!(b.rank_alpha("model.layers.11.self_attn.q_proj"), (4, 16.0));
    assert_eq!(b.rank_alpha("model.layers.0.self_attn.k_proj"), (8, 16.0));
}

#[test]
fn detect_format_recognises_every_fixture_layout() {
    let Some(sh) = shared() else { return };
    let root = sh.join("fixtures/tiny-llama");
    let cases = [
        ("adapters/hf-all-r8", AdapterFormat::HfSafetensors),
        ("adapters/hf-qv-r16-bin", AdapterFormat::HfBin),
        ("adapters-formats/nemo-canonical-r8", AdapterFormat::Nemo),
        ("adapters-formats/nemo-legacy-qkv-gz", AdapterFormat::Nemo),
        ("adapters-formats/trt-all-r8-bin", AdapterFormat::TrtLlm),
        ("adapters-formats/trt-all-r8-npy", AdapterFormat::TrtLlm),
    ];
    for (d, want) in cases {
        assert_eq!(detect_format(&root.join(d)).unwrap(), want, "{d}");
    }
    let e = detect_format(&root.join("model")).unwrap_err();
    assert!(e.message().contains("no adapter found"), "{e}");
}

#[test]
fn inspect_describes_or_explains_refusal() {
    let Some(sh) = shared() else { return };
    let root = sh.join("fixtures/tiny-llama");
    let shape = shape_of(&read_json(&root.join("reference.json")));
    let text = inspect(&root.join("adapters/hf-pattern"), &shape, &limits(64));
    assert!(text.contains("format: hf-safetensors"), "{text}");
    assert!(
        text.contains("o_proj") && text.contains("layers 0-2"),
        "{text}"
    );
    assert!(text.contains("rank 2/8"), "{text}");
    let bad = inspect(&root.join("adapters/bad-dora"), &shape, &limits(64));
    assert!(bad.contains("REFUSED") && bad.contains("use_dora"), "{bad}");
    let a = load_adapter(
        &root.join("adapters/hf-rslora-r4"),
        "r",
        &shape,
        &limits(64),
    )
    .unwrap();
    let j = summary_json(&a);
    assert_eq!(j["format"], "hf-safetensors");
    assert_eq!(j["max_rank"], 4);
    assert_eq!(j["modules"].as_array().unwrap().len(), 6);
    assert_eq!(j["modules"][0]["scale"], 4.0);
    assert_eq!(j["targets"], serde_json::json!(["o_proj", "down_proj"]));
}

#[test]
fn torch_zip_reads_fixture_bin() {
    let Some(sh) = shared() else { return };
    let path = sh.join("fixtures/tiny-llama/adapters/hf-qv-r16-bin/adapter_model.bin");
    let bytes = std::fs::read(&path).unwrap();
    let tensors = read_torch_zip(&bytes, "adapter_model.bin").unwrap();
    assert_eq!(tensors.len(), 12);
    let (k, t) = &tensors[0];
    assert_eq!(
        k,
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    );
    assert_eq!(t.shape, vec![16, 64]);
    // Storage "0" holds exactly this tensor, contiguous f32 LE.
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name("adapter_model/data/0").unwrap(), &mut raw)
        .unwrap();
    let want: Vec<f32> = raw
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(t.to_f32_vec(), want);
    assert_eq!(tensors[1].1.shape, vec![64, 16]);
}

#[test]
fn load_adapter_generation_is_content_hash() {
    let Some(sh) = shared() else { return };
    let root = sh.join("fixtures/tiny-llama");
    let shape = shape_of(&read_json(&root.join("reference.json")));
    let dir = root.join("adapters/hf-all-r8");
    let b = load_adapter(&dir, "a", &shape, &limits(64)).unwrap();
    // The hash of exactly the two files the loader read.
    let files: Vec<(&str, Vec<u8>)> = ["adapter_config.json", "adapter_model.safetensors"]
        .iter()
        .map(|f| (*f, std::fs::read(dir.join(f)).unwrap()))
        .collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(f, b)| (*f, b.as_slice())).collect();
    assert_eq!(b.generation, loraplex::adapters::load::generation_of(&refs));
    // A copy elsewhere has the same generation; changing one byte of the config changes it.
    let tmp = tempfile::tempdir().unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(dir.join(f), tmp.path().join(f)).unwrap();
    }
    let c = load_adapter(tmp.path(), "a", &shape, &limits(64)).unwrap();
    assert_eq!(c.generation, b.generation);
    let cfg = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    std::fs::write(tmp.path().join("adapter_config.json"), format!("{cfg} ")).unwrap();
    let d = load_adapter(tmp.path(), "a", &shape, &limits(64)).unwrap();
    assert_ne!(d.generation, b.generation);
    assert_eq!(d.layers, b.layers);
}
