//! The worker thread: owns the model, backend, KV cache and scheduler; runs steps.
//!
//! A step (DESIGN.md 1.3) is four jobs: admit (`admit.rs`: scheduling, adapter slots, uploads),
//! build the rows (`batch.rs`), forward, sample. The worker is the only thread that touches the
//! model, the backend's buffers and the sequences.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::batch::{RowUse, StepBatch};
use super::group::ChoiceGroup;
use super::request::{FinishReason, Output, RequestId, TokenLogprob};
use super::sequence::{SeqId, Sequence};
use super::{AdapterRuntime, Shared};
use crate::backend::Backend;
use crate::cache::{DeviceKey, DeviceSlots, LoadState};
use crate::error::{Error, Result};
use crate::kv::BlockAllocator;
use crate::model::llama::Llama;
use crate::sampling::{prompt_logprob, Constraint};
use crate::sched::{Chunk, Scheduler, StepLimits};
use crate::tokenizer::Tokenizer;

/// A request as the worker receives it: its choices' sequences (the first leads: it computes
/// the prompt) and their group.
pub(crate) struct Submission {
    pub group: ChoiceGroup,
    pub seqs: Vec<Sequence>,
}

/// A constraint taken out of its sequence for the step, and the result of its mask
/// computation.
type Masking = (SeqId, Constraint, Result<()>);

/// Messages from API threads to the worker.
pub(crate) enum Command {
    Submit(Box<Submission>),
    Cancel(RequestId),
    /// An adapter load finished (wakes the worker).
    AdaptersChanged,
    Shutdown,
}

pub(crate) struct Worker<B: Backend> {
    pub backend: B,
    pub model: Llama<B>,
    pub kv: B::KvCache,
    pub alloc: BlockAllocator,
    pub sched: Scheduler,
    pub seqs: HashMap<SeqId, Sequence>,
    /// The choices of every request in flight, by request id.
    pub groups: HashMap<RequestId, ChoiceGroup>,
    pub tokenizer: Arc<Tokenizer>,
    pub limits: StepLimits,
    pub rx: Receiver<Command>,
    pub shared: Arc<Shared>,
    pub lora_stack: B::LoraStack,
    pub slots: DeviceSlots<DeviceKey>,
}

