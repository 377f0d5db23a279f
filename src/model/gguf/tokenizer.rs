//! Builds a [`crate::tokenizer::Tokenizer`] from GGUF `tokenizer.*` metadata.
//!
//! Supported `tokenizer.ggml.model` values:
//! * `"llama"`: SentencePiece BPE with byte fallback (Llama-2, Mistral, TinyLlama); see [`spm`].
//! * `"gpt2"`: byte-level BPE with the pre-tokenizer `tokenizer.ggml.pre` names; see
//!   [`pretokenizer`] for the names.
//!
//! The result is a `tokenizers` BPE model built directly from the vocabulary and merges, with the
//! normalizer, pre-tokenizer and decoder of the equivalent HF `tokenizer.json` (written as its
//! JSON), so the usual encoder, decoder and added-token matching apply. Tokens typed CONTROL or
//! UNKNOWN become special added tokens, USER_DEFINED ones plain added tokens: all are matched
//! whole in text, as llama.cpp does.
//!
//! Threading: building is single-threaded and pure; the returned tokenizer is immutable.

pub mod pretokenizer;
pub mod spm;

use serde_json::{json, Value};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper};

use super::reader::{GgufFile, MetaValue};
use crate::error::{Error, Result};
use crate::tokenizer::{SpecialTokens, Tokenizer};

const TOKENS: &str = "tokenizer.ggml.tokens";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const SCORES: &str = "tokenizer.ggml.scores";
const MERGES: &str = "tokenizer.ggml.merges";

/// llama.cpp token types (`tokenizer.ggml.token_type`): 0 undefined, 1 normal, 2 unknown,
/// 3 control, 4 user-defined, 5 unused, 6 byte.
const TOKEN_TYPE_UNKNOWN: u8 = 2;
const TOKEN_TYPE_CONTROL: u8 = 3;
const TOKEN_TYPE_USER_DEFINED: u8 = 4;
const TOKEN_TYPE_MAX: u64 = 6;

/// The value under `key` converted by `conv` (`None` when absent); errors name the key.
fn optional<'a, T>(
    g: &'a GgufFile,
    key: &str,
    expected: &str,
    conv: impl Fn(&'a MetaValue) -> Option<T>,
) -> Result<Option<T>> {
    g.get(key)
        .map(|v| {
            conv(v).ok_or_else(|| {
                Error::invalid_model(format!(
                    "metadata key \"{key}\" is a {}, expected {expected}",
                    v.type_name()
                ))
            })
        })
        .transpose()
}

fn array<'a>(g: &'a GgufFile, key: &str) -> Result<Option<&'a [MetaValue]>> {
    optional(g, key, "an array", MetaValue::as_array)
}

/// The array under `key`, which must have `n` elements (when `n` is given) converted by `conv`;
/// errors name the key and the first bad element.
fn typed_array<'a, T>(
    g: &'a GgufFile,
    key: &str,
    n: Option<usize>,
    expected: &str,
    conv: impl Fn(&'a MetaValue) -> Option<T>,
) -> Result<Option<Vec<T>>> {
    let Some(arr) = array(g, key)? else {
        return Ok(None);
    };
    if let Some(n) = n {
        if arr.len() != n {
            return Err(Error::invalid_model(format!(
                "metadata key \"{key}\" has {} entries, but \"{TOKENS}\" has {n}",
                arr.len()
            )));
        }
    }
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            conv(v).ok_or_else(|| {
                Error::invalid_model(format!(
                    "metadata key \"{key}\"[{i}] is {v:?}, expected {expected}"
                ))
            })
        })
        .collect::<Result<Vec<T>>>()
        .map(Some)
}

fn string_array<'a>(g: &'a GgufFile, key: &str) -> Result<Option<Vec<&'a str>>> {
    typed_array(g, key, None, "a string", MetaValue::as_str)
}

fn optional_id(g: &GgufFile, key: &str, n_vocab: usize) -> Result<Option<u32>> {
    let Some(id) = optional(g, key, "a token id", MetaValue::as_u64)? else {
        return Ok(None);
    };
    if id >= n_vocab as u64 {
        return Err(Error::invalid_model(format!(
            "metadata key \"{key}\" = {id} is outside the vocabulary ({n_vocab} tokens)"
        )));
    }
    Ok(Some(id as u32))
}

