//! Adapter-aware admission (DESIGN.md 1.1, 1.3): which waiting adapter requests may enter a step.
//! Pure logic: no backend, no model, no I/O.
//!
//! A waiting request that names an adapter can run only once its adapter is loaded in the host
//! cache and holds a device slot ([`DeviceSlots`], LRU among slots no running sequence uses).
//! Left alone, a hot adapter whose requests keep arriving keeps its slot busy forever and starves
//! every other adapter when slots are scarce. The fairness barrier prevents that: once the oldest
//! waiting request has been refused a device slot for `fair_wait_steps` steps, no request of any
//! other adapter is admitted until it is, so the running ones drain and a slot frees for it.
//! Base-model requests need no slot and are never held back.
//!
//! One [`AdapterGate`] serves one step: built from the waiting queue, consulted through
//! [`AdapterGate::admit`] by [`Scheduler::schedule`](super::Scheduler::schedule), then
//! [`AdapterGate::settle`]d against the plan the scheduler made.
//!
//! Threading: plain data, owned by the worker thread for the duration of one step.

use std::collections::{HashMap, HashSet};

use super::StepPlan;
use crate::cache::{AdapterKey, DeviceSlots};

/// Steps a waiting adapter request may be refused a device slot before admission becomes strictly
/// FIFO behind it (so a hot adapter cannot starve the others).
pub const FAIR_WAIT_STEPS: u32 = 32;

/// A waiting request that uses an adapter, as the gate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingAdapter<K = AdapterKey> {
    /// Request id.
    pub id: u64,
    /// The device keys of the adapters it uses (several for a mixture; each needs a device
    /// slot; the engine keys slots by content hash).
    pub keys: Vec<K>,
    /// True once all its adapters are loaded in the host cache; a request whose adapter still
    /// loads waits without counting as refused.
    pub ready: bool,
    /// Steps this request has been refused a device slot so far.
    pub held_steps: u32,
}

/// A device slot given to a request admitted this step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotGrant<K = AdapterKey> {
    /// Request id.
    pub id: u64,
    /// Device slot.
    pub slot: usize,
    /// The adapter the slot is for.
    pub key: K,
    /// The slot does not hold the adapter's weights yet: the caller uploads them before the step
    /// runs (and, if that fails, releases and evicts the slot).
    pub upload: bool,
}

/// What one step's admission decided about adapter requests (see [`AdapterGate::settle`]).
#[derive(Debug, PartialEq, Eq)]
pub struct AdapterAdmission<K = AdapterKey> {
    /// Slots of the admitted adapter requests, in admission order (a mixture's in the order of
    /// its adapters).
    pub granted: Vec<SlotGrant<K>>,
    /// Requests refused a device slot this step (their `held_steps` goes up by one).
    pub refused: Vec<u64>,
}

/// The adapter-admission policy of one step. See the module docs.
#[derive(Debug)]
pub struct AdapterGate<K = AdapterKey> {
    /// `id -> (keys, ready)` of every waiting adapter request.
    waiting: HashMap<u64, (Vec<K>, bool)>,
    barrier: Option<Vec<K>>,
    acquired: Vec<SlotGrant<K>>,
    refused: Vec<u64>,
}

impl<K> Default for AdapterAdmission<K> {
    fn default() -> Self {
        Self {
            granted: Vec::new(),
            refused: Vec::new(),
        }
    }
}

impl<K: Clone + Eq> AdapterGate<K> {
    /// The gate for one step. `waiting` lists every waiting request that uses an adapter, in queue
    /// order (base requests are absent). The barrier is the adapters of the first of them refused
    /// a device slot for at least `fair_wait_steps` steps (the engine uses [`FAIR_WAIT_STEPS`]).
    pub fn new(waiting: impl IntoIterator<Item = WaitingAdapter<K>>, fair_wait_steps: u32) -> Self {
        let mut gate = Self {
            waiting: HashMap::new(),
            barrier: None,
            acquired: Vec::new(),
            refused: Vec::new(),
        };
        for w in waiting {
            if gate.barrier.is_none() && w.held_steps >= fair_wait_steps {
                gate.barrier = Some(w.keys.clone());
            }
            gate.waiting.insert(w.id, (w.keys, w.ready));
        }
        gate
    }

