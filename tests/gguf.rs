//! GGUF loader tests: dequantization of hand-built blocks, the q/k permutation inverse, a
//! synthetic 2-layer GGUF written here that must round-trip, malformed/unsupported files, and the
//! real SmolLM2-135M-Instruct GGUF (models/, skipped with a message when absent; the reference
//! config comes from ../shared, skipped when absent).

use std::path::PathBuf;

use loraplex::model::gguf::{dequantize, load_gguf, permute_qk, unpermute_qk, GgmlType};
use loraplex::model::RopeScaling;
use loraplex::ErrorCode;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;
mod gguf_support;
use common::expect_err;
use gguf_support::*;

// ---------------------------------------------------------------- dequantization

#[test]
fn dequant_q4_0_block() {
    // d = 0.5 (f16 0x3800); byte j = j (low nibble) | (15 - j) << 4 (high nibble).
    let mut b = vec![0x00, 0x38];
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
    for j in 0..16 {
        assert_eq!(y[j], (j as f32 - 8.0) * 0.5, "low nibble {j}");
        assert_eq!(y[j + 16], (7.0 - j as f32) * 0.5, "high nibble {j}");
    }
    assert_eq!(y[0], -4.0);
    assert_eq!(y[16], 3.5);
}

#[test]
fn dequant_q4_1_block() {
    // d = 0.25 (0x3400), m = -1.0 (0xBC00).
    let mut b = vec![0x00, 0x34, 0x00, 0xBC];
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
    for j in 0..16 {
        assert_eq!(y[j], j as f32 * 0.25 - 1.0);
        assert_eq!(y[j + 16], (15 - j) as f32 * 0.25 - 1.0);
    }
    assert_eq!(y[31], -1.0);
}

#[test]
fn dequant_q8_0_blocks() {
    // Two blocks: d = 2.0 (0x4000) then d = -0.125 (0xB000); q[j] = j - 16.
    let mut b = vec![0x00, 0x40];
    b.extend((0..32i32).map(|j| (j - 16) as i8 as u8));
    b.extend([0x00, 0xB0]);
    b.extend((0..32i32).map(|j| (j - 16) as i8 as u8));
    let y = dequantize(GgmlType::Q8_0, &b, 64).unwrap();
    for j in 0..32 {
        assert_eq!(y[j], (j as f32 - 16.0) * 2.0);
        assert_eq!(y[32 + j], (j as f32 - 16.0) * -0.125);
    }
    // Many blocks (crosses the parallel chunking) keep their order.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (vals, bytes) = q8_0(&mut rng, 32 * 10_000);
    assert_eq!(
        dequantize(GgmlType::Q8_0, &bytes, vals.len()).unwrap(),
        vals
    );
    let (vals, bytes) = q4(&mut rng, 32 * 9_000, true);
    assert_eq!(
        dequantize(GgmlType::Q4_1, &bytes, vals.len()).unwrap(),
        vals
    );
}

#[test]
fn dequant_plain_types() {
    let v = [1.5f32, -0.0, f32::MAX, 3.25e-5];
    assert_eq!(dequantize(GgmlType::F32, &f32_bytes(&v), 4).unwrap(), v);
    // f16: 1.0 = 0x3C00, -2.0 = 0xC000, 65504 = 0x7BFF.
    let y = dequantize(GgmlType::F16, &[0x00, 0x3C, 0x00, 0xC0, 0xFF, 0x7B], 3).unwrap();
    assert_eq!(y, [1.0, -2.0, 65504.0]);
    // bf16: 1.0 = 0x3F80, -3.0 = 0xC040.
    let y = dequantize(GgmlType::BF16, &[0x80, 0x3F, 0x40, 0xC0], 2).unwrap();
    assert_eq!(y, [1.0, -3.0]);
}

#[test]
fn dequant_rejects_bad_sizes_and_types() {
    let e = dequantize(GgmlType::Q4_0, &[0; 18], 16).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidModel);
    let e = dequantize(GgmlType::Q4_0, &[0; 17], 32).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidModel);
    let e = dequantize(GgmlType::Iq2Xxs, &[0; 66], 256).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unsupported);
    assert!(e.message().contains("IQ2_XXS"), "{}", e.message());
    assert_eq!(GgmlType::from_id(14), Some(GgmlType::Q6K));
    assert_eq!(GgmlType::from_id(4), None, "Q4_2 was removed from ggml");
}