fn optional_bool(g: &GgufFile, key: &str) -> Result<Option<bool>> {
    optional(g, key, "a bool", MetaValue::as_bool)
}

fn optional_str<'a>(g: &'a GgufFile, key: &str) -> Result<Option<&'a str>> {
    optional(g, key, "a string", MetaValue::as_str)
}

/// The model-specific parts of the tokenizer.
struct Parts {
    /// BPE vocabulary: token text (as the model spells it) → id.
    vocab: Vocab,
    merges: Vec<(String, String)>,
    unk: Option<String>,
    byte_fallback: bool,
    ignore_merges: bool,
    /// HF `tokenizer.json` normalizer / pre-tokenizer / decoder JSON (`Null` for none).
    normalizer: Value,
    pre_tokenizer: Value,
    decoder: Value,
    add_bos_default: bool,
}

fn vocab_map<'a>(tokens: impl Iterator<Item = &'a str>) -> Result<Vocab> {
    let mut vocab = Vocab::default();
    for (id, key) in tokens.enumerate() {
        if vocab.insert(key.to_string(), id as u32).is_some() {
            return Err(Error::invalid_model(format!(
                "metadata key \"{TOKENS}\": token {key:?} appears twice (second at id {id})"
            )));
        }
    }
    Ok(vocab)
}

/// SentencePiece (`llama`): scores are required; merges come from them.
fn spm_parts(g: &GgufFile, tokens: &[&str], types: &[u8], unk_id: Option<u32>) -> Result<Parts> {
    let n = tokens.len();
    let scores = typed_array(g, SCORES, Some(n), "a finite number", |v| {
        v.as_f64().map(|x| x as f32).filter(|x| !x.is_nan())
    })?
    .ok_or_else(|| {
        Error::invalid_model(format!(
            "missing metadata key \"{SCORES}\" (a SentencePiece vocabulary needs piece scores)"
        ))
    })?;
    let add_space_prefix = optional_bool(g, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
    let unk = unk_id
        .map(|i| i as usize)
        .or_else(|| types.iter().position(|&t| t == TOKEN_TYPE_UNKNOWN))
        .map(|i| tokens[i].to_string());
    let merges = spm::merges_from_scores(tokens, &scores);
    let (normalizer, pre_tokenizer, decoder) = spm::text_handling(add_space_prefix);
    Ok(Parts {
        vocab: vocab_map(tokens.iter().copied())?,
        merges,
        unk,
        byte_fallback: true,
        ignore_merges: false,
        normalizer,
        pre_tokenizer,
        decoder,
        add_bos_default: true,
    })
}

/// Byte-level BPE (`gpt2`): merges are required; the pre-tokenizer comes from `pre`.
fn bpe_parts(g: &GgufFile, tokens: &[&str]) -> Result<Parts> {
    let pre = optional_str(g, "tokenizer.ggml.pre")?.unwrap_or("default");
    let (pre_tokenizer, ignore_merges) = pretokenizer::byte_level_pre_tokenizer(pre)?;
    let merges = string_array(g, MERGES)?
        .ok_or_else(|| {
            Error::invalid_model(format!(
                "missing metadata key \"{MERGES}\" (a byte-level BPE vocabulary needs merges)"
            ))
        })?
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
                Some(p) => Ok((m[..p].to_string(), m[p + 1..].to_string())),
                None => Err(Error::invalid_model(format!(
                    "{MERGES}[{i}] = {m:?} is not two tokens separated by a space"
                ))),
            }
        })
        .collect::<Result<_>>()?;
    Ok(Parts {
        // Tokens are kept as written: a token not spelled in the byte alphabet is never produced
        // by the merges (as in llama.cpp) and decodes to its own text.
        vocab: vocab_map(tokens.iter().copied())?,
        merges,
        // Byte-level BPE covers every byte; llama.cpp never emits unk for gpt2 models.
        unk: None,
        byte_fallback: false,
        ignore_merges,
        normalizer: Value::Null,
        pre_tokenizer,
        decoder: json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
        add_bos_default: pretokenizer::default_add_bos(pre),
    })
}

