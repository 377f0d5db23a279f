//! Token-level output constraints (`loraplex::sampling::{ConstraintCompiler, Constraint}`)
//! driven by a seeded random "model" over the real SmolLM2-135M tokenizer (49,152 ids): at each
//! step the mask is computed, a random allowed token is picked and committed, and the decoded
//! output is checked at the end (JSON parsed and validated with the `jsonschema` crate, regexes
//! matched with the `regex` crate, choices compared, a Lark grammar parsed by hand).
//!
//! The SmolLM2 tokenizer is read from models/SmolLM2-135M-Instruct.Q4_1.gguf (`make model`):
//! absent, these tests skip locally and fail under CI. The SentencePiece test uses the small
//! in-repo fixture tests/fixtures/tokenizers/spm-llama.gguf and always runs.
//!
//! Mask timings are printed (run with `--nocapture`); nothing asserts on them.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use loraplex::model::gguf::{tokenizer::build_tokenizer, GgufFile};
use loraplex::sampling::{Constraint, ConstraintCompiler, ResponseFormat};
use loraplex::tokenizer::Tokenizer;
use loraplex::ErrorCode;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// Walks stop after this many tokens (the schemas below all finish well before).
const MAX_STEPS: usize = 400;
/// Seeds per format.
const SEEDS: u64 = 6;

/// A tokenizer with its compiler and the text of every token (for the walk's preferences).
struct Fixture {
    tok: Tokenizer,
    compiler: ConstraintCompiler,
    eos: Vec<u32>,
    /// Each token's decoded text (partial UTF-8 shows as U+FFFD).
    pieces: Vec<String>,
    /// Each token's bytes (byte-level BPE tokens mapped back through GPT-2's byte table).
    bytes: Vec<Vec<u8>>,
}

/// GPT-2's byte-level alphabet, reversed: the byte each vocabulary character stands for.
fn gpt2_byte_decoder() -> std::collections::HashMap<char, u8> {
    let mut map = std::collections::HashMap::new();
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap()
        };
        map.insert(c, b);
    }
    map
}

impl Fixture {
    fn new(tok: Tokenizer, eos: Vec<u32>, vocab_size: usize) -> Self {
        let t0 = Instant::now();
        let compiler = ConstraintCompiler::new(&tok, &eos, vocab_size).unwrap();
        println!(
            "ConstraintCompiler::new: {:.1} ms (tokenizer vocab {}, model vocab {vocab_size})",
            t0.elapsed().as_secs_f64() * 1e3,
            tok.vocab_size()
        );
        let pieces = (0..tok.vocab_size() as u32)
            .map(|id| tok.decode(&[id], false).unwrap_or_default())
            .collect::<Vec<String>>();
        let byte_of = gpt2_byte_decoder();
        let bytes = (0..tok.vocab_size() as u32)
            .map(|id| {
                let name = tok.inner().id_to_token(id).unwrap_or_default();
                name.chars()
                    .map(|c| byte_of.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| pieces[id as usize].as_bytes().to_vec())
            })
            .collect();
        Self {
            tok,
            compiler,
            eos,
            pieces,
            bytes,
        }
    }

    fn compile(&self, format: &ResponseFormat) -> Constraint {
        self.compiler
            .compile(format)
            .unwrap_or_else(|e| panic!("{format:?}: {e}"))
            .expect("a constraint")
    }
}

fn smollm2_gguf() -> Option<PathBuf> {
    common::smollm2_gguf()
}

fn load_gguf_tokenizer(path: &std::path::Path) -> Tokenizer {
    let g = GgufFile::open(path).unwrap();
    build_tokenizer(&g).unwrap()
}

/// SmolLM2's tokenizer; EOS ids `<|im_end|>` (the chat EOS, primary) and `<|endoftext|>`.
fn smollm2() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let tok = load_gguf_tokenizer(&smollm2_gguf()?);
            let im_end = tok.token_to_id("<|im_end|>").unwrap();
            let eot = tok.token_to_id("<|endoftext|>").unwrap();
            let vocab = tok.vocab_size();
            Some(Fixture::new(tok, vec![im_end, eot], vocab))
        })
        .as_ref()
}

/// What a walk produced.
struct Walk {
    ids: Vec<u32>,
    /// The decoded output without the EOS token.
    text: String,
    /// The constraint reported `is_finished`.
    finished: bool,
    /// An EOS id was committed (rather than the constraint finishing by itself).
    ended_by_eos: bool,
    /// Time of every `compute_mask` call, in order.
    mask_times: Vec<Duration>,
}

