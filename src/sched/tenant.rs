//! Per-tenant admission policy: weights for the fair order and caps on running sequences. A
//! tenant is an adapter (by name) or the base model. Pure data; built by the engine from
//! [`crate::config::EngineConfig`] and owned by the [`super::Scheduler`].

use std::collections::HashMap;

/// Weights and running caps of tenants. The default: every weight 1, no caps (plain fair
/// turns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantPolicy {
    /// Weight of each named adapter (absent: 1). A tenant of weight w is admitted w times as
    /// often as one of weight 1 while both wait (and holds w times the running sequences).
    pub weights: HashMap<String, u32>,
    /// Weight of the base model (0 is read as 1).
    pub base_weight: u32,
    /// Most running sequences of any one adapter (0: no cap); see `caps` for exceptions.
    pub max_running_per_adapter: usize,
    /// Running caps of named adapters, overriding `max_running_per_adapter` (0: no cap).
    pub caps: HashMap<String, usize>,
    /// Running cap of the base model (0: no cap).
    pub base_cap: usize,
}

impl TenantPolicy {
    /// The weight of `tenant` (`None`: the base model), at least 1.
    pub fn weight(&self, tenant: Option<&str>) -> u64 {
        let w = match tenant {
            None => self.base_weight,
            Some(n) => self.weights.get(n).copied().unwrap_or(1),
        };
        u64::from(w.max(1))
    }

    /// The running cap of `tenant`, if it has one.
    pub fn cap(&self, tenant: Option<&str>) -> Option<usize> {
        let c = match tenant {
            None => self.base_cap,
            Some(n) => self
                .caps
                .get(n)
                .copied()
                .unwrap_or(self.max_running_per_adapter),
        };
        (c > 0).then_some(c)
    }

    /// True when any tenant has a cap (the scheduler then counts running sequences per tenant).
    pub fn has_caps(&self) -> bool {
        self.base_cap > 0 || self.max_running_per_adapter > 0 || self.caps.values().any(|&c| c > 0)
    }