// ---------------------------------------------------------------- permutation

#[test]
fn unpermute_inverts_llama_cpp_permutation() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (rows, cols, heads) in [(8, 3, 2), (576, 5, 9), (192, 4, 3), (64, 1, 1)] {
        let x: Vec<f32> = (0..rows * cols).map(|_| rng.gen()).collect();
        let p = permute_qk(&x, rows, cols, heads).unwrap();
        assert_eq!(
            p,
            numpy_permute(&x, rows, cols, heads),
            "{rows}x{cols}/{heads}"
        );
        if rows / heads > 2 {
            assert_ne!(p, x, "permutation must move rows");
        }
        assert_eq!(unpermute_qk(&p, rows, cols, heads).unwrap(), x);
        assert_eq!(
            permute_qk(
                &unpermute_qk(&x, rows, cols, heads).unwrap(),
                rows,
                cols,
                heads
            )
            .unwrap(),
            x
        );
    }
    assert!(unpermute_qk(&[0.0; 12], 6, 2, 2).is_err(), "odd head size");
    assert!(unpermute_qk(&[0.0; 11], 4, 3, 2).is_err(), "wrong length");
}

// ---------------------------------------------------------------- synthetic round trip

#[test]
fn synthetic_gguf_round_trips() {
    for tied in [false, true] {
        let t = toy(tied);
        let dir = tempfile::tempdir().unwrap();
        let path = t.writer.write(dir.path(), "toy.gguf");
        let m = load_gguf(&path).unwrap();
        let c = &m.config;
        assert_eq!(
            (
                c.hidden_size,
                c.intermediate_size,
                c.num_layers,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim
            ),
            (H, I, L, NH, NKV, HD)
        );
        assert_eq!(c.vocab_size, t.vocab);
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert_eq!(c.rope_theta, 50000.0);
        assert_eq!(c.rope_scaling, RopeScaling::None);
        assert_eq!(c.max_position_embeddings, 512);
        assert_eq!(c.tie_word_embeddings, tied);
        assert_eq!(c.bos_token_id, Some(t.vocab as u32 - 2));
        assert_eq!(c.eos_token_ids, vec![t.vocab as u32 - 1]);
        assert_eq!(m.tensors.len(), t.hf.len());
        for (name, shape, vals) in &t.hf {
            let got = m
                .tensors
                .get(name)
                .unwrap_or_else(|| panic!("missing {name}"));
            assert_eq!(&got.shape, shape, "{name}");
            assert_eq!(&got.to_f32_vec(), vals, "{name}");
        }
        let tok = &m.tokenizer;
        assert_eq!(
            tok.encode(" t", true).unwrap(),
            vec![t.vocab as u32 - 2, 256],
            "BOS + merged 'Ġt'"
        );
        assert_eq!(
            tok.encode("<|im_end|>", false).unwrap(),
            vec![t.vocab as u32 - 1]
        );
        assert_eq!(tok.encode("42", false).unwrap().len(), 2);
        assert_eq!(
            tok.decode(&tok.encode("héllo 42", false).unwrap(), false)
                .unwrap(),
            "héllo 42"
        );
        let msgs = [loraplex::tokenizer::ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        }];
        assert_eq!(
            tok.apply_chat_template(&msgs, true).unwrap(),
            "<|im_start|>hi<|im_end|>"
        );
    }
}

#[test]
fn synthetic_gguf_v2_and_custom_alignment() {
    let t = toy(false);
    let dir = tempfile::tempdir().unwrap();
    let mut v2 = t.writer.bytes();
    v2[4] = 2;
    let p = dir.path().join("v2.gguf");
    std::fs::write(&p, v2).unwrap();
    let a = load_gguf(&p).unwrap();
    let mut w = t.writer.clone();
    w.align = 256;
    w.u32("general.alignment", 256);
    let b = load_gguf(&w.write(dir.path(), "a256.gguf")).unwrap();
    assert_eq!(a.config, b.config);
    assert_eq!(a.tensors, b.tensors);
    // Declared alignment that the offsets do not honour.
    let mut w = t.writer.clone();
    w.u32("general.alignment", 1024);
    let p = w.write(dir.path(), "misaligned.gguf");
    expect_err(
        load_gguf(&p),
        ErrorCode::InvalidModel,
        &["misaligned.gguf", "alignment"],
    );
    let mut w = t.writer.clone();
    w.u32("general.alignment", 48);
    let p = w.write(dir.path(), "align48.gguf");
    expect_err(
        load_gguf(&p),
        ErrorCode::InvalidModel,
        &["align48.gguf", "general.alignment"],
    );
}