fn allowed_ids(mask: &[u32]) -> Vec<u32> {
    let mut v = Vec::new();
    for (w, &bits) in mask.iter().enumerate() {
        let mut b = bits;
        while b != 0 {
            let i = b.trailing_zeros();
            v.push(w as u32 * 32 + i);
            b &= b - 1;
        }
    }
    v
}

/// Drives `c` with a seeded random model: EOS when allowed with probability 0.6; otherwise
/// with probability 0.25 a token ending in `"` (closes a JSON string), 0.15 one ending in `}`,
/// `]` or `)` (or `,`), 0.15 a non-ASCII token (multi-byte UTF-8 and partial byte tokens), else
/// any allowed token (each class only when it has allowed tokens). `on_step(text, eos_allowed)` sees the output before each step. Every mask is checked:
/// its length, no bit at or above the tokenizer's vocabulary except EOS, never empty.
fn walk(
    fx: &Fixture,
    c: &mut Constraint,
    seed: u64,
    vocab_size: usize,
    mut on_step: impl FnMut(&str, bool),
) -> Walk {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tok_vocab = fx.tok.vocab_size();
    let mut ids = Vec::new();
    let mut mask_times = Vec::new();
    let mut ended_by_eos = false;
    for _ in 0..MAX_STEPS {
        let t0 = Instant::now();
        c.compute_mask().unwrap();
        mask_times.push(t0.elapsed());
        let mask = c.mask();
        assert_eq!(mask.len(), vocab_size.div_ceil(32), "mask length");
        let allowed = allowed_ids(mask);
        assert!(!allowed.is_empty(), "empty mask after {ids:?}");
        for &t in &allowed {
            assert!(
                (t as usize) < vocab_size,
                "token {t} allowed, vocab_size {vocab_size}"
            );
            assert!(
                (t as usize) < tok_vocab || fx.eos.contains(&t),
                "padding id {t} allowed (tokenizer vocab {tok_vocab})"
            );
        }
        let eos_allowed = allowed.iter().any(|t| fx.eos.contains(t));
        let text = fx.tok.decode(&ids, false).unwrap();
        on_step(&text, eos_allowed);
        if c.is_finished() {
            assert!(
                allowed.iter().all(|t| fx.eos.contains(t)),
                "finished, but non-EOS tokens allowed after {text:?}"
            );
            break;
        }
        let non_eos: Vec<u32> = allowed
            .iter()
            .copied()
            .filter(|t| !fx.eos.contains(t))
            .collect();
        let pick = if eos_allowed && (non_eos.is_empty() || rng.gen_bool(0.6)) {
            let e: Vec<u32> = allowed
                .iter()
                .copied()
                .filter(|t| fx.eos.contains(t))
                .collect();
            e[rng.gen_range(0..e.len())]
        } else {
            let piece = |t: &u32| fx.pieces[*t as usize].as_str();
            let pick_where = |f: &dyn Fn(&str) -> bool| -> Vec<u32> {
                non_eos.iter().copied().filter(|t| f(piece(t))).collect()
            };
            let quotes = pick_where(&|p| p.ends_with('"'));
            let closers = pick_where(&|p| p.ends_with(['}', ']', ')']) || p == ",");
            let unicode = pick_where(&|p| !p.is_ascii());
            let r: f64 = rng.gen();
            let pool = if r < 0.25 && !quotes.is_empty() {
                &quotes
            } else if r < 0.4 && !closers.is_empty() {
                &closers
            } else if r < 0.55 && !unicode.is_empty() {
                &unicode
            } else {
                &non_eos
            };
            pool[rng.gen_range(0..pool.len())]
        };
        c.commit(pick).unwrap();
        if fx.eos.contains(&pick) {
            assert!(c.is_finished(), "EOS committed but not finished");
            ended_by_eos = true;
            break;
        }
        ids.push(pick);
    }
    let text = fx.tok.decode(&ids, false).unwrap();
    Walk {
        ids,
        text,
        finished: c.is_finished(),
        ended_by_eos,
        mask_times,
    }
}

