//! Hostile TensorRT-LLM, `.npy`, tar and `.nemo` inputs: each is refused with its own clear
//! error (message substrings checked), never a panic or a huge allocation. Self-contained (no
//! ../shared needed): inputs are built in temporary directories.

use std::io::Write;
use std::path::Path;

use loraplex::adapters::archive::{read_tar_bytes, ArchiveLimits};
use loraplex::adapters::export::{export, write_torch_zip, ExportFormat, TorchTensor};
use loraplex::adapters::npy::{encode_npy, parse_npy, NpyDType};
use loraplex::adapters::{
    load_adapter, AdapterFormat, AdapterLimits, LoraModule, ModelShape, NormalizedAdapter,
};
use loraplex::backend::LoraTarget;
use loraplex::tensor::DType;
use loraplex::{Error, ErrorCode};

fn shape() -> ModelShape {
    ModelShape {
        num_layers: 3,
        hidden_size: 64,
        intermediate_size: 176,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        dtype: DType::F32,
    }
}

/// Reads an adapter directory the one way the crate reads adapters: [`load_adapter`] (discovery,
/// checked file reads, `parse_*`, validation).
fn load(dir: &Path, name: &str, shape: &ModelShape) -> loraplex::Result<NormalizedAdapter> {
    load_adapter(dir, name, shape, &AdapterLimits::default())
}

fn expect_err<T: std::fmt::Debug>(r: loraplex::Result<T>, needles: &[&str]) -> Error {
    let e = r.expect_err("hostile input was accepted");
    println!("refused: {}", e.message());
    for n in needles {
        assert!(
            e.message().contains(n),
            "message {:?} lacks {:?}",
            e.message(),
            n
        );
    }
    e
}

// --- TensorRT-LLM --------------------------------------------------------------------------

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes a TRT dir with `.npy` config rows and `nw` zero weight rows of length `w`.
fn trt_npy(dir: &Path, rows: &[&[i32]], nw: usize, w: usize) {
    let cols = rows.first().map_or(3, |r| r.len());
    let flat: Vec<i32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    let cfg = encode_npy(NpyDType::I32, &[1, rows.len(), cols], &i32_bytes(&flat)).unwrap();
    std::fs::write(dir.join("model.lora_config.npy"), cfg).unwrap();
    let wts = encode_npy(NpyDType::F32, &[1, nw, w], &vec![0u8; nw * w * 4]).unwrap();
    std::fs::write(dir.join("model.lora_weights.npy"), wts).unwrap();
}

fn trt_case(rows: &[&[i32]], nw: usize, w: usize, needles: &[&str]) -> Error {
    let tmp = tempfile::tempdir().unwrap();
    trt_npy(tmp.path(), rows, nw, w);
    let e = expect_err(load(tmp.path(), "bad", &shape()), needles);
    assert!(
        e.message().contains("model.lora_"),
        "names the file: {}",
        e.message()
    );
    e
}

/// Row length that fits any rank-1 module of the tiny shape.
const W1: usize = 64 + 176;

#[test]
fn trt_short_row() {
    // q_proj rank 8 needs 8 * (64 + 64) = 1024 values.
    trt_case(
        &[&[1, 0, 8]],
        1,
        1000,
        &["row 0", "too short", "has 1000 values"],
    );
}

#[test]
fn trt_unknown_module_id() {
    trt_case(&[&[42, 0, 1]], 1, W1, &["unknown module id 42"]);
    trt_case(&[&[-1, 0, 1]], 1, W1, &["unknown module id -1"]);
}

#[test]
fn trt_unsupported_module_id() {
    let e = trt_case(
        &[&[13, 0, 1]],
        1,
        W1,
        &["module id 13 (moe_h_to_4h)", "not supported"],
    );
    assert_eq!(e.code(), ErrorCode::InvalidAdapter);
}

#[test]
fn trt_layer_out_of_range() {
    trt_case(&[&[1, 7, 1]], 1, W1, &["layer 7 out of range", "3 layers"]);
}

#[test]
fn trt_rank_zero() {
    trt_case(
        &[&[1, 0, 0]],
        1,
        W1,
        &["rank (adapter_size) 0 must be positive"],
    );
}