    /// True when every weight is 1.
    pub fn unweighted(&self) -> bool {
        self.base_weight <= 1 && self.weights.values().all(|&w| w <= 1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::TenantPolicy;
    use crate::kv::BlockAllocator;
    use crate::sched::{SchedSeq, Schedulable, Scheduler, StepLimits};

    struct Seq {
        sched: SchedSeq,
        tenant: Option<String>,
    }

    impl Schedulable for Seq {
        fn sched(&mut self) -> &mut SchedSeq {
            &mut self.sched
        }
        fn tenant(&self) -> Option<&str> {
            self.tenant.as_deref()
        }
    }

    /// A scheduler and its sequences: `queue` lists the tenant of each waiting sequence (ids
    /// from 1, in queue order; "" = the base model), each needing 4 tokens.
    fn setup(policy: TenantPolicy, queue: &[&str]) -> (Scheduler, HashMap<u64, Seq>) {
        let mut sched = Scheduler::with_policy(policy);
        let mut seqs = HashMap::new();
        for (k, t) in queue.iter().enumerate() {
            let id = k as u64 + 1;
            seqs.insert(
                id,
                Seq {
                    sched: SchedSeq {
                        total_tokens: 4,
                        ..SchedSeq::default()
                    },
                    tenant: (!t.is_empty()).then(|| t.to_string()),
                },
            );
            sched.add(id);
        }
        (sched, seqs)
    }

    /// The tenants ("-": base) of the sequences admitted in one step of at most
    /// `max_num_seqs` running sequences. The step's chunks are computed, so running sequences
    /// need nothing in later steps (they stay running).
    fn admitted(
        sched: &mut Scheduler,
        seqs: &mut HashMap<u64, Seq>,
        max_num_seqs: usize,
    ) -> String {
        let mut alloc = BlockAllocator::new(1024, 16).unwrap();
        let limits = StepLimits {
            max_num_seqs,
            max_batch_tokens: 4096,
        };
        let plan = sched.schedule(seqs, &mut alloc, limits, |_| true);
        for c in &plan.chunks {
            seqs.get_mut(&c.id).unwrap().sched.num_computed = c.start + c.len;
        }
        plan.chunks
            .iter()
            .map(|c| seqs[&c.id].tenant.clone().unwrap_or_else(|| "-".into()))
            .collect::<Vec<_>>()
            .join("")
    }

    #[test]
    fn weights_share_admissions_in_proportion() {
        let queue: Vec<&str> = std::iter::repeat_n(["b", "a"], 20).flatten().collect();
        let policy = TenantPolicy {
            weights: [("a".to_string(), 3)].into(),
            ..TenantPolicy::default()
        };
        let (mut sched, mut seqs) = setup(policy, &queue);
        // Turns by (placed + 1) / weight; ties to b, first in the queue.
        assert_eq!(admitted(&mut sched, &mut seqs, 8), "aabaaaba");
        // Equal weights: alternate, first in the queue first.
        let (mut sched, mut seqs) = setup(TenantPolicy::default(), &queue);
        assert_eq!(admitted(&mut sched, &mut seqs, 6), "bababa");
    }

    #[test]
    fn running_sequences_count_against_a_tenants_share() {
        let queue: Vec<&str> = std::iter::repeat_n(["a", "b"], 10).flatten().collect();
        let (mut sched, mut seqs) = setup(TenantPolicy::default(), &queue);
        assert_eq!(admitted(&mut sched, &mut seqs, 2), "ab");
        // Admitted alone, a runs 2 while b runs 0: b gets the next two turns.
        let (mut sched, mut seqs) = setup(TenantPolicy::default(), &["a", "a", "a", "b", "b", "b"]);
        sched.remove(4);
        sched.remove(5);
        sched.remove(6);
        assert_eq!(admitted(&mut sched, &mut seqs, 2), "aa");
        for id in 4..=6 {
            sched.add(id);
        }
        assert_eq!(admitted(&mut sched, &mut seqs, 5), "bba");
        // The base model at weight 2 gets two turns for a's one.
        let policy = TenantPolicy {
            base_weight: 2,
            ..TenantPolicy::default()
        };
        let queue = ["a", "a", "a", "", "", "", ""];
        let (mut sched, mut seqs) = setup(policy, &queue);
        assert_eq!(admitted(&mut sched, &mut seqs, 1), "-");
        // Turns (running + 1) / weight: base 2/2 ties a 1/1, a is first in the queue.
        assert_eq!(admitted(&mut sched, &mut seqs, 2), "a");
        // base 2/2 < a 2/1, then base 3/2 < a 2/1.
        assert_eq!(admitted(&mut sched, &mut seqs, 4), "--");
        // base 4/2 ties a 2/1 (the tie goes to the tenant placed first last time), then a 3/1
        // loses to base 5/2.
        let next = admitted(&mut sched, &mut seqs, 6);
        assert!(next == "-a" || next == "a-", "{next}");
    }

    #[test]
    fn caps_hold_a_tenant_back_without_blocking_others_or_losing_its_place() {
        let queue = ["a", "a", "a", "a", "b", "", "a", "b"];
        let policy = TenantPolicy {
            max_running_per_adapter: 2,
            caps: [("b".to_string(), 0)].into(),
            ..TenantPolicy::default()
        };
        let (mut sched, mut seqs) = setup(policy, &queue);
        assert_eq!(admitted(&mut sched, &mut seqs, 8), "ab-ab");
        // a is at its cap: nothing more of it, however much room.
        assert_eq!(admitted(&mut sched, &mut seqs, 8), "");
        let waiting: Vec<u64> = sched.waiting_ids().collect();
        assert_eq!(waiting, [3, 4, 7], "a's held sequences kept their order");
        // One of a's running sequences ends: exactly one more is admitted, the oldest.
        sched.remove(1);
        let mut alloc = BlockAllocator::new(1024, 16).unwrap();
        let plan = sched.schedule(
            &mut seqs,
            &mut alloc,
            StepLimits {
                max_num_seqs: 8,
                max_batch_tokens: 4096,
            },
            |_| true,
        );
        let ids: Vec<u64> = plan
            .chunks
            .iter()
            .map(|c| c.id)
            .filter(|&id| id >= 3)
            .collect();
        assert!(ids.contains(&3) && !ids.contains(&4), "{ids:?}");
        // The base model has no cap unless named.
        let policy = TenantPolicy {
            max_running_per_adapter: 1,
            ..TenantPolicy::default()
        };
        let (mut sched, mut seqs) = setup(policy, &["", "", "", "a", "a"]);
        assert_eq!(admitted(&mut sched, &mut seqs, 8), "-a--");
        let policy = TenantPolicy {
            base_cap: 1,
            ..TenantPolicy::default()
        };
        let (mut sched, mut seqs) = setup(policy, &["", "", "a", "a"]);
        assert_eq!(admitted(&mut sched, &mut seqs, 8), "-aa");
    }
}