#[test]
fn synthetic_llama3_pre_tokenizer_and_linear_rope() {
    let mut w = toy(true).writer;
    w.str("tokenizer.ggml.pre", "llama-bpe");
    w.str("llama.rope.scaling.type", "linear");
    w.f32("llama.rope.scaling.factor", 4.0);
    let dir = tempfile::tempdir().unwrap();
    let m = load_gguf(&w.write(dir.path(), "l3.gguf")).unwrap();
    assert_eq!(m.config.rope_scaling, RopeScaling::Linear { factor: 4.0 });
    // Llama-3 splits digits in groups of up to three: "12345" -> "123", "45" -> 5 byte tokens,
    // but the pre-tokens are what matter: check via offsets of the HF encoding.
    let enc = m.tokenizer.inner().encode("12345", false).unwrap();
    assert_eq!(enc.get_ids().len(), 5);
    let pre = m.tokenizer.inner().get_pre_tokenizer().unwrap();
    use tokenizers::PreTokenizer;
    let mut s = tokenizers::PreTokenizedString::from("12345 it's");
    pre.pre_tokenize(&mut s).unwrap();
    let parts: Vec<String> = s
        .get_splits(
            tokenizers::OffsetReferential::Original,
            tokenizers::OffsetType::Byte,
        )
        .into_iter()
        .map(|(t, _, _)| t.to_string())
        .collect();
    assert_eq!(parts, ["123", "45", "Ġit", "'s"]);
}

// ---------------------------------------------------------------- errors

#[test]
fn missing_file_is_io_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    expect_err(
        load_gguf(&dir.path().join("nope.gguf")),
        ErrorCode::Io,
        &["nope.gguf"],
    );
}

#[test]
fn bad_magic_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.gguf");
    std::fs::write(&p, b"GGML\x03\0\0\0 and some more bytes to read").unwrap();
    expect_err(
        load_gguf(&p),
        ErrorCode::InvalidModel,
        &["bad.gguf", "magic"],
    );
    let p = dir.path().join("empty.gguf");
    std::fs::write(&p, b"").unwrap();
    expect_err(
        load_gguf(&p),
        ErrorCode::InvalidModel,
        &["empty.gguf", "truncated"],
    );
    let mut v1 = toy(true).writer.bytes();
    v1[4] = 1;
    let p = dir.path().join("v1.gguf");
    std::fs::write(&p, v1).unwrap();
    expect_err(
        load_gguf(&p),
        ErrorCode::Unsupported,
        &["v1.gguf", "version 1"],
    );
}

#[test]
fn synthetic_truncated_at_every_header_byte() {
    let bytes = toy(true).writer.bytes();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.gguf");
    // Every byte of the fixed header and first keys, then a stride through the rest.
    let mut cuts: Vec<usize> = (0..512).collect();
    cuts.extend((512..8192.min(bytes.len())).step_by(7));
    cuts.extend((8192..bytes.len()).step_by(997));
    cuts.push(bytes.len() - 1);
    for cut in cuts {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let msg = expect_err(load_gguf(&p), ErrorCode::InvalidModel, &["cut.gguf"]);
        assert!(msg.contains("truncated"), "cut at {cut}: {msg}");
    }
}

