//! GGUF tokenizers (`tokenizer.ggml.model` "llama" SentencePiece and "gpt2" byte-level BPE with
//! each supported `tokenizer.ggml.pre`) against reference ids and decodes.
//!
//! Fixtures in tests/fixtures/tokenizers/ come from scripts/tokenizer-oracle.py (transformers
//! 5.24, tokenizers, sentencepiece, gguf-py): two SentencePiece models trained there and written
//! as GGUF the way llama.cpp's converter does, and a byte-level BPE vocabulary cut from SmolLM2's.
//! expected.json holds the ids each text must encode to, its decodes and the chat renderings.
//! The byte-level cases for every `pre` use bpe-smollm2.gguf with `tokenizer.ggml.pre` replaced
//! in memory.

mod common;

use std::path::PathBuf;

use common::expect_err;
use loraplex::model::gguf::{tokenizer::build_tokenizer, GgufFile, MetaValue};
use loraplex::tokenizer::{ChatMessage, IncrementalDecoder, Tokenizer};
use loraplex::ErrorCode;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizers")
        .join(name)
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn open(name: &str) -> GgufFile {
    GgufFile::open(&fixture(name)).unwrap()
}

/// Checks every case (encode with special tokens, decode with and without them); returns the
/// number of cases.
fn check_cases(tok: &Tokenizer, cases: &Value, label: &str) -> usize {
    let cases = cases.as_array().unwrap();
    assert!(cases.len() > 20, "{label}: too few cases");
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want = common::token_ids(&c["ids"]);
        let got = tok.encode(text, true).unwrap();
        assert_eq!(got, want, "{label}: encode {text:?}");
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            c["decode"].as_str().unwrap(),
            "{label}: decode {text:?}"
        );
        assert_eq!(
            tok.decode(&want, true).unwrap(),
            c["decode_skip_special"].as_str().unwrap(),
            "{label}: decode (skipping special tokens) {text:?}"
        );
    }
    cases.len()
}

#[test]
fn sentencepiece_matches_reference() {
    let e = expected();
    let tok = build_tokenizer(&open("spm-llama.gguf")).unwrap();
    let exp = &e["spm-llama.gguf"];
    let n = check_cases(&tok, &exp["cases"], "spm-llama");
    assert_eq!(tok.special().bos, Some(("<s>".to_string(), 1)));
    assert_eq!(tok.special().eos, Some(("</s>".to_string(), 2)));
    assert!(tok.special().add_bos);
    // Llama-2's chat template: `bos_token` renders as "<s>", which encodes as the BOS id.
    for chat in exp["chats"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = serde_json::from_value(chat["messages"].clone()).unwrap();
        let rendered = tok.apply_chat_template(&messages, false).unwrap();
        assert_eq!(rendered, chat["rendered"].as_str().unwrap());
        assert!(rendered.starts_with("<s>[INST]"), "{rendered:?}");
        let got = tok.encode(&rendered, false).unwrap();
        assert_eq!(got, common::token_ids(&chat["ids"]), "chat {rendered:?}");
        assert_eq!(got[0], 1, "one BOS, from the template");
        assert_ne!(got[1], 1);
    }
    // The template's own error (roles must alternate) reaches the caller.
    let twice = [
        ChatMessage {
            role: "user".into(),
            content: "a".into(),
        },
        ChatMessage {
            role: "user".into(),
            content: "b".into(),
        },
    ];
    expect_err(
        tok.apply_chat_template(&twice, false),
        ErrorCode::InvalidArgument,
        &["Conversation roles must alternate"],
    );
    println!("spm-llama: {n} cases and the chat renderings match");
}

#[test]
fn sentencepiece_without_space_prefix_matches_reference() {
    let e = expected();
    let g = open("spm-noprefix.gguf");
    assert_eq!(
        g.get("tokenizer.ggml.add_space_prefix"),
        Some(&MetaValue::Bool(false))
    );
    let tok = build_tokenizer(&g).unwrap();
    let n = check_cases(&tok, &e["spm-noprefix.gguf"]["cases"], "spm-noprefix");
    println!("spm-noprefix: {n} cases match");
}