/// Mask-time statistics of a set of walks: (first call, steady mean, p50, p99, max) in µs.
fn report(label: &str, compile: Duration, walks: &[Walk]) {
    let firsts: Vec<f64> = walks
        .iter()
        .filter_map(|w| w.mask_times.first())
        .map(|d| d.as_secs_f64() * 1e6)
        .collect();
    let mut rest: Vec<f64> = walks
        .iter()
        .flat_map(|w| w.mask_times.iter().skip(1))
        .map(|d| d.as_secs_f64() * 1e6)
        .collect();
    rest.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| {
        if rest.is_empty() {
            0.0
        } else {
            rest[((rest.len() - 1) as f64 * p).round() as usize]
        }
    };
    let mean = rest.iter().sum::<f64>() / rest.len().max(1) as f64;
    let first = firsts.iter().sum::<f64>() / firsts.len().max(1) as f64;
    println!(
        "{label:>16}: compile {:>7.2} ms | mask first {first:>8.1} µs | steady n={:<5} mean {mean:>7.1} µs  p50 {:>7.1}  p99 {:>7.1}  max {:>8.1} µs | tokens/walk {:.1}",
        compile.as_secs_f64() * 1e3,
        rest.len(),
        pct(0.5),
        pct(0.99),
        rest.last().copied().unwrap_or(0.0),
        walks.iter().map(|w| w.ids.len()).sum::<usize>() as f64 / walks.len().max(1) as f64,
    );
}

/// Runs `SEEDS` walks of `format`, checks each with `check(text)` and that every walk finished.
fn run_format(
    fx: &Fixture,
    label: &str,
    format: &ResponseFormat,
    mut on_step: impl FnMut(&str, bool),
    mut check: impl FnMut(&str),
) -> Vec<Walk> {
    let mut walks = Vec::new();
    let mut compile = Duration::ZERO;
    for seed in 0..SEEDS {
        let t0 = Instant::now();
        let mut c = fx.compile(format);
        compile += t0.elapsed();
        let w = walk(fx, &mut c, seed, fx.compiler.vocab_size(), &mut on_step);
        assert!(
            w.finished,
            "{label} seed {seed}: not finished after {MAX_STEPS} tokens: {:?}",
            w.text
        );
        println!(
            "{label} seed {seed} ({} tokens{}): {}",
            w.ids.len(),
            if w.ended_by_eos { ", EOS" } else { "" },
            w.text
        );
        check(&w.text);
        walks.push(w);
    }
    report(label, compile / SEEDS as u32, &walks);
    walks
}

/// Walks a JSON schema: every output parses and validates; at every step EOS is allowed exactly
/// when the output so far is a complete, valid document.
fn run_schema(fx: &Fixture, label: &str, schema: Value) -> Vec<Walk> {
    let validator = jsonschema::validator_for(&schema).unwrap();
    let complete = |text: &str| {
        serde_json::from_str::<Value>(text)
            .map(|v| validator.is_valid(&v))
            .unwrap_or(false)
    };
    run_format(
        fx,
        label,
        &ResponseFormat::JsonSchema(schema.clone()),
        |text, eos_allowed| {
            assert_eq!(
                eos_allowed,
                complete(text),
                "{label}: EOS allowed = {eos_allowed} after {text:?}"
            );
        },
        |text| {
            let v: Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("{label}: not JSON ({e}): {text:?}"));
            if let Err(e) = validator.validate(&v) {
                panic!("{label}: {text} does not validate: {e}");
            }
            assert!(
                !text.contains([' ', '\n', '\t', '\r'])
                    || v.to_string().len() == text.len()
                    || text_has_space_only_in_strings(text),
                "{label}: whitespace outside strings: {text:?}"
            );
        },
    )
}

/// True when every whitespace character of `text` (JSON) is inside a string.
fn text_has_space_only_in_strings(text: &str) -> bool {
    let mut in_str = false;
    let mut esc = false;
    for ch in text.chars() {
        if in_str {
            if esc {
                esc = false;
            } else if ch == '\\' {
                esc = true;
            } else if ch == '"' {
                in_str = false;
            }
        } else if ch == '"' {
            in_str = true;
        } else if ch.is_whitespace() {
            return false;
        }
    }
    true
}

