//! Token-level output constraints: a [`ResponseFormat`] compiled (with
//! [llguidance](https://github.com/guidance-ai/llguidance)) into a per-request [`Constraint`] that
//! says, before each sampling step, which tokens may come next.
//!
//! * [`ConstraintCompiler`] is built once per engine from the tokenizer (the token trie and
//!   llguidance's parser factory, a few hundred milliseconds for a 49k vocabulary) and shared in
//!   an `Arc`. [`ConstraintCompiler::compile`] turns one request's format into a [`Constraint`]
//!   (or refuses it with INVALID_ARGUMENT naming the problem).
//! * [`Constraint`] holds one request's parser state. Per step: [`Constraint::compute_mask`]
//!   (the expensive part, typically tens to hundreds of microseconds; it can run on another thread
//!   while the forward pass runs), [`Constraint::mask`] (the allowed tokens as a bitset, applied
//!   to the logits row), then [`Constraint::commit`] with the sampled token.
//!
//! Semantics shared by every format:
//! * The whole output must match: a JSON document, a full regex match, one of the choices, a
//!   sentence of the grammar. No text may come before or after it.
//! * The model's end-of-sequence ids are allowed exactly when the output so far is complete
//!   (the grammar accepts), together with whatever may still extend it (`12` may become `123`).
//!   Once nothing can extend the output (`{"a":1}` is closed), only the EOS ids are allowed and
//!   [`Constraint::is_finished`] is true: the engine can end the request (finish reason "stop")
//!   without sampling another token. Committing an EOS id also finishes the constraint.
//! * Ids the tokenizer does not know (the model's padding rows, `vocab_size` beyond the
//!   tokenizer's vocabulary) and special tokens other than EOS are never allowed.
//! * JSON is generated compactly: `,` and `:` separators with no whitespace anywhere (a small
//!   model could otherwise emit whitespace forever), object properties in schema order.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
use std::fmt;
use std::sync::Arc;

use llguidance::api::{ParserLimits, StopReason, TopLevelGrammar};
use llguidance::toktrie::TokEnv;
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use serde_json::{json, Value};
use toktrie_hf_tokenizers::{ByteTokenizer, ByteTokenizerEnv};

use crate::error::{Error, ErrorCode, Result};
use crate::sampling::ResponseFormat;
use crate::tokenizer::Tokenizer;

/// State shared by a compiler and every constraint it made (immutable).
struct Shared {
    factory: ParserFactory,
    /// The model's vocabulary (logits row length).
    vocab_size: usize,
    /// The tokenizer's vocabulary (ids at or above it are padding rows).
    tokenizer_vocab: usize,
    /// End-of-sequence ids; the first is llguidance's primary EOS.
    eos_ids: Vec<u32>,
    /// Bits of every id a constraint may ever allow: the tokenizer's ids below `vocab_size`
    /// plus the EOS ids. Every computed mask is intersected with it.
    universe: Vec<u32>,
    /// Bits of the EOS ids only (the mask of a finished constraint).
    eos_mask: Vec<u32>,
}

/// Compiles [`ResponseFormat`]s into [`Constraint`]s for one model's tokenizer.
///
/// Built once per engine (lazily, on the first constrained request: building the token trie
/// and llguidance's parser factory takes a few hundred milliseconds for a 49k vocabulary).
/// Immutable afterwards, `Send + Sync`; clone it or wrap it in an `Arc` to share it (a clone
/// shares the same tables). Every [`Constraint`] it makes keeps those tables alive through an
/// `Arc` of its own, so constraints may outlive the compiler.
#[derive(Clone)]
pub struct ConstraintCompiler {
    shared: Arc<Shared>,
}

impl fmt::Debug for ConstraintCompiler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConstraintCompiler")
            .field("vocab_size", &self.shared.vocab_size)
            .field("tokenizer_vocab", &self.shared.tokenizer_vocab)
            .field("eos_ids", &self.shared.eos_ids)
            .finish()
    }
}

fn set_bit(words: &mut [u32], id: usize) {
    if let Some(w) = words.get_mut(id / 32) {
        *w |= 1 << (id % 32);
    }
}

