//! The worker thread: owns the model, backend, KV cache and scheduler; runs steps.
//!
//! A step (DESIGN.md 1.3) is four jobs: admit (`admit.rs`: scheduling, adapter slots, uploads),
//! build the rows (`batch.rs`), forward, sample. The worker is the only thread that touches the
//! model, the backend's buffers and the sequences.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::batch::StepBatch;
use super::request::{FinishReason, RequestId};
use super::sequence::{Progress, Sequence};
use super::{AdapterRuntime, Shared};
use crate::backend::Backend;
use crate::cache::DeviceSlots;
use crate::error::{Error, Result};
use crate::kv::BlockAllocator;
use crate::model::llama::Llama;
use crate::sched::{Chunk, Scheduler, StepLimits};
use crate::tokenizer::Tokenizer;

/// Messages from API threads to the worker.
pub(crate) enum Command {
    Submit(Box<Sequence>),
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
    pub seqs: HashMap<RequestId, Sequence>,
    pub tokenizer: Arc<Tokenizer>,
    pub limits: StepLimits,
    pub rx: Receiver<Command>,
    pub shared: Arc<Shared>,
    pub lora_stack: B::LoraStack,
    pub slots: DeviceSlots,
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

    /// Ends a request: frees its blocks, forgets it and (for cancel/error) sends the final output.
    pub(super) fn finish(&mut self, id: RequestId, reason: FinishReason, error: Option<Error>) {
        self.sched.remove(id);
        if let Some(mut seq) = self.seqs.remove(&id) {
            if let Some(slot) = seq.slot.take() {
                self.slots.release(slot);
            }
            if let Some(key) = &seq.adapter {
                self.shared.host.lock().release(key);
            }
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

    /// One step (DESIGN.md 1.3): admit, build the rows and run the model, sample.
    fn step(&mut self) -> Result<()> {
        let chunks = self.admit();
        if chunks.is_empty() {
            return Ok(());
        }
        let (logits, samplers) = self.forward(&chunks)?;
        self.sample(&samplers, &logits)
    }

    /// Builds the step's rows from `chunks`, runs the model, marks the chunks computed and
    /// records the step in the stats (before any output of the step is sent, so a caller that
    /// sees an output also sees its step counted). Returns the logits of the sampling sequences
    /// (one row of `vocab_size` each) and those sequences, in the same order.
    fn forward(&mut self, chunks: &[Chunk]) -> Result<(Vec<f32>, Vec<RequestId>)> {
        let batch = StepBatch::build(chunks, &self.seqs, self.alloc.block_size())?;
        let logits = self.model.forward(
            &self.backend,
            &mut self.kv,
            Some(&self.lora_stack),
            &batch.input(),
        )?;
        let rows = batch.rows();
        let samplers = batch.samplers;
        for c in chunks {
            if let Some(seq) = self.seqs.get_mut(&c.id) {
                seq.sched.num_computed += c.len;
                seq.sched.table.advance(c.len);
            }
        }
        self.record_step(rows, chunks.len());
        Ok((logits, samplers))
    }

    /// Samples one token for each of `samplers` from its row of `logits`, streams it and ends
    /// the requests that finished.
    fn sample(&mut self, samplers: &[RequestId], logits: &[f32]) -> Result<()> {
        let vocab = self.model.config().vocab_size;
        for (k, &id) in samplers.iter().enumerate() {
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
            if let Some(k) = self.seqs.get(&id).and_then(|s| s.adapter.as_ref()) {
                rt.entry(k.0.clone()).or_default().running += 1;
            }
        }
        for id in self.sched.waiting_ids() {
            if let Some(k) = self.seqs.get(&id).and_then(|s| s.adapter.as_ref()) {
                rt.entry(k.0.clone()).or_default().queued += 1;
            }
        }
        for (slot, key, _) in self.slots.occupied() {
            rt.entry(key.0.clone()).or_default().device_slot = Some(slot);
        }
        *self.shared.adapter_runtime.lock() = rt;
        let mut s = self.shared.stats.lock();
        s.running = self.sched.num_running();
        s.waiting = self.sched.num_waiting();
        s.kv_blocks_free = self.alloc.num_free();
        s.kv_blocks_total = self.alloc.num_total();
    }
}