    /// The adapters every slot drains to this step, if a barrier stands.
    pub fn barrier(&self) -> Option<&[K]> {
        self.barrier.as_deref()
    }

    /// May waiting request `id` be admitted this step? Base requests (not given to
    /// [`AdapterGate::new`]) always may. An adapter request may when its adapters are loaded, no
    /// barrier stands that lacks one of them, and a device slot is acquired for each of them
    /// from `slots` (all or none: the slots count as used from now on, so later requests of this
    /// step never take them). Refused a slot, it is recorded as refused and holds none.
    pub fn admit(&mut self, id: u64, slots: &mut DeviceSlots<K>) -> bool {
        let Some((keys, ready)) = self.waiting.get(&id) else {
            return true;
        };
        let outside = |b: &Vec<K>| keys.iter().any(|k| !b.contains(k));
        if !ready || self.barrier.as_ref().is_some_and(outside) {
            return false;
        }
        let mut got: Vec<SlotGrant<K>> = Vec::with_capacity(keys.len());
        for key in keys {
            match slots.acquire(key) {
                Some((slot, upload)) => got.push(SlotGrant {
                    id,
                    slot,
                    key: key.clone(),
                    upload,
                }),
                None => {
                    // All or none: a slot assigned for an upload never received the weights.
                    for g in got {
                        slots.release(g.slot);
                        if g.upload {
                            slots.evict(g.slot);
                        }
                    }
                    self.refused.push(id);
                    return false;
                }
            }
        }
        self.acquired.extend(got);
        true
    }

