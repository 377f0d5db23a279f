//! Continuous-batching scheduler (pure logic: no backend, no I/O).
//!
//! Each step it picks token chunks from running sequences (decode rows and the rest of unfinished
//! prefills, oldest first) and then admits waiting sequences in fair order (tenants, i.e.
//! adapters and the base model, take turns, the least served first; FIFO within a tenant), within
//! `max_num_seqs` sequences and `max_batch_tokens` tokens, reserving paged-KV blocks for every
//! chunk. When blocks run out it preempts the newest running sequence (its blocks are freed and
//! it is recomputed later from its tokens), never the one being served; a sequence that cannot fit
//! even in an empty cache is failed instead of looping.
//!
//! Which waiting adapter requests may enter a step (device slots, fairness) is decided by
//! [`admission`]: the scheduler asks it through the `can_admit` callback of
//! [`Scheduler::schedule`].

pub mod admission;
pub mod tenant;

pub use admission::{AdapterAdmission, AdapterGate, SlotGrant, WaitingAdapter, FAIR_WAIT_STEPS};
pub use tenant::TenantPolicy;

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};

use crate::kv::{BlockAllocator, BlockTable};

/// The scheduler's view of one sequence.
#[derive(Debug, Default)]
pub struct SchedSeq {
    /// Tokens that must be in the KV cache before the next sample (prompt + generated).
    pub total_tokens: usize,
    /// Tokens whose K/V are already computed.
    pub num_computed: usize,
    /// The sequence's KV blocks.
    pub table: BlockTable,
}

/// Gives the scheduler access to a sequence's [`SchedSeq`].
pub trait Schedulable {
    /// The scheduling state.
    fn sched(&mut self) -> &mut SchedSeq;

    /// Called when the sequence is about to be admitted with nothing computed and no blocks:
    /// fills its table with prefix-cache blocks that already hold its first tokens (leaving at
    /// least its last token to compute), sets `num_computed` to match and returns the number of
    /// tokens reused. The default reuses nothing.
    fn reuse_prefix(&mut self, _alloc: &mut BlockAllocator) -> usize {
        0
    }

    /// Who the sequence is served for, for fair admission: its adapter's name, or `None` for
    /// the base model. The default is `None` (one tenant: plain FIFO).
    fn tenant(&self) -> Option<&str> {
        None
    }
}

/// Limits for one step.
#[derive(Debug, Clone, Copy)]
pub struct StepLimits {
    /// Most sequences in a step.
    pub max_num_seqs: usize,
    /// Most token rows in a step.
    pub max_batch_tokens: usize,
}

/// A run of tokens of one sequence computed in this step: positions `start..start + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Sequence id.
    pub id: u64,
    /// First position.
    pub start: usize,
    /// Number of tokens.
    pub len: usize,
}

/// What to do this step.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StepPlan {
    /// Chunks to compute, in row order.
    pub chunks: Vec<Chunk>,
    /// Sequences preempted this step (blocks freed, back at the head of the queue).
    pub preempted: Vec<u64>,
    /// Sequences that can never fit in the KV cache.
    pub unfittable: Vec<u64>,
    /// Tokens of the sequences admitted this step, all looked up in the prefix cache.
    pub prefix_queries: u64,
    /// Of those, tokens reused from the prefix cache.
    pub prefix_hits: u64,
}

/// Fair admission + running set.
#[derive(Debug, Default)]
pub struct Scheduler {
    waiting: VecDeque<u64>,
    running: Vec<u64>,
    policy: TenantPolicy,
}