#[test]
fn schema_suite() {
    let Some(fx) = smollm2() else { return };
    let schemas = [
        (
            "required+optional",
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 12},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "email": {"type": "string", "maxLength": 16},
                    "code": {"type": "string", "pattern": "^[a-z]{2,4}-[0-9]{2}$"}
                },
                "required": ["name", "age"],
                "additionalProperties": false
            }),
        ),
        (
            "nested",
            json!({
                "type": "object",
                "properties": {
                    "user": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "integer", "minimum": 1, "maximum": 99999},
                            "tags": {
                                "type": "array",
                                "items": {"type": "string", "maxLength": 6},
                                "minItems": 1, "maxItems": 3
                            },
                            "address": {
                                "type": "object",
                                "properties": {
                                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                                    "country": {"type": "string", "maxLength": 8}
                                },
                                "required": ["zip"],
                                "additionalProperties": false
                            }
                        },
                        "required": ["id", "tags"],
                        "additionalProperties": false
                    },
                    "active": {"type": "boolean"}
                },
                "required": ["user", "active"],
                "additionalProperties": false
            }),
        ),
        (
            "enums+numbers",
            json!({
                "type": "object",
                "properties": {
                    "color": {"enum": ["red", "green", "blue"]},
                    "level": {"type": "string", "enum": ["low", "high", "très haut"]},
                    "score": {"type": "number", "minimum": -1.5, "maximum": 2.5},
                    "count": {"type": "integer", "exclusiveMinimum": 0, "maximum": 10},
                    "ratio": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                    "mixed": {"enum": [1, "one", null, true]}
                },
                "required": ["color", "score", "count", "mixed"],
                "additionalProperties": false
            }),
        ),
        (
            "arrays",
            json!({
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "x": {"type": "integer", "minimum": -5, "maximum": 5},
                        "y": {"type": ["number", "null"], "minimum": -100, "maximum": 100},
                        "pts": {
                            "type": "array",
                            "items": {"type": "integer", "minimum": 0, "maximum": 9},
                            "maxItems": 2
                        }
                    },
                    "required": ["x"],
                    "additionalProperties": false
                },
                "minItems": 2,
                "maxItems": 4
            }),
        ),
        (
            "unicode",
            json!({
                "type": "object",
                "properties": {
                    "greeting": {"type": "string", "minLength": 1, "maxLength": 5},
                    "city": {"enum": ["Zürich", "東京", "São Paulo"]},
                    "emoji": {"const": "🦀"},
                    "note": {"type": "string", "maxLength": 3}
                },
                "required": ["greeting", "city", "emoji", "note"],
                "additionalProperties": false
            }),
        ),
        (
            "refs+anyOf+oneOf",
            json!({
                "$defs": {
                    "point": {
                        "type": "object",
                        "properties": {
                            "lat": {"type": "number", "minimum": -90, "maximum": 90},
                            "lon": {"type": "number", "minimum": -180, "maximum": 180}
                        },
                        "required": ["lat", "lon"],
                        "additionalProperties": false
                    }
                },
                "type": "object",
                "properties": {
                    "from": {"$ref": "#/$defs/point"},
                    "to": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/point"}]},
                    "label": {"anyOf": [{"type": "string", "maxLength": 4}, {"type": "integer", "minimum": 0, "maximum": 9}]},
                    "kind": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 3}, {"type": "string", "maxLength": 3}]}
                },
                "required": ["from", "to"],
                "additionalProperties": false
            }),
        ),
    ];
    let mut all_times = Vec::new();
    for (label, schema) in schemas {
        let walks = run_schema(fx, label, schema);
        all_times.extend(
            walks
                .into_iter()
                .flat_map(|w| w.mask_times.into_iter().skip(1)),
        );
    }
    let n = all_times.len();
    let mean = all_times.iter().sum::<Duration>() / n.max(1) as u32;
    println!("all schemas: {n} steady-state masks, mean {mean:?}");
}

#[test]
fn unicode_strings_respect_max_length_in_characters() {
    let Some(fx) = smollm2() else { return };
    // Several seeds must produce non-ASCII text for this test to mean something.
    let walks = run_schema(
        fx,
        "unicode-max",
        json!({
            "type": "object",
            "properties": {"s": {"type": "string", "minLength": 2, "maxLength": 4}},
            "required": ["s"],
            "additionalProperties": false
        }),
    );
    let non_ascii = walks.iter().filter(|w| !w.text.is_ascii()).count();
    assert!(
        non_ascii >= 2,
        "only {non_ascii} walks produced non-ASCII text"
    );
    for w in &walks {
        let v: Value = serde_json::from_str(&w.text).unwrap();
        let n = v["s"].as_str().unwrap().chars().count();
        assert!((2..=4).contains(&n), "{:?}: {n} characters", w.text);
    }
}

#[test]
fn json_object_mode() {
    let Some(fx) = smollm2() else { return };
    run_format(
        fx,
        "json_object",
        &ResponseFormat::JsonObject,
        |_, _| {},
        |text| {
            let v: Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("json_object: not JSON ({e}): {text:?}"));
            assert!(v.is_object(), "json_object: not an object: {text}");
            assert!(
                text_has_space_only_in_strings(text),
                "json_object: whitespace outside strings: {text:?}"
            );
        },
    );
}

