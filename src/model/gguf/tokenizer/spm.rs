//! SentencePiece BPE (`tokenizer.ggml.model = "llama"`: Llama-2, Mistral v0.1-v0.3, TinyLlama) as
//! HF `tokenizer.json` parts.
//!
//! * Model: BPE over the GGUF vocabulary with byte fallback (`<0xNN>` tokens) and fused unknowns.
//!   A GGUF stores no merges for SentencePiece, only piece scores; the merges are rebuilt from
//!   them exactly as transformers' GGUF loader does (`generate_merges`: every split of every
//!   piece into two vocabulary pieces, ranked by the whole piece's score), which reproduces
//!   SentencePiece's highest-score-first merging.
//! * Text handling of Llama-2's own `tokenizer.json`: spaces become `▁` and, with
//!   `add_space_prefix` (the default), `▁` is prepended to every stretch of text between special
//!   tokens (normalizer `Prepend` + `Replace`). This is what SentencePiece does to a whole text
//!   and what llama.cpp does after each special token. (transformers' GGUF loader uses
//!   `Metaspace(prepend_scheme="first")` instead, which differs for text that starts with a space
//!   or follows a special token, and ignores `add_space_prefix = false`.)
//! * Decoder: `▁` back to spaces, `<0xNN>` runs back to UTF-8, and with `add_space_prefix` one
//!   leading space stripped.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

/// The SentencePiece word-boundary marker.
pub const SPACE: char = '\u{2581}';

/// Merges rebuilt from piece scores, best first, as transformers' `generate_merges(vocab,
/// scores)`: for each piece (in id order) every split into two pieces both in the vocabulary,
/// ordered by the halves' ids; then all of them stably sorted by the piece's score, then by the
/// halves' lengths in characters, all descending. `scores` must be as long as `tokens` and free
/// of NaN (the caller checks).
pub fn merges_from_scores(tokens: &[&str], scores: &[f32]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, &t)| (t, i)).collect();
    // Byte lengths of the tokens: a split is only looked up when both halves have a length some
    // token has, which keeps hostile files (one huge piece) linear in their size.
    let lengths: HashSet<usize> = tokens.iter().map(|t| t.len()).collect();
    // (left, right, score, left chars, right chars)
    let mut merges: Vec<(&str, &str, f32, usize, usize)> = Vec::new();
    for (&piece, &score) in tokens.iter().zip(scores) {
        let start = merges.len();
        let n_chars = piece.chars().count();
        for (k, (at, _)) in piece.char_indices().enumerate().skip(1) {
            if !lengths.contains(&at) || !lengths.contains(&(piece.len() - at)) {
                continue;
            }
            let (l, r) = piece.split_at(at);
            if ids.contains_key(l) && ids.contains_key(r) {
                merges.push((l, r, score, k, n_chars - k));
            }
        }
        merges[start..].sort_by_key(|m| (ids[m.0], ids[m.1]));
    }
    merges.sort_by(|a, b| {
        score_order(a.2, b.2)
            .then(b.3.cmp(&a.3))
            .then(b.4.cmp(&a.4))
    });
    merges
        .into_iter()
        .map(|(l, r, ..)| (l.to_string(), r.to_string()))
        .collect()
}

/// The normalizer, pre-tokenizer and decoder JSON for SentencePiece text handling.
pub fn text_handling(add_space_prefix: bool) -> (Value, Value, Value) {
    let space = SPACE.to_string();
    let mut normalizers =
        vec![json!({"type": "Replace", "pattern": {"String": " "}, "content": space})];
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": space}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        normalizers.insert(0, json!({"type": "Prepend", "prepend": space}));
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    (
        json!({"type": "Sequence", "normalizers": normalizers}),
        Value::Null,
        json!({"type": "Sequence", "decoders": decoders}),
    )
}

/// Higher score first; -0.0 and 0.0 tie (Python compares them equal).
fn score_order(a: f32, b: f32) -> Ordering {
    (b + 0.0).total_cmp(&(a + 0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_piece_scores_then_lengths() {
        // "ab" (score -1) beats "bc" (-2); "abc" (-3) splits as a+bc and ab+c, longer left first.
        let tokens = ["a", "b", "c", "ab", "bc", "abc"];
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0];
        let m = merges_from_scores(&tokens, &scores);
        let m: Vec<(&str, &str)> = m.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        assert_eq!(m, [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]);
    }

    #[test]
    fn negative_zero_ties_with_zero() {
        assert_eq!(score_order(-0.0, 0.0), Ordering::Equal);
        assert_eq!(score_order(1.0, 0.0), Ordering::Less);
    }

    #[test]
    fn multibyte_pieces_split_on_characters() {
        let tokens = ["▁", "é", "▁é"];
        let m = merges_from_scores(&tokens, &[0.0, 0.0, -1.0]);
        assert_eq!(m, [("▁".to_string(), "é".to_string())]);
    }

    #[test]
    fn a_huge_piece_costs_linear_time() {
        let huge = "ab".repeat(4_000_000);
        let tokens = ["a", "b", "ab", huge.as_str()];
        let t = std::time::Instant::now();
        let m = merges_from_scores(&tokens, &[0.0, 0.0, -1.0, -2.0]);
        assert_eq!(m, [("a".to_string(), "b".to_string())]);
        assert!(t.elapsed().as_secs() < 5, "{:?}", t.elapsed());
    }
}
