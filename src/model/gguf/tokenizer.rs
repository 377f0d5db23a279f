//! Builds a [`crate::tokenizer::Tokenizer`] from GGUF `tokenizer.*` metadata.
//!
//! Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with `tokenizer.ggml.pre` one of
//! `smollm`, `default`/`gpt2`, `llama-bpe`/`llama3`, `qwen2` (Qwen2/2.5/3: NFC normalizer and
//! single-digit split, as transformers' `Qwen2Tokenizer`). The equivalent HF `tokenizer.json` is
//! constructed as JSON and loaded with `tokenizers`, so encoding matches the HF tokenizer the
//! GGUF was converted from.

use serde_json::{json, Map, Value};

use super::reader::{GgufFile, MetaValue};
use crate::error::{Error, Result};
use crate::tokenizer::{SpecialTokens, Tokenizer};

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The Llama-3 pre-tokenizer split regex (HF `tokenizer.json` of Meta-Llama-3).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn string_array<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let arr = g
        .get(key)
        .ok_or_else(|| Error::invalid_model(format!("missing metadata key \"{key}\"")))?
        .as_array()
        .ok_or_else(|| Error::invalid_model(format!("metadata key \"{key}\" is not an array")))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().ok_or_else(|| {
                Error::invalid_model(format!(
                    "metadata key \"{key}\"[{i}] is a {}, expected a string",
                    v.type_name()
                ))
            })
        })
        .collect()
}

fn optional_id(g: &GgufFile, key: &str, n_vocab: usize) -> Result<Option<u32>> {
    let Some(v) = g.get(key) else {
        return Ok(None);
    };
    let id = v.as_u64().ok_or_else(|| {
        Error::invalid_model(format!(
            "metadata key \"{key}\" is a {}, expected a token id",
            v.type_name()
        ))
    })?;
    if id >= n_vocab as u64 {
        return Err(Error::invalid_model(format!(
            "metadata key \"{key}\" = {id} is outside the vocabulary ({n_vocab} tokens)"
        )));
    }
    Ok(Some(id as u32))
}

/// The Qwen2 pre-tokenizer split regex (transformers' `Qwen2Tokenizer`: Llama-3's with single
/// digits).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `(normalizer, pre-tokenizer, ignore_merges)` of the HF tokenizer `pre` names.
fn pre_tokenizer(pre: &str) -> Result<(Value, Value, bool)> {
    if pre == "qwen2" {
        let split = json!({"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": false});
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false});
        return Ok((
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split, byte_level]}),
            false,
        ));
    }
    let (pre_tok, ignore_merges) = plain_pre_tokenizer(pre)?;
    Ok((Value::Null, pre_tok, ignore_merges))
}

fn plain_pre_tokenizer(pre: &str) -> Result<(Value, bool)> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    Ok(match pre {
        "smollm" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
        ),
        "default" | "gpt2" => (byte_level(true), false),
        "llama-bpe" | "llama3" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": false},
                byte_level(false),
            ]}),
            true,
        ),
        other => {
            return Err(Error::unsupported(format!(
                "tokenizer.ggml.pre = \"{other}\" is not supported (smollm, default, gpt2, llama-bpe, llama3, qwen2)"
            )))
        }
    })
}

