//! Requests and outputs of the Rust API.

use crate::error::Error;
use crate::sampling::{ResponseFormat, SamplingParams};
use crate::tokenizer::ChatMessage;

/// Request id (never 0).
pub type RequestId = u64;

/// What to complete. The default is an empty token list (refused at submission).
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// UTF-8 text, tokenised with the model's tokenizer (BOS added when the model wants it).
    Text(String),
    /// Token ids, used as given.
    Tokens(Vec<u32>),
    /// Chat messages, rendered with the model's chat template (generation prompt added).
    Chat(Vec<ChatMessage>),
}

impl Default for Prompt {
    fn default() -> Self {
        Prompt::Tokens(Vec::new())
    }
}

/// The most choices (`n`, `best_of`) one request may ask for.
pub const MAX_CHOICES: usize = 64;

/// One adapter of a mixture ([`Request::adapters`]): its name and the weight of its delta.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterMix {
    /// An adapter name of the PEFT sources.
    pub name: String,
    /// Its scale sᵢ in `W + Σ sᵢ·Bᵢ·Aᵢ` (on top of the adapter's own `alpha / r`); finite.
    pub scale: f32,
}

/// A generation request.
///
/// Build one with [`Request::new`] or a struct literal ending in `..Request::default()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The base model's served name or an adapter name; `None` or "" = base model.
    pub model: Option<String>,
    /// The prompt.
    pub prompt: Prompt,
    /// Sampling and stopping (the same for every choice).
    pub sampling: SamplingParams,
    /// Choices returned (OpenAI `n`), 1..=[`MAX_CHOICES`]. The choices share the prompt's KV
    /// blocks (the prompt is computed once), run as separate rows of the same steps and each
    /// draws from its own random stream: choice `i` uses stream `i` of the request's seed, so
    /// choice 0 is what the same request with `n = 1` gives. Outputs carry the choice's
    /// [`Output::index`]. Default 1.
    pub n: usize,
    /// Choices generated (OpenAI `best_of`, ≥ `n`, ≤ [`MAX_CHOICES`]); the `n` with the highest
    /// mean token log-probability are returned, each as one output (nothing is streamed before
    /// all have finished). `None` = `n`.
    pub best_of: Option<usize>,
    /// Output constraint (JSON object, JSON schema, regex, choice, grammar). Default free text.
    pub response_format: ResponseFormat,
    /// Each choice's first output carries the prompt ([`Output::prompt`]), as OpenAI's `echo`.
    pub echo: bool,
    /// An adapter mixture: the request runs on `W + Σ sᵢ·Bᵢ·Aᵢ` over these adapters (1 to
    /// [`crate::backend::MAX_MIX`], distinct names, each within the engine's device slots), in
    /// the same mixed batch as every other request. Empty (the default): `model` alone says the
    /// adapter. With a mixture, `model` must be empty or the base model's name.
    pub adapters: Vec<AdapterMix>,
}

impl Default for Request {
    fn default() -> Self {
        Self {
            model: None,
            prompt: Prompt::default(),
            sampling: SamplingParams::default(),
            n: 1,
            best_of: None,
            response_format: ResponseFormat::Text,
            echo: false,
            adapters: Vec::new(),
        }
    }
}

impl Request {
    /// A base-model request for `prompt` with `sampling` (one choice, free text).
    pub fn new(prompt: Prompt, sampling: SamplingParams) -> Self {
        Self {
            prompt,
            sampling,
            ..Self::default()
        }
    }

    /// Sequences the engine runs for this request: `best_of`, or `n`.
    pub fn num_sequences(&self) -> usize {
        self.best_of.unwrap_or(self.n).max(self.n)
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

/// The prompt as a choice's first output carries it (when the request asked for `echo` or
/// `prompt_logprobs`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PromptOutput {
    /// The prompt text: the request's own text for a text prompt, otherwise the prompt tokens
    /// decoded (special tokens included).
    pub text: String,
    /// The prompt token ids.
    pub token_ids: Vec<u32>,
    /// With `prompt_logprobs`: one entry per prompt token after the first (`token_ids[1..]`),
    /// the token's log-probability given the tokens before it and the most likely alternatives.
    /// Empty otherwise.
    pub logprobs: Vec<TokenLogprob>,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens so far.
    pub completion_tokens: usize,
}

/// A streamed piece of one choice of a request's result. Outputs are deltas: concatenating
/// every output's `text` of one [`Output::index`] gives that choice's completion. The last
/// output of a choice has `finish_reason` set; the request's last output (every choice ended)
/// has `done` set as well. With `n = 1` the two coincide.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The request.
    pub id: RequestId,
    /// The choice, `0..n`.
    pub index: usize,
    /// The request's last output: every choice has ended and the engine forgets the id.
    pub done: bool,
    /// The prompt (text, ids and prompt log-probabilities), on each choice's first output when
    /// the request asked for `echo` or `prompt_logprobs`.
    pub prompt: Option<PromptOutput>,
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
    /// Counts so far, of this choice (prompt tokens and its generated tokens).
    pub usage: Usage,
    /// Sum of the log-probabilities of this choice's generated tokens so far (under the
    /// distribution `logprobs` reports), whether or not `logprobs` was asked for.
    pub cumulative_logprob: f64,
    /// Logits of the last prompt position (when `return_last_logits` was asked), once.
    pub last_logits: Option<Vec<f32>>,
}

impl Output {
    /// An empty delta for `id`.
    pub fn new(id: RequestId, usage: Usage) -> Self {
        Self {
            id,
            index: 0,
            done: false,
            prompt: None,
            cumulative_logprob: 0.0,
            text: String::new(),
            token_ids: Vec::new(),
            logprobs: Vec::new(),
            finish_reason: None,
            error: None,
            usage,
            last_logits: None,
        }
    }
    /// True for the last output of a choice (`finish_reason` set).
    pub fn is_final(&self) -> bool {
        self.finish_reason.is_some()
    }
    /// Appends `later` (a subsequent delta of the same request and choice) to this one.
    pub fn merge(&mut self, later: Output) {
        self.done |= later.done;
        if self.prompt.is_none() {
            self.prompt = later.prompt;
        }
        self.cumulative_logprob = later.cumulative_logprob;
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