#[test]
fn trt_row_count_mismatch() {
    trt_case(
        &[&[1, 0, 1], &[2, 0, 1]],
        3,
        W1,
        &["3 weight rows but lora_config has 2 rows"],
    );
    // Headerless: 2 config rows but weights bytes not a multiple of 2 rows.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("model.lora_config.bin"),
        i32_bytes(&[1, 0, 1, 2, 0, 1]),
    )
    .unwrap();
    std::fs::write(tmp.path().join("model.lora_weights.bin"), vec![0u8; 4 * 7]).unwrap();
    expect_err(
        load(tmp.path(), "bad", &shape()),
        &["cannot hold 2 rows of f32"],
    );
}

#[test]
fn trt_duplicate_layer_module() {
    trt_case(
        &[&[2, 0, 1], &[2, 0, 1]],
        2,
        W1,
        &["row 1: duplicate module k_proj for layer 0 (already given by row 0)"],
    );
    // attn_qkv and attn_q for the same layer overlap too.
    trt_case(
        &[&[1, 2, 1], &[0, 2, 1]],
        2,
        W1,
        &["duplicate module q_proj for layer 2"],
    );
}

#[test]
fn trt_dora_row() {
    trt_case(
        &[&[1, 0, 1, 1]],
        1,
        W1 * 2,
        &["DoRA (is_dora = 1) is not supported"],
    );
}

#[test]
fn trt_ambiguous_and_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    trt_npy(tmp.path(), &[&[1, 0, 1]], 1, W1);
    std::fs::write(
        tmp.path().join("model.lora_config.bin"),
        i32_bytes(&[1, 0, 1]),
    )
    .unwrap();
    expect_err(
        load(tmp.path(), "bad", &shape()),
        &["both model.lora_config.npy and model.lora_config.bin"],
    );
    // Float config.
    let tmp = tempfile::tempdir().unwrap();
    trt_npy(tmp.path(), &[&[1, 0, 1]], 1, W1);
    let f = encode_npy(NpyDType::F32, &[1, 1, 3], &[0u8; 12]).unwrap();
    std::fs::write(tmp.path().join("model.lora_config.npy"), f).unwrap();
    expect_err(
        load(tmp.path(), "bad", &shape()),
        &["must be an integer array"],
    );
    // Config .bin whose size fits neither 3 nor 4 columns.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("model.lora_config.bin"), [0u8; 20]).unwrap();
    std::fs::write(tmp.path().join("model.lora_weights.bin"), [0u8; 8]).unwrap();
    expect_err(
        load(tmp.path(), "bad", &shape()),
        &["not a whole number of int32 config rows"],
    );
}

// --- .npy ----------------------------------------------------------------------------------

fn raw_npy(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    v.extend_from_slice(dict.as_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn npy_huge_declared_shape_in_tiny_file() {
    let b = raw_npy(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 100000, 1000000), }",
        &[0; 16],
    );
    expect_err(
        parse_npy(&b, "w.npy"),
        &["w.npy", "needs 400000000000 data bytes but the file has 16"],
    );
    let b = raw_npy(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
        &[0; 16],
    );
    expect_err(parse_npy(&b, "w.npy"), &["overflows"]);
}

#[test]
fn npy_fortran_order() {
    let b = raw_npy(
        "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
        &[0; 16],
    );
    expect_err(
        parse_npy(&b, "w.npy"),
        &["fortran_order True is not supported"],
    );
}

#[test]
fn npy_bad_magic_and_header() {
    expect_err(parse_npy(b"PK\x03\x04 not numpy", "w.npy"), &["bad magic"]);
    let mut b = raw_npy(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}",
        &[0; 4],
    );
    b[6] = 9;
    expect_err(
        parse_npy(&b, "w.npy"),
        &["unsupported .npy format version 9"],
    );
    let b = raw_npy(
        "{'descr': '<c8', 'fortran_order': False, 'shape': (1,)}",
        &[0; 8],
    );
    expect_err(parse_npy(&b, "w.npy"), &["unsupported .npy dtype '<c8'"]);
    let mut b = raw_npy(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}",
        &[0; 4],
    );
    b[8] = 0xff; // header length beyond the file
    expect_err(parse_npy(&b, "w.npy"), &["truncated .npy header"]);
}

// --- tar / .nemo ---------------------------------------------------------------------------