/// Builds the tokenizer described by `g`'s metadata. Errors: UNSUPPORTED for tokenizer models
/// other than `gpt2` (SentencePiece `llama` included) or an unknown `tokenizer.ggml.pre`;
/// INVALID_MODEL for missing/ill-typed keys, malformed merges, duplicate tokens or ids out of
/// range (each naming the key).
pub fn build_tokenizer(g: &GgufFile) -> Result<Tokenizer> {
    let model = g
        .get("tokenizer.ggml.model")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| {
            Error::invalid_model("missing string metadata key \"tokenizer.ggml.model\"")
        })?;
    match model {
        "gpt2" => {}
        "llama" => {
            return Err(Error::unsupported(
                "tokenizer.ggml.model = \"llama\" (SentencePiece) is not supported yet; \
                 use the model's HuggingFace directory (tokenizer.json) instead",
            ))
        }
        other => {
            return Err(Error::unsupported(format!(
                "tokenizer.ggml.model = \"{other}\" is not supported (only \"gpt2\" byte-level BPE)"
            )))
        }
    }
    let pre = g
        .get("tokenizer.ggml.pre")
        .map(|v| {
            v.as_str().ok_or_else(|| {
                Error::invalid_model("metadata key \"tokenizer.ggml.pre\" is not a string")
            })
        })
        .transpose()?
        .unwrap_or("default");
    let (normalizer, pre_tok, ignore_merges) = pre_tokenizer(pre)?;

    let tokens = string_array(g, "tokenizer.ggml.tokens")?;
    let n_vocab = tokens.len();
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type") {
        None => vec![1; n_vocab],
        Some(v) => {
            let arr = v.as_array().ok_or_else(|| {
                Error::invalid_model("metadata key \"tokenizer.ggml.token_type\" is not an array")
            })?;
            if arr.len() != n_vocab {
                return Err(Error::invalid_model(format!(
                    "metadata key \"tokenizer.ggml.token_type\" has {} entries, tokenizer.ggml.tokens has {n_vocab}",
                    arr.len()
                )));
            }
            arr.iter()
                .map(|t| t.as_f64().map(|x| x as i64).unwrap_or(1))
                .collect()
        }
    };

    let mut vocab = Map::with_capacity(n_vocab);
    let mut added = Vec::new();
    for (id, (&tok, &ty)) in tokens.iter().zip(&types).enumerate() {
        if vocab.insert(tok.to_string(), json!(id)).is_some() {
            return Err(Error::invalid_model(format!(
                "tokenizer.ggml.tokens: token {tok:?} appears twice (second at id {id})"
            )));
        }
        if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == TOKEN_TYPE_CONTROL,
            }));
        }
    }

    let merges: Vec<Value> = match g.get("tokenizer.ggml.merges") {
        None => Vec::new(),
        Some(_) => string_array(g, "tokenizer.ggml.merges")?
            .iter()
            .enumerate()
            .map(|(i, m)| {
                // llama.cpp splits at the first space after the first character.
                let split = m
                    .char_indices()
                    .skip(1)
                    .find(|&(_, c)| c == ' ')
                    .map(|(p, _)| p);
                match split {
                    Some(p) => Ok(json!([&m[..p], &m[p + 1..]])),
                    None => Err(Error::invalid_model(format!(
                        "tokenizer.ggml.merges[{i}] = {m:?} is not two tokens separated by a space"
                    ))),
                }
            })
            .collect::<Result<_>>()?,
    };

    optional_id(g, "tokenizer.ggml.unknown_token_id", n_vocab)?;
    let bos = optional_id(g, "tokenizer.ggml.bos_token_id", n_vocab)?;
    // Several EOS ids (an array) all stop generation; the first one is the template's eos_token.
    let eos_ids = super::eos_ids(g)?;
    if let Some(id) = eos_ids.iter().find(|&&id| id as usize >= n_vocab) {
        return Err(Error::invalid_model(format!(
            "metadata key \"tokenizer.ggml.eos_token_id\" = {id} is outside the vocabulary ({n_vocab} tokens)"
        )));
    }
    let eos = eos_ids.first().copied();
    optional_id(g, "tokenizer.ggml.padding_token_id", n_vocab)?;
    let add_bos = match g.get("tokenizer.ggml.add_bos_token") {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| {
            Error::invalid_model("metadata key \"tokenizer.ggml.add_bos_token\" is not a bool")
        })?,
    };

    let byte_level_decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tok,
        "post_processor": null,
        "decoder": byte_level_decoder,
        "model": {
            "type": "BPE",
            "dropout": null,
            // Byte-level BPE covers every byte; llama.cpp never emits unk for gpt2 models.
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": merges,
        },
    });
    let inner: tokenizers::Tokenizer = serde_json::from_value(spec).map_err(|e| {
        Error::invalid_model(format!(
            "tokenizer built from GGUF metadata is invalid: {e}"
        ))
    })?;

    let chat_template = match g.get("tokenizer.chat_template") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| {
                    Error::invalid_model("metadata key \"tokenizer.chat_template\" is not a string")
                })?
                .to_string(),
        ),
    };
    let named =
        |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).map(|t| (t.to_string(), i)));
    Ok(Tokenizer::from_parts(
        inner,
        chat_template,
        SpecialTokens {
            bos: named(bos),
            eos: named(eos),
            add_bos,
        },
    ))
}
