//! One choice of a request inside the worker: its tokens, KV state, sampler, output constraint
//! and streaming state.

use super::request::{FinishReason, Output, PromptOutput, RequestId, TokenLogprob, Usage};
use crate::cache::AdapterKey;
use crate::error::Error;
use crate::kv::{block_hash, BlockAllocator, BlockHash};
use crate::sampling::{Constraint, SampledToken, Sampler, SamplingParams, StopMatcher};
use crate::sched::{SchedSeq, Schedulable};
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

/// Id of one sequence (a choice of a request): the scheduler's key. Choice 0 of a request has
/// the request's id; the other choices have ids of their own, never given to a request.
pub(crate) type SeqId = u64;

/// One adapter a sequence runs with: its generation (pinned in the host cache until the
/// sequence ends) and its mixture scale (1 for a request that names one adapter by `model`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AdapterUse {
    pub key: AdapterKey,
    pub scale: f32,
}

/// One choice being served. Owned by the worker thread.
pub(crate) struct Sequence {
    pub id: SeqId,
    /// The request this choice belongs to (the id its outputs carry).
    pub request: RequestId,
    /// The choice's index among the request's sequences.
    pub index: usize,
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
    /// The prompt for the first output (echo / prompt log-probabilities), until it is sent.
    pub prompt_out: Option<PromptOutput>,
    /// Prompt log-probabilities by position (`[p]` = token `p + 1`), while they are computed.
    pub prompt_logprobs: Vec<Option<TokenLogprob>>,
    /// Entries of `prompt_logprobs` still `None`.
    prompt_logprobs_missing: usize,
    /// The output constraint, if the request has one. Taken out by the worker while it
    /// computes the mask next to the forward pass.
    pub constraint: Option<Constraint>,
    cumulative_logprob: f64,
    /// Prefix-cache names of the sequence's full blocks so far (see [`crate::kv::prefix`]).
    pub block_hashes: Vec<BlockHash>,
    /// Leading blocks of the table known to be in the prefix cache (inserted or hit).
    pub blocks_cached: usize,
    /// The adapters this request runs with (none: the base model; several: a mixture).
    pub adapters: Vec<AdapterUse>,
    /// Device slots of `adapters`, in the same order, while running (empty while waiting).
    pub slots: Vec<usize>,
    /// Steps in which this waiting request was refused a device slot (fairness).
    pub held_steps: u32,
}

impl Schedulable for Sequence {
    fn sched(&mut self) -> &mut SchedSeq {
        &mut self.sched
    }

    /// The first adapter's name: a mixture is served for the tenant of its first adapter.
    fn tenant(&self) -> Option<&str> {
        self.adapters.first().map(|a| a.key.0.as_str())
    }

    /// Takes the prefix-cache blocks named like this sequence's first blocks, up to (not
    /// including) the block of its last known token.
    fn reuse_prefix(&mut self, alloc: &mut BlockAllocator) -> usize {
        // Prompt log-probabilities come from the prefill's own rows: a sequence still missing
        // some computes its whole prompt.
        if !alloc.caches_prefixes() || self.prompt_logprobs_missing > 0 {
            return 0;
        }
        let bs = alloc.block_size();
        let total = self.sched.total_tokens;
        self.name_blocks(total.saturating_sub(1), bs);
        let usable = total.saturating_sub(1).checked_div(bs).unwrap_or(0);
        for h in self.block_hashes.iter().take(usable) {
            let Some(b) = alloc.cache_lookup(h) else {
                break;
            };
            if self.sched.table.push_full_block(b, bs).is_err() {
                // Cannot happen on an empty table filled block by block; give it back.
                let _ = alloc.free(b);
                break;
            }
        }
        self.sched.num_computed = self.sched.table.num_tokens();
        self.blocks_cached = self.sched.table.blocks().len();
        self.sched.num_computed
    }
}

/// What a new sequence is made of (see [`Sequence::new`]).
pub(crate) struct SequenceInit {
    pub id: SeqId,
    pub request: RequestId,
    pub index: usize,
    /// Prompt token ids (non-empty, inside the vocabulary).
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// Seed used when `params` has none.
    pub seed_fallback: u64,
    /// Longest prompt + completion.
    pub max_len: usize,
    /// Token ids that end generation (unless `params.ignore_eos`).
    pub eos_ids: Vec<u32>,
    /// The request's adapters (each pinned in the host cache for this sequence).
    pub adapters: Vec<AdapterUse>,
    /// The prompt to send with the first output (echo / prompt log-probabilities).
    pub prompt_out: Option<PromptOutput>,
    pub constraint: Option<Constraint>,
}