#[test]
fn header_claiming_more_than_the_file_holds() {
    let dir = tempfile::tempdir().unwrap();
    // Huge key/value count.
    let mut b = toy(true).writer.bytes();
    b[16..24].copy_from_slice(&(u64::MAX / 4).to_le_bytes());
    let p = dir.path().join("kv.gguf");
    std::fs::write(&p, &b).unwrap();
    expect_err(
        load_gguf(&p),
        ErrorCode::InvalidModel,
        &["kv.gguf", "metadata"],
    );
    // Huge tensor count.
    let mut b = toy(true).writer.bytes();
    b[8..16].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    expect_err(
        load_gguf(&p),
        ErrorCode::InvalidModel,
        &["kv.gguf", "tensor infos"],
    );
    // A string claiming 2^60 bytes (the first key's length).
    let mut b = toy(true).writer.bytes();
    b[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    expect_err(
        load_gguf(&p),
        ErrorCode::InvalidModel,
        &["kv.gguf", "metadata key #0"],
    );
    // A huge array length.
    let mut w = toy(true).writer;
    let mut arr = 5u32.to_le_bytes().to_vec();
    arr.extend((u64::MAX / 8).to_le_bytes());
    w.set("zz.huge", 9, arr);
    std::fs::write(&p, w.bytes()).unwrap();
    expect_err(
        load_gguf(&p),
        ErrorCode::InvalidModel,
        &["kv.gguf", "zz.huge"],
    );
    // A tensor whose dims declare more data than there is.
    let mut w = toy(true).writer;
    w.tensor(
        "blk.0.attn_norm.weight",
        &[H as u64 * 1000],
        T_F32,
        f32_bytes(&[0.0; H]),
    );
    std::fs::write(&p, w.bytes()).unwrap();
    expect_err(
        load_gguf(&p),
        ErrorCode::InvalidModel,
        &["kv.gguf", "blk.0.attn_norm.weight"],
    );
}

#[test]
fn unsupported_quant_type_names_tensor_and_type() {
    let mut w = toy(true).writer;
    w.tensor(
        "blk.1.ffn_gate.weight",
        &[256, 8],
        T_IQ2_XXS,
        vec![0; 66 * 8],
    );
    let dir = tempfile::tempdir().unwrap();
    let p = w.write(dir.path(), "iq2xxs.gguf");
    expect_err(
        load_gguf(&p),
        ErrorCode::Unsupported,
        &["iq2xxs.gguf", "blk.1.ffn_gate.weight", "IQ2_XXS"],
    );
    // An id ggml never defined.
    let mut w = toy(true).writer;
    w.tensor("blk.0.ffn_up.weight", &[H as u64, I as u64], 4, vec![0; 8]);
    let p = w.write(dir.path(), "id4.gguf");
    expect_err(
        load_gguf(&p),
        ErrorCode::Unsupported,
        &["id4.gguf", "blk.0.ffn_up.weight", "type id 4"],
    );
}

#[test]
fn model_level_errors_name_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let case = |w: Writer, name: &str, code: ErrorCode, needles: &[&str]| {
        let p = w.write(dir.path(), name);
        let mut all = vec![name];
        all.extend_from_slice(needles);
        expect_err(load_gguf(&p), code, &all);
    };
    // qwen2 is served, from qwen2.* keys: a llama file relabelled lacks them.
    let mut w = toy(true).writer;
    w.str("general.architecture", "qwen2");
    case(
        w,
        "arch.gguf",
        ErrorCode::InvalidModel,
        &["missing metadata key", "qwen2.embedding_length"],
    );
    let mut w = toy(true).writer;
    w.str("general.architecture", "gemma2");
    case(w, "gemma.gguf", ErrorCode::Unsupported, &["gemma2"]);

    let mut w = toy(true).writer;
    w.str("general.architecture", "gpt2");
    case(w, "gpt2.gguf", ErrorCode::Unsupported, &["gpt2"]);

    let mut w = toy(true).writer;
    w.tensors.retain(|t| t.0 != "blk.1.attn_k.weight");
    case(
        w,
        "missing.gguf",
        ErrorCode::InvalidModel,
        &["blk.1.attn_k.weight", "missing"],
    );

    let mut w = toy(true).writer;
    w.tensor(
        "blk.0.attn_norm.weight",
        &[H as u64 - 2],
        T_F32,
        f32_bytes(&[0.0; H - 2]),
    );
    case(
        w,
        "shape.gguf",
        ErrorCode::InvalidModel,
        &["blk.0.attn_norm.weight", "shape"],
    );

    let mut w = toy(true).writer;
    w.tensor(
        "blk.0.attn_q.bias",
        &[H as u64],
        T_F32,
        f32_bytes(&[0.0; H]),
    );
    case(
        w,
        "bias.gguf",
        ErrorCode::InvalidModel,
        &["blk.0.attn_q.bias", "not used"],
    );

    let mut w = toy(true).writer;
    w.tensor("blk.0.attn_extra.weight", &[4], T_F32, f32_bytes(&[0.0; 4]));
    case(
        w,
        "unknown.gguf",
        ErrorCode::InvalidModel,
        &["blk.0.attn_extra.weight", "not used"],
    );

    let mut w = toy(true).writer;
    w.tensor(
        "blk.5.attn_norm.weight",
        &[H as u64],
        T_F32,
        f32_bytes(&[0.0; H]),
    );
    case(
        w,
        "extra.gguf",
        ErrorCode::InvalidModel,
        &["blk.5.attn_norm.weight"],
    );

    // llama3 frequency factors: wrong length, non-positive values, or together with another
    // scaling are refused naming the tensor.
    for (name, vals) in [
        ("rope-len.gguf", vec![1.0; HD / 2 + 1]),
        ("rope-zero.gguf", vec![0.0; HD / 2]),
    ] {
        let mut w = toy(true).writer;
        w.tensor(
            "rope_freqs.weight",
            &[vals.len() as u64],
            T_F32,
            f32_bytes(&vals),
        );
        case(w, name, ErrorCode::InvalidModel, &["rope_freqs.weight"]);
    }
    let mut w = toy(true).writer;
    w.tensor(
        "rope_freqs.weight",
        &[HD as u64 / 2],
        T_F32,
        f32_bytes(&[2.0; HD / 2]),
    );
    w.str("llama.rope.scaling.type", "linear");
    w.f32("llama.rope.scaling.factor", 4.0);
    case(
        w,
        "rope-both.gguf",
        ErrorCode::InvalidModel,
        &["rope_freqs.weight", "llama.rope.scaling.type"],
    );

    let mut w = toy(true).writer;
    w.remove("llama.block_count");
    case(
        w,
        "nokey.gguf",
        ErrorCode::InvalidModel,
        &["llama.block_count"],
    );

    let mut w = toy(true).writer;
    w.str("llama.block_count", "two");
    case(
        w,
        "badkey.gguf",
        ErrorCode::InvalidModel,
        &["llama.block_count"],
    );

    let mut w = toy(true).writer;
    w.str("llama.rope.scaling.type", "yarn");
    case(w, "yarn.gguf", ErrorCode::Unsupported, &["yarn"]);

    // SentencePiece needs piece scores (the toy vocabulary has none).
    let mut w = toy(true).writer;
    w.str("tokenizer.ggml.model", "llama");
    case(
        w,
        "spm.gguf",
        ErrorCode::InvalidModel,
        &["tokenizer.ggml.scores"],
    );

    let mut w = toy(true).writer;
    w.str("tokenizer.ggml.model", "bert");
    case(
        w,
        "wpm.gguf",
        ErrorCode::Unsupported,
        &["tokenizer.ggml.model", "bert"],
    );

    let mut w = toy(true).writer;
    w.str("tokenizer.ggml.pre", "gpt-4o");
    case(
        w,
        "pre.gguf",
        ErrorCode::Unsupported,
        &["tokenizer.ggml.pre", "gpt-4o"],
    );

    let mut w = toy(true).writer;
    w.str_array("tokenizer.ggml.merges", &["Ġt".to_string()]);
    case(
        w,
        "merge.gguf",
        ErrorCode::InvalidModel,
        &["tokenizer.ggml.merges[0]"],
    );

    let mut w = toy(true).writer;
    w.u32("tokenizer.ggml.eos_token_id", 1_000_000);
    case(
        w,
        "eos.gguf",
        ErrorCode::InvalidModel,
        &["tokenizer.ggml.eos_token_id"],
    );

    let mut w = toy(true).writer;
    w.i32_array("tokenizer.ggml.eos_token_id", &[3, 1_000_000]);
    case(
        w,
        "eos-list-range.gguf",
        ErrorCode::InvalidModel,
        &["tokenizer.ggml.eos_token_id", "1000000"],
    );

    let mut w = toy(true).writer;
    w.i32_array("tokenizer.ggml.eos_token_id", &[3, -1]);
    case(
        w,
        "eos-list-negative.gguf",
        ErrorCode::InvalidModel,
        &["tokenizer.ggml.eos_token_id\"[1]"],
    );

    let mut w = toy(true).writer;
    w.f32("tokenizer.ggml.eos_token_id", 3.0);
    case(
        w,
        "eos-float.gguf",
        ErrorCode::InvalidModel,
        &["tokenizer.ggml.eos_token_id"],
    );
}