#[test]
fn json_whitespace_cannot_be_turned_back_on_from_the_schema() {
    let Some(fx) = smollm2() else { return };
    // A caller's own `x-guidance` options are replaced by the engine's (compact JSON).
    let mut c = fx.compile(&ResponseFormat::JsonSchema(json!({
        "type": "object",
        "properties": {"a": {"type": "boolean"}},
        "x-guidance": {"whitespace_flexible": true, "item_separator": ", "}
    })));
    c.compute_mask().unwrap();
    for t in allowed_ids(c.mask()) {
        assert_eq!(
            fx.bytes[t as usize].first(),
            Some(&b'{'),
            "{:?}",
            fx.pieces[t as usize]
        );
    }
    write_text(fx, &mut c, "{", true);
    c.compute_mask().unwrap();
    for t in allowed_ids(c.mask()) {
        let b = &fx.bytes[t as usize];
        assert!(
            b.starts_with(b"\"") || b.starts_with(b"}"),
            "{:?}",
            fx.pieces[t as usize]
        );
    }
}

#[test]
fn regex_mode() {
    let Some(fx) = smollm2() else { return };
    for rx in [
        r"[a-z]{3,8}@[a-z]{2,5}\.(com|org|net)",
        r"\(\d{3}\) \d{3}-\d{4}",
        r"(yes|no)[!?]{0,2}",
        r"[0-9]+(\.[0-9]{1,2})?",
    ] {
        let re = regex::Regex::new(&format!("^(?:{rx})$")).unwrap();
        run_format(
            fx,
            "regex",
            &ResponseFormat::Regex(rx.to_string()),
            |text, eos_allowed| {
                assert_eq!(
                    eos_allowed,
                    re.is_match(text),
                    "regex {rx}: EOS allowed = {eos_allowed} after {text:?}"
                );
            },
            |text| assert!(re.is_match(text), "{text:?} does not match {rx}"),
        );
    }
}

#[test]
fn choice_mode() {
    let Some(fx) = smollm2() else { return };
    let choices: Vec<String> = ["yes", "no", "maybe so", "日本語 ok", "a|b (c)*", "no way"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let walks = run_format(
        fx,
        "choice",
        &ResponseFormat::Choice(choices.clone()),
        |_, _| {},
        |text| assert!(choices.iter().any(|c| c == text), "{text:?} is no choice"),
    );
    // "no" is a prefix of "no way": EOS is the only way out of it. The others finish by
    // themselves once spelled out (only EOS can follow, and the constraint says so).
    for w in &walks {
        assert_eq!(w.ended_by_eos, w.text == "no", "{:?}", w.text);
    }
    // Every choice can be written (regex metacharacters are escaped), and nothing else.
    let format = ResponseFormat::Choice(choices.clone());
    for choice in &choices {
        let mut c = fx.compile(&format);
        write_text(fx, &mut c, choice, !choice.starts_with("no"));
        c.compute_mask().unwrap();
        assert!(
            fx.eos.iter().all(|&e| c.is_allowed(e)),
            "{choice:?}: no EOS"
        );
        assert_eq!(c.is_finished(), choice != "no", "{choice:?}");
    }
    // Half a choice: no EOS, and only what continues that choice (once the rest is forced, only
    // its canonical tokenization: here `)*` in one token).
    let mut c = fx.compile(&format);
    write_text(fx, &mut c, "a|b (c", true);
    c.compute_mask().unwrap();
    let allowed = allowed_ids(c.mask());
    assert!(!allowed.is_empty());
    for t in allowed {
        let b = &fx.bytes[t as usize];
        assert!(
            b")*".starts_with(b),
            "{:?} may follow \"a|b (c\"",
            fx.pieces[t as usize]
        );
    }
}

/// Commits tokens spelling `text`, each the longest allowed token that is a prefix of what is
/// left (as a model that wants to write `text` would). With `no_eos_before`, checks that EOS
/// is not allowed before the end of `text`.
fn write_text(fx: &Fixture, c: &mut Constraint, text: &str, no_eos_before: bool) {
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        c.compute_mask().unwrap();
        let best = allowed_ids(c.mask())
            .into_iter()
            .filter(|t| !fx.eos.contains(t))
            .map(|t| (t, fx.bytes[t as usize].as_slice()))
            .filter(|(_, b)| !b.is_empty() && rest.starts_with(b))
            .max_by_key(|(_, b)| b.len());
        let Some((t, b)) = best else {
            panic!("no allowed token continues {rest:?} of {text:?}");
        };
        assert!(!c.is_finished(), "finished before {rest:?}");
        if no_eos_before {
            for &e in &fx.eos {
                assert!(!c.is_allowed(e), "EOS allowed before {rest:?}");
            }
        }
        c.commit(t).unwrap();
        rest = &rest[b.len()..];
    }
}