impl<B: Backend> Worker<B> {
    /// Runs until shutdown. Returns an error when a step fails; the caller fails every request.
    pub fn run(&mut self) -> Result<()> {
        loop {
            // Block when idle; otherwise take whatever commands are queued.
            if self.sched.is_idle() {
                match self.rx.recv_timeout(std::time::Duration::from_millis(200)) {
                    Ok(cmd) => {
                        if self.handle(cmd) {
                            return Ok(());
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                }
            }
            while let Ok(cmd) = self.rx.try_recv() {
                if self.handle(cmd) {
                    return Ok(());
                }
            }
            if !self.sched.is_idle() {
                self.step()?;
                self.prefetch();
            }
            self.publish_stats();
        }
    }

    /// Applies one command; true on shutdown.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Submit(sub) => {
                let Submission { group, seqs } = *sub;
                let Some(request) = seqs.first().map(|s| s.request) else {
                    return false;
                };
                self.groups.insert(request, group);
                for seq in seqs {
                    let id = seq.id;
                    self.seqs.insert(id, seq);
                    self.sched.add(id);
                }
            }
            Command::Cancel(request) => {
                let mut ids: Vec<SeqId> = self
                    .seqs
                    .values()
                    .filter(|s| s.request == request)
                    .map(|s| s.id)
                    .collect();
                ids.sort_unstable();
                for id in ids {
                    self.finish(id, FinishReason::Cancelled, None);
                }
            }
            Command::AdaptersChanged => {}
            Command::Shutdown => {
                let ids: Vec<_> = self.seqs.keys().copied().collect();
                for id in ids {
                    self.finish(
                        id,
                        FinishReason::Cancelled,
                        Some(Error::new(crate::ErrorCode::Cancelled, "engine shut down")),
                    );
                }
                return true;
            }
        }
        false
    }

    /// Ends sequence `id` by `reason` (cancel or error): its terminal output goes out and its
    /// resources are freed.
    pub(super) fn finish(&mut self, id: SeqId, reason: FinishReason, error: Option<Error>) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            let out = seq.end(reason, error);
            self.retire(id, out);
        }
    }

    /// Ends sequence `id` with its final output `last`: frees its blocks, device slot and
    /// adapter pin, forgets it and sends `last` through its request's group.
    fn retire(&mut self, id: SeqId, last: Output) {
        self.sched.remove(id);
        if let Some(mut seq) = self.seqs.remove(&id) {
            for slot in seq.slots.drain(..) {
                self.slots.release(slot);
            }
            if !seq.adapters.is_empty() {
                let mut host = self.shared.host.lock();
                for a in &seq.adapters {
                    host.release(&a.key);
                }
            }
            // A release error is an allocator invariant violation; the blocks are lost, the
            // request still ends.
            let _ = seq.sched.table.release(&mut self.alloc);
            self.shared
                .active
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            self.shared.drain.lock().record(std::time::Instant::now());
        }
        self.emit(last);
    }

    /// Sends `out` through its request's group, forgetting the group once every choice ended.
    fn emit(&mut self, out: Output) {
        let request = out.id;
        if let Some(g) = self.groups.get_mut(&request) {
            g.emit(out);
            if g.is_over() {
                self.groups.remove(&request);
            }
        }
    }

    /// One step (DESIGN.md 1.3): admit, build the rows and run the model (the output
    /// constraints' masks are computed next to it), then prompt log-probabilities, prompt
    /// sharing between choices, and sampling.
    fn step(&mut self) -> Result<()> {
        let queue = (self.sched.num_running(), self.sched.num_waiting());
        let chunks = self.admit();
        if chunks.is_empty() {
            return Ok(());
        }
        // When admission changed the queue, it is published before the step emits outputs: a
        // client that reads the stats after an output sees the queue as this step left it, not
        // as it was before (steps that only continue running sequences skip it).
        if queue != (self.sched.num_running(), self.sched.num_waiting()) {
            self.publish_stats();
        }
        // The constraints of the sequences that sample this step leave their sequences while
        // their masks are computed on another thread during the forward pass.
        let mut constrained: Vec<Masking> = Vec::new();
        for c in &chunks {
            if let Some(seq) = self.seqs.get_mut(&c.id) {
                if c.start + c.len == seq.sched.total_tokens {
                    if let Some(k) = seq.constraint.take() {
                        constrained.push((c.id, k, Ok(())));
                    }
                }
            }
        }
        let forward = self.forward(&chunks, &mut constrained);
        let mut mask_errors = Vec::new();
        for (id, k, r) in constrained {
            if let Err(e) = r {
                mask_errors.push((id, e));
            }
            if let Some(seq) = self.seqs.get_mut(&id) {
                seq.constraint = Some(k);
            }
        }
        let (logits, uses) = forward?;
        for (id, e) in mask_errors {
            self.finish(id, FinishReason::Error, Some(e));
        }
        let vocab = self.model.config().vocab_size;
        self.prompt_logprobs(&uses, &logits, vocab)?;
        self.share_prompts();
        self.sample(&uses, &logits, vocab)
    }

    /// Builds the step's rows from `chunks`, runs the model while another thread computes the
    /// masks of `constrained` (each gets the result of its mask computation), marks the chunks
    /// computed and records the step in the stats (before any output of the step is sent, so a
    /// caller that sees an output also sees its step counted). Returns the step's logits (one
    /// row of `vocab_size` per use) and what each row is for.
    fn forward(
        &mut self,
        chunks: &[Chunk],
        constrained: &mut [Masking],
    ) -> Result<(Vec<f32>, Vec<RowUse>)> {
        let batch = StepBatch::build(chunks, &self.seqs, self.alloc.block_size())?;
        let (model, backend, kv, lora) =
            (&self.model, &self.backend, &mut self.kv, &self.lora_stack);
        let logits = rayon::in_place_scope(|scope| {
            if !constrained.is_empty() {
                scope.spawn(|_| {
                    for (_, k, r) in constrained.iter_mut() {
                        *r = k.compute_mask();
                    }
                });
            }
            backend.run_step(|| model.forward(backend, kv, Some(lora), &batch.input()))
        })?;
        let rows = batch.rows();
        let uses = batch.uses;
        let bs = self.alloc.block_size();
        for c in chunks {
            if let Some(seq) = self.seqs.get_mut(&c.id) {
                seq.sched.num_computed += c.len;
                seq.sched.table.advance(c.len);
                if self.alloc.caches_prefixes() && bs > 0 {
                    // Full blocks this chunk wrote join the prefix cache. A chunk starting
                    // before the cached blocks' end recomputes after a preemption: its blocks
                    // are new.
                    let from = seq.blocks_cached.min(c.start / bs);
                    let full = seq.sched.num_computed / bs;
                    seq.name_blocks(seq.sched.num_computed, bs);
                    for j in from..full {
                        if let (Some(&h), Some(&b)) =
                            (seq.block_hashes.get(j), seq.sched.table.blocks().get(j))
                        {
                            self.alloc.cache_insert(h, b)?;
                        }
                    }
                    seq.blocks_cached = seq.blocks_cached.max(full);
                }
            }
        }
        self.record_step(rows, chunks.len());
        Ok((logits, uses))
    }

    /// Records the prompt log-probabilities the step's rows computed.
    fn prompt_logprobs(&mut self, uses: &[RowUse], logits: &[f32], vocab: usize) -> Result<()> {
        for (k, u) in uses.iter().enumerate() {
            let RowUse::Prompt(id, p) = *u else { continue };
            let row = logits
                .get(k * vocab..(k + 1) * vocab)
                .ok_or_else(|| Error::internal("short logits"))?;
            if let Some(seq) = self.seqs.get_mut(&id) {
                let (Some(&token), Some(top)) = (seq.tokens.get(p + 1), seq.params.prompt_logprobs)
                else {
                    continue;
                };
                let (logprob, top) = prompt_logprob(row, token, top);
                seq.set_prompt_logprob(
                    p,
                    TokenLogprob {
                        token,
                        logprob,
                        top,
                    },
                );
            }
        }
        Ok(())
    }

    /// Gives the choices waiting for their leader's prompt a share of its KV blocks, once the
    /// leader computed the prompt: every full block before the last prompt position (each choice
    /// computes the rest itself, at least that position, whose logits it samples from). The
    /// prompt log-probabilities are copied too. A leader that ended before computing its prompt
    /// releases the waiting choices to compute their own.
    fn share_prompts(&mut self) {
        let bs = self.alloc.block_size();
        let ready: Vec<RequestId> = self
            .groups
            .iter()
            .filter(|(_, g)| !g.waiting.is_empty())
            .filter(|(_, g)| {
                self.seqs
                    .get(&g.leader)
                    .is_none_or(|l| l.sched.num_computed >= l.prompt_len)
            })
            .map(|(&r, _)| r)
            .collect();
        for r in ready {
            let Some(g) = self.groups.get_mut(&r) else {
                continue;
            };
            let waiting = std::mem::take(&mut g.waiting);
            let leader = g.leader;
            let Some(l) = self.seqs.get(&leader) else {
                continue;
            };
            let share = (l.prompt_len - 1).checked_div(bs).unwrap_or(0) * bs;
            let logprobs = l.prompt_logprobs.clone();
            let table = (share > 0).then(|| l.sched.table.clone());
            for id in waiting {
                let Some(seq) = self.seqs.get_mut(&id) else {
                    continue;
                };
                if seq.sched.num_computed != 0 || !seq.sched.table.blocks().is_empty() {
                    continue;
                }
                if let Some(t) = &table {
                    // Only fails on a bookkeeping bug; the choice then computes its own prompt.
                    if let Ok(shared) = t.share_prefix(share, &mut self.alloc) {
                        seq.sched.table = shared;
                        seq.sched.num_computed = share;
                        self.shared.stats.lock().prompt_tokens_shared += share as u64;
                    }
                }
                for (p, lp) in logprobs.iter().enumerate() {
                    if let Some(lp) = lp {
                        seq.set_prompt_logprob(p, lp.clone());
                    }
                }
            }
        }
    }

    /// The choices that wait for their leader's prompt (held out of admission).
    pub(super) fn waiting_for_prompt(&self) -> std::collections::HashSet<SeqId> {
        self.groups
            .values()
            .filter(|g| self.seqs.contains_key(&g.leader))
            .flat_map(|g| g.waiting.iter().copied())
            .collect()
    }

    /// Samples one token for each sampling row of `logits`, streams it and ends the choices
    /// that finished.
    fn sample(&mut self, uses: &[RowUse], logits: &[f32], vocab: usize) -> Result<()> {
        for (k, u) in uses.iter().enumerate() {
            let RowUse::Sample(id) = *u else { continue };
            let row = logits
                .get(k * vocab..(k + 1) * vocab)
                .ok_or_else(|| Error::internal("short logits"))?;
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            let (delta, done) = seq.advance(row, &self.tokenizer);
            if done {
                self.retire(id, delta);
            } else {
                self.emit(delta);
            }
        }
        Ok(())
    }

    /// Counts a step of `rows` token rows from `seqs` sequences.
    fn record_step(&self, rows: usize, seqs: usize) {
        let mut s = self.shared.stats.lock();
        s.last_step_rows = rows;
        s.last_step_seqs = seqs;
        s.max_step_rows = s.max_step_rows.max(rows);
        s.max_step_seqs = s.max_step_seqs.max(seqs);
        // Under the stats lock, so `Engine::stats` sees the count and the row numbers together.
        self.shared
            .steps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn publish_stats(&self) {
        let mut rt: HashMap<String, AdapterRuntime> = HashMap::new();
        for id in self.sched.running_ids() {
            for a in self.seqs.get(&id).map_or(&[][..], |s| &s.adapters) {
                rt.entry(a.key.0.clone()).or_default().running += 1;
            }
        }
        for id in self.sched.waiting_ids() {
            for a in self.seqs.get(&id).map_or(&[][..], |s| &s.adapters) {
                rt.entry(a.key.0.clone()).or_default().queued += 1;
            }
        }
        // Slots hold content hashes: every cached adapter with that content shows the slot.
        let slot_of: HashMap<&DeviceKey, usize> = self
            .slots
            .occupied()
            .map(|(slot, key, _)| (key, slot))
            .collect();
        if !slot_of.is_empty() {
            for ((name, _), e) in self.shared.host.lock().iter() {
                if let LoadState::Ready(a) = &e.state {
                    if let Some(&slot) = slot_of.get(&a.generation) {
                        rt.entry(name.clone()).or_default().device_slot = Some(slot);
                    }
                }
            }
        }
        *self.shared.adapter_runtime.lock() = rt;
        let mut s = self.shared.stats.lock();
        s.running = self.sched.num_running();
        s.waiting = self.sched.num_waiting();
        s.kv_blocks_free = self.alloc.num_free();
        s.kv_blocks_total = self.alloc.num_total();
        s.prefix_cache_blocks = self.alloc.num_cached();
        s.device_uploads = self.slots.uploads();
    }
}