#[test]
fn sentencepiece_byte_fallback_streams_whole_characters() {
    let tok = build_tokenizer(&open("spm-llama.gguf")).unwrap();
    let text = "日本語 🚀 naïve";
    let ids = tok.encode(text, false).unwrap();
    let byte_tokens = ids
        .iter()
        .filter(|&&i| tok.inner().id_to_token(i).unwrap().starts_with("<0x"))
        .count();
    assert!(byte_tokens >= 4, "expected byte-fallback tokens in {ids:?}");
    let mut dec = IncrementalDecoder::new();
    let mut out = String::new();
    for &id in &ids {
        let piece = dec.push(&tok, id).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "partial character emitted");
        out.push_str(&piece);
    }
    out.push_str(&dec.flush(&tok).unwrap());
    assert_eq!(out, text);
}

fn with_pre(g: &GgufFile, pre: &str) -> GgufFile {
    let mut g = g.clone();
    g.metadata.insert(
        "tokenizer.ggml.pre".into(),
        MetaValue::String(pre.to_string()),
    );
    g
}

#[test]
fn byte_level_pre_tokenizers_match_reference() {
    let e = expected();
    let g = open("bpe-smollm2.gguf");
    let pres = e["bpe-smollm2.gguf"]["pre"].as_object().unwrap();
    for want in [
        "smollm",
        "gpt2",
        "default",
        "llama-bpe",
        "qwen2",
        "tekken",
        "deepseek-llm",
    ] {
        assert!(pres.contains_key(want), "expected.json lacks pre {want}");
    }
    for (pre, exp) in pres {
        let tok = build_tokenizer(&with_pre(&g, pre)).unwrap();
        assert!(!tok.special().add_bos);
        let n = check_cases(&tok, &exp["cases"], &format!("pre={pre}"));
        println!("pre={pre}: {n} cases match");
    }
    // The fixture tells the families apart: each pair differs somewhere (gpt2 = default).
    let names: Vec<&String> = pres.keys().collect();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            if [a.as_str(), b.as_str()] == ["gpt2", "default"]
                || [a.as_str(), b.as_str()] == ["default", "gpt2"]
            {
                continue;
            }
            let ca = pres[a.as_str()]["cases"].as_array().unwrap();
            let cb = pres[b.as_str()]["cases"].as_array().unwrap();
            assert!(
                ca.iter().zip(cb).any(|(x, y)| x["ids"] != y["ids"]),
                "pre {a} and {b} give the same ids on every case"
            );
        }
    }
}

#[test]
fn pre_tokenizer_aliases_behave_like_their_family() {
    let g = open("bpe-smollm2.gguf");
    let text = "it's 12345 camelCase aZ\n\n  x";
    for (alias, family) in [
        ("llama3", "llama-bpe"),
        ("llama-v3", "llama-bpe"),
        ("deepseek-r1-qwen", "qwen2"),
        ("starcoder", "smollm"),
        ("gpt-2", "gpt2"),
    ] {
        let a = build_tokenizer(&with_pre(&g, alias)).unwrap();
        let f = build_tokenizer(&with_pre(&g, family)).unwrap();
        assert_eq!(
            a.encode(text, true).unwrap(),
            f.encode(text, true).unwrap(),
            "{alias}"
        );
    }
}

#[test]
fn add_bos_defaults_follow_llama_cpp() {
    let mut g = open("spm-llama.gguf");
    g.metadata.remove("tokenizer.ggml.add_bos_token");
    let tok = build_tokenizer(&g).unwrap();
    assert!(tok.special().add_bos, "SentencePiece adds BOS by default");
    assert_eq!(tok.encode("hi", true).unwrap()[0], 1);
    assert_ne!(tok.encode("hi", false).unwrap()[0], 1);

    let mut g = open("bpe-smollm2.gguf");
    g.metadata.remove("tokenizer.ggml.add_bos_token");
    for (pre, add) in [("llama-bpe", true), ("tekken", true), ("smollm", false)] {
        let tok = build_tokenizer(&with_pre(&g, pre)).unwrap();
        assert_eq!(tok.special().add_bos, add, "{pre}");
    }
}

// ---------------------------------------------------------------- errors

fn set(g: &GgufFile, key: &str, v: MetaValue) -> GgufFile {
    let mut g = g.clone();
    g.metadata.insert(key.to_string(), v);
    g
}