#[test]
fn lark_grammar_mode() {
    let Some(fx) = smollm2() else { return };
    // Arithmetic with nesting bounded to two levels of parentheses (so random walks end).
    let grammar = r#"
start: expr2
expr2: term2 (OP term2)*
term2: NUMBER | "(" expr1 ")" | FUNC "(" expr1 ")"
expr1: term1 (OP term1)*
term1: NUMBER | "(" expr0 ")" | FUNC "(" expr0 ")"
expr0: NUMBER (OP NUMBER)*
OP: "+" | "-" | "*"
FUNC: "abs" | "neg"
NUMBER: /[0-9]{1,3}/
"#;
    run_format(
        fx,
        "grammar",
        &ResponseFormat::Grammar(grammar.to_string()),
        |_, _| {},
        |text| {
            let mut p = ExprParser {
                s: text.as_bytes(),
                i: 0,
            };
            assert!(
                p.expr(2) && p.i == text.len(),
                "{text:?} is not a sentence of the grammar"
            );
        },
    );
}

/// A hand-written parser for the Lark grammar of `lark_grammar_mode`.
struct ExprParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl ExprParser<'_> {
    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }
    /// `expr{depth}`: terms joined by operators.
    fn expr(&mut self, depth: usize) -> bool {
        if !self.term(depth) {
            return false;
        }
        while self.eat("+") || self.eat("-") || self.eat("*") {
            if !self.term(depth) {
                return false;
            }
        }
        true
    }
    /// `term{depth}`: a number, or (depth > 0) a parenthesised `expr{depth - 1}`.
    fn term(&mut self, depth: usize) -> bool {
        let digits = self.s[self.i..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > 0 {
            self.i += digits;
            return digits <= 3;
        }
        if depth == 0 {
            return false;
        }
        let _ = self.eat("abs") || self.eat("neg");
        self.eat("(") && self.expr(depth - 1) && self.eat(")")
    }
}

#[test]
fn invalid_formats_are_invalid_argument() {
    let Some(fx) = smollm2() else { return };
    let c = &fx.compiler;
    let err = |f: ResponseFormat, needles: &[&str]| {
        let msg = common::expect_err(c.compile(&f), ErrorCode::InvalidArgument, needles);
        println!("{}: {msg}", f.kind());
    };
    err(
        ResponseFormat::JsonSchema(json!({
            "type": "object",
            "properties": {"age": {"type": "integer", "minimum": "ten"}}
        })),
        &["response_format json_schema:"],
    );
    err(
        ResponseFormat::JsonSchema(json!({"type": "array", "uniqueItems": true})),
        &["response_format json_schema:", "uniqueItems"],
    );
    err(
        ResponseFormat::JsonSchema(json!({"oneOf": [{"type": "integer"}, {"type": "number"}]})),
        &["response_format json_schema:", "oneOf"],
    );
    err(
        ResponseFormat::JsonSchema(json!({"type": "integer", "minimum": 5, "maximum": 1})),
        &["response_format json_schema:", "minimum"],
    );
    err(
        ResponseFormat::JsonSchema(json!({"$ref": "https://example.com/schema.json"})),
        &[
            "response_format json_schema:",
            "https://example.com/schema.json",
        ],
    );
    err(
        ResponseFormat::JsonSchema(json!({"type": "strung"})),
        &["response_format json_schema:", "strung"],
    );
    err(
        ResponseFormat::JsonSchema(json!({"type": "string", "format": "no-such-format"})),
        &["response_format json_schema:", "no-such-format"],
    );
    err(
        ResponseFormat::JsonSchema(json!({"$ref": "#/$defs/missing"})),
        &["response_format json_schema:", "missing"],
    );
    err(
        ResponseFormat::JsonSchema(json!("an object, please")),
        &["response_format json_schema:", "object or a boolean"],
    );
    err(
        ResponseFormat::JsonSchema(json!(false)),
        &["response_format json_schema:", "false"],
    );
    err(
        ResponseFormat::Regex("[a-".into()),
        &["response_format regex:"],
    );
    err(
        ResponseFormat::Regex("(ab".into()),
        &["response_format regex:"],
    );
    err(
        ResponseFormat::Grammar("start: undefined_rule".into()),
        &["response_format grammar:", "undefined_rule"],
    );
    err(
        ResponseFormat::Grammar("start: \"a\" | | (".into()),
        &["response_format grammar:"],
    );
    err(
        ResponseFormat::Grammar("expr: \"a\"".into()),
        &["response_format grammar:", "start"],
    );
    err(
        ResponseFormat::Grammar("  ".into()),
        &["response_format grammar:", "empty"],
    );
    err(
        ResponseFormat::Choice(vec![]),
        &["response_format choice:", "empty"],
    );
    assert!(c.compile(&ResponseFormat::Text).unwrap().is_none());
    // `true` and `{}` accept any JSON value.
    for s in [json!(true), json!({})] {
        assert!(c.compile(&ResponseFormat::JsonSchema(s)).unwrap().is_some());
    }
}

