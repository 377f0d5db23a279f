#![allow(clippy::type_complexity, clippy::same_item_push)]
//! Hostile HF adapters, safetensors files, pickles and torch zips: each must be refused with its
//! own specific error (and never panic). Self-contained: builds every input in a temp dir.

use std::io::Write;
use std::path::Path;

use loraplex::adapters::normalize::LoraModule;
use loraplex::adapters::safetensors_check::read_safetensors;
use loraplex::adapters::torch_pickle::{read_pickle, read_torch_zip};
use loraplex::adapters::validate::validate;
use loraplex::adapters::{
    load_adapter, AdapterFormat, AdapterLimits, ModelShape, NormalizedAdapter,
};
use loraplex::tensor::DType;
use loraplex::{Error, ErrorCode};

/// tiny-llama: hidden 64, inter 176, 3 layers, 4 heads / 2 KV heads, head_dim 16.
const SHAPE: ModelShape = ModelShape {
    num_layers: 3,
    hidden_size: 64,
    intermediate_size: 176,
    num_heads: 4,
    num_kv_heads: 2,
    head_dim: 16,
    dtype: DType::F32,
};
const LIMITS: AdapterLimits = AdapterLimits { max_lora_rank: 64 };
const Q_A: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
const Q_B: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";

fn config(extra: &str) -> String {
    format!(
        r#"{{"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":["q_proj","v_proj"],
            "bias":"none","use_dora":false,"modules_to_save":null{extra}}}"#
    )
}

/// A safetensors file from `(key, dtype, shape, data_offsets)` entries and a data section.
fn st_raw(entries: &[(&str, &str, Vec<usize>, (usize, usize))], data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::Map::new();
    for (k, dt, shape, (b, e)) in entries {
        h.insert(
            k.to_string(),
            serde_json::json!({"dtype": dt, "shape": shape, "data_offsets": [b, e]}),
        );
    }
    let header = serde_json::Value::Object(h).to_string();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A well-formed f32 safetensors file of `(key, shape)` tensors filled with 0.01.
fn st(tensors: &[(&str, Vec<usize>)]) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut data = Vec::new();
    for (k, shape) in tensors {
        let n: usize = shape.iter().product();
        let b = data.len();
        for _ in 0..n {
            data.extend_from_slice(&0.01f32.to_le_bytes());
        }
        entries.push((*k, "F32", shape.clone(), (b, data.len())));
    }
    st_raw(&entries, &data)
}

fn q_pair(r: usize) -> Vec<(&'static str, Vec<usize>)> {
    vec![(Q_A, vec![r, 64]), (Q_B, vec![64, r])]
}

fn write_dir(config: &[u8], weights: &[u8]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("adapter_config.json"), config).unwrap();
    std::fs::write(d.path().join("adapter_model.safetensors"), weights).unwrap();
    d
}

fn load(dir: &Path) -> Result<NormalizedAdapter, Error> {
    load_adapter(dir, "evil", &SHAPE, &LIMITS)
}

fn refused(r: Result<NormalizedAdapter, Error>, needles: &[&str]) -> Error {
    let e = r.expect_err("hostile adapter was accepted");
    assert_eq!(e.code(), ErrorCode::InvalidAdapter, "{e}");
    for n in needles {
        assert!(e.message().contains(n), "missing {n:?} in: {e}");
    }
    e
}

fn refused_dir(config: &str, weights: &[u8], needles: &[&str]) {
    let d = write_dir(config.as_bytes(), weights);
    refused(load(d.path()), needles);
}

#[test]
fn baseline_is_accepted() {
    let d = write_dir(config("").as_bytes(), &st(&q_pair(8)));
    let a = load(d.path()).unwrap();
    assert_eq!(a.format, AdapterFormat::HfSafetensors);
    assert_eq!(a.modules().count(), 1);
    assert_eq!(a.layers[0][0].as_ref().unwrap().scale, 2.0);
}

#[test]
fn truncated_safetensors() {
    let mut w = st(&q_pair(8));
    w.truncate(w.len() - 100);
    refused_dir(
        &config(""),
        &w,
        &["lora_B.weight", "outside the", "data section"],
    );
    refused_dir(
        &config(""),
        &w[..5],
        &["too short for the 8-byte header length"],
    );
}

