//! Admission of one step (DESIGN.md 1.3 "schedule" and "make the step's adapters resident"): the
//! worker's side of [`crate::sched`]. The policy (continuous batching, device slots, fairness)
//! is pure logic there; this file feeds it the host cache's adapter states, uploads the adapters
//! that became resident and ends the requests that cannot run.

use std::collections::HashMap;

use super::request::{FinishReason, RequestId};
use super::worker::Worker;
use crate::backend::Backend;
use crate::cache::{AdapterKey, LoadState};
use crate::error::{Error, Result};
use crate::sched::{AdapterGate, Chunk, WaitingAdapter, FAIR_WAIT_STEPS};

impl<B: Backend> Worker<B> {
    /// Plans the step and makes its adapters resident. Ends (with an error output) the requests
    /// whose adapter failed to load or to upload and those that can never fit in the KV cache.
    /// Returns the chunks to compute, in row order; empty when nothing can run this step.
    pub(super) fn admit(&mut self) -> Vec<Chunk> {
        let (waiting, failed) = self.waiting_adapters();
        for (id, err) in failed {
            self.finish(id, FinishReason::Error, Some(err));
        }
        let mut gate = AdapterGate::new(waiting, FAIR_WAIT_STEPS);
        // Choices waiting to share their leader's prompt KV blocks stay in line.
        let held = self.waiting_for_prompt();
        let slots = &mut self.slots;
        let mut plan = self
            .sched
            .schedule(&mut self.seqs, &mut self.alloc, self.limits, |id| {
                !held.contains(&id) && gate.admit(id, slots)
            });
        let admission = gate.settle(&plan, &mut self.slots);
        if plan.prefix_queries > 0 {
            let mut s = self.shared.stats.lock();
            s.prefix_cache_queries += plan.prefix_queries;
            s.prefix_cache_hits += plan.prefix_hits;
        }
        // A failed upload fails every request of the step that shares the slot. A mixture's
        // grants come in the order of its adapters; once one fails, the request has ended and
        // its later grants are given back.
        let mut failed_uploads: HashMap<usize, Error> = HashMap::new();
        for g in admission.granted {
            if !self.seqs.contains_key(&g.id) {
                self.slots.release(g.slot);
                if g.upload {
                    self.slots.evict(g.slot);
                }
                continue;
            }
            if let Some(err) = failed_uploads.get(&g.slot) {
                let err = err.clone();
                self.slots.release(g.slot);
                self.finish(g.id, FinishReason::Error, Some(err));
                continue;
            }
            if g.upload {
                if let Err(e) = self.upload(&g.key, g.slot) {
                    self.slots.release(g.slot);
                    self.slots.evict(g.slot);
                    failed_uploads.insert(g.slot, e.clone());
                    self.finish(g.id, FinishReason::Error, Some(e));
                    continue;
                }
            }
            if let Some(seq) = self.seqs.get_mut(&g.id) {
                seq.slots.push(g.slot);
            }
        }
        for id in &plan.preempted {
            if let Some(seq) = self.seqs.get_mut(id) {
                for slot in seq.slots.drain(..) {
                    self.slots.release(slot);
                }
            }
        }
        for id in admission.refused {
            if let Some(seq) = self.seqs.get_mut(&id) {
                seq.held_steps = seq.held_steps.saturating_add(1);
            }
        }
        for c in &plan.chunks {
            if let Some(seq) = self.seqs.get_mut(&c.id) {
                seq.held_steps = 0;
            }
        }
        for id in std::mem::take(&mut plan.unfittable) {
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
        // Requests ended above (failed uploads) leave the step.
        plan.chunks.retain(|c| self.seqs.contains_key(&c.id));
        plan.chunks
    }

    /// The gate's view of every waiting adapter request (queue order), and the requests whose
    /// adapter load failed, with the error.
    fn waiting_adapters(&self) -> (Vec<WaitingAdapter>, Vec<(RequestId, Error)>) {
        let mut waiting = Vec::new();
        let mut failed = Vec::new();
        let host = self.shared.host.lock();
        for id in self.sched.waiting_ids() {
            let Some(seq) = self.seqs.get(&id) else {
                continue;
            };
            if seq.adapters.is_empty() {
                continue;
            }
            let mut ready = true;
            let mut error = None;
            for a in &seq.adapters {
                match host.get(&a.key).map(|e| &e.state) {
                    Some(LoadState::Ready(_)) => {}
                    Some(LoadState::Loading) => ready = false,
                    Some(LoadState::Failed(e)) => {
                        error = Some(e.clone());
                        break;
                    }
                    None => {
                        error = Some(Error::internal(format!(
                            "adapter {} left the host cache while pinned",
                            a.key.0
                        )));
                        break;
                    }
                }
            }
            if let Some(e) = error {
                failed.push((id, e));
                continue;
            }
            waiting.push(WaitingAdapter {
                id,
                keys: seq.adapters.iter().map(|a| a.key.clone()).collect(),
                ready,
                held_steps: seq.held_steps,
            });
        }
        (waiting, failed)
    }

    /// Uploads adapter `key` (loaded in the host cache) into device slot `slot`.
    fn upload(&mut self, key: &AdapterKey, slot: usize) -> Result<()> {
        let adapter = match self.shared.host.lock().get(key).map(|e| e.state.clone()) {
            Some(LoadState::Ready(a)) => a,
            _ => return Err(Error::internal(format!("adapter {} is not loaded", key.0))),
        };
        let layers = crate::cache::slot_data(&adapter);
        self.backend
            .lora_load_slot(&mut self.lora_stack, slot, &layers)
            .map_err(|e| e.context(format!("adapter \"{}\"", key.0)))
    }
}
