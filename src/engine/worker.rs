//! The worker thread: owns the model, backend, KV cache and scheduler; runs steps.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::request::{FinishReason, RequestId};
use super::sequence::{Progress, Sequence};
use super::Shared;
use crate::backend::{AttnMeta, Backend, LoraBatch};
use crate::error::{Error, Result};
use crate::kv::BlockAllocator;
use crate::model::llama::{Llama, StepInput};
use crate::sched::{Scheduler, StepLimits};
use crate::tokenizer::Tokenizer;

/// Messages from API threads to the worker.
pub(crate) enum Command {
    Submit(Box<Sequence>),
    Cancel(RequestId),
    Shutdown,
}

pub(crate) struct Worker<B: Backend> {
    pub backend: B,
    pub model: Llama<B>,
    pub kv: B::KvCache,
    pub alloc: BlockAllocator,
    pub sched: Scheduler,
    pub seqs: HashMap<RequestId, Sequence>,
    pub tokenizer: Arc<Tokenizer>,
    pub limits: StepLimits,
    pub rx: Receiver<Command>,
    pub shared: Arc<Shared>,
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
            }
            self.publish_stats();
        }
    }

    /// Applies one command; true on shutdown.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Submit(seq) => {
                let id = seq.id;
                self.seqs.insert(id, *seq);
                self.sched.add(id);
            }
            Command::Cancel(id) => self.finish(id, FinishReason::Cancelled, None),
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

    /// Ends a request: frees its blocks, forgets it and (for cancel/error) sends the final output.
    fn finish(&mut self, id: RequestId, reason: FinishReason, error: Option<Error>) {
        self.sched.remove(id);
        if let Some(mut seq) = self.seqs.remove(&id) {
            // A release error is an allocator invariant violation; the blocks are lost, the
            // request still ends.
            let _ = seq.sched.table.release(&mut self.alloc);
            if reason != FinishReason::Stop && reason != FinishReason::Length {
                seq.end(reason, error);
            }
            self.shared
                .active
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    fn step(&mut self) -> Result<()> {
        let plan = self
            .sched
            .schedule(&mut self.seqs, &mut self.alloc, self.limits, |_| true);
        for id in plan.unfittable {
            let need = self
                .seqs
                .get(&id)
                .map(|s| s.sched.total_tokens)
                .unwrap_or(0);
            let msg = format!(
                "request {id} needs KV cache for {need} tokens but the whole cache holds {} tokens; raise kv_cache_bytes or lower max_tokens",
                self.alloc.num_total() * self.alloc.block_size()
            );
            self.finish(id, FinishReason::Error, Some(Error::invalid_argument(msg)));
        }
        if plan.chunks.is_empty() {
            return Ok(());
        }
        let bs = self.alloc.block_size();
        let rows: usize = plan.chunks.iter().map(|c| c.len).sum();
        let mut tokens = Vec::with_capacity(rows);
        let mut row_seq = Vec::with_capacity(rows);
        let mut row_pos = Vec::with_capacity(rows);
        let mut slots = Vec::with_capacity(rows);
        let mut logit_rows = Vec::new();
        let mut samplers = Vec::new();
        for (k, c) in plan.chunks.iter().enumerate() {
            let seq = self
                .seqs
                .get(&c.id)
                .ok_or_else(|| Error::internal(format!("planned unknown sequence {}", c.id)))?;
            for p in c.start..c.start + c.len {
                let tok = *seq.tokens.get(p).ok_or_else(|| {
                    Error::internal(format!("position {p} past sequence {}", c.id))
                })?;
                let slot = seq.sched.table.slot(p, bs).ok_or_else(|| {
                    Error::internal(format!("no KV slot for position {p} of sequence {}", c.id))
                })?;
                tokens.push(tok);
                row_seq.push(k as u32);
                row_pos.push(p as u32);
                slots.push(slot);
            }
            if c.start + c.len == seq.sched.total_tokens {
                logit_rows.push((tokens.len() - 1) as u32);
                samplers.push(c.id);
            }
        }
        let tables: Vec<&[u32]> = plan
            .chunks
            .iter()
            .map(|c| {
                self.seqs
                    .get(&c.id)
                    .map(|s| s.sched.table.blocks())
                    .unwrap_or(&[])
            })
            .collect();
        let lora = LoraBatch::default();
        let input = StepInput {
            tokens: &tokens,
            meta: AttnMeta {
                row_seq: &row_seq,
                row_pos: &row_pos,
                slot_mapping: &slots,
                block_tables: &tables,
            },
            logit_rows: &logit_rows,
            lora: &lora,
        };
        let logits = self
            .model
            .forward(&self.backend, &mut self.kv, None, &input)?;
        drop(tables);
        for c in &plan.chunks {
            if let Some(seq) = self.seqs.get_mut(&c.id) {
                seq.sched.num_computed += c.len;
                seq.sched.table.advance(c.len);
            }
        }
        let vocab = self.model.config().vocab_size;
        for (k, id) in samplers.into_iter().enumerate() {
            let row = logits
                .get(k * vocab..(k + 1) * vocab)
                .ok_or_else(|| Error::internal("short logits"))?;
            let done = match self.seqs.get_mut(&id) {
                Some(seq) => matches!(seq.advance(row, &self.tokenizer), Progress::Finished),
                None => false,
            };
            if done {
                self.finish(id, FinishReason::Stop, None);
            }
        }
        self.shared
            .steps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn publish_stats(&self) {
        let mut s = self.shared.stats.lock();
        s.running = self.sched.num_running();
        s.waiting = self.sched.num_waiting();
        s.kv_blocks_free = self.alloc.num_free();
        s.kv_blocks_total = self.alloc.num_total();
    }
}
