//! The worker thread: owns the model, backend, KV cache and scheduler; runs steps.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::request::{FinishReason, RequestId};
use super::sequence::{Progress, Sequence};
use super::{AdapterRuntime, Shared};
use crate::backend::{AttnMeta, Backend, LoraBatch};
use crate::cache::{AdapterKey, DeviceSlots, LoadState};
use crate::error::{Error, Result};
use crate::kv::BlockAllocator;
use crate::model::llama::{Llama, StepInput};
use crate::sched::{Scheduler, StepLimits};
use crate::tokenizer::Tokenizer;

/// Messages from API threads to the worker.
pub(crate) enum Command {
    Submit(Box<Sequence>),
    Cancel(RequestId),
    /// An adapter load finished (wakes the worker).
    AdaptersChanged,
    Shutdown,
}

/// See [`Worker::admission_view`].
#[derive(Default)]
struct AdmissionView {
    adapters: HashMap<RequestId, Option<AdapterKey>>,
    failed: Vec<(RequestId, Error)>,
    barrier: Option<AdapterKey>,
}

/// Steps a waiting adapter request may be passed over before admission becomes strictly FIFO
/// behind it (so a hot adapter cannot starve the others).
const FAIR_WAIT_STEPS: u32 = 32;

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
    fn finish(&mut self, id: RequestId, reason: FinishReason, error: Option<Error>) {
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

    /// The adapter state of every waiting adapter request: `Some(key)` when its adapter is loaded,
    /// `None` while it loads (base requests are absent); the requests whose load failed, with the
    /// error; and the fairness barrier: the adapter of the oldest waiting request that has been
    /// refused a device slot for `FAIR_WAIT_STEPS` steps. While a barrier stands, no other
    /// adapter's request is admitted, so slots drain to it (base requests need no slot and are
    /// still admitted).
    fn admission_view(&self) -> AdmissionView {
        let mut view = AdmissionView::default();
        let host = self.shared.host.lock();
        for id in self.sched.waiting_ids() {
            let Some(seq) = self.seqs.get(&id) else {
                continue;
            };
            let Some(key) = &seq.adapter else { continue };
            if view.barrier.is_none() && seq.held_steps >= FAIR_WAIT_STEPS {
                view.barrier = Some(key.clone());
            }
            match host.get(key).map(|e| &e.state) {
                Some(LoadState::Ready(_)) => {
                    view.adapters.insert(id, Some(key.clone()));
                }
                Some(LoadState::Loading) => {
                    view.adapters.insert(id, None);
                }
                Some(LoadState::Failed(e)) => view.failed.push((id, e.clone())),
                None => view.failed.push((
                    id,
                    Error::internal(format!(
                        "adapter {} left the host cache while pinned",
                        key.0
                    )),
                )),
            }
        }
        view
    }

    fn step(&mut self) -> Result<()> {
        let AdmissionView {
            adapters,
            failed,
            barrier,
        } = self.admission_view();
        for (id, err) in failed {
            self.finish(id, FinishReason::Error, Some(err));
        }
        let mut acquired: Vec<(RequestId, usize, bool)> = Vec::new();
        let mut refused_slot: Vec<RequestId> = Vec::new();
        let slots = &mut self.slots;
        let mut plan = self
            .sched
            .schedule(&mut self.seqs, &mut self.alloc, self.limits, |id| {
                let key = match adapters.get(&id) {
                    None => return true,
                    Some(None) => return false,
                    Some(Some(key)) => key,
                };
                if barrier.as_ref().is_some_and(|b| b != key) {
                    return false;
                }
                match slots.acquire(key) {
                    Some((slot, upload)) => {
                        acquired.push((id, slot, upload));
                        true
                    }
                    None => {
                        refused_slot.push(id);
                        false
                    }
                }
            });
        let admitted: std::collections::HashSet<RequestId> =
            plan.chunks.iter().map(|c| c.id).collect();
        for (id, slot, upload) in acquired {
            if !admitted.contains(&id) {
                self.slots.release(slot);
                if upload {
                    self.slots.evict(slot);
                }
                continue;
            }
            if upload {
                if let Err(e) = self.upload(id, slot) {
                    self.slots.release(slot);
                    self.slots.evict(slot);
                    self.finish(id, FinishReason::Error, Some(e));
                    plan.chunks.retain(|c| c.id != id);
                    continue;
                }
            }
            if let Some(seq) = self.seqs.get_mut(&id) {
                seq.slot = Some(slot);
            }
        }
        for id in &plan.preempted {
            if let Some(seq) = self.seqs.get_mut(id) {
                if let Some(slot) = seq.slot.take() {
                    self.slots.release(slot);
                }
            }
        }
        for id in refused_slot {
            if let Some(seq) = self.seqs.get_mut(&id) {
                seq.held_steps = seq.held_steps.saturating_add(1);
            }
        }
        for c in &plan.chunks {
            if let Some(seq) = self.seqs.get_mut(&c.id) {
                seq.held_steps = 0;
            }
        }
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
        let mut lora = LoraBatch::default();
        if plan
            .chunks
            .iter()
            .any(|c| self.seqs.get(&c.id).is_some_and(|s| s.slot.is_some()))
        {
            lora.token_slot.reserve(rows);
            for c in &plan.chunks {
                let slot = self
                    .seqs
                    .get(&c.id)
                    .and_then(|s| s.slot)
                    .map(|s| s as i32)
                    .unwrap_or(-1);
                lora.token_slot.extend(std::iter::repeat_n(slot, c.len));
            }
        }
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
        let logits =
            self.model
                .forward(&self.backend, &mut self.kv, Some(&self.lora_stack), &input)?;
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

    /// Uploads the adapter of request `id` into device slot `slot`.
    fn upload(&mut self, id: RequestId, slot: usize) -> Result<()> {
        let key = self
            .seqs
            .get(&id)
            .and_then(|s| s.adapter.clone())
            .ok_or_else(|| Error::internal("no adapter"))?;
        let adapter = match self.shared.host.lock().get(&key).map(|e| e.state.clone()) {
            Some(LoadState::Ready(a)) => a,
            _ => return Err(Error::internal(format!("adapter {} is not loaded", key.0))),
        };
        let layers = crate::cache::slot_data(&adapter);
        self.backend
            .lora_load_slot(&mut self.lora_stack, slot, &layers)
            .map_err(|e| e.context(format!("adapter \"{}\"", key.0)))
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
