//! A request inside the worker: its tokens, KV state, sampler and streaming state.

use crossbeam_channel::Sender;

use super::request::{FinishReason, Output, RequestId, TokenLogprob, Usage};
use crate::cache::AdapterKey;
use crate::error::Error;
use crate::sampling::{SampledToken, Sampler, SamplingParams, StopMatcher};
use crate::sched::{SchedSeq, Schedulable};
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

/// One request being served. Owned by the worker thread.
pub(crate) struct Sequence {
    pub id: RequestId,
    /// Prompt followed by generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    pub params: SamplingParams,
    pub sampler: Sampler,
    pub sched: SchedSeq,
    /// Most tokens this request may hold (prompt + completion).
    pub max_len: usize,
    pub eos_ids: Vec<u32>,
    detok: IncrementalDecoder,
    stop: StopMatcher,
    logits_sent: bool,
    out: Sender<Output>,
    /// The adapter generation this request uses (pinned in the host cache until it ends).
    pub adapter: Option<AdapterKey>,
    /// Device slot while running with an adapter.
    pub slot: Option<usize>,
    /// Steps in which this waiting request was refused a device slot (fairness).
    pub held_steps: u32,
}

/// What sampling one token decided.
pub(crate) enum Progress {
    Continue,
    Finished,
}

impl Schedulable for Sequence {
    fn sched(&mut self) -> &mut SchedSeq {
        &mut self.sched
    }
}

/// What a new sequence is made of (see [`Sequence::new`]).
pub(crate) struct SequenceInit {
    pub id: RequestId,
    /// Prompt token ids (non-empty, inside the vocabulary).
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// Seed used when `params` has none.
    pub seed_fallback: u64,
    /// Longest prompt + completion.
    pub max_len: usize,
    /// Token ids that end generation (unless `params.ignore_eos`).
    pub eos_ids: Vec<u32>,
    /// Where outputs go.
    pub out: Sender<Output>,
    /// The pinned host-cache entry of the request's adapter, if any.
    pub adapter: Option<AdapterKey>,
}

impl Sequence {
    pub fn new(init: SequenceInit) -> Self {
        let SequenceInit {
            id,
            prompt,
            params,
            seed_fallback,
            max_len,
            eos_ids,
            out,
            adapter,
        } = init;
        let sampler = Sampler::new(&params, seed_fallback);
        let stop = StopMatcher::new(&params.stop);
        let prompt_len = prompt.len();
        Self {
            id,
            sched: SchedSeq {
                total_tokens: prompt_len,
                ..SchedSeq::default()
            },
            tokens: prompt,
            prompt_len,
            params,
            sampler,
            max_len,
            eos_ids,
            detok: IncrementalDecoder::new(),
            stop,
            logits_sent: false,
            out,
            adapter,
            slot: None,
            held_steps: 0,
        }
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.tokens.len() - self.prompt_len,
        }
    }

    /// Samples the next token from `logits` (this sequence's last row), streams the delta and
    /// says whether the request is finished.
    pub fn advance(&mut self, logits: &[f32], tok: &Tokenizer) -> Progress {
        let mut delta = Output::new(self.id, self.usage());
        if self.params.return_last_logits && !self.logits_sent {
            delta.last_logits = Some(logits.to_vec());
            self.logits_sent = true;
        }
        let SampledToken {
            token,
            logprob,
            top_logprobs,
        } = {
            let prompt_len = self.prompt_len;
            self.sampler.sample(logits, &self.tokens[prompt_len..])
        };
        self.tokens.push(token);
        self.sched.total_tokens = self.tokens.len();
        delta.usage = self.usage();
        delta.token_ids.push(token);
        if self.params.logprobs.is_some() {
            delta.logprobs.push(TokenLogprob {
                token,
                logprob,
                top: top_logprobs,
            });
        }
        let is_stop_token = self.params.stop_token_ids.contains(&token)
            || (!self.params.ignore_eos && self.eos_ids.contains(&token));
        let mut finish = None;
        if is_stop_token {
            finish = Some(FinishReason::Stop);
        } else {
            let text = self.detok.push(tok, token).unwrap_or_default();
            let r = self.stop.push(&text);
            delta.text.push_str(&r.emit);
            if r.stopped {
                finish = Some(FinishReason::Stop);
            }
        }
        let n_gen = self.tokens.len() - self.prompt_len;
        if finish.is_none()
            && (n_gen >= self.params.max_tokens || self.tokens.len() >= self.max_len)
        {
            let tail = self.detok.flush(tok).unwrap_or_default();
            let r = self.stop.push(&tail);
            delta.text.push_str(&r.emit);
            if r.stopped {
                finish = Some(FinishReason::Stop);
            } else {
                delta.text.push_str(&self.stop.finish());
                finish = Some(FinishReason::Length);
            }
        }
        delta.finish_reason = finish;
        let done = finish.is_some();
        // A closed receiver means the caller forgot the request; the worker ends it anyway.
        let _ = self.out.send(delta);
        if done {
            Progress::Finished
        } else {
            Progress::Continue
        }
    }

    /// Sends the terminal output for a request ended by `reason` (cancel or error).
    pub fn end(&self, reason: FinishReason, error: Option<Error>) {
        let mut o = Output::new(self.id, self.usage());
        o.finish_reason = Some(reason);
        o.error = error;
        let _ = self.out.send(o);
    }
}