#[test]
fn header_longer_than_file() {
    let mut w = st(&q_pair(8));
    w[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    refused_dir(&config(""), &w, &["header declares 1099511627776 bytes"]);
}

#[test]
fn offsets_out_of_range_and_inconsistent() {
    let w = st_raw(&[(Q_A, "F32", vec![1 << 38], (0, 1 << 40))], &[0u8; 64]);
    refused_dir(
        &config(""),
        &w,
        &["data_offsets [0, 1099511627776] lie outside"],
    );
    let w = st_raw(&[(Q_A, "F32", vec![8, 64], (0, 64))], &[0u8; 64]);
    refused_dir(
        &config(""),
        &w,
        &["span 64 bytes but shape [8, 64] of F32 needs 2048"],
    );
    let w = st_raw(
        &[
            (Q_A, "F32", vec![4], (0, 16)),
            (Q_B, "F32", vec![4], (8, 24)),
        ],
        &[0u8; 24],
    );
    refused_dir(&config(""), &w, &["gap or overlap"]);
}

#[test]
fn wrong_dtype() {
    let w = st_raw(&[(Q_A, "I64", vec![8, 64], (0, 4096))], &[0u8; 4096]);
    refused_dir(&config(""), &w, &["dtype I64 is not supported"]);
}

#[test]
fn unknown_key() {
    let mut t = q_pair(8);
    t.push((
        "base_model.model.model.layers.0.self_attn.q_proj.weight",
        vec![64, 64],
    ));
    refused_dir(
        &config(""),
        &st(&t),
        &["q_proj.weight", "not a LoRA weight"],
    );
    let t = vec![
        (
            "base_model.model.model.layers.0.mlp.fc9.lora_A.weight",
            vec![8, 64],
        ),
        (
            "base_model.model.model.layers.0.mlp.fc9.lora_B.weight",
            vec![64, 8],
        ),
    ];
    refused_dir(
        &config(""),
        &st(&t),
        &["'mlp.fc9' is not a supported LoRA target"],
    );
}

#[test]
fn missing_lora_b() {
    let t = vec![(Q_A, vec![8, 64])];
    refused_dir(
        &config(""),
        &st(&t),
        &["model.layers.0.self_attn.q_proj has lora_A but no lora_B"],
    );
}

#[test]
fn rank_mismatch_between_a_and_b() {
    let t = vec![(Q_A, vec![8, 64]), (Q_B, vec![64, 4])];
    refused_dir(&config(""), &st(&t), &["rank mismatch", "rank 8", "rank 4"]);
    // Tensors consistent with each other but not with the config's r.
    refused_dir(
        &config(""),
        &st(&q_pair(4)),
        &["tensors have rank 4", "gives rank 8"],
    );
}

#[test]
fn rank_zero() {
    let cfg = config("").replace(r#""r":8"#, r#""r":0"#);
    refused_dir(&cfg, &st(&q_pair(0)), &["r is 0, expected an integer >= 1"]);
    // A normalised adapter (e.g. from another reader) with rank 0 fails validation.
    let mut layers: Vec<[Option<LoraModule>; 7]> = vec![Default::default(); 3];
    layers[1][0] = Some(LoraModule {
        rank: 0,
        in_dim: 64,
        out_dim: 64,
        a: vec![],
        b: vec![],
        scale: 1.0,
    });
    let a = NormalizedAdapter {
        name: "zero".into(),
        format: AdapterFormat::TrtLlm,
        source: "x".into(),
        generation: String::new(),
        layers,
    };
    let e = validate(&a, &SHAPE, &LIMITS).unwrap_err();
    assert!(e.message().contains("layer 1 q_proj: rank is 0"), "{e}");
}

#[test]
fn layer_out_of_range() {
    let t = vec![
        (
            "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight",
            vec![8, 64],
        ),
        (
            "base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight",
            vec![64, 8],
        ),
    ];
    refused_dir(
        &config(""),
        &st(&t),
        &["for layer 7, but the model has 3 layers"],
    );
    let t = vec![(
        "model.layers.99999999999999999999.self_attn.q_proj.lora_A.weight",
        vec![8, 64],
    )];
    refused_dir(
        &config(""),
        &st(&t),
        &["layer index '99999999999999999999' is not a number"],
    );
}

#[test]
fn wrong_in_dim() {
    let t = vec![(Q_A, vec![8, 32]), (Q_B, vec![64, 8])];
    refused_dir(
        &config(""),
        &st(&t),
        &[
            "layer 0 q_proj",
            "expected in 64 x out 64",
            "got in 32 x out 64",
        ],
    );
}

#[test]
fn rank_above_limit() {
    let cfg = config("").replace(r#""r":8"#, r#""r":65"#);
    refused_dir(
        &cfg,
        &st(&q_pair(65)),
        &["layer 0 q_proj: rank 65 exceeds max_lora_rank 64"],
    );
}

#[test]
fn non_finite_values() {
    let mut w = st(&q_pair(8));
    let n = w.len();
    w[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    refused_dir(&config(""), &w, &["B has a non-finite value"]);
}

#[test]
fn refused_config_fields() {
    let w = st(&q_pair(8));
    let cases = [
        (r#","modules_to_save":["lm_head"]"#, "modules_to_save"),
        (r#","lora_bias":true"#, "lora_bias"),
        (r#","layer_replication":[[0,2]]"#, "layer_replication"),
        (r#","alora_invocation_tokens":[1,2]"#, "activated LoRA"),
        (
            r#","trainable_token_indices":[5]"#,
            "trainable_token_indices",
        ),
        (r#","use_qalora":true"#, "use_qalora"),
    ];
    for (extra, needle) in cases {
        let cfg = config("").replace(r#","modules_to_save":null"#, "");
        let cfg = cfg.replace("}", &format!("{extra}}}"));
        refused_dir(&cfg, &w, &[needle, "adapter 'evil'"]);
    }
    let cfg = config("").replace(r#""bias":"none""#, r#""bias":"all""#);
    refused_dir(&cfg, &w, &["bias=\"all\""]);
    let cfg = config("").replace(r#""peft_type":"LORA""#, r#""peft_type":"IA3""#);
    refused_dir(&cfg, &w, &["peft_type is \"IA3\""]);
    let cfg = config("").replace(r#""lora_alpha":16,"#, "");
    refused_dir(&cfg, &w, &["missing required field lora_alpha"]);
    let cfg = config(r#","rank_pattern":{"q_proj(":4}"#);
    refused_dir(
        &cfg,
        &w,
        &["rank_pattern key 'q_proj(' is not a valid pattern"],
    );
}

#[test]
fn refused_tensor_keys() {
    let prefix = "base_model.model.model.layers.0.self_attn.q_proj";
    let cases = [
        (
            format!("{prefix}.lora_B.bias"),
            vec![64],
            "LoRA bias (lora_bias=true)",
        ),
        (
            format!("{prefix}.lora_magnitude_vector"),
            vec![64],
            "DoRA magnitude",
        ),
        (
            "base_model.model.model.embed_tokens.lora_embedding_A".into(),
            vec![8, 100],
            "embedding LoRA",
        ),
        (
            "base_model.model.lm_head.lora_A.weight".into(),
            vec![8, 64],
            "lm_head / embed_tokens",
        ),
        (
            "base_model.model.lm_head.weight".into(),
            vec![100, 64],
            "modules_to_save or resized",
        ),
        (
            "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta".into(),
            vec![2, 64],
            "trainable token",
        ),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.bias".into(),
            vec![64],
            "bias tensor",
        ),
    ];
    for (key, shape, needle) in cases {
        let mut t = q_pair(8);
        t.push((key.as_str(), shape));
        refused_dir(&config(""), &st(&t), &[needle, &key]);
    }
    // The same module twice (with and without the PEFT prefix).
    let mut t = q_pair(8);
    t.push((
        "model.layers.0.self_attn.q_proj.lora_A.default.weight",
        vec![8, 64],
    ));
    refused_dir(&config(""), &st(&t), &["duplicates another key"]);
}

#[test]
fn unprefixed_default_keys_are_accepted() {
    let t = vec![
        (
            "model.layers.2.mlp.down_proj.lora_A.default.weight",
            vec![8, 176],
        ),
        (
            "model.layers.2.mlp.down_proj.lora_B.default.weight",
            vec![64, 8],
        ),
    ];
    let d = write_dir(config("").as_bytes(), &st(&t));
    let a = load(d.path()).unwrap();
    let m = a.layers[2][6].as_ref().unwrap();
    assert_eq!((m.rank, m.in_dim, m.out_dim), (8, 176, 64));
}

#[test]
fn invalid_config_encoding_and_json() {
    let w = st(&q_pair(8));
    let d = write_dir(b"{\"r\": 8, \xff\xfe}", &w);
    refused(load(d.path()), &["adapter_config.json is not valid UTF-8"]);
    let d = write_dir(b"{\"r\": 8,,}", &w);
    refused(load(d.path()), &["adapter_config.json is not valid JSON"]);
    let d = write_dir(b"[1,2]", &w);
    refused(load(d.path()), &["not a JSON object"]);
    let big = vec![b' '; (1 << 20) + 1];
    let d = write_dir(&big, &w);
    refused(load(d.path()), &["exceeds the 1048576-byte limit"]);
}

#[test]
fn missing_config_and_unrecognised_dirs() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("adapter_model.safetensors"), st(&q_pair(8))).unwrap();
    refused(load(d.path()), &["no adapter_config.json"]);
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("README.md"), "hi").unwrap();
    refused(
        load(d.path()),
        &["no adapter found", "adapter_config.json", ".nemo"],
    );
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.nemo"), "x").unwrap();
    std::fs::write(d.path().join("b.nemo"), "x").unwrap();
    refused(
        load(d.path()),
        &["2 .nemo files (a.nemo, b.nemo)", "exactly one"],
    );
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("model.lora_config.npy"), "x").unwrap();
    refused(load(d.path()), &["no model.lora_weights.npy/.bin"]);
}

#[cfg(unix)]
#[test]
fn symlink_escaping_the_directory() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.safetensors");
    std::fs::write(&secret, st(&q_pair(8))).unwrap();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("adapter_config.json"), config("")).unwrap();
    std::os::unix::fs::symlink(&secret, d.path().join("adapter_model.safetensors")).unwrap();
    refused(load(d.path()), &["outside the adapter directory"]);
    // A symlink that stays inside is fine.
    let d2 = tempfile::tempdir().unwrap();
    std::fs::write(d2.path().join("adapter_config.json"), config("")).unwrap();
    std::fs::write(d2.path().join("real.bin"), st(&q_pair(8))).unwrap();
    std::os::unix::fs::symlink("real.bin", d2.path().join("adapter_model.safetensors")).unwrap();
    load(d2.path()).unwrap();
}

// ---- pickles and torch zips ----

fn global(module: &str, name: &str) -> Vec<u8> {
    format!("c{module}\n{name}\n").into_bytes()
}

fn binunicode(s: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend_from_slice(&(s.len() as u32).to_le_bytes());
    v.extend_from_slice(s.as_bytes());
    v
}

/// `{key: _rebuild_tensor_v2(storage("0", FloatStorage, numel), offset, size, stride, ...)}`.
fn tensor_pickle(key: &str, numel: u8, offset: u8, size: (u8, u8), stride: (u8, u8)) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    p.extend(binunicode(key));
    p.extend(global("torch._utils", "_rebuild_tensor_v2"));
    p.extend([b'(', b'(']);
    p.extend(binunicode("storage"));
    p.extend(global("torch", "FloatStorage"));
    p.extend(binunicode("0"));
    p.extend(binunicode("cpu"));
    p.extend([b'K', numel, b't', b'Q', b'K', offset]);
    p.extend([
        b'K', size.0, b'K', size.1, 0x86, b'K', stride.0, b'K', stride.1, 0x86, 0x89,
    ]);
    p.extend(global("collections", "OrderedDict"));
    p.extend([b')', b'R', b't', b'R', b'u', b'.']);
    p
}

fn torch_zip(members: &[(&str, &[u8])], deflate: bool) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, data) in members {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
    buf.into_inner()
}

fn floats(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

#[test]
fn hand_built_torch_zip_with_strided_view() {
    // A transposed view: storage holds [[0,1,2],[3,4,5]]; the tensor is its [3, 2] transpose.
    let p = tensor_pickle("w", 6, 0, (3, 2), (1, 3));
    let z = torch_zip(
        &[
            ("weird_prefix/data.pkl", &p),
            ("weird_prefix/data/0", &floats(6)),
        ],
        false,
    );
    let t = read_torch_zip(&z, "x.bin").unwrap();
    assert_eq!(t[0].0, "w");
    assert_eq!(t[0].1.shape, vec![3, 2]);
    assert_eq!(t[0].1.to_f32_vec(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
}

#[test]
fn tensor_view_outside_its_storage() {
    let p = tensor_pickle("w", 6, 2, (2, 3), (3, 1));
    let z = torch_zip(&[("a/data.pkl", &p), ("a/data/0", &floats(6))], false);
    let e = read_torch_zip(&z, "x.bin").unwrap_err();
    assert!(
        e.message()
            .contains("reaches element 7 of a storage with 6 elements"),
        "{e}"
    );
    // Storage record shorter than its declared numel.
    let p = tensor_pickle("w", 60, 0, (2, 3), (3, 1));
    let z = torch_zip(&[("a/data.pkl", &p), ("a/data/0", &floats(6))], false);
    let e = read_torch_zip(&z, "x.bin").unwrap_err();
    assert!(
        e.message()
            .contains("declares 60 elements (240 bytes) but its record holds 24"),
        "{e}"
    );
}

#[test]
fn pickle_global_os_system_is_refused() {
    let mut p = vec![0x80, 2];
    p.extend(global("os", "system"));
    p.extend(binunicode("touch /tmp/pwned"));
    p.extend([0x85, b'R', b'.']);
    let e = read_pickle(&p, "evil.pkl").unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidAdapter);
    assert!(
        e.message().contains("'os.system'") && e.message().contains("whitelist"),
        "{e}"
    );
    // Same inside a torch zip used as adapter_model.bin.
    let z = torch_zip(&[("archive/data.pkl", &p)], false);
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("adapter_config.json"), config("")).unwrap();
    std::fs::write(d.path().join("adapter_model.bin"), z).unwrap();
    refused(load(d.path()), &["adapter 'evil'", "os.system"]);
}

#[test]
fn pickle_stack_global_builtins_eval_is_refused() {
    let mut p = vec![0x80, 4];
    p.extend([0x8c, 8]);
    p.extend(b"builtins");
    p.extend([0x8c, 4]);
    p.extend(b"eval");
    p.push(0x93);
    p.extend([0x8c, 4]);
    p.extend(b"1+1;");
    p.extend([0x85, b'R', b'.']);
    let e = read_pickle(&p, "evil.pkl").unwrap_err();
    assert!(e.message().contains("'builtins.eval'"), "{e}");
}

#[test]
fn pickle_huge_declared_lengths() {
    // BINBYTES declaring 2 GiB in a 16-byte pickle.
    let mut p = vec![0x80, 3, b'B'];
    p.extend(0x7fff_ffffu32.to_le_bytes());
    p.extend(b"abc.");
    let e = read_pickle(&p, "evil.pkl").unwrap_err();
    assert!(
        e.message()
            .contains("declares 2147483647 bytes but only 4 remain"),
        "{e}"
    );
    // BINBYTES8 declaring 10 GB.
    let mut p = vec![0x80, 4, 0x8e];
    p.extend(10_000_000_000u64.to_le_bytes());
    p.push(b'.');
    let e = read_pickle(&p, "evil.pkl").unwrap_err();
    assert!(e.message().contains("declares 10000000000 bytes"), "{e}");
}

#[test]
fn pickle_amplification_and_nesting_bounds() {
    // A 1 KB string duplicated through the memo 100k times.
    let mut p = vec![0x80, 2, b']'];
    p.extend(binunicode(&"x".repeat(1024)));
    p.extend([b'q', 0, b'(']);
    for _ in 0..100_000 {
        p.extend([b'h', 0]);
    }
    p.extend([b'e', b'.']);
    let e = read_pickle(&p, "evil.pkl").unwrap_err();
    assert!(e.message().contains("builds more than"), "{e}");
    // 100 nested empty lists.
    let mut p = vec![0x80, 2];
    for _ in 0..100 {
        p.push(b']');
    }
    for _ in 0..99 {
        p.push(b'a');
    }
    p.push(b'.');
    let e = read_pickle(&p, "evil.pkl").unwrap_err();
    assert!(e.message().contains("nest deeper than 64"), "{e}");
    // Unknown opcode and truncated input.
    let e = read_pickle(&[0x80, 2, b'i'], "evil.pkl").unwrap_err();
    assert!(
        e.message().contains("unsupported pickle opcode 0x69"),
        "{e}"
    );
    let e = read_pickle(&[0x80, 2, b'}'], "evil.pkl").unwrap_err();
    assert!(e.message().contains("only 0 remain"), "{e}");
}

#[test]
fn torchscript_archive_is_refused() {
    let p = tensor_pickle("w", 6, 0, (2, 3), (3, 1));
    let z = torch_zip(
        &[
            ("m/data.pkl", &p),
            ("m/constants.pkl", b"\x80\x02)."),
            ("m/code/__torch__.py", b"def forward(self): pass"),
            ("m/data/0", &floats(6)),
        ],
        false,
    );
    let e = read_torch_zip(&z, "x.bin").unwrap_err();
    assert!(e.message().contains("TorchScript archive"), "{e}");
}

#[test]
fn zip_bomb_member_is_refused() {
    let zeros = vec![0u8; 32 << 20];
    let z = torch_zip(&[("a/data.pkl", &zeros)], true);
    assert!(z.len() < 200_000, "{}", z.len());
    let e = read_torch_zip(&z, "bomb.bin").unwrap_err();
    assert!(
        e.message().contains("declares 33554432 bytes uncompressed")
            && e.message().contains("zip bomb"),
        "{e}"
    );
}

#[test]
fn non_zip_and_legacy_torch_files() {
    let e = read_torch_zip(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.", "old.bin").unwrap_err();
    assert!(e.message().contains("legacy (pre-torch-1.6)"), "{e}");
    let e = read_torch_zip(b"hello", "x.bin").unwrap_err();
    assert!(e.message().contains("not a zip archive"), "{e}");
    let z = torch_zip(&[("a/version", b"3")], false);
    let e = read_torch_zip(&z, "x.bin").unwrap_err();
    assert!(e.message().contains("no data.pkl"), "{e}");
}

#[test]
fn safetensors_reader_never_panics_on_garbage() {
    let good = st(&q_pair(8));
    for cut in 0..good.len().min(400) {
        let _ = read_safetensors(&good[..cut], "x");
    }
    let mut x = good.clone();
    for i in 0..x.len().min(300) {
        x[i] ^= 0x5a;
        let _ = read_safetensors(&x, "x");
        x[i] ^= 0x5a;
    }
}

#[test]
fn pickle_and_torch_zip_readers_never_panic_on_mutations() {
    let p = tensor_pickle("w", 6, 0, (3, 2), (1, 3));
    let mut x = p.clone();
    for i in 0..x.len() {
        for v in [
            0x00, 0x01, 0x7f, 0x80, 0xff, b'(', b'R', b'Q', b'h', b'b', b'e', b'u', b'.',
        ] {
            let old = x[i];
            x[i] = v;
            let _ = read_pickle(&x, "m");
            let z = torch_zip(&[("a/data.pkl", &x), ("a/data/0", &floats(6))], false);
            let _ = read_torch_zip(&z, "m");
            x[i] = old;
        }
        let _ = read_pickle(&p[..i], "m");
    }
    let z = torch_zip(&[("a/data.pkl", &p), ("a/data/0", &floats(6))], false);
    let mut y = z.clone();
    for i in 0..y.len() {
        y[i] ^= 0xa5;
        let _ = read_torch_zip(&y, "m");
        y[i] ^= 0xa5;
        let _ = read_torch_zip(&z[..i], "m");
    }
}
