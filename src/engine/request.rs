//! Requests and outputs of the Rust API.

use crate::error::Error;
use crate::sampling::SamplingParams;
use crate::tokenizer::ChatMessage;

/// Request id (never 0).
pub type RequestId = u64;

/// What to complete.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// UTF-8 text, tokenised with the model's tokenizer (BOS added when the model wants it).
    Text(String),
    /// Token ids, used as given.
    Tokens(Vec<u32>),
    /// Chat messages, rendered with the model's chat template (generation prompt added).
    Chat(Vec<ChatMessage>),
}

/// A generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The base model's served name or an adapter name; `None` or "" = base model.
    pub model: Option<String>,
    /// The prompt.
    pub prompt: Prompt,
    /// Sampling and stopping.
    pub sampling: SamplingParams,
}

impl Request {
    /// A base-model request for `prompt` with `sampling`.
    pub fn new(prompt: Prompt, sampling: SamplingParams) -> Self {
        Self {
            model: None,
            prompt,
            sampling,
        }
    }
}

/// Why a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token id or a stop string.
    Stop,
    /// `max_tokens` or `max_model_len` reached.
    Length,
    /// Cancelled by the caller.
    Cancelled,
    /// Failed; see [`Output::error`].
    Error,
}

impl FinishReason {
    /// OpenAI's name ("stop", "length", "cancelled", "error").
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
        }
    }
}

/// Log-probability of a generated token and its top alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The generated token.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The top-n `(token, logprob)` alternatives, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens so far.
    pub completion_tokens: usize,
}

/// A streamed piece of a request's result. Outputs are deltas: concatenating every output's
/// `text` gives the whole completion. The last output of a request has `finish_reason` set.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The request.
    pub id: RequestId,
    /// New text (UTF-8 safe; stop strings are never included).
    pub text: String,
    /// New token ids.
    pub token_ids: Vec<u32>,
    /// Log-probabilities of the new tokens (when requested).
    pub logprobs: Vec<TokenLogprob>,
    /// Set on the final output.
    pub finish_reason: Option<FinishReason>,
    /// The failure, when `finish_reason` is `Error`.
    pub error: Option<Error>,
    /// Counts so far.
    pub usage: Usage,
    /// Logits of the last prompt position (when `return_last_logits` was asked), once.
    pub last_logits: Option<Vec<f32>>,
}

impl Output {
    /// An empty delta for `id`.
    pub fn new(id: RequestId, usage: Usage) -> Self {
        Self {
            id,
            text: String::new(),
            token_ids: Vec::new(),
            logprobs: Vec::new(),
            finish_reason: None,
            error: None,
            usage,
            last_logits: None,
        }
    }
    /// True for the last output of a request.
    pub fn is_final(&self) -> bool {
        self.finish_reason.is_some()
    }
    /// Appends `later` (a subsequent delta of the same request) to this one.
    pub fn merge(&mut self, later: Output) {
        self.text.push_str(&later.text);
        self.token_ids.extend(later.token_ids);
        self.logprobs.extend(later.logprobs);
        self.usage = later.usage;
        if later.finish_reason.is_some() {
            self.finish_reason = later.finish_reason;
            self.error = later.error;
        }
        if later.last_logits.is_some() {
            self.last_logits = later.last_logits;
        }
    }
}