#[test]
fn eos_array_and_sliding_window_from_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let t = toy(false);
    let n = t.vocab as u32;
    let mut w = t.writer.clone();
    // Several EOS ids (as Llama-3 GGUFs may carry): every one stops generation; the first is the
    // template's eos_token.
    w.i32_array("tokenizer.ggml.eos_token_id", &[(n - 1) as i32, 7]);
    w.u32("llama.attention.sliding_window", 64);
    let m = load_gguf(&w.write(dir.path(), "eos-list.gguf")).unwrap();
    assert_eq!(m.config.eos_token_ids, vec![n - 1, 7]);
    assert_eq!(m.config.sliding_window, Some(64));
    assert_eq!(
        m.tokenizer.special().eos,
        Some(("<|im_end|>".to_string(), n - 1))
    );

    // llama.cpp writes 0 for "no window"; an absent key is no window too.
    let mut w = t.writer.clone();
    w.u32("llama.attention.sliding_window", 0);
    let m = load_gguf(&w.write(dir.path(), "no-window.gguf")).unwrap();
    assert_eq!(m.config.sliding_window, None);
    let m = load_gguf(&t.writer.write(dir.path(), "plain.gguf")).unwrap();
    assert_eq!(m.config.sliding_window, None);

    // Attention applies the window; it does not bound the sequence length.
    let mut w = t.writer.clone();
    w.u32("llama.attention.sliding_window", 64);
    let p = w.write(dir.path(), "window.gguf");
    let mut cfg = loraplex::config::EngineConfig::new(&p);
    cfg.threads = 1;
    let e = loraplex::engine::Engine::new(cfg.clone()).unwrap();
    assert_eq!(e.model_config().layer_window(1), Some(64));
    assert_eq!(e.max_model_len(), 512);
    assert_eq!(
        e.stats_json()["limits"]["max_model_len_bound"],
        "max_position_embeddings"
    );
    drop(e);
    cfg.max_model_len = 100;
    assert_eq!(
        loraplex::engine::Engine::new(cfg).unwrap().max_model_len(),
        100
    );
}