/// One raw tar member; the name bytes are written verbatim (no sanitising, unlike tar::Builder).
fn member(name: &[u8], data: &[u8], ty: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(ty);
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    h.set_cksum();
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

fn tar_of(members: &[Vec<u8>]) -> Vec<u8> {
    let mut v = members.concat();
    v.extend_from_slice(&[0u8; 1024]);
    v
}

/// A valid canonical `.nemo`'s (yaml, ckpt) for the tiny shape, rank 2.
fn valid_members() -> (Vec<u8>, Vec<u8>) {
    let s = shape();
    let mut layers: Vec<[Option<LoraModule>; 7]> = vec![Default::default(); 3];
    let (i, o) = s.module_dims(LoraTarget::Q);
    layers[1][0] = Some(LoraModule {
        rank: 2,
        in_dim: i,
        out_dim: o,
        a: vec![0.5; 2 * i],
        b: vec![0.25; 2 * o],
        scale: 1.0,
    });
    let a = NormalizedAdapter {
        name: "ok".into(),
        format: AdapterFormat::Nemo,
        source: Default::default(),
        generation: String::new(),
        layers,
    };
    let tmp = tempfile::tempdir().unwrap();
    export(&a, &s, ExportFormat::NemoCanonical, tmp.path()).unwrap();
    let bytes = std::fs::read(tmp.path().join("adapter.nemo")).unwrap();
    let limits = ArchiveLimits::for_compressed(bytes.len() as u64);
    let m = read_tar_bytes(&bytes, "adapter.nemo", limits).unwrap();
    (
        m["model_config.yaml"].clone(),
        m["model_weights.ckpt"].clone(),
    )
}

fn nemo_case(tar: &[u8], needles: &[&str]) -> Error {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("x.nemo"), tar).unwrap();
    let e = expect_err(load(tmp.path(), "bad", &shape()), needles);
    assert!(
        e.message().contains("x.nemo"),
        "names the file: {}",
        e.message()
    );
    e
}

const REG: tar::EntryType = tar::EntryType::Regular;

#[test]
fn nemo_valid_baseline_loads() {
    // The raw tar builder used below makes loadable archives when nothing is hostile.
    let (yaml, ckpt) = valid_members();
    let tmp = tempfile::tempdir().unwrap();
    let t = tar_of(&[
        member(b"./", b"", tar::EntryType::Directory, None),
        member(b"./model_config.yaml", &yaml, REG, None),
        member(b"model_weights.ckpt", &ckpt, REG, None),
    ]);
    std::fs::write(tmp.path().join("x.nemo"), t).unwrap();
    let a = load(tmp.path(), "ok", &shape()).unwrap();
    assert_eq!(a.modules().count(), 1);
}

#[test]
fn tar_member_with_dotdot() {
    let (yaml, ckpt) = valid_members();
    let t = tar_of(&[
        member(b"../../model_config.yaml", &yaml, REG, None),
        member(b"model_weights.ckpt", &ckpt, REG, None),
    ]);
    nemo_case(
        &t,
        &["'../../model_config.yaml' contains '..' (path traversal)"],
    );
}

#[test]
fn tar_absolute_member_path() {
    let (yaml, _) = valid_members();
    let t = tar_of(&[member(b"/etc/model_config.yaml", &yaml, REG, None)]);
    nemo_case(&t, &["'/etc/model_config.yaml' has an absolute path"]);
}

#[test]
fn tar_symlink_and_hardlink_members() {
    let (yaml, _) = valid_members();
    let t = tar_of(&[
        member(b"model_config.yaml", &yaml, REG, None),
        member(
            b"model_weights.ckpt",
            b"",
            tar::EntryType::Symlink,
            Some("etc/passwd"),
        ),
    ]);
    nemo_case(&t, &["'model_weights.ckpt' is a symlink"]);
    let t = tar_of(&[
        member(b"model_config.yaml", &yaml, REG, None),
        member(
            b"model_weights.ckpt",
            b"",
            tar::EntryType::Link,
            Some("model_config.yaml"),
        ),
    ]);
    nemo_case(&t, &["is a hardlink"]);
}