fn without(g: &GgufFile, key: &str) -> GgufFile {
    let mut g = g.clone();
    g.metadata.remove(key);
    g
}

fn array_with(g: &GgufFile, key: &str, f: impl FnOnce(&mut Vec<MetaValue>)) -> GgufFile {
    let mut a = g.get(key).unwrap().as_array().unwrap().to_vec();
    f(&mut a);
    set(g, key, MetaValue::Array(a))
}

#[test]
fn malformed_sentencepiece_metadata_is_refused_naming_the_key() {
    let g = open("spm-llama.gguf");
    let scores = "tokenizer.ggml.scores";
    let cases: Vec<(GgufFile, ErrorCode, Vec<&str>)> = vec![
        (
            without(&g, scores),
            ErrorCode::InvalidModel,
            vec!["missing", scores],
        ),
        (
            array_with(&g, scores, |a| {
                a.pop();
            }),
            ErrorCode::InvalidModel,
            vec![scores, "599 entries", "600"],
        ),
        (
            array_with(&g, scores, |a| a[7] = MetaValue::F32(f32::NAN)),
            ErrorCode::InvalidModel,
            vec!["\"tokenizer.ggml.scores\"[7]"],
        ),
        (
            array_with(&g, scores, |a| a[3] = MetaValue::String("x".into())),
            ErrorCode::InvalidModel,
            vec!["\"tokenizer.ggml.scores\"[3]"],
        ),
        (
            set(&g, scores, MetaValue::F32(1.0)),
            ErrorCode::InvalidModel,
            vec![scores, "expected an array"],
        ),
        (
            array_with(&g, "tokenizer.ggml.token_type", |a| {
                a[5] = MetaValue::I32(9)
            }),
            ErrorCode::InvalidModel,
            vec!["\"tokenizer.ggml.token_type\"[5]", "token type"],
        ),
        (
            array_with(&g, "tokenizer.ggml.token_type", |a| {
                a[5] = MetaValue::I32(-1)
            }),
            ErrorCode::InvalidModel,
            vec!["\"tokenizer.ggml.token_type\"[5]"],
        ),
        (
            array_with(&g, "tokenizer.ggml.token_type", |a| {
                a.push(MetaValue::I32(1));
            }),
            ErrorCode::InvalidModel,
            vec!["tokenizer.ggml.token_type", "601 entries"],
        ),
        (
            array_with(&g, "tokenizer.ggml.tokens", |a| a[10] = a[11].clone()),
            ErrorCode::InvalidModel,
            vec!["tokenizer.ggml.tokens", "appears twice", "id 11"],
        ),
        (
            array_with(&g, "tokenizer.ggml.tokens", |a| a[10] = MetaValue::U32(3)),
            ErrorCode::InvalidModel,
            vec!["\"tokenizer.ggml.tokens\"[10]"],
        ),
        (
            set(&g, "tokenizer.ggml.add_space_prefix", MetaValue::U8(1)),
            ErrorCode::InvalidModel,
            vec!["tokenizer.ggml.add_space_prefix", "bool"],
        ),
        (
            set(&g, "tokenizer.ggml.unknown_token_id", MetaValue::U32(600)),
            ErrorCode::InvalidModel,
            vec!["tokenizer.ggml.unknown_token_id", "600"],
        ),
        (
            set(&g, "tokenizer.ggml.model", MetaValue::String("bert".into())),
            ErrorCode::Unsupported,
            vec!["tokenizer.ggml.model", "\"bert\""],
        ),
        (
            without(&g, "tokenizer.ggml.model"),
            ErrorCode::InvalidModel,
            vec!["tokenizer.ggml.model"],
        ),
    ];
    for (g, code, needles) in cases {
        expect_err(build_tokenizer(&g), code, &needles);
    }
}