#[test]
fn committing_a_disallowed_token_errors_and_keeps_the_state() {
    let Some(fx) = smollm2() else { return };
    let mut c = fx.compile(&ResponseFormat::JsonSchema(json!({
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["a"],
        "additionalProperties": false
    })));
    let hello = fx.tok.encode("hello", false).unwrap()[0];
    c.compute_mask().unwrap();
    assert!(!c.is_allowed(hello));
    common::expect_err(
        c.commit(hello),
        ErrorCode::InvalidArgument,
        &["response_format json_schema:", "not allowed"],
    );
    // EOS before anything was written.
    for &e in &fx.eos {
        assert!(!c.is_allowed(e), "EOS {e} allowed at the start");
        common::expect_err(c.commit(e), ErrorCode::InvalidArgument, &["not allowed"]);
    }
    common::expect_err(
        c.commit(fx.compiler.vocab_size() as u32),
        ErrorCode::InvalidArgument,
        &["outside the vocabulary"],
    );
    // The state is unchanged: the output still goes through.
    write_text(fx, &mut c, r#"{"a":7}"#, true);
    // Nothing can follow a closed object: finished, only EOS allowed, and anything else refused.
    assert!(c.is_finished());
    c.compute_mask().unwrap();
    assert_eq!(allowed_ids(c.mask()), {
        let mut e = fx.eos.clone();
        e.sort();
        e
    });
    common::expect_err(
        c.commit(hello),
        ErrorCode::InvalidArgument,
        &["only end-of-sequence"],
    );
    let n = c.num_committed();
    c.commit(fx.eos[1]).unwrap();
    assert!(c.is_finished());
    assert_eq!(c.num_committed(), n + 1);
}

#[test]
fn eos_allowed_alongside_continuations_when_complete() {
    let Some(fx) = smollm2() else { return };
    // "12" is complete, but "123" is still possible: EOS and digits are both allowed.
    let mut c = fx.compile(&ResponseFormat::Regex("[0-9]{1,4}".into()));
    for ch in ["1", "2"] {
        c.compute_mask().unwrap();
        for &e in &fx.eos {
            assert_eq!(c.is_allowed(e), ch == "2", "EOS before {ch}");
        }
        c.commit(fx.tok.token_to_id(ch).unwrap()).unwrap();
    }
    c.compute_mask().unwrap();
    for &e in &fx.eos {
        assert!(c.is_allowed(e), "EOS {e} not allowed after 12");
    }
    assert!(c.is_allowed(fx.tok.token_to_id("3").unwrap()));
    assert!(!c.is_finished());
    // Either EOS id ends it.
    c.commit(fx.eos[1]).unwrap();
    assert!(c.is_finished());
    c.compute_mask().unwrap();
    assert!(c.mask().iter().map(|w| w.count_ones()).sum::<u32>() == fx.eos.len() as u32);

    // The empty regex: complete from the start, nothing can follow; compute_mask notices.
    let mut c = fx.compile(&ResponseFormat::Regex(String::new()));
    c.compute_mask().unwrap();
    let mut eos = fx.eos.clone();
    eos.sort();
    assert_eq!(allowed_ids(c.mask()), eos);
    assert!(c.is_finished());
    c.commit(fx.eos[0]).unwrap();
    assert!(c.is_finished());
}

#[test]
fn padding_ids_beyond_the_tokenizer_are_never_allowed() {
    let Some(base) = smollm2() else { return };
    let tok_vocab = base.tok.vocab_size();
    // A model vocabulary 77 rows larger than the tokenizer's (not a multiple of 32).
    let vocab_size = tok_vocab + 77;
    let compiler = ConstraintCompiler::new(&base.tok, &base.eos, vocab_size).unwrap();
    for (seed, format) in [
        ResponseFormat::JsonObject,
        ResponseFormat::Regex(r"\w{1,6}".into()),
        ResponseFormat::Grammar("start: /[^x]{1,5}/".into()),
    ]
    .iter()
    .enumerate()
    {
        let mut c = compiler.compile(format).unwrap().unwrap();
        // walk() checks every mask: length vocab_size.div_ceil(32), nothing at or above the
        // tokenizer's vocabulary except EOS, nothing at or above vocab_size.
        let w = walk(base, &mut c, seed as u64, vocab_size, |_, _| {});
        assert!(w.finished, "{format:?}: {:?}", w.text);
    }
    // An EOS id beyond the model's vocabulary is refused.
    common::expect_err(
        ConstraintCompiler::new(&base.tok, &[vocab_size as u32], vocab_size),
        ErrorCode::InvalidArgument,
        &["end-of-sequence id", "vocab_size"],
    );
    // A model vocabulary smaller than the tokenizer's: ids past it are never allowed.
    let small = tok_vocab - 100;
    let compiler = ConstraintCompiler::new(&base.tok, &base.eos, small).unwrap();
    let mut c = compiler
        .compile(&ResponseFormat::JsonObject)
        .unwrap()
        .unwrap();
    c.compute_mask().unwrap();
    assert_eq!(c.mask().len(), small.div_ceil(32));
    assert!(allowed_ids(c.mask()).iter().all(|&t| (t as usize) < small));
}

#[test]
fn constraints_move_between_threads_and_share_the_compiler() {
    let Some(fx) = smollm2() else { return };
    let compiler = Arc::new(fx.compiler.clone());
    let schema = json!({
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 50}, "ok": {"type": "boolean"}},
        "required": ["n", "ok"],
        "additionalProperties": false
    });
    let validator = jsonschema::validator_for(&schema).unwrap();
    let handles: Vec<_> = (0..4u64)
        .map(|seed| {
            let compiler = Arc::clone(&compiler);
            let schema = schema.clone();
            std::thread::spawn(move || {
                let c = compiler
                    .compile(&ResponseFormat::JsonSchema(schema))
                    .unwrap()
                    .unwrap();
                (seed, c)
            })
        })
        .collect();
    for h in handles {
        let (seed, mut c) = h.join().unwrap();
        // Compute the mask on another thread, as the engine does while the forward pass runs.
        c = std::thread::spawn(move || {
            c.compute_mask().unwrap();
            c
        })
        .join()
        .unwrap();
        let w = walk(fx, &mut c, seed, fx.compiler.vocab_size(), |_, _| {});
        assert!(w.finished);
        let v: Value = serde_json::from_str(&w.text).unwrap();
        assert!(validator.is_valid(&v), "{}", w.text);
    }
}