fn bit(words: &[u32], id: usize) -> bool {
    words
        .get(id / 32)
        .is_some_and(|w| w & (1 << (id % 32)) != 0)
}

/// Runs `f`, turning a panic inside it (third-party code that asserts) into an INTERNAL error.
fn no_panic<T, E: fmt::Display>(
    what: &str,
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::internal(format!("{what}: {e:#}"))),
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_string());
            Err(Error::internal(format!("{what}: panicked: {msg}")))
        }
    }
}

/// The JSON compile options every JSON format uses, set field by field rather than relying on
/// llguidance's defaults (whose `whitespace_flexible` is true).
fn json_options() -> JsonCompileOptions {
    JsonCompileOptions {
        // Compact separators, and no whitespace anywhere: with flexible whitespace a small model
        // can emit spaces or newlines forever without the document ever closing.
        item_separator: ",".to_string(),
        key_separator: ":".to_string(),
        whitespace_flexible: false,
        whitespace_pattern: None,
        // A `oneOf` is accepted when llguidance can prove its branches disjoint (it then equals
        // `anyOf`); otherwise it is refused rather than approximated by `anyOf`.
        coerce_one_of: false,
        // Strict: a JSON Schema keyword llguidance does not implement (uniqueItems, contains,
        // not, if/then/else, ...) or an unknown `format` refuses the schema instead of being
        // silently ignored (the output would then not honour the schema).
        lenient: false,
        // The default escape set (\n \r \b \t \f \\ \" and \u00XX for control characters);
        // other characters are written as themselves.
        json_allowed_escapes: None,
        json_allow_general_unicode_escapes: false,
        // No retrieval of remote `$ref`s (an engine does no network I/O on a request's behalf).
        retriever: None,
    }
}