#[test]
fn malformed_byte_level_metadata_is_refused_naming_the_key() {
    let g = open("bpe-smollm2.gguf");
    let merges = "tokenizer.ggml.merges";
    expect_err(
        build_tokenizer(&without(&g, merges)),
        ErrorCode::InvalidModel,
        &["missing", merges],
    );
    expect_err(
        build_tokenizer(&array_with(&g, merges, |a| {
            a[4] = MetaValue::String("Ġt".into())
        })),
        ErrorCode::InvalidModel,
        &["tokenizer.ggml.merges[4]"],
    );
    expect_err(
        build_tokenizer(&with_pre(&g, "gpt-4o")),
        ErrorCode::Unsupported,
        &["tokenizer.ggml.pre", "\"gpt-4o\"", "llama-bpe"],
    );
    expect_err(
        build_tokenizer(&set(&g, "tokenizer.ggml.pre", MetaValue::U32(2))),
        ErrorCode::InvalidModel,
        &["tokenizer.ggml.pre", "string"],
    );
    expect_err(
        build_tokenizer(&array_with(&g, "tokenizer.ggml.token_type", |a| {
            a[0] = MetaValue::F32(3.0)
        })),
        ErrorCode::InvalidModel,
        &["\"tokenizer.ggml.token_type\"[0]"],
    );
    // An absent `pre` is GPT-2's split, as llama.cpp's "default" and transformers do.
    let plain = build_tokenizer(&without(&g, "tokenizer.ggml.pre")).unwrap();
    let gpt2 = build_tokenizer(&with_pre(&g, "gpt2")).unwrap();
    let t = "it's 2024,  ok\n";
    assert_eq!(
        plain.encode(t, true).unwrap(),
        gpt2.encode(t, true).unwrap()
    );
}

// ---------------------------------------------------------------- llama.cpp's vocab tests

/// Opt-in check against the real vocabularies llama.cpp tests its tokenizers with: every
/// `ggml-vocab-*.gguf` in `$LLAMA_CPP_VOCABS` (llama.cpp's `models/` directory) whose
/// `.gguf.inp`/`.gguf.out` pair exists, where `.out` holds the ids the model's HuggingFace
/// tokenizer gives each `.inp` text (separated by `__ggml_vocab_test__` lines). Vocabularies this
/// builder refuses (UNSUPPORTED) are listed, not failed; every other one must match exactly.
/// `make test` runs it on the pinned llama-cpp-python sdist's vocabularies
/// (`scripts/llama-cpp.sh --source`); by hand: `LLAMA_CPP_VOCABS=.../llama.cpp/models cargo test
/// --release --test gguf_tokenizer -- --ignored`.
#[test]
#[ignore = "needs LLAMA_CPP_VOCABS (llama.cpp's models/ directory, MBs of vocabularies)"]
fn llama_cpp_vocabularies_match_their_reference_ids() {
    let dir = PathBuf::from(
        std::env::var("LLAMA_CPP_VOCABS").expect("set LLAMA_CPP_VOCABS to llama.cpp's models/"),
    );
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".gguf.inp"))
        .collect();
    names.sort();
    let (mut matched, mut refused) = (Vec::new(), Vec::new());
    for inp in names {
        let gguf = inp.with_extension("");
        let out = gguf.with_extension("gguf.out");
        let text = std::fs::read_to_string(&inp).unwrap();
        let mut texts: Vec<&str> = text.split("\n__ggml_vocab_test__\n").collect();
        if texts.last() == Some(&"") {
            texts.pop();
        }
        let want: Vec<Vec<u32>> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
            .collect();
        assert_eq!(texts.len(), want.len(), "{}", inp.display());
        let name = gguf.file_name().unwrap().to_string_lossy().to_string();
        let g = GgufFile::open(&gguf).unwrap();
        let t0 = std::time::Instant::now();
        let tok = match build_tokenizer(&g) {
            Ok(t) => t,
            Err(e) if e.code() == ErrorCode::Unsupported => {
                refused.push(format!("{name}: {}", e.message()));
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        };
        for (t, w) in texts.iter().zip(&want) {
            assert_eq!(&tok.encode(t, false).unwrap(), w, "{name}: encode {t:?}");
            assert_eq!(&tok.decode(w, false).unwrap(), t, "{name}: decode {t:?}");
        }
        matched.push(format!(
            "{name} ({} texts, {} tokens, built in {:.0} ms)",
            texts.len(),
            tok.vocab_size(),
            t0.elapsed().as_secs_f64() * 1e3
        ));
    }
    println!("match:\n  {}", matched.join("\n  "));
    println!("refused:\n  {}", refused.join("\n  "));
    assert!(!matched.is_empty(), "no vocabulary was checked");
}