#[test]
fn sentencepiece_byte_fallback_tokenizer() {
    // A small SentencePiece (byte-fallback) vocabulary from the in-repo fixtures: always runs.
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers/spm-llama.gguf");
    let tok = load_gguf_tokenizer(&path);
    let eos = tok.special().eos.as_ref().map(|(_, id)| *id).unwrap();
    let vocab = tok.vocab_size();
    let fx = Fixture::new(tok, vec![eos], vocab);
    run_schema(
        &fx,
        "spm",
        json!({
            "type": "object",
            "properties": {
                "word": {"type": "string", "maxLength": 6},
                "n": {"type": "integer", "minimum": -20, "maximum": 20},
                "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}
            },
            "required": ["word", "n", "flags"],
            "additionalProperties": false
        }),
    );
    let re = regex::Regex::new(r"^(?:[a-z]+ [0-9]{2})$").unwrap();
    run_format(
        &fx,
        "spm regex",
        &ResponseFormat::Regex("[a-z]+ [0-9]{2}".into()),
        |_, _| {},
        |text| assert!(re.is_match(text), "{text:?}"),
    );
}

#[test]
fn a_forked_constraint_continues_independently_from_the_same_state() {
    let Some(fx) = smollm2() else { return };
    let choices: Vec<String> = ["yes", "no way"].iter().map(|s| s.to_string()).collect();
    let format = ResponseFormat::Choice(choices);
    let mut a = fx.compile(&format);
    write_text(fx, &mut a, "n", true);
    let mut b = a.fork();
    a.compute_mask().unwrap();
    b.compute_mask().unwrap();
    assert_eq!(a.mask(), b.mask(), "the fork starts in the same state");
    // `a` finishes "no way"; `b`, untouched by that, still allows the same continuation.
    write_text(fx, &mut a, "o way", true);
    assert!(a.is_finished());
    assert!(!b.is_finished());
    write_text(fx, &mut b, "o", true);
    b.compute_mask().unwrap();
    assert!(!b.is_finished(), "\"no\" alone is no choice here");
    assert!(fx.eos.iter().all(|&e| !b.is_allowed(e)));
}