/// A JSON-schema grammar with [`json_options`] attached (llguidance reads them from the
/// schema's top-level `x-guidance` key; a caller's own `x-guidance` is replaced).
fn json_grammar(kind: &str, schema: &Value) -> Result<TopLevelGrammar> {
    let opts = serde_json::to_value(json_options())
        .map_err(|e| Error::internal(format!("response_format {kind}: JSON options: {e}")))?;
    let schema = match schema {
        Value::Object(map) => {
            let mut map = map.clone();
            map.insert("x-guidance".to_string(), opts);
            Value::Object(map)
        }
        // `true` accepts any JSON value: an object with no keywords does the same.
        Value::Bool(true) => json!({ "x-guidance": opts }),
        Value::Bool(false) => {
            return Err(Error::invalid_argument(format!(
                "response_format {kind}: the schema `false` accepts no value"
            )))
        }
        other => {
            return Err(Error::invalid_argument(format!(
                "response_format {kind}: a JSON schema must be an object or a boolean, got {}",
                json_type_name(other)
            )))
        }
    };
    Ok(TopLevelGrammar::from_json_schema(schema))
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl ConstraintCompiler {
    /// Builds the token trie and llguidance's parser factory for `tok`.
    ///
    /// `vocab_size` is the model's vocabulary (the logits row length). It may exceed the
    /// tokenizer's (padding rows: never allowed) or fall short of it (ids at or above it are
    /// never allowed). `eos_ids` are the model's end-of-sequence ids: the first is the one
    /// llguidance treats as EOS, and all of them are allowed exactly when the output is complete;
    /// when empty, the tokenizer's EOS token is used.
    ///
    /// Errors: INVALID_ARGUMENT when `vocab_size` is 0, when an EOS id is not below
    /// `vocab_size`, or when there is no EOS id at all; INVALID_MODEL when the tokenizer's
    /// decoder is neither byte-level nor byte-fallback (its tokens' bytes cannot be known);
    /// INTERNAL when llguidance fails otherwise. Takes a few hundred milliseconds for a 49k
    /// vocabulary; call it once per engine.
    pub fn new(tok: &Tokenizer, eos_ids: &[u32], vocab_size: usize) -> Result<Self> {
        if vocab_size == 0 {
            return Err(Error::invalid_argument(
                "constraint compiler: vocab_size is 0",
            ));
        }
        let mut eos: Vec<u32> = Vec::with_capacity(eos_ids.len().max(1));
        for &id in eos_ids {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        if eos.is_empty() {
            match &tok.special().eos {
                Some((_, id)) => eos.push(*id),
                None => {
                    return Err(Error::invalid_argument(
                        "constraint compiler: no end-of-sequence id (the model names none and \
                         the tokenizer has no EOS token); a constrained output could never end",
                    ))
                }
            }
        }
        if let Some(&bad) = eos.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(Error::invalid_argument(format!(
                "constraint compiler: end-of-sequence id {bad} is not below the model's \
                 vocab_size {vocab_size}"
            )));
        }
        let tokenizer_vocab = tok.vocab_size();
        // llguidance's trie must cover every id the tokenizer knows and every EOS id; ids past
        // the tokenizer's vocabulary become never-allowed special placeholders.
        let trie_vocab = vocab_size.max(tokenizer_vocab);

        // toktrie_hf_tokenizers reads the tokenizer through its JSON form (it links its own
        // `tokenizers` version, so the in-memory object cannot be handed over).
        let json = tok.inner().to_string(false).map_err(|e| {
            Error::internal(format!(
                "constraint compiler: serialising the tokenizer: {e}"
            ))
        })?;
        let byte_tok = no_panic("constraint compiler: reading the tokenizer", || {
            ByteTokenizer::from_json_bytes(json.as_bytes())
        })
        .map_err(|e| {
            if e.message().contains("can't determine decoder type") {
                Error::invalid_model(format!(
                    "{} (constrained output needs a byte-level or byte-fallback tokenizer)",
                    e.message()
                ))
            } else {
                e
            }
        })?;
        let tok_env: TokEnv = no_panic("constraint compiler: building the token trie", || {
            ByteTokenizerEnv::new(byte_tok, Some(trie_vocab)).map(|mut env| {
                env.tok_trie = env.tok_trie.with_eos_tokens(&eos);
                env.to_env()
            })
        })?;
        let mut factory = no_panic("constraint compiler: building the parser factory", || {
            ParserFactory::new_simple(&tok_env)
        })?;
        // No logging to stderr from inside the library; errors come back as values.
        factory.quiet();
        // Errors name the problem without echoing the whole grammar and token history.
        *factory.limits_mut() = ParserLimits {
            verbose_errors: false,
            ..ParserLimits::default()
        };

        let words = vocab_size.div_ceil(32);
        let mut universe = vec![0u32; words];
        let known = tokenizer_vocab.min(vocab_size);
        for w in universe.iter_mut().take(known / 32) {
            *w = u32::MAX;
        }
        for id in (known / 32) * 32..known {
            set_bit(&mut universe, id);
        }
        let mut eos_mask = vec![0u32; words];
        for &id in &eos {
            set_bit(&mut universe, id as usize);
            set_bit(&mut eos_mask, id as usize);
        }
        Ok(Self {
            shared: Arc::new(Shared {
                factory,
                vocab_size,
                tokenizer_vocab,
                eos_ids: eos,
                universe,
                eos_mask,
            }),
        })
    }

    /// The model vocabulary this compiler's masks cover (`mask().len() == vocab_size.div_ceil(32)`).
    pub fn vocab_size(&self) -> usize {
        self.shared.vocab_size
    }

    /// The end-of-sequence ids (deduplicated, primary first).
    pub fn eos_ids(&self) -> &[u32] {
        &self.shared.eos_ids
    }

    /// Compiles one request's format. `Ok(None)` for [`ResponseFormat::Text`] (no constraint).
    ///
    /// Thread-safe (`&self`); compiling parses the schema/regex/grammar and builds its lexer
    /// (typically well under 10 ms for a JSON schema). The returned constraint is owned by the
    /// request.
    ///
    /// Errors: INVALID_ARGUMENT whose message starts with `response_format <kind>:` (kind as in
    /// [`ResponseFormat::kind`]) and names the problem: an invalid or unsupported JSON schema
    /// (unimplemented keywords such as `uniqueItems` or `not`, a `oneOf` whose branches may
    /// overlap, unknown `format`s, remote `$ref`s, bounds no value satisfies, the schema
    /// `false`), an invalid regex, a Lark grammar that does not parse or has no `start`
    /// rule, an empty choice list, or a grammar too large for llguidance's limits.
    pub fn compile(&self, format: &ResponseFormat) -> Result<Option<Constraint>> {
        let kind = format.kind();
        let grammar = match format {
            ResponseFormat::Text => return Ok(None),
            ResponseFormat::JsonObject => json_grammar(kind, &json!({ "type": "object" }))?,
            ResponseFormat::JsonSchema(schema) => json_grammar(kind, schema)?,
            ResponseFormat::Regex(rx) => TopLevelGrammar::from_regex(rx),
            ResponseFormat::Choice(choices) => {
                if choices.is_empty() {
                    return Err(Error::invalid_argument(format!(
                        "response_format {kind}: the list of choices is empty"
                    )));
                }
                let alternatives: Vec<String> = choices.iter().map(|c| regex::escape(c)).collect();
                TopLevelGrammar::from_regex(&format!("(?:{})", alternatives.join("|")))
            }
            ResponseFormat::Grammar(lark) => {
                if lark.trim().is_empty() {
                    return Err(Error::invalid_argument(format!(
                        "response_format {kind}: the grammar is empty"
                    )));
                }
                TopLevelGrammar::from_lark(lark.clone())
            }
        };
        let parser = self
            .shared
            .factory
            .create_parser(grammar)
            .map_err(|e| Error::invalid_argument(format!("response_format {kind}: {e:#}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::invalid_argument(format!(
                "response_format {kind}: {e}"
            )));
        }
        let words = self.shared.universe.len();
        Ok(Some(Constraint {
            shared: Arc::clone(&self.shared),
            matcher,
            kind,
            mask: vec![0; words],
            mask_fresh: false,
            finished: false,
            committed: 0,
        }))
    }
}

