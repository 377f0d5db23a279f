//! Regression tests for what fuzzing found (`make fuzz`, fuzz/fuzz_targets/), and a check that
//! the committed seed corpora (fuzz/seeds/<target>/) are accepted by their parsers, so that the
//! fuzzer starts from inputs that get past the magic numbers and headers.

mod gguf_support;

use std::path::Path;

use gguf_support::toy;
use loraplex::model::gguf::load_gguf;
use loraplex::ErrorCode;

/// fuzz target `gguf`: a small file whose `llama.block_count` is huge must be refused naming
/// the key, without sizing anything by the count (2^32 - 1 layers used to run out of memory).
#[test]
fn gguf_block_count_beyond_the_tensors_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for layers in [100_000, u32::MAX] {
        let mut w = toy(true).writer;
        w.u32("llama.block_count", layers);
        let path = w.write(tmp.path(), "huge.gguf");
        let e = match load_gguf(&path) {
            Err(e) => e,
            Ok(_) => panic!("{layers} layers accepted"),
        };
        assert_eq!(e.code(), ErrorCode::InvalidModel);
        assert!(
            e.message()
                .contains(&format!("llama.block_count is {layers}"))
                && e.message().contains("too few for that many layers"),
            "{}",
            e.message()
        );
    }
    // The file as written (2 layers) loads.
    let path = toy(true).writer.write(tmp.path(), "ok.gguf");
    load_gguf(&path).unwrap();
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "{}: no seeds", dir.display());
    out
}

#[test]
fn gguf_seeds_load() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, bytes) in seeds("gguf") {
        let path = tmp.path().join(&name);
        std::fs::write(&path, bytes).unwrap();
        let g = loraplex::model::gguf::GgufFile::open(&path).unwrap();
        loraplex::model::gguf::model_config(&g).unwrap();
        if !g.tensors.is_empty() {
            let m = load_gguf(&path).unwrap_or_else(|e| panic!("{name}: {}", e.message()));
            assert_eq!(m.config.num_layers, 1, "{name}");
        }
    }
}

#[test]
fn openai_body_seeds_parse() {
    for (name, bytes) in seeds("openai_body") {
        let body = String::from_utf8(bytes).unwrap();
        let r = loraplex::openai::request_from_openai(&body, "served-model");
        // Two seeds are refusals on purpose (a truncated body, an unhonoured field).
        let refused = name.starts_with("truncated") || name.starts_with("unknown-field");
        if !refused {
            r.unwrap_or_else(|e| panic!("{name}: {}", e.message()));
        }
    }
}

#[test]
fn adapter_format_seeds_parse() {
    use loraplex::adapters::archive::{read_tar_bytes, ArchiveLimits};
    for (name, b) in seeds("npy") {
        loraplex::adapters::npy::parse_npy(&b, &name).unwrap();
    }
    for (name, b) in seeds("safetensors_header") {
        loraplex::adapters::safetensors_check::read_safetensors(&b, &name).unwrap();
    }
    for (name, b) in seeds("tar") {
        let limits = ArchiveLimits::for_compressed(b.len() as u64);
        assert_eq!(
            read_tar_bytes(&b, &name, limits).unwrap().len(),
            2,
            "{name}"
        );
    }
    for (name, b) in seeds("pickle") {
        if name.ends_with(".pkl") {
            loraplex::adapters::torch_pickle::read_pickle(&b, &name).unwrap();
        } else {
            let t = loraplex::adapters::torch_pickle::read_torch_zip(&b, &name).unwrap();
            assert_eq!(t.len(), 3, "{name}");
        }
    }
}

#[test]
fn chat_template_seeds_render() {
    use loraplex::tokenizer::{ChatMessage, SpecialTokens, Tokenizer};
    let inner: tokenizers::Tokenizer = r#"{"version":"1.0","truncation":null,"padding":null,
        "added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,
        "decoder":null,"model":{"type":"WordLevel","vocab":{"<unk>":0},"unk_token":"<unk>"}}"#
        .parse()
        .unwrap();
    for (name, b) in seeds("chat_template") {
        // Layout as in fuzz/fuzz_targets/chat_template.rs: flags, template, NUL-separated
        // role/content pairs.
        let mut parts = b[1..].split(|&c| c == 0);
        let template = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
        let fields: Vec<String> = parts
            .map(|p| String::from_utf8(p.to_vec()).unwrap())
            .collect();
        let messages: Vec<ChatMessage> = fields
            .chunks(2)
            .map(|c| ChatMessage {
                role: c[0].clone(),
                content: c[1].clone(),
            })
            .collect();
        let special = SpecialTokens {
            bos: Some(("<s>".into(), 1)),
            eos: Some(("</s>".into(), 2)),
            add_bos: false,
        };
        let tok = Tokenizer::from_parts(inner.clone(), Some(template), special);
        let out = tok
            .apply_chat_template(&messages, b[0] & 1 != 0)
            .unwrap_or_else(|e| panic!("{name}: {}", e.message()));
        assert!(out.contains(&messages[0].content), "{name}: {out}");
    }
}
