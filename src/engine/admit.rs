//! Admission of one step (DESIGN.md 1.3 "schedule" and "make the step's adapters resident"): the
//! worker's side of [`crate::sched`]. The policy (continuous batching, device slots, fairness)
//! is pure logic there; this file feeds it the host cache's adapter states, uploads the adapters
//! that became resident and ends the requests that cannot run.

use std::collections::HashMap;
use std::sync::Arc;

use super::request::{FinishReason, RequestId};
use super::worker::Worker;
use crate::adapters::NormalizedAdapter;
use crate::backend::Backend;
use crate::cache::{DeviceKey, LoadState};
use crate::error::{Error, Result};
use crate::sched::{AdapterGate, Chunk, SlotGrant, WaitingAdapter, FAIR_WAIT_STEPS};

impl<B: Backend> Worker<B> {
    /// Plans the step and makes its adapters resident. Ends (with an error output) the requests
    /// whose adapter failed to load or to upload and those that can never fit in the KV cache.
    /// Returns the chunks to compute, in row order; empty when nothing can run this step.
    pub(super) fn admit(&mut self) -> Vec<Chunk> {
        let Waiting {
            gate: waiting,
            failed,
            loaded,
        } = self.waiting_adapters();
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
        self.count_resident(&admission.granted);
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
                if let Err(e) = self.upload(loaded.get(&g.key), g.slot) {
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

    /// The gate's view of every waiting adapter request (queue order, device keys = content
    /// hashes), the requests whose adapter load failed, with the error, and the loaded adapters
    /// by content hash.
    fn waiting_adapters(&self) -> Waiting {
        let mut w = Waiting::default();
        let host = self.shared.host.lock();
        for id in self.sched.waiting_ids() {
            let Some(seq) = self.seqs.get(&id) else {
                continue;
            };
            if seq.adapters.is_empty() {
                continue;
            }
            let mut keys = Vec::with_capacity(seq.adapters.len());
            let mut ready = true;
            let mut error = None;
            for a in &seq.adapters {
                match host.get(&a.key).map(|e| &e.state) {
                    Some(LoadState::Ready(ad)) => {
                        keys.push(ad.generation.clone());
                        w.loaded
                            .entry(ad.generation.clone())
                            .or_insert_with(|| (a.key.0.clone(), ad.clone()));
                    }
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
                w.failed.push((id, e));
                continue;
            }
            w.gate.push(WaitingAdapter {
                id,
                keys,
                ready,
                held_steps: seq.held_steps,
            });
        }
        w
    }

    /// Counts the adapter requests admitted this step, and those that found every adapter
    /// already resident on the device (loaded earlier or prefetched).
    fn count_resident(&self, granted: &[SlotGrant<DeviceKey>]) {
        let mut by_id: HashMap<RequestId, bool> = HashMap::new();
        for g in granted {
            *by_id.entry(g.id).or_insert(true) &= !g.upload;
        }
        if by_id.is_empty() {
            return;
        }
        let mut s = self.shared.stats.lock();
        s.adapter_admissions += by_id.len() as u64;
        s.adapter_admissions_resident += by_id.values().filter(|&&r| r).count() as u64;
    }

    /// Uploads `adapter` (name, weights) into device slot `slot`.
    fn upload(
        &mut self,
        adapter: Option<&(String, Arc<NormalizedAdapter>)>,
        slot: usize,
    ) -> Result<()> {
        let (name, adapter) =
            adapter.ok_or_else(|| Error::internal("uploading an adapter that is not loaded"))?;
        let layers = crate::cache::slot_data(adapter);
        self.backend
            .lora_load_slot(&mut self.lora_stack, slot, &layers)
            .map_err(|e| e.context(format!("adapter \"{name}\"")))
    }

    /// Uploads the adapters that waiting requests will need into device slots free now
    /// (empty, or idle and not needed by a request ahead in line), at most [`PREFETCH_PER_STEP`]
    /// per call, in admission order, so that the step admitting them finds them resident. Called
    /// between steps; a failed upload leaves the slot empty (the request's own admission will
    /// retry and report it).
    pub(super) fn prefetch(&mut self) {
        if self.sched.num_waiting() == 0 || !self.slots.has_idle() {
            return;
        }
        let w = self.waiting_adapters();
        let mut keep: Vec<DeviceKey> = Vec::new();
        let mut done = 0;
        for req in w.gate.iter().filter(|r| r.ready) {
            for key in &req.keys {
                if done < PREFETCH_PER_STEP {
                    if let Some(slot) = self.slots.prefetch(key, &keep) {
                        done += 1;
                        if self.upload(w.loaded.get(key), slot).is_err() {
                            self.slots.evict(slot);
                        } else {
                            self.shared.stats.lock().adapter_prefetches += 1;
                        }
                    }
                }
                keep.push(key.clone());
            }
            if done >= PREFETCH_PER_STEP {
                break;
            }
        }
    }
}

/// Device uploads [`Worker::prefetch`] does between two steps at most.
const PREFETCH_PER_STEP: usize = 1;

/// What [`Worker::waiting_adapters`] found.
#[derive(Default)]
struct Waiting {
    gate: Vec<WaitingAdapter<DeviceKey>>,
    failed: Vec<(RequestId, Error)>,
    /// Loaded adapters by content hash: a name using it and its weights.
    loaded: HashMap<DeviceKey, (String, Arc<NormalizedAdapter>)>,
}