impl Sequence {
    pub fn new(init: SequenceInit) -> Self {
        let SequenceInit {
            id,
            request,
            index,
            prompt,
            params,
            seed_fallback,
            max_len,
            eos_ids,
            adapters,
            prompt_out,
            constraint,
        } = init;
        let sampler = Sampler::with_stream(&params, seed_fallback, index as u64);
        let stop = StopMatcher::new(&params.stop);
        let prompt_len = prompt.len();
        let prompt_logprobs = if params.prompt_logprobs.is_some() {
            vec![None; prompt_len.saturating_sub(1)]
        } else {
            Vec::new()
        };
        Self {
            id,
            request,
            index,
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
            prompt_out,
            prompt_logprobs_missing: prompt_logprobs.len(),
            prompt_logprobs,
            constraint,
            cumulative_logprob: 0.0,
            block_hashes: Vec::new(),
            blocks_cached: 0,
            adapters,
            slots: Vec::new(),
            held_steps: 0,
        }
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.tokens.len() - self.prompt_len,
        }
    }

    /// Names the full blocks of the first `upto` tokens that have no name yet (see
    /// [`crate::kv::prefix`]): block `j` covers tokens `j*block_size..(j+1)*block_size` computed
    /// by the base model or this sequence's adapter generations and mixture scales.
    pub fn name_blocks(&mut self, upto: usize, block_size: usize) {
        if block_size == 0 {
            return;
        }
        let full = upto.min(self.tokens.len()) / block_size;
        if self.block_hashes.len() >= full {
            // Called for every running sequence each step; most steps fill no block.
            return;
        }
        let owner: Vec<(&str, u64, f32)> = self
            .adapters
            .iter()
            .map(|a| (a.key.0.as_str(), a.key.1, a.scale))
            .collect();
        while self.block_hashes.len() < full {
            let j = self.block_hashes.len();
            let toks = &self.tokens[j * block_size..(j + 1) * block_size];
            let h = block_hash(self.block_hashes.last(), &owner, toks);
            self.block_hashes.push(h);
        }
    }

    /// An empty delta of this choice.
    fn delta(&self) -> Output {
        let mut o = Output::new(self.request, self.usage());
        o.index = self.index;
        o.cumulative_logprob = self.cumulative_logprob;
        o
    }

    /// True while prompt log-probabilities are wanted and position `p`'s is missing (`p` <
    /// `prompt_len - 1`: the row at `p` predicts token `p + 1`).
    pub fn wants_prompt_logprob(&self, p: usize) -> bool {
        self.prompt_logprobs.get(p).is_some_and(Option::is_none)
    }

    /// Records the log-probability of prompt token `p + 1`; once every one is known they join
    /// the prompt of the first output.
    pub fn set_prompt_logprob(&mut self, p: usize, lp: TokenLogprob) {
        if let Some(slot) = self.prompt_logprobs.get_mut(p) {
            if slot.is_none() {
                self.prompt_logprobs_missing -= 1;
            }
            *slot = Some(lp);
        }
        if self.prompt_logprobs_missing == 0 && !self.prompt_logprobs.is_empty() {
            if let Some(out) = &mut self.prompt_out {
                if out.logprobs.is_empty() {
                    out.logprobs = self.prompt_logprobs.iter().flatten().cloned().collect();
                }
            }
        }
    }

    /// Samples the next token from `logits` (this sequence's last row) within the constraint's
    /// mask (computed by the worker), and returns the delta to stream and whether the choice
    /// ended. A constraint that refuses the sampled token ends the choice with an error.
    pub fn advance(&mut self, logits: &[f32], tok: &Tokenizer) -> (Output, bool) {
        let mut delta = self.delta();
        if self.params.return_last_logits && !self.logits_sent {
            delta.last_logits = Some(logits.to_vec());
            self.logits_sent = true;
        }
        delta.prompt = self.prompt_out.take();
        let SampledToken {
            token,
            logprob,
            top_logprobs,
        } = {
            let prompt_len = self.prompt_len;
            let mask = self.constraint.as_ref().map(Constraint::mask);
            self.sampler
                .sample_masked(logits, &self.tokens[prompt_len..], mask)
        };
        self.tokens.push(token);
        self.sched.total_tokens = self.tokens.len();
        self.cumulative_logprob += f64::from(logprob);
        delta.cumulative_logprob = self.cumulative_logprob;
        delta.usage = self.usage();
        delta.token_ids.push(token);
        if self.params.logprobs.is_some() {
            delta.logprobs.push(TokenLogprob {
                token,
                logprob,
                top: top_logprobs,
            });
        }
        let mut grammar_done = false;
        if let Some(c) = &mut self.constraint {
            if let Err(e) = c.commit(token) {
                delta.finish_reason = Some(FinishReason::Error);
                delta.error = Some(e);
                return (delta, true);
            }
            grammar_done = c.is_finished();
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
        let length = n_gen >= self.params.max_tokens || self.tokens.len() >= self.max_len;
        if finish.is_none() && (grammar_done || length) {
            let tail = self.detok.flush(tok).unwrap_or_default();
            let r = self.stop.push(&tail);
            delta.text.push_str(&r.emit);
            if r.stopped || grammar_done {
                if !r.stopped {
                    delta.text.push_str(&self.stop.finish());
                }
                finish = Some(FinishReason::Stop);
            } else {
                delta.text.push_str(&self.stop.finish());
                finish = Some(FinishReason::Length);
            }
        }
        delta.finish_reason = finish;
        (delta, finish.is_some())
    }

    /// The terminal output of a choice ended by `reason` (cancel or error).
    pub fn end(&mut self, reason: FinishReason, error: Option<Error>) -> Output {
        let mut o = self.delta();
        o.prompt = self.prompt_out.take();
        o.finish_reason = Some(reason);
        o.error = error;
        o
    }
}