#[test]
fn two_nemo_files_and_none() {
    let (yaml, ckpt) = valid_members();
    let t = tar_of(&[
        member(b"model_config.yaml", &yaml, REG, None),
        member(b"model_weights.ckpt", &ckpt, REG, None),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("a.nemo"), &t).unwrap();
    std::fs::write(tmp.path().join("b.nemo"), &t).unwrap();
    expect_err(
        load(tmp.path(), "bad", &shape()),
        &["holds 2 .nemo files (a.nemo, b.nemo)", "exactly one"],
    );
    let empty = tempfile::tempdir().unwrap();
    expect_err(
        load(empty.path(), "bad", &shape()),
        &["no adapter found", "one *.nemo file"],
    );
}

#[test]
fn nemo_and_trt_files_escaping_the_directory_are_refused() {
    // NeMo and TensorRT-LLM files are read through the same checked path as HF files: a symlink
    // that resolves outside the adapter directory is refused, whatever it points to (the removed
    // test-only `read_nemo` read such a file without the check).
    let (yaml, ckpt) = valid_members();
    let t = tar_of(&[
        member(b"model_config.yaml", &yaml, REG, None),
        member(b"model_weights.ckpt", &ckpt, REG, None),
    ]);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("real.nemo"), &t).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path().join("real.nemo"), dir.path().join("x.nemo"))
        .unwrap();
    expect_err(
        load(dir.path(), "bad", &shape()),
        &["x.nemo", "outside the adapter directory"],
    );
    // The same archive as a regular file loads.
    std::fs::remove_file(dir.path().join("x.nemo")).unwrap();
    std::fs::write(dir.path().join("x.nemo"), &t).unwrap();
    load(dir.path(), "ok", &shape()).unwrap();

    let src = tempfile::tempdir().unwrap();
    trt_npy(src.path(), &[&[1, 0, 1]], 1, W1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.path().join("model.lora_config.npy"),
        dir.path().join("model.lora_config.npy"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        src.path().join("model.lora_weights.npy"),
        dir.path().join("model.lora_weights.npy"),
    )
    .unwrap();
    expect_err(
        load(dir.path(), "bad", &shape()),
        &["model.lora_weights.npy", "outside the adapter directory"],
    );
}
#[test]
fn nemo_missing_model_config() {
    let (_, ckpt) = valid_members();
    let t = tar_of(&[member(b"./model_weights.ckpt", &ckpt, REG, None)]);
    nemo_case(&t, &["missing model_config.yaml"]);
}

#[test]
fn nemo_invalid_yaml() {
    let (_, ckpt) = valid_members();
    let t = tar_of(&[
        member(b"model_config.yaml", b"peft: [unclosed\n  - : :", REG, None),
        member(b"model_weights.ckpt", &ckpt, REG, None),
    ]);
    nemo_case(&t, &["model_config.yaml: invalid YAML"]);
}

#[test]
fn nemo_missing_weights_and_tp_shards() {
    let (yaml, ckpt) = valid_members();
    nemo_case(
        &tar_of(&[member(b"model_config.yaml", &yaml, REG, None)]),
        &["missing model_weights.ckpt"],
    );
    let t = tar_of(&[
        member(b"model_config.yaml", &yaml, REG, None),
        member(b"mp_rank_00/model_weights.ckpt", &ckpt, REG, None),
        member(b"mp_rank_01/model_weights.ckpt", &ckpt, REG, None),
    ]);
    let e = nemo_case(&t, &["tensor/pipeline-parallel shards", "mp_rank_01"]);
    assert_eq!(e.code(), ErrorCode::Unsupported);
    // A lone rank-0 shard of a TP=1 model is fine.
    let tmp = tempfile::tempdir().unwrap();
    let t = tar_of(&[
        member(b"model_config.yaml", &yaml, REG, None),
        member(b"mp_rank_00/model_weights.ckpt", &ckpt, REG, None),
    ]);
    std::fs::write(tmp.path().join("x.nemo"), t).unwrap();
    load(tmp.path(), "ok", &shape()).unwrap();
    let tp2 = String::from_utf8(yaml.clone()).unwrap().replace(
        "tensor_model_parallel_size: 1",
        "tensor_model_parallel_size: 2",
    );
    let t = tar_of(&[
        member(b"model_config.yaml", tp2.as_bytes(), REG, None),
        member(b"model_weights.ckpt", &ckpt, REG, None),
    ]);
    nemo_case(&t, &["tensor_model_parallel_size is 2"]);
}