#[test]
fn rope_freqs_divide_the_frequencies() {
    let dir = tempfile::tempdir().unwrap();
    let t = toy(false);
    let plain = load_gguf(&t.writer.write(dir.path(), "plain.gguf"))
        .unwrap()
        .config
        .rope_inv_freq();
    let factors: Vec<f32> = (0..HD / 2).map(|i| 1.0 + i as f32).collect();
    let mut w = t.writer.clone();
    w.tensor(
        "rope_freqs.weight",
        &[HD as u64 / 2],
        T_F32,
        f32_bytes(&factors),
    );
    let m = load_gguf(&w.write(dir.path(), "factors.gguf")).unwrap();
    assert_eq!(
        m.config.rope_scaling,
        RopeScaling::FreqFactors(factors.clone())
    );
    // The factors tensor is consumed by the config, not left among the weights.
    assert!(!m.tensors.keys().any(|k| k.contains("rope")));
    for ((s, p), f) in m.config.rope_inv_freq().iter().zip(&plain).zip(&factors) {
        assert!((s * f - p).abs() <= 1e-6 * p, "{s} * {f} vs {p}");
    }
}

// ---------------------------------------------------------------- the real SmolLM2 GGUF

fn smollm2() -> Option<PathBuf> {
    common::smollm2_gguf()
}

