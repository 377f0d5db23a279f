//! Per-request sampling parameters and their validation.

use crate::error::{Error, Result};

/// The largest `logprobs` value a request may ask for (OpenAI's limit).
pub const MAX_LOGPROBS: usize = 20;

/// How one request's tokens are chosen and when generation stops.
///
/// Plain data: cheap to clone, `Send + Sync`. Call [`SamplingParams::validate`] before using
/// a value that came from a caller; [`crate::sampling::Sampler`] tolerates invalid values
/// (clamping them) but does not report them.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Maximum number of tokens to generate (≥ 1). Default 16.
    pub max_tokens: usize,
    /// Softmax temperature (≥ 0). `0` means greedy (argmax). Default 1.0.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose probability sums to
    /// at least `top_p`, in (0, 1]. `1` disables it. Default 1.0.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens. `0` disables it; `1` is greedy. Default 0.
    pub top_k: usize,
    /// Drop tokens whose probability is below `min_p` times the most likely token's
    /// probability, in [0, 1]. `0` disables it. Default 0.
    pub min_p: f32,
    /// Seed of the request's random generator. `None` uses an engine-chosen seed.
    pub seed: Option<u64>,
    /// Stop strings: generation ends before the first occurrence of any of them, which is not
    /// part of the output. Each must be non-empty.
    pub stop: Vec<String>,
    /// Token ids that end generation (in addition to EOS unless `ignore_eos`).
    pub stop_token_ids: Vec<u32>,
    /// Keep generating after the model's end-of-sequence token.
    pub ignore_eos: bool,
    /// Return this many most likely alternatives (with log-probabilities) per generated token,
    /// at most [`MAX_LOGPROBS`]. `None` returns none.
    pub logprobs: Option<usize>,
    /// Multiplicative repetition penalty (> 0, `1` = off) over tokens already generated:
    /// a positive logit is divided by it, a negative one multiplied. Default 1.0.
    pub repetition_penalty: f32,
    /// OpenAI presence penalty in [-2, 2]: subtracted once from the logit of every token that was
    /// generated at least once. Default 0.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty in [-2, 2]: subtracted from a token's logit once per time it was
    /// generated. Default 0.
    pub frequency_penalty: f32,
    /// Return the full logits row of the last prompt position (for conformance checks).
    pub return_last_logits: bool,
    /// Added to the logits of these token ids before the penalties and the sampling (OpenAI
    /// `logit_bias`): each bias in [-100, 100], each id at most once and inside the vocabulary
    /// (checked at submission). -100 in effect bans a token, 100 in effect forces it.
    pub logit_bias: Vec<(u32, f32)>,
    /// Log-probabilities of the prompt tokens (vLLM `prompt_logprobs`, OpenAI `echo` with
    /// `logprobs`): each prompt token after the first gets its log-probability given the tokens
    /// before it and this many most likely alternatives (at most [`MAX_LOGPROBS`]), computed in
    /// the prefill pass. `None` computes none.
    pub prompt_logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: 16,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            return_last_logits: false,
            logit_bias: Vec::new(),
            prompt_logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Checks every field's range.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` naming the first offending field and its value: `max_tokens` 0,
    /// `temperature` negative or not finite, `top_p` outside (0, 1], `min_p` outside [0, 1],
    /// `logprobs` above [`MAX_LOGPROBS`], `repetition_penalty` ≤ 0 or not finite,
    /// `presence_penalty`/`frequency_penalty` outside [-2, 2], an empty `stop` string,
    /// `prompt_logprobs` above [`MAX_LOGPROBS`], a `logit_bias` outside [-100, 100] or a token id
    /// biased twice. Token ids are checked against the vocabulary by the engine.
    pub fn validate(&self) -> Result<()> {
        if self.max_tokens == 0 {
            return Err(bad("max_tokens", "0", "must be at least 1"));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(bad(
                "temperature",
                self.temperature,
                "must be a finite number >= 0",
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(bad("top_p", self.top_p, "must be in (0, 1]"));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return Err(bad("min_p", self.min_p, "must be in [0, 1]"));
        }
        if let Some(n) = self.logprobs {
            if n > MAX_LOGPROBS {
                return Err(bad(
                    "logprobs",
                    n,
                    &format!("must be at most {MAX_LOGPROBS}"),
                ));
            }
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(bad(
                "repetition_penalty",
                self.repetition_penalty,
                "must be a finite number > 0",
            ));
        }
        for (name, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&value) {
                return Err(bad(name, value, "must be in [-2, 2]"));
            }
        }
        if let Some(n) = self.prompt_logprobs {
            if n > MAX_LOGPROBS {
                return Err(bad(
                    "prompt_logprobs",
                    n,
                    &format!("must be at most {MAX_LOGPROBS}"),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for &(id, b) in &self.logit_bias {
            if !(b.is_finite() && (-100.0..=100.0).contains(&b)) {
                return Err(bad(
                    &format!("logit_bias[{id}]"),
                    b,
                    "must be in [-100, 100]",
                ));
            }
            if !seen.insert(id) {
                return Err(bad(&format!("logit_bias[{id}]"), b, "token id given twice"));
            }
        }
        if let Some(i) = self.stop.iter().position(String::is_empty) {
            return Err(bad(&format!("stop[{i}]"), "\"\"", "must not be empty"));
        }
        Ok(())
    }
}

fn bad(field: &str, value: impl std::fmt::Display, rule: &str) -> Error {
    Error::invalid_argument(format!("sampling parameter {field} = {value}: {rule}"))
}
