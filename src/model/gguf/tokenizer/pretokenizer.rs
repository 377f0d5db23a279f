//! Byte-level BPE pre-tokenizers by GGUF `tokenizer.ggml.pre` name, as HF `tokenizer.json`
//! pre-tokenizer JSON.
//!
//! Each entry is the pre-tokenizer of that model family's own `tokenizer.json`, which is also what
//! llama.cpp's `src/llama-vocab.cpp` runs for the name (its regex list applied in turn is a
//! `Sequence` of isolating `Split`s): the text is cut the way the merges were learned. An unknown
//! name is refused: a wrong split silently changes the ids.

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The Llama-3 split (Meta-Llama-3 `tokenizer.json`; llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The Qwen2 split: Llama-3's with single digits (Qwen2 `tokenizer.json`; llama.cpp
/// `LLAMA_VOCAB_PRE_TYPE_QWEN2`).
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The Qwen3.5 split: Qwen2's with combining marks kept in words (Qwen3.5 `tokenizer.json`;
/// llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN35`).
const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Mistral's tekken split: words cut before an upper-case letter, single digits, `/` kept with
/// punctuation (Mistral-Nemo `tokenizer.json`; llama.cpp `LLAMA_VOCAB_PRE_TYPE_TEKKEN`).
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// DeepSeek-LLM's letter class as code point ranges (deepseek-llm-7b `tokenizer.json`, llama.cpp
/// `LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM`). Kept as numbers: several of its characters (U+212A
/// KELVIN SIGN, U+1F7D, ...) are changed by Unicode normalization of source text.
const DEEPSEEK_LLM_LETTERS: &[(u32, u32)] = &[
    (0x41, 0x5A),
    (0x61, 0x7A),
    (0xB5, 0xB5),
    (0xC0, 0xD6),
    (0xD8, 0xF6),
    (0xF8, 0x1BA),
    (0x1BC, 0x1BF),
    (0x1C4, 0x293),
    (0x295, 0x2AF),
    (0x370, 0x373),
    (0x376, 0x377),
    (0x37B, 0x37D),
    (0x37F, 0x37F),
    (0x386, 0x386),
    (0x388, 0x38A),
    (0x38C, 0x38C),
    (0x38E, 0x3A1),
    (0x3A3, 0x3F5),
    (0x3F7, 0x481),
    (0x48A, 0x52F),
    (0x531, 0x556),
    (0x10A0, 0x10C5),
    (0x13A0, 0x13F5),
    (0x13F8, 0x13FD),
    (0x1C90, 0x1CBA),
    (0x1CBD, 0x1CBF),
    (0x1D00, 0x1D2B),
    (0x1D6B, 0x1D77),
    (0x1D79, 0x1D9A),
    (0x1E00, 0x1F15),
    (0x1F18, 0x1F1D),
    (0x1F20, 0x1F45),
    (0x1F48, 0x1F4D),
    (0x1F50, 0x1F57),
    (0x1F59, 0x1F59),
    (0x1F5B, 0x1F5B),
    (0x1F5D, 0x1F5D),
    (0x1F5F, 0x1F7D),
    (0x1F80, 0x1FB4),
    (0x1FB6, 0x1FBC),
    (0x1FBE, 0x1FBE),
    (0x1FC2, 0x1FC4),
    (0x1FC6, 0x1FCC),
    (0x1FD0, 0x1FD3),
    (0x1FD6, 0x1FDB),
    (0x1FE0, 0x1FEC),
    (0x1FF2, 0x1FF4),
    (0x1FF6, 0x1FFC),
    (0x2102, 0x2102),
    (0x2107, 0x2107),
    (0x210A, 0x2113),
    (0x2115, 0x2115),
    (0x2119, 0x211D),
    (0x2124, 0x2124),
    (0x2126, 0x2126),
    (0x2128, 0x2128),
    (0x212A, 0x212D),
    (0x212F, 0x2134),
    (0x2139, 0x2139),
    (0x213C, 0x213F),
    (0x2145, 0x2149),
    (0x214E, 0x214E),
    (0x2183, 0x2184),
    (0x2C00, 0x2C7B),
    (0x2C7E, 0x2CE4),
    (0x2CEB, 0x2CEE),
    (0x2CF2, 0x2CF3),
    (0xA640, 0xA66D),
    (0xA680, 0xA69B),
    (0xA722, 0xA76F),
    (0xA771, 0xA787),
    (0xA78B, 0xA78E),
    (0xAB70, 0xABBF),
    (0xFB00, 0xFB06),
    (0xFB13, 0xFB17),
    (0xFF21, 0xFF3A),
    (0xFF41, 0xFF5A),
    (0x10400, 0x1044F),
    (0x104B0, 0x104D3),
    (0x104D8, 0x104FB),
    (0x10C80, 0x10CB2),
    (0x10CC0, 0x10CF2),
    (0x118A0, 0x118DF),
    (0x1E900, 0x1E943),
];

/// DeepSeek-LLM's punctuation class: ASCII and full-width punctuation, curly quotes, CJK `　、。`.
const DEEPSEEK_LLM_PUNCT: &[(u32, u32)] = &[
    (0x21, 0x2F),
    (0x3A, 0x7E),
    (0xFF01, 0xFF0F),
    (0xFF1A, 0xFF5E),
    (0x2018, 0x201F),
    (0x3000, 0x3002),
];

/// DeepSeek-LLM's and DeepSeek-Coder's CJK class (CJK ideographs, U+0800..U+4E00, Hangul).
const DEEPSEEK_CJK: &[(u32, u32)] = &[(0x4E00, 0x9FA5), (0x800, 0x4E00), (0xAC00, 0xD7FF)];

/// `[...]` from code point ranges; `-`, `[`, `\\`, `]` and `^` as range ends are escaped. Ranges
/// come from the tables above, whose ends are all valid scalar values.
fn char_class(ranges: &[(u32, u32)]) -> String {
    fn push(s: &mut String, cp: u32) {
        if let Some(c) = char::from_u32(cp) {
            if matches!(c, '-' | '[' | '\\' | ']' | '^') {
                s.push('\\');
            }
            s.push(c);
        }
    }
    let mut s = String::from("[");
    for &(a, b) in ranges {
        push(&mut s, a);
        if b != a {
            s.push('-');
            push(&mut s, b);
        }
    }
    s.push(']');
    s
}

fn split(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// The byte-level pre-tokenizer for `tokenizer.ggml.pre = pre`, and whether the BPE model uses
/// `ignore_merges` (a pre-token that is itself in the vocabulary is emitted whole, as llama.cpp
/// does for the Llama-3 and tekken families). Errors: UNSUPPORTED naming an unknown `pre`.
pub fn byte_level_pre_tokenizer(pre: &str) -> Result<(Value, bool)> {
    let sequence = |parts: Vec<Value>| json!({"type": "Sequence", "pretokenizers": parts});
    let digits = |individual: bool| json!({"type": "Digits", "individual_digits": individual});
    Ok(match pre {
        // GPT-2's own split (ByteLevel's built-in regex). "default" is what llama.cpp reads
        // when a file names no pre-tokenizer; transformers treats it as GPT-2.
        "default" | "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" => (byte_level(true), false),
        // Every digit on its own, then GPT-2's split.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (sequence(vec![digits(true), byte_level(true)]), false)
        }
        "llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => (sequence(vec![split(LLAMA3), byte_level(false)]), true),
        // Llama-3's split, but merges always applied.
        "dbrx" | "smaug-bpe" => (sequence(vec![split(LLAMA3), byte_level(false)]), false),
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "kormo" | "f2llmv2" => {
            (sequence(vec![split(QWEN2), byte_level(false)]), false)
        }
        "qwen35" => (sequence(vec![split(QWEN35), byte_level(false)]), false),
        "tekken" => (sequence(vec![split(TEKKEN), byte_level(false)]), true),
        "deepseek-llm" => (
            sequence(vec![
                split("[\r\n]"),
                split(&format!("\\s?{}+", char_class(DEEPSEEK_LLM_LETTERS))),
                split(&format!("\\s?{}+", char_class(DEEPSEEK_LLM_PUNCT))),
                split("\\s+$"),
                split(&format!("{}+", char_class(DEEPSEEK_CJK))),
                digits(true),
                byte_level(false),
            ]),
            false,
        ),
        "deepseek-coder" => (
            sequence(vec![
                split("[\r\n]"),
                split(r"\s?\p{L}+"),
                split(r"\s?\p{P}+"),
                split(&format!("{}+", char_class(DEEPSEEK_CJK))),
                digits(true),
                byte_level(false),
            ]),
            false,
        ),
        // Falcon's tokenizer.json: punctuation runs, GPT-2's split, digit runs in threes.
        "falcon" => (
            sequence(vec![
                json!({"type": "Punctuation", "behavior": "Contiguous"}),
                byte_level(true),
                digits(false),
                split("[0-9][0-9][0-9]"),
            ]),
            false,
        ),
        other => {
            return Err(Error::unsupported(format!(
                "tokenizer.ggml.pre = \"{other}\" is not a supported byte-level pre-tokenizer \
                 (supported: {})",
                SUPPORTED.join(", ")
            )))
        }
    })
}

/// Every `tokenizer.ggml.pre` value [`byte_level_pre_tokenizer`] accepts.
pub const SUPPORTED: &[&str] = &[
    "default",
    "gpt2",
    "gpt-2",
    "phi-2",
    "mpt",
    "olmo",
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
    "llama-bpe",
    "llama3",
    "llama-v3",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "dbrx",
    "smaug-bpe",
    "qwen2",
    "deepseek-r1-qwen",
    "stablelm2",
    "kormo",
    "f2llmv2",
    "qwen35",
    "tekken",
    "deepseek-llm",
    "deepseek-coder",
    "falcon",
];

/// Whether llama.cpp adds BOS for this `pre` when the file has no `tokenizer.ggml.add_bos_token`.
pub fn default_add_bos(pre: &str) -> bool {
    matches!(
        pre,
        "llama-bpe"
            | "llama3"
            | "llama-v3"
            | "falcon3"
            | "falcon-h1"
            | "pixtral"
            | "midm-2.0"
            | "lfm2"
            | "tekken"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_class_ranges_and_escapes() {
        assert_eq!(char_class(&[(0x41, 0x5A), (0xB5, 0xB5)]), "[A-Zµ]");
        assert_eq!(char_class(&[(0x21, 0x2F)]), "[!-/]");
        assert_eq!(char_class(&[(0x5B, 0x5E)]), "[\\[-\\^]");
        assert_eq!(char_class(&[(0x212A, 0x212D)]), "[\u{212A}-\u{212D}]");
    }

    #[test]
    fn every_supported_name_builds_and_unknown_names_are_refused() {
        for name in SUPPORTED {
            let (v, _) = byte_level_pre_tokenizer(name).unwrap();
            let _: tokenizers::PreTokenizerWrapper = serde_json::from_value(v).unwrap();
        }
        let e = byte_level_pre_tokenizer("gpt-4o").unwrap_err();
        assert!(e.to_string().contains("\"gpt-4o\""), "{e}");
    }
}