/// One request's constraint state: the parser position in the grammar and the last mask.
///
/// Owned by its request; `Send` (it may move between threads, e.g. to compute the next mask on
/// a rayon worker while the forward pass runs) but not shared: every method takes `&mut self`
/// or reads the last result. Per step: [`Constraint::compute_mask`], apply [`Constraint::mask`]
/// to the logits, sample, [`Constraint::commit`]. Dropping it mid-request is fine.
pub struct Constraint {
    shared: Arc<Shared>,
    matcher: Matcher,
    kind: &'static str,
    mask: Vec<u32>,
    /// `mask` matches the current state (nothing was committed since it was computed).
    mask_fresh: bool,
    finished: bool,
    committed: usize,
}

impl fmt::Debug for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Constraint")
            .field("kind", &self.kind)
            .field("committed", &self.committed)
            .field("finished", &self.finished)
            .finish()
    }
}

impl Constraint {
    /// An independent copy in the same state (parser and lexer caches cloned): the constraint
    /// of another choice of the same request, without compiling the format again.
    pub fn fork(&self) -> Constraint {
        Constraint {
            shared: self.shared.clone(),
            matcher: self.matcher.deep_clone(),
            kind: self.kind,
            mask: self.mask.clone(),
            mask_fresh: self.mask_fresh,
            finished: self.finished,
            committed: self.committed,
        }
    }