#[test]
fn nemo_config_and_key_problems() {
    let (yaml, ckpt) = valid_members();
    let y = String::from_utf8(yaml).unwrap();
    let case = |yaml: &str, ckpt: &[u8], needles: &[&str]| {
        nemo_case(
            &tar_of(&[
                member(b"model_config.yaml", yaml.as_bytes(), REG, None),
                member(b"model_weights.ckpt", ckpt, REG, None),
            ]),
            needles,
        )
    };
    case(
        &y.replace("peft_scheme: lora", "peft_scheme: ia3"),
        &ckpt,
        &["only \"lora\" adapters"],
    );
    case(
        &y.replace("adapter_dim: 2", "adapter_dim: 4"),
        &ckpt,
        &["do not match the expected [4, 64]"],
    );
    case(
        &y.replace("num_query_groups: 2", "num_query_groups: 4"),
        &ckpt,
        &["num_query_groups is 4 but the base model has 2"],
    );
    let a = vec![0.0f32; 2 * 64];
    let bad = write_torch_zip(
        &[TorchTensor {
            key: "model.decoder.layers.0.mlp.adapter_layer.lora_moe_hto4h_adapter.linear_in.weight"
                .into(),
            shape: vec![2, 64],
            data: &a,
        }],
        "model_weights",
    )
    .unwrap();
    case(
        &y,
        &bad,
        &["lora_moe_hto4h_adapter", "unsupported NeMo adapter"],
    );
}

#[test]
fn gzip_bomb_is_refused() {
    // A multi-member gzip: the tar header, then 300 copies of 1 MiB of compressed zeros. It is
    // a few hundred KiB on disk and would decompress to 300 MiB.
    let mut head = tar::Header::new_gnu();
    head.set_path("model_weights.ckpt").unwrap();
    head.set_size(300 << 20);
    head.set_entry_type(REG);
    head.set_cksum();
    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let mut file = gz(head.as_bytes());
    let chunk = gz(&vec![0u8; 1 << 20]);
    for _ in 0..300 {
        file.extend_from_slice(&chunk);
    }
    assert!(file.len() < 2 << 20);
    nemo_case(&file, &["possible gzip bomb", "model_weights.ckpt"]);
    // Declared sizes within the limit, but the stream itself goes past the cap.
    let t = tar_of(&[
        member(b"a", &[1; 1000], REG, None),
        member(b"b", &[2; 1000], REG, None),
        member(b"c", &[3; 1000], REG, None),
    ]);
    let limits = ArchiveLimits {
        max_decompressed: 4096,
        max_member: 4096,
    };
    expect_err(
        read_tar_bytes(&gz(&t), "s.tar.gz", limits),
        &["decompresses to more bytes than allowed"],
    );
    // The same stream under a sufficient cap is fine.
    let ok = ArchiveLimits {
        max_decompressed: 1 << 20,
        max_member: 1 << 20,
    };
    assert_eq!(read_tar_bytes(&gz(&t), "s.tar.gz", ok).unwrap().len(), 3);
}

#[test]
fn truncated_tar() {
    let (yaml, ckpt) = valid_members();
    let t = tar_of(&[
        member(b"model_config.yaml", &yaml, REG, None),
        member(b"model_weights.ckpt", &ckpt, REG, None),
    ]);
    // Cut inside the weights data.
    let cut = &t[..512 + yaml.len().div_ceil(512) * 512 + 512 + ckpt.len() / 2];
    nemo_case(
        cut,
        &["'model_weights.ckpt' declares", "truncated or corrupt tar"],
    );
    // Cut inside a header block.
    let cut = &t[..512 + yaml.len().div_ceil(512) * 512 + 100];
    nemo_case(cut, &["truncated or corrupt tar archive"]);
    // A header declaring far more than the file holds.
    let mut h = member(b"model_weights.ckpt", b"", REG, None);
    let mut hdr = tar::Header::new_gnu();
    hdr.as_mut_bytes().copy_from_slice(&h[..512]);
    hdr.set_size(1 << 40);
    hdr.set_cksum();
    h[..512].copy_from_slice(hdr.as_bytes());
    nemo_case(&tar_of(&[h]), &["declares 1099511627776 bytes"]);
}

#[test]
fn duplicate_tar_member() {
    let (yaml, ckpt) = valid_members();
    let t = tar_of(&[
        member(b"model_config.yaml", &yaml, REG, None),
        member(b"./model_config.yaml", &yaml, REG, None),
        member(b"model_weights.ckpt", &ckpt, REG, None),
    ]);
    nemo_case(&t, &["'model_config.yaml' appears more than once"]);
}

// --- Mutation robustness --------------------------------------------------------------------

/// Seeded random mutations (byte flips, truncation, insertion) of `valid`.
fn mutations(valid: &[u8], seed: u64, n: usize) -> Vec<Vec<u8>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut v = valid.to_vec();
            match rng.gen_range(0..3) {
                0 => {
                    for _ in 0..rng.gen_range(1..8) {
                        let i = rng.gen_range(0..v.len());
                        v[i] = rng.gen();
                    }
                }
                1 => v.truncate(rng.gen_range(0..v.len())),
                _ => {
                    let i = rng.gen_range(0..v.len());
                    let extra: Vec<u8> = (0..rng.gen_range(1..600)).map(|_| rng.gen()).collect();
                    v.splice(i..i, extra);
                }
            }
            v
        })
        .collect()
}