/// Builds the tokenizer described by `g`'s metadata.
///
/// BOS is prepended when encoding with special tokens if `tokenizer.ggml.add_bos_token` says so
/// (absent: yes for SentencePiece and the Llama-3/tekken pre-tokenizers, as llama.cpp decides).
/// `tokenizer.ggml.add_eos_token` is not applied (prompts for generation never end in EOS).
///
/// Errors: UNSUPPORTED for a tokenizer model other than `llama`/`gpt2` or an unknown
/// `tokenizer.ggml.pre` (each naming the value); INVALID_MODEL for missing or ill-typed keys,
/// arrays whose length differs from `tokenizer.ggml.tokens`, scores missing (SentencePiece) or
/// NaN, token types outside llama.cpp's 0..=6, malformed merges, duplicate tokens or special
/// token ids out of range (each naming the key and, for arrays, the element).
pub fn build_tokenizer(g: &GgufFile) -> Result<Tokenizer> {
    let model = optional_str(g, "tokenizer.ggml.model")?.ok_or_else(|| {
        Error::invalid_model("missing string metadata key \"tokenizer.ggml.model\"")
    })?;
    if !matches!(model, "llama" | "gpt2") {
        return Err(Error::unsupported(format!(
            "tokenizer.ggml.model = \"{model}\" is not supported (\"llama\" SentencePiece BPE and \
             \"gpt2\" byte-level BPE are)"
        )));
    }
    let tokens = string_array(g, TOKENS)?
        .ok_or_else(|| Error::invalid_model(format!("missing metadata key \"{TOKENS}\"")))?;
    let n_vocab = tokens.len();
    let types: Vec<u8> = typed_array(
        g,
        TOKEN_TYPE,
        Some(n_vocab),
        "a llama.cpp token type (0..=6)",
        |v| v.as_u64().filter(|&t| t <= TOKEN_TYPE_MAX).map(|t| t as u8),
    )?
    .unwrap_or_else(|| vec![1; n_vocab]);

    let unk_id = optional_id(g, "tokenizer.ggml.unknown_token_id", n_vocab)?;
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
    optional_bool(g, "tokenizer.ggml.add_eos_token")?;

    let parts = if model == "llama" {
        spm_parts(g, &tokens, &types, unk_id)?
    } else {
        bpe_parts(g, &tokens)?
    };
    let add_bos =
        optional_bool(g, "tokenizer.ggml.add_bos_token")?.unwrap_or(parts.add_bos_default);

    // The token types llama.cpp matches whole in text: CONTROL and UNKNOWN as special tokens,
    // USER_DEFINED as plain ones.
    let special_types = [TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN];
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        Error::invalid_model(format!(
            "tokenizer built from GGUF metadata is invalid ({what}): {e}"
        ))
    };
    let mut bpe = BPE::builder()
        .vocab_and_merges(parts.vocab, parts.merges)
        .fuse_unk(parts.byte_fallback)
        .byte_fallback(parts.byte_fallback)
        .ignore_merges(parts.ignore_merges);
    if let Some(unk) = parts.unk {
        bpe = bpe.unk_token(unk);
    }
    let bpe = bpe.build().map_err(|e| invalid(MERGES, &e))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let normalizer: Option<NormalizerWrapper> =
        serde_json::from_value(parts.normalizer).map_err(|e| invalid("normalizer", &e))?;
    let pre_tokenizer: Option<PreTokenizerWrapper> =
        serde_json::from_value(parts.pre_tokenizer).map_err(|e| invalid("pre-tokenizer", &e))?;
    let decoder: Option<DecoderWrapper> =
        serde_json::from_value(parts.decoder).map_err(|e| invalid("decoder", &e))?;
    inner
        .with_normalizer(normalizer)
        .with_pre_tokenizer(pre_tokenizer)
        .with_decoder(decoder);
    // The ids come from the vocabulary: every added token is one of its tokens.
    let added = |keep: &dyn Fn(u8) -> bool, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(_, &ty)| keep(ty))
            .map(|(&t, _)| AddedToken::from(t, special).normalized(false))
            .collect()
    };
    inner.add_special_tokens(&added(&|ty| special_types.contains(&ty), true));
    inner.add_tokens(&added(&|ty| ty == TOKEN_TYPE_USER_DEFINED, false));

    let chat_template = optional_str(g, "tokenizer.chat_template")?.map(str::to_string);
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