    /// The format kind this constraint enforces ("json_schema", "regex", ...).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Computes the set of allowed next tokens into the internal bitset read by
    /// [`Constraint::mask`]. Call it once per step before `mask`; calling it again before the
    /// next [`Constraint::commit`] returns at once. When [`Constraint::is_finished`] is true the
    /// mask holds the EOS ids only.
    ///
    /// Cost: typically tens to a few hundred microseconds for a 49k vocabulary (more on the
    /// first call, which builds lexer states). Errors (the constraint is then unusable; end the
    /// request): INVALID_ARGUMENT when the grammar is too complex for llguidance's per-step
    /// limits at this point, INTERNAL when the parser failed otherwise or allows no token.
    pub fn compute_mask(&mut self) -> Result<()> {
        if self.mask_fresh {
            return Ok(());
        }
        if self.finished {
            self.mask.copy_from_slice(&self.shared.eos_mask);
            self.mask_fresh = true;
            return Ok(());
        }
        let vob = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| self.runtime_error("computing the token mask", &e))?;
        let src = vob.as_slice();
        let mut any = 0u32;
        for (i, (dst, &allowed)) in self.mask.iter_mut().zip(&self.shared.universe).enumerate() {
            *dst = src.get(i).copied().unwrap_or(0) & allowed;
            any |= *dst;
        }
        if any == 0 {
            return Err(Error::internal(format!(
                "response_format {}: no token of the model's vocabulary can continue the output \
                 after {} tokens",
                self.kind, self.committed
            )));
        }
        // Only EOS allowed: the output is complete and nothing can extend it (llguidance notices
        // this itself only when a token is committed; an empty regex gets here at once).
        if self
            .mask
            .iter()
            .zip(&self.shared.eos_mask)
            .all(|(m, e)| m & !e == 0)
        {
            self.finished = true;
        }
        self.mask_fresh = true;
        Ok(())
    }

    /// The last mask computed by [`Constraint::compute_mask`]: bit `t % 32` of word `t / 32` set
    /// means token `t` is allowed. Length `vocab_size.div_ceil(32)` words; bits at or above
    /// `vocab_size`, padding ids and non-EOS special tokens are never set. All zero before the
    /// first `compute_mask`; stale (the previous step's) after a `commit` until the next one.
    pub fn mask(&self) -> &[u32] {
        &self.mask
    }

    /// True when `token` is allowed by the last computed mask.
    pub fn is_allowed(&self, token: u32) -> bool {
        bit(&self.mask, token as usize)
    }

    /// Records the sampled token, which must be allowed by the current mask (computed here
    /// first if [`Constraint::compute_mask`] was not called since the last commit).
    ///
    /// Committing an EOS id ends the constraint ([`Constraint::is_finished`] becomes true), and
    /// so does a token after which nothing can follow. Errors: INVALID_ARGUMENT when `token` is
    /// out of the vocabulary or not allowed (the state is unchanged: the constraint stays
    /// usable); the errors of `compute_mask`; INTERNAL when llguidance refuses an allowed token
    /// (the constraint is then unusable).
    pub fn commit(&mut self, token: u32) -> Result<()> {
        if token as usize >= self.shared.vocab_size {
            return Err(Error::invalid_argument(format!(
                "response_format {}: token {token} is outside the vocabulary ({} ids)",
                self.kind, self.shared.vocab_size
            )));
        }
        self.compute_mask()?;
        if !self.is_allowed(token) {
            let allowed: u32 = self.mask.iter().map(|w| w.count_ones()).sum();
            return Err(Error::invalid_argument(format!(
                "response_format {}: token {token} is not allowed after {} tokens ({allowed} \
                 tokens are{})",
                self.kind,
                self.committed,
                if self.finished {
                    ": the output is complete, only end-of-sequence may follow"
                } else {
                    ""
                }
            )));
        }
        let is_eos = self.shared.eos_ids.contains(&token);
        if !(is_eos && self.matcher.is_stopped()) {
            self.matcher
                .consume_token(token)
                .map_err(|e| self.runtime_error(&format!("committing token {token}"), &e))?;
        }
        self.committed += 1;
        self.mask_fresh = false;
        if is_eos || self.matcher.is_stopped() {
            self.finished = true;
        }
        Ok(())
    }

    /// True once the output is complete and nothing can extend it, or an EOS id was committed:
    /// the engine should end the request with finish reason "stop" (the mask then allows only
    /// the EOS ids). Usually it turns true in the [`Constraint::commit`] of the token that
    /// completes the output (`}` closing a JSON document); in rare cases (an empty regex) only in
    /// the next [`Constraint::compute_mask`], which then finds that only EOS can follow.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// How many tokens were committed.
    pub fn num_committed(&self) -> usize {
        self.committed
    }

    fn runtime_error(&self, what: &str, e: &dyn fmt::Display) -> Error {
        let code = match self.matcher.stop_reason() {
            StopReason::LexerTooComplex | StopReason::ParserTooComplex => {
                ErrorCode::InvalidArgument
            }
            _ => ErrorCode::Internal,
        };
        Error::new(
            code,
            format!(
                "response_format {}: {what} after {} tokens: {e:#}",
                self.kind, self.committed
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn thread_safety() {
        assert_send_sync::<ConstraintCompiler>();
        assert_send::<Constraint>();
    }
}