fn no_panic<T>(what: &str, i: usize, f: impl FnOnce() -> T) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        panic!("{what}: mutation {i} panicked");
    }
}

/// A small adapter (rank 2, q/k/v share A, o) for building valid inputs.
fn small_adapter() -> NormalizedAdapter {
    let s = shape();
    let mut layers: Vec<[Option<LoraModule>; 7]> = vec![Default::default(); 3];
    for t in [LoraTarget::Q, LoraTarget::K, LoraTarget::V, LoraTarget::O] {
        let (i, o) = s.module_dims(t);
        layers[2][t.index()] = Some(LoraModule {
            rank: 2,
            in_dim: i,
            out_dim: o,
            a: (0..2 * i).map(|x| (x % 7) as f32 * 0.01).collect(),
            b: (0..2 * o).map(|x| (x % 5) as f32 * 0.02).collect(),
            scale: 2.0,
        });
    }
    NormalizedAdapter {
        name: "small".into(),
        format: AdapterFormat::HfSafetensors,
        source: Default::default(),
        generation: String::new(),
        layers,
    }
}

#[test]
fn mutated_npy_and_trt_never_panic() {
    let npy = encode_npy(NpyDType::F16, &[1, 3, 5], &[7u8; 30]).unwrap();
    for (i, m) in mutations(&npy, 1, 3000).iter().enumerate() {
        no_panic("npy", i, || parse_npy(m, "m.npy"));
    }
    let src = tempfile::tempdir().unwrap();
    export(
        &small_adapter(),
        &shape(),
        ExportFormat::TrtNpy { shuffle_rows: true },
        src.path(),
    )
    .unwrap();
    let cfg = std::fs::read(src.path().join("model.lora_config.npy")).unwrap();
    let wts = std::fs::read(src.path().join("model.lora_weights.npy")).unwrap();
    let work = tempfile::tempdir().unwrap();
    for (i, (mc, mw)) in mutations(&cfg, 2, 400)
        .iter()
        .zip(mutations(&wts, 3, 400))
        .enumerate()
    {
        // Mutate one file at a time so that most inputs get past the other's checks.
        let (c, w) = if i % 2 == 0 { (mc, &wts) } else { (&cfg, &mw) };
        std::fs::write(work.path().join("model.lora_config.npy"), c).unwrap();
        std::fs::write(work.path().join("model.lora_weights.npy"), w).unwrap();
        no_panic("trt", i, || load(work.path(), "m", &shape()));
    }
}

#[test]
fn mutated_nemo_never_panics() {
    let src = tempfile::tempdir().unwrap();
    export(
        &small_adapter(),
        &shape(),
        ExportFormat::NemoFused,
        src.path(),
    )
    .unwrap();
    let plain = std::fs::read(src.path().join("adapter.nemo")).unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&plain).unwrap();
    let gz = enc.finish().unwrap();
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("m.nemo");
    let mut accepted = 0;
    for (kind, valid, seed) in [("plain", &plain, 4), ("gzip", &gz, 5)] {
        std::fs::write(&path, valid).unwrap();
        load(work.path(), "m", &shape()).unwrap();
        for (i, m) in mutations(valid, seed, 300).iter().enumerate() {
            std::fs::write(&path, m).unwrap();
            no_panic(kind, i, || {
                if load(work.path(), "m", &shape()).is_ok() {
                    accepted += 1;
                }
            });
        }
    }
    println!("{accepted} of 600 mutated .nemo files still loaded");
}

#[test]
fn trt_bin_in_the_wrong_dtype() {
    // f32 .bin weights read as a bf16 model's: the misread padding is non-zero.
    let tmp = tempfile::tempdir().unwrap();
    export(&small_adapter(), &shape(), ExportFormat::TrtBin, tmp.path()).unwrap();
    let bf16 = ModelShape {
        dtype: DType::BF16,
        ..shape()
    };
    expect_err(
        load(tmp.path(), "bad", &bf16),
        &["padding must be zero", "not in the base model dtype (bf16)"],
    );
    load(tmp.path(), "ok", &shape()).unwrap();
}