impl Scheduler {
    /// An empty scheduler with the default policy (equal weights, no caps).
    pub fn new() -> Self {
        Self::default()
    }
    /// An empty scheduler admitting by `policy`'s weights and caps.
    pub fn with_policy(policy: TenantPolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }
    /// Queues a new sequence at the back.
    pub fn add(&mut self, id: u64) {
        self.waiting.push_back(id);
    }
    /// Forgets a sequence (finished or cancelled); the caller releases its blocks.
    pub fn remove(&mut self, id: u64) {
        self.waiting.retain(|&x| x != id);
        self.running.retain(|&x| x != id);
    }
    /// Ids waiting for admission, in queue order.
    pub fn waiting_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.waiting.iter().copied()
    }
    /// Ids admitted (holding KV blocks).
    pub fn running_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.running.iter().copied()
    }
    /// Sequences waiting for admission.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }
    /// Sequences admitted (holding KV blocks).
    pub fn num_running(&self) -> usize {
        self.running.len()
    }
    /// True when nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Plans one step. `can_admit(id)` lets the caller hold a waiting sequence back (e.g. its
    /// adapter has no device slot this step); a held-back sequence keeps its place in line but
    /// does not block the ones behind it.
    pub fn schedule<S: Schedulable>(
        &mut self,
        seqs: &mut HashMap<u64, S>,
        alloc: &mut BlockAllocator,
        limits: StepLimits,
        mut can_admit: impl FnMut(u64) -> bool,
    ) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = limits.max_batch_tokens;
        let bs = alloc.block_size();
        // 1. Running sequences, oldest first.
        let mut i = 0;
        while i < self.running.len() {
            let id = self.running[i];
            let Some(seq) = seqs.get_mut(&id) else {
                self.running.remove(i);
                continue;
            };
            let s = seq.sched();
            let need = s.total_tokens.saturating_sub(s.num_computed);
            let n = need.min(budget);
            if n == 0 {
                i += 1;
                continue;
            }
            let start = s.num_computed;
            let extra = (start + n).saturating_sub(s.table.num_tokens());
            let mut ok = s.table.reserve(alloc, extra);
            while !ok {
                // Preempt the newest running sequence after this one.
                if self.running.len() > i + 1 {
                    let victim = self.running.pop().unwrap_or(id);
                    self.preempt(victim, seqs, alloc, &mut plan);
                    let Some(seq) = seqs.get_mut(&id) else { break };
                    ok = seq.sched().table.reserve(alloc, extra);
                } else {
                    break;
                }
            }
            if !ok {
                // Nothing newer to evict: this sequence yields its blocks so older work proceeds.
                // If it could not fit even in an empty cache it is failed instead.
                self.running.remove(i);
                let Some(seq) = seqs.get_mut(&id) else {
                    continue;
                };
                let s = seq.sched();
                release(s, alloc);
                if s.table.blocks_needed(s.total_tokens, bs) > alloc.num_total() {
                    plan.unfittable.push(id);
                } else {
                    self.waiting.push_front(id);
                    plan.preempted.push(id);
                }
                continue;
            }
            plan.chunks.push(Chunk { id, start, len: n });
            budget -= n;
            i += 1;
        }
        // 2. Admit waiting sequences in fair order (see `fair_order`), skipping tenants at
        // their running cap (they keep their place).
        if let Some(order) = fair_order(&self.waiting, &self.running, seqs, &self.policy) {
            self.waiting = order;
        }
        let mut per_tenant: Option<HashMap<Option<String>, usize>> =
            self.policy.has_caps().then(|| {
                let mut m = HashMap::new();
                for id in &self.running {
                    let t = seqs.get(id).and_then(|s| s.tenant()).map(str::to_owned);
                    *m.entry(t).or_insert(0) += 1;
                }
                m
            });
        let mut held = Vec::new();
        while budget > 0 && self.running.len() < limits.max_num_seqs {
            let Some(id) = self.waiting.pop_front() else {
                break;
            };
            let Some(seq) = seqs.get_mut(&id) else {
                continue;
            };
            let capped = per_tenant.as_mut().and_then(|m| {
                let t = seq.tenant();
                let cap = self.policy.cap(t)?;
                let n = m.entry(t.map(str::to_owned)).or_insert(0);
                Some((n, cap))
            });
            if let Some((n, cap)) = capped {
                if *n >= cap {
                    held.push(id);
                    continue;
                }
            }
            if !can_admit(id) {
                held.push(id);
                continue;
            }
            let fresh = {
                let s = seq.sched();
                s.num_computed == 0 && s.table.blocks().is_empty()
            };
            let reused = if fresh { seq.reuse_prefix(alloc) } else { 0 };
            let s = seq.sched();
            let whole = s
                .table
                .blocks_needed(s.total_tokens.saturating_sub(s.table.num_tokens()), bs);
            if s.table.blocks().len() + whole > alloc.num_total() {
                release(s, alloc);
                plan.unfittable.push(id);
                continue;
            }
            // Admit only when the whole remaining prompt fits, so admission does not cause
            // immediate preemption; FIFO: stop at the first that does not fit. A sequence left
            // waiting gives its prefix-cache blocks back (they stay cached): waiting sequences
            // hold no blocks that running ones might need.
            if whole > alloc.num_free() {
                if reused > 0 {
                    release(s, alloc);
                }
                self.waiting.push_front(id);
                break;
            }
            let start = s.num_computed;
            let n = s.total_tokens.saturating_sub(start).min(budget);
            let extra = (start + n).saturating_sub(s.table.num_tokens());
            if n == 0 || !s.table.reserve(alloc, extra) {
                if reused > 0 {
                    release(s, alloc);
                }
                self.waiting.push_front(id);
                break;
            }
            if fresh {
                plan.prefix_queries += s.total_tokens as u64;
                plan.prefix_hits += reused as u64;
            }
            plan.chunks.push(Chunk { id, start, len: n });
            budget -= n;
            self.running.push(id);
            if let Some(m) = per_tenant.as_mut() {
                let t = seqs.get(&id).and_then(|s| s.tenant()).map(str::to_owned);
                *m.entry(t).or_insert(0) += 1;
            }
        }
        for id in held.into_iter().rev() {
            self.waiting.push_front(id);
        }
        plan
    }

    fn preempt<S: Schedulable>(
        &mut self,
        id: u64,
        seqs: &mut HashMap<u64, S>,
        alloc: &mut BlockAllocator,
        plan: &mut StepPlan,
    ) {
        self.running.retain(|&x| x != id);
        if let Some(seq) = seqs.get_mut(&id) {
            release(seq.sched(), alloc);
        }
        plan.chunks.retain(|c| c.id != id);
        self.waiting.push_front(id);
        plan.preempted.push(id);
    }
}