    /// Reconciles the slots acquired in [`AdapterGate::admit`] with the scheduler's `plan`. A slot
    /// acquired for a request the scheduler then did not admit (no KV room, unfittable) is given
    /// back; if the adapter was to be uploaded into it, the upload passes to an admitted request
    /// of the same slot, or, when there is none, the slot is forgotten (it never received the
    /// weights, so it must not look resident).
    pub fn settle(self, plan: &StepPlan, slots: &mut DeviceSlots<K>) -> AdapterAdmission<K> {
        let admitted: HashSet<u64> = plan.chunks.iter().map(|c| c.id).collect();
        let (mut granted, dropped): (Vec<SlotGrant<K>>, Vec<SlotGrant<K>>) = self
            .acquired
            .into_iter()
            .partition(|g| admitted.contains(&g.id));
        for d in dropped {
            slots.release(d.slot);
            if !d.upload {
                continue;
            }
            match granted.iter_mut().find(|g| g.slot == d.slot) {
                Some(heir) => heir.upload = true,
                None => slots.evict(d.slot),
            }
        }
        AdapterAdmission {
            granted,
            refused: self.refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::BlockAllocator;
    use crate::sched::{Chunk, SchedSeq, Schedulable, Scheduler, StepLimits};

    fn key(name: &str) -> AdapterKey {
        (name.to_string(), 1)
    }

    fn waiting(id: u64, name: &str, held_steps: u32) -> WaitingAdapter {
        WaitingAdapter {
            id,
            keys: vec![key(name)],
            ready: true,
            held_steps,
        }
    }

    fn plan_of(ids: &[u64]) -> StepPlan {
        StepPlan {
            chunks: ids
                .iter()
                .map(|&id| Chunk {
                    id,
                    start: 0,
                    len: 1,
                })
                .collect(),
            ..StepPlan::default()
        }
    }

    #[test]
    fn base_requests_always_pass_and_loading_adapters_wait_unrefused() {
        let mut slots = DeviceSlots::new(1);
        let mut loading = waiting(2, "a", 0);
        loading.ready = false;
        let mut gate = AdapterGate::new([loading], FAIR_WAIT_STEPS);
        assert!(gate.admit(1, &mut slots), "a base request was held back");
        assert!(
            !gate.admit(2, &mut slots),
            "admitted before its adapter loaded"
        );
        let adm = gate.settle(&plan_of(&[1]), &mut slots);
        assert_eq!(adm, AdapterAdmission::default());
        assert_eq!(slots.occupied().count(), 0, "a loading adapter took a slot");
    }

    #[test]
    fn barrier_is_raised_by_the_oldest_request_held_long_enough() {
        // Queue order: b (held 31), c (held 40), a (held 50): c is the first at the threshold.
        let gate = AdapterGate::new(
            [
                waiting(1, "b", 31),
                waiting(2, "c", 40),
                waiting(3, "a", 50),
            ],
            32,
        );
        assert_eq!(gate.barrier(), Some(&[key("c")][..]));
        let gate = AdapterGate::new([waiting(1, "b", 31), waiting(2, "c", 0)], 32);
        assert_eq!(gate.barrier(), None);
    }

    #[test]
    fn barrier_holds_other_adapters_back_and_clears_once_its_request_runs() {
        let mut slots = DeviceSlots::new(2);
        // "hot" holds slot 0 (a running request); "cold" waited long enough.
        let (hot_slot, _) = slots.acquire(&key("hot")).unwrap();
        let mut gate = AdapterGate::new([waiting(1, "hot", 0), waiting(2, "cold", 32)], 32);
        assert!(
            !gate.admit(1, &mut slots),
            "another adapter passed the barrier although its slot was resident"
        );
        assert!(gate.admit(7, &mut slots), "a base request was held back");
        assert!(gate.admit(2, &mut slots));
        let adm = gate.settle(&plan_of(&[7, 2]), &mut slots);
        assert_eq!(
            adm.refused,
            Vec::<u64>::new(),
            "barrier refusals are not slot refusals"
        );
        assert_eq!(adm.granted.len(), 1);
        assert_eq!(adm.granted[0].id, 2);
        assert_ne!(adm.granted[0].slot, hot_slot);
        assert!(adm.granted[0].upload);
        // Next step the cold request runs (its held count was reset): no barrier, hot passes.
        let mut gate = AdapterGate::new([waiting(1, "hot", 0)], 32);
        assert_eq!(gate.barrier(), None);
        assert!(gate.admit(1, &mut slots));
    }

    #[test]
    fn no_free_slot_refuses_and_counts() {
        let mut slots = DeviceSlots::new(1);
        slots.acquire(&key("busy")).unwrap();
        let mut gate = AdapterGate::new([waiting(1, "a", 3), waiting(2, "busy", 0)], 32);
        assert!(!gate.admit(1, &mut slots));
        assert!(
            gate.admit(2, &mut slots),
            "a resident adapter's request was refused"
        );
        let adm = gate.settle(&plan_of(&[2]), &mut slots);
        assert_eq!(adm.refused, vec![1]);
        assert_eq!(
            adm.granted,
            vec![SlotGrant {
                id: 2,
                slot: 0,
                key: key("busy"),
                upload: false
            }]
        );
    }

    #[test]
    fn slot_reuse_is_lru_among_slots_not_used_in_the_step() {
        let mut slots = DeviceSlots::new(3);
        // Resident a (slot 0), b (slot 1), c (slot 2); none running; c then a used last.
        for name in ["a", "b", "c", "c", "a"] {
            let (s, _) = slots.acquire(&key(name)).unwrap();
            slots.release(s);
        }
        assert_eq!(slots.lookup(&key("b")), Some(1));
        // This step: a request of b keeps slot 1 busy; d and e are new.
        let mut gate = AdapterGate::new(
            [waiting(1, "b", 0), waiting(2, "d", 0), waiting(3, "e", 0)],
            32,
        );
        assert!(gate.admit(1, &mut slots));
        assert!(gate.admit(2, &mut slots));
        assert!(gate.admit(3, &mut slots));
        let adm = gate.settle(&plan_of(&[1, 2, 3]), &mut slots);
        // b (the least recently used) is in use this step, so d takes c's slot (next LRU), then
        // e takes a's.
        assert_eq!(
            adm.granted,
            vec![
                SlotGrant {
                    id: 1,
                    slot: 1,
                    key: key("b"),
                    upload: false
                },
                SlotGrant {
                    id: 2,
                    slot: 2,
                    key: key("d"),
                    upload: true
                },
                SlotGrant {
                    id: 3,
                    slot: 0,
                    key: key("e"),
                    upload: true
                },
            ]
        );
        assert_eq!(slots.lookup(&key("a")), None);
        assert_eq!(slots.lookup(&key("c")), None);
        // Every slot is now used by the step: a fourth adapter is refused.
        let mut gate = AdapterGate::new([waiting(4, "f", 0)], 32);
        assert!(!gate.admit(4, &mut slots));
        assert_eq!(gate.settle(&plan_of(&[]), &mut slots).refused, vec![4]);
    }

    #[test]
    fn a_slot_claimed_for_a_request_not_admitted_is_given_back() {
        let mut slots = DeviceSlots::new(1);
        let mut gate = AdapterGate::new([waiting(1, "a", 0)], 32);
        assert!(gate.admit(1, &mut slots));
        // The scheduler did not admit it (e.g. no KV room): the slot is free and not resident.
        let adm = gate.settle(&plan_of(&[]), &mut slots);
        assert_eq!(adm, AdapterAdmission::default());
        assert_eq!(
            slots.lookup(&key("a")),
            None,
            "never-uploaded slot looks resident"
        );
        assert_eq!(slots.in_use(), 0);
    }

    #[test]
    fn the_upload_passes_to_an_admitted_request_of_the_same_slot() {
        // Request 1 claims a fresh slot for "a" (upload) but is not admitted (unfittable); request
        // 2 of the same adapter finds the slot "resident" and is admitted. The weights were never
        // uploaded, so request 2 must upload them and the slot must stay.
        let mut slots = DeviceSlots::new(1);
        let mut gate = AdapterGate::new([waiting(1, "a", 0), waiting(2, "a", 0)], 32);
        assert!(gate.admit(1, &mut slots));
        assert!(gate.admit(2, &mut slots));
        let adm = gate.settle(&plan_of(&[2]), &mut slots);
        assert_eq!(
            adm.granted,
            vec![SlotGrant {
                id: 2,
                slot: 0,
                key: key("a"),
                upload: true
            }],
            "request 2 would run on a slot that never received its adapter"
        );
        assert_eq!(slots.lookup(&key("a")), Some(0));
        assert_eq!(slots.in_use(), 1);
    }

    #[test]
    fn a_mixture_takes_all_its_slots_or_none() {
        let mut slots = DeviceSlots::new(3);
        // "busy" runs in one slot; a mixture of three adapters cannot get three slots.
        let (busy, _) = slots.acquire(&key("busy")).unwrap();
        let mix = WaitingAdapter {
            id: 1,
            keys: vec![key("a"), key("b"), key("c")],
            ready: true,
            held_steps: 0,
        };
        let mut gate = AdapterGate::new([mix.clone()], 32);
        assert!(!gate.admit(1, &mut slots));
        // Nothing held, nothing looks resident.
        assert_eq!(slots.in_use(), 1);
        assert!(["a", "b", "c"]
            .iter()
            .all(|n| slots.lookup(&key(n)).is_none()));
        let adm = gate.settle(&plan_of(&[]), &mut slots);
        assert_eq!(adm.refused, vec![1]);
        // Once "busy" ends, it gets all three, in its order, each to be uploaded.
        slots.release(busy);
        let mut gate = AdapterGate::new([mix], 32);
        assert!(gate.admit(1, &mut slots));
        let adm = gate.settle(&plan_of(&[1]), &mut slots);
        let keys: Vec<&AdapterKey> = adm.granted.iter().map(|g| &g.key).collect();
        assert_eq!(keys, [&key("a"), &key("b"), &key("c")]);
        assert!(adm.granted.iter().all(|g| g.upload && g.id == 1));
        // A barrier of the mixture lets through requests that use only its adapters.
        let gate = AdapterGate::new(
            [
                WaitingAdapter {
                    id: 2,
                    keys: vec![key("a"), key("b")],
                    ready: true,
                    held_steps: 40,
                },
                waiting(3, "b", 0),
                waiting(4, "d", 0),
            ],
            32,
        );
        let mut gate = gate;
        assert!(gate.admit(3, &mut slots), "b is inside the barrier");
        assert!(!gate.admit(4, &mut slots), "d is outside the barrier");
    }

    /// A request in the simulation below.
    struct SimSeq {
        sched: SchedSeq,
        adapter: AdapterKey,
        held_steps: u32,
        slot: Option<usize>,
        left: usize,
    }

    impl Schedulable for SimSeq {
        fn sched(&mut self) -> &mut SchedSeq {
            &mut self.sched
        }
    }

    /// Serves a cold request behind a stream of hot ones that never lets the hot adapter go idle
    /// (one device slot, twice as many hot requests as can run; every finished hot request is
    /// replaced at once). Returns how many hot requests finished before the cold one did, if it
    /// did within `max_steps` steps.
    fn hot_served_before_cold(fair_wait_steps: u32, max_steps: usize) -> Option<usize> {
        let mut slots = DeviceSlots::new(1);
        let mut alloc = BlockAllocator::new(4096, 16).unwrap();
        let mut sched = Scheduler::new();
        let limits = StepLimits {
            max_num_seqs: 4,
            max_batch_tokens: 64,
        };
        let mut seqs: HashMap<u64, SimSeq> = HashMap::new();
        let mut next_id = 0u64;
        let mut submit = |seqs: &mut HashMap<u64, SimSeq>, sched: &mut Scheduler, name: &str| {
            next_id += 1;
            let left = 5 + (next_id as usize * 7) % 23;
            seqs.insert(
                next_id,
                SimSeq {
                    sched: SchedSeq {
                        total_tokens: 6,
                        ..SchedSeq::default()
                    },
                    adapter: key(name),
                    held_steps: 0,
                    slot: None,
                    left,
                },
            );
            sched.add(next_id);
            next_id
        };
        for _ in 0..8 {
            submit(&mut seqs, &mut sched, "hot");
        }
        let cold = submit(&mut seqs, &mut sched, "cold");
        let mut hot_done = 0;
        for _ in 0..max_steps {
            let mut gate = AdapterGate::new(
                sched.waiting_ids().map(|id| WaitingAdapter {
                    id,
                    keys: vec![seqs[&id].adapter.clone()],
                    ready: true,
                    held_steps: seqs[&id].held_steps,
                }),
                fair_wait_steps,
            );
            let plan = sched.schedule(&mut seqs, &mut alloc, limits, |id| {
                gate.admit(id, &mut slots)
            });
            assert!(plan.preempted.is_empty() && plan.unfittable.is_empty());
            let adm = gate.settle(&plan, &mut slots);
            for g in &adm.granted {
                seqs.get_mut(&g.id).unwrap().slot = Some(g.slot);
            }
            for id in adm.refused {
                seqs.get_mut(&id).unwrap().held_steps += 1;
            }
            // Every request in the step computes its chunk and samples one token.
            let mut finished = Vec::new();
            for c in &plan.chunks {
                let s = seqs.get_mut(&c.id).unwrap();
                s.held_steps = 0;
                assert!(s.slot.is_some(), "request {} ran without a slot", c.id);
                s.sched.num_computed += c.len;
                s.sched.table.advance(c.len);
                s.sched.total_tokens += 1;
                s.left -= 1;
                if s.left == 0 {
                    finished.push(c.id);
                }
            }
            // The one slot only ever holds the adapter of the requests running in it.
            let resident: Vec<&AdapterKey> = slots.occupied().map(|(_, k, _)| k).collect();
            for id in sched.running_ids() {
                assert_eq!(vec![&seqs[&id].adapter], resident);
            }
            for id in finished {
                sched.remove(id);
                let mut s = seqs.remove(&id).unwrap();
                slots.release(s.slot.unwrap());
                s.sched.table.release(&mut alloc).unwrap();
                if id == cold {
                    return Some(hot_done);
                }
                hot_done += 1;
                submit(&mut seqs, &mut sched, "hot");
            }
        }
        None
    }

    #[test]
    fn a_hot_adapter_cannot_starve_a_cold_one() {
        let hot = hot_served_before_cold(FAIR_WAIT_STEPS, 5000);
        // Bounded wait: the cold request is refused in at most FAIR_WAIT_STEPS steps, each of
        // which admits at most max_num_seqs (4) hot requests behind it; the 4 hot requests queued
        // ahead of it and the (at most 4) running when the barrier rises then drain.
        assert!(
            hot.is_some_and(|n| n <= 4 * FAIR_WAIT_STEPS as usize + 8),
            "the cold request starved behind the hot adapter ({hot:?} hot requests served first)"
        );
        // The same workload without the barrier starves the cold request: the test can fail.
        assert_eq!(hot_served_before_cold(u32::MAX, 5000), None);
    }
}
