//! Tokenizer (HF `tokenizers`), chat template (minijinja) and UTF-8-safe incremental
//! detokenisation.
//!
//! Threading: [`Tokenizer`] is immutable after construction and `Send + Sync`; share it in an `Arc`.

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};

/// One chat message (`role`, `content`), as in the OpenAI API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// "system", "user", "assistant", ...
    pub role: String,
    /// The text.
    pub content: String,
}

/// Special tokens and flags that travel with a tokenizer.
#[derive(Debug, Clone, Default)]
pub struct SpecialTokens {
    /// BOS token text and id.
    pub bos: Option<(String, u32)>,
    /// EOS token text and id.
    pub eos: Option<(String, u32)>,
    /// Prepend BOS when encoding prompts.
    pub add_bos: bool,
}

/// A tokenizer with its chat template and special tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    special: SpecialTokens,
}

fn tok_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid_model(format!("tokenizer: {what}: {e}"))
}

impl Tokenizer {
    /// Wraps an already-built `tokenizers::Tokenizer`.
    pub fn from_parts(
        inner: tokenizers::Tokenizer,
        chat_template: Option<String>,
        special: SpecialTokens,
    ) -> Self {
        Self {
            inner,
            chat_template,
            special,
        }
    }

    /// Reads `tokenizer.json`, `tokenizer_config.json` (special tokens, `chat_template`,
    /// `add_bos_token`) and `chat_template.jinja` (preferred when present) from `dir`.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        if !tj.is_file() {
            return Err(Error::invalid_model(format!(
                "{}: missing (a HuggingFace model needs tokenizer.json)",
                tj.display()
            )));
        }
        let inner = tokenizers::Tokenizer::from_file(&tj)
            .map_err(|e| tok_err(&tj.display().to_string(), e))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.is_file() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            serde_json::from_str(&text).map_err(|e| {
                Error::invalid_model(format!("{}: invalid JSON: {e}", cfg_path.display()))
            })?
        } else {
            serde_json::Value::Null
        };
        let tmpl_path = dir.join("chat_template.jinja");
        let chat_template = if tmpl_path.is_file() {
            Some(std::fs::read_to_string(&tmpl_path).map_err(|e| Error::io(&tmpl_path, e))?)
        } else {
            cfg.get("chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let token_named = |key: &str| -> Option<(String, u32)> {
            let v = cfg.get(key)?;
            let text = v
                .as_str()
                .or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            inner.token_to_id(text).map(|id| (text.to_string(), id))
        };
        let special = SpecialTokens {
            bos: token_named("bos_token"),
            eos: token_named("eos_token"),
            add_bos: cfg
                .get("add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        };
        Ok(Self {
            inner,
            chat_template,
            special,
        })
    }

    /// The underlying HF tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
    /// Special tokens.
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }
    /// The chat template source, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    /// The id of a token's text, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encodes `text`; special-token text in it is recognised. BOS is prepended when the model
    /// asks for it (`add_bos`) and `add_special` is true.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err("encode", e))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_special && self.special.add_bos {
            if let Some((_, bos)) = &self.special.bos {
                ids.push(*bos);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Decodes ids to text (special tokens skipped when `skip_special`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| tok_err("decode", e))
    }

    /// Renders `messages` with the chat template (`add_generation_prompt` as given). Errors with
    /// INVALID_ARGUMENT when the model has no template or the template fails.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self.chat_template.as_deref().ok_or_else(|| {
            Error::invalid_argument(
                "this model has no chat template; send a prompt instead of messages",
            )
        })?;
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", tmpl)
            .map_err(|e| Error::invalid_model(format!("chat template does not parse: {e}")))?;
        let t = env
            .get_template("chat")
            .map_err(|e| Error::internal(e.to_string()))?;
        let bos = self
            .special
            .bos
            .as_ref()
            .map(|b| b.0.clone())
            .unwrap_or_default();
        let eos = self
            .special
            .eos
            .as_ref()
            .map(|b| b.0.clone())
            .unwrap_or_default();
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos,
            eos_token => eos,
        })
        .map_err(|e| Error::invalid_argument(format!("chat template failed: {e}")))
    }
}

/// Incremental, UTF-8-safe detokenisation for streaming: feed ids one at a time, get back the
/// text that is now final. Bytes of a character split across tokens are held back until the
/// character is complete.
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// Index in `ids` where the window used for decoding starts.
    prefix_start: usize,
    /// Index in `ids` up to which text has been emitted.
    read_offset: usize,
}

impl IncrementalDecoder {
    /// A decoder with nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id` and returns the newly final text (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = tok.decode(&self.ids[self.prefix_start..self.read_offset], true)?;
        let full = tok.decode(&self.ids[self.prefix_start..], true)?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let delta = full[prefix.len()..].to_string();
            self.prefix_start = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Text still held back (an incomplete character at the end), decoded lossily.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        let prefix = tok.decode(&self.ids[self.prefix_start..self.read_offset], true)?;
        let full = tok.decode(&self.ids[self.prefix_start..], true)?;
        self.prefix_start = self.read_offset;
        self.read_offset = self.ids.len();
        if full.len() > prefix.len() && full.is_char_boundary(prefix.len()) {
            Ok(full[prefix.len()..].to_string())
        } else {
            Ok(String::new())
        }
    }
}