/// The admission order of `waiting`, weighted fair among tenants (adapters, and the base model):
/// each next place goes to the tenant with the smallest `(running + placed + 1) / weight`, where
/// `running` counts its running sequences and `placed` its sequences already given a place
/// (ties: the tenant that appears first in the queue, i.e. waiting longest); each tenant's own
/// sequences stay in queue order. With equal weights tenants take turns, the least served
/// first, so a tenant that floods the queue delays another tenant's request by at most one
/// admission per tenant with fewer running sequences, instead of by its whole backlog; a tenant
/// of weight w gets w places per place of a weight-1 tenant. `None` with one tenant (or none):
/// the queue order stands.
fn fair_order<S: Schedulable>(
    waiting: &VecDeque<u64>,
    running: &[u64],
    seqs: &HashMap<u64, S>,
    policy: &TenantPolicy,
) -> Option<VecDeque<u64>> {
    let tenant = |id: &u64| seqs.get(id).and_then(|s| s.tenant());
    // The common case, one tenant waiting, costs one pass and no allocation.
    let first = waiting.front().and_then(tenant);
    if waiting.iter().all(|id| tenant(id) == first) {
        return None;
    }
    // Per tenant, in order of first appearance in the queue: its queue, running count, weight.
    let mut queues: Vec<(VecDeque<u64>, u64, u64)> = Vec::new();
    let mut index: HashMap<Option<&str>, usize> = HashMap::new();
    for id in waiting {
        let t = tenant(id);
        let k = *index.entry(t).or_insert_with(|| {
            queues.push((VecDeque::new(), 0, policy.weight(t)));
            queues.len() - 1
        });
        if let Some((q, _, _)) = queues.get_mut(k) {
            q.push_back(*id);
        }
    }
    for id in running {
        if let Some((_, n, _)) = index.get(&tenant(id)).and_then(|&k| queues.get_mut(k)) {
            *n += 1;
        }
    }
    let mut heap: BinaryHeap<Reverse<Turn>> = queues
        .iter()
        .enumerate()
        .map(|(k, (_, n, w))| {
            Reverse(Turn {
                next: n + 1,
                weight: *w,
                tenant: k,
            })
        })
        .collect();
    let mut out = VecDeque::with_capacity(waiting.len());
    while let Some(Reverse(turn)) = heap.pop() {
        let Some((q, _, _)) = queues.get_mut(turn.tenant) else {
            continue;
        };
        if let Some(id) = q.pop_front() {
            out.push_back(id);
            if !q.is_empty() {
                heap.push(Reverse(Turn {
                    next: turn.next + 1,
                    ..turn
                }));
            }
        }
    }
    Some(out)
}

/// A tenant's next turn in [`fair_order`]: ordered by `next / weight` (compared exactly, by
/// cross-multiplication), then by the tenant's first appearance in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Turn {
    next: u64,
    weight: u64,
    tenant: usize,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        let a = u128::from(self.next) * u128::from(other.weight);
        let b = u128::from(other.next) * u128::from(self.weight);
        a.cmp(&b).then(self.tenant.cmp(&other.tenant))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Frees a sequence's blocks and marks everything for recompute.
fn release(s: &mut SchedSeq, alloc: &mut BlockAllocator) {
    // An error here is an allocator invariant violation (double free); nothing to recover.
    let _ = s.table.release(alloc);
    s.num_computed = 0;
}