#[test]
fn smollm2_config_and_tensors() {
    let Some(path) = smollm2() else { return };
    let m = load_gguf(&path).unwrap();
    let c = &m.config;
    assert_eq!(c.hidden_size, 576);
    assert_eq!(c.intermediate_size, 1536);
    assert_eq!(c.num_layers, 30);
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (9, 3, 64));
    assert_eq!(c.vocab_size, 49152);
    assert_eq!(c.rope_theta, 100000.0);
    assert!(c.tie_word_embeddings);
    assert!((c.rms_norm_eps - 1e-5).abs() < 1e-9);
    assert_eq!(c.bos_token_id, Some(1));
    assert_eq!(c.eos_token_ids, vec![2]);

    // The reference comparison needs ../shared (fails under CI=true, skips locally, when absent).
    if let Some(shared) = common::shared_dir() {
        let refp = shared.join("reference/smollm2-135m-instruct/reference.json");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&refp).unwrap()).unwrap();
        let mc = &r["model_config"];
        let u = |k: &str| mc[k].as_u64().unwrap() as usize;
        assert_eq!(c.hidden_size, u("hidden_size"));
        assert_eq!(c.intermediate_size, u("intermediate_size"));
        assert_eq!(c.num_layers, u("num_hidden_layers"));
        assert_eq!(c.num_heads, u("num_attention_heads"));
        assert_eq!(c.num_kv_heads, u("num_key_value_heads"));
        assert_eq!(c.head_dim, u("head_dim"));
        assert_eq!(c.vocab_size, u("vocab_size"));
        assert_eq!(c.max_position_embeddings, u("max_position_embeddings"));
        assert_eq!(c.rope_theta as f64, mc["rope_theta"].as_f64().unwrap());
        assert_eq!(c.rms_norm_eps, mc["rms_norm_eps"].as_f64().unwrap() as f32);
        assert_eq!(
            c.tie_word_embeddings,
            mc["tie_word_embeddings"].as_bool().unwrap()
        );
        assert_eq!(
            c.bos_token_id,
            Some(mc["bos_token_id"].as_u64().unwrap() as u32)
        );
        assert_eq!(
            c.eos_token_ids,
            vec![mc["eos_token_id"].as_u64().unwrap() as u32]
        );
    }

    let (h, i, q, kv) = (576, 1536, 576, 192);
    let mut want = vec![
        ("model.embed_tokens.weight".to_string(), vec![49152, h]),
        ("model.norm.weight".to_string(), vec![h]),
    ];
    for l in 0..30 {
        let p = format!("model.layers.{l}");
        want.push((format!("{p}.input_layernorm.weight"), vec![h]));
        want.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        want.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
        want.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        want.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        want.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
        want.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        want.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        want.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
    }
    assert_eq!(
        m.tensors.len(),
        want.len(),
        "no lm_head (tied) and nothing extra"
    );
    for (name, shape) in &want {
        let t = m
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("missing {name}"));
        assert_eq!(&t.shape, shape, "{name}");
        let v = t.to_f32_vec();
        assert_eq!(v.len(), shape.iter().product::<usize>());
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{name} has non-finite values"
        );
        assert!(v.iter().any(|&x| x != 0.0), "{name} is all zeros");
    }
    // RMSNorm weights are F32 in the file and positive-ish around 1; embeddings are Q8_0.
    let norm = m.tensors["model.norm.weight"].to_f32_vec();
    assert!(norm.iter().sum::<f32>() / norm.len() as f32 > 0.1);
}

#[test]
fn smollm2_truncated_copies_fail_cleanly() {
    let Some(path) = smollm2() else { return };
    let bytes = std::fs::read(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("smol-cut.gguf");
    // In the header, inside tokenizer.ggml.tokens / merges, at the data start, mid-data, last byte.
    for (cut, needle) in [
        (10, "truncated"),
        (300, "33 metadata entries"),
        (500, "metadata key #10"),
        (600_000, "metadata key \"tokenizer.ggml"),
        (1_785_000, "tensor"),
        (40_000_000, "tensor \""),
        (bytes.len() - 1, "tensor \""),
    ] {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let msg = expect_err(
            load_gguf(&p),
            ErrorCode::InvalidModel,
            &["smol-cut.gguf", needle],
        );
        assert!(msg.contains("truncated"), "cut at {cut}: {msg}");
    }
}
