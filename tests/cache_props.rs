//! Property tests of the adapter caches' bookkeeping: random workloads never evict a pinned
//! entry, never exceed either capacity, and CAPACITY happens exactly when every host entry is
//! pinned.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use loraplex::adapters::{AdapterFormat, NormalizedAdapter};
use loraplex::cache::{Acquired, DeviceSlots, HostCache, LoadState};
use loraplex::ErrorCode;
use proptest::prelude::*;

fn dummy(name: &str) -> Arc<NormalizedAdapter> {
    Arc::new(NormalizedAdapter {
        name: name.into(),
        format: AdapterFormat::HfSafetensors,
        source: Default::default(),
        generation: String::new(),
        layers: Vec::new(),
    })
}

#[derive(Debug, Clone)]
enum Op {
    Acquire(u8),
    Release(u8),
    Complete(u8, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..10).prop_map(Op::Acquire),
        (0u8..10).prop_map(Op::Release),
        (0u8..10, any::<bool>()).prop_map(|(k, ok)| Op::Complete(k, ok)),
    ]
}

proptest! {
    #[test]
    fn host_cache_never_evicts_pinned_or_overflows(cap in 1usize..5, ops in proptest::collection::vec(op(), 1..200)) {
        let mut c = HostCache::new(cap);
        let mut pins: HashMap<u8, usize> = HashMap::new();
        for o in ops {
            match o {
                Op::Acquire(k) => {
                    let key = (format!("a{k}"), 1);
                    let all_pinned = c.len() >= cap && c.iter().all(|(_, e)| e.pins > 0);
                    let present = c.get(&key).is_some();
                    match c.acquire(&key) {
                        Ok(Acquired::MustLoad { evicted }) => {
                            prop_assert!(!present);
                            if let Some(v) = evicted {
                                let vk: u8 = v.0[1..].parse().unwrap();
                                prop_assert_eq!(pins.get(&vk).copied().unwrap_or(0), 0, "evicted a pinned entry");
                            }
                            *pins.entry(k).or_default() += 1;
                        }
                        Ok(Acquired::Cached) => {
                            prop_assert!(present);
                            *pins.entry(k).or_default() += 1;
                        }
                        Err(e) => {
                            prop_assert_eq!(e.code(), ErrorCode::Capacity);
                            prop_assert!(!present && all_pinned, "CAPACITY although an entry was free");
                        }
                    }
                }
                Op::Release(k) => {
                    let key = (format!("a{k}"), 1);
                    if pins.get(&k).copied().unwrap_or(0) > 0 {
                        c.release(&key);
                        *pins.get_mut(&k).unwrap() -= 1;
                    }
                }
                Op::Complete(k, ok) => {
                    let key = (format!("a{k}"), 1);
                    if matches!(c.get(&key).map(|e| &e.state), Some(LoadState::Loading)) {
                        let r = if ok { Ok(dummy(&key.0)) } else { Err(loraplex::Error::invalid_adapter("bad")) };
                        c.complete(&key, r, Duration::ZERO);
                        if !ok && pins.get(&k).copied().unwrap_or(0) == 0 {
                            prop_assert!(c.get(&key).is_none());
                        }
                    }
                }
            }
            prop_assert!(c.len() <= cap);
            for (k, &n) in &pins {
                let key = (format!("a{k}"), 1);
                if n > 0 {
                    let e = c.get(&key);
                    prop_assert!(e.is_some(), "pinned entry a{} vanished", k);
                    prop_assert_eq!(e.unwrap().pins, n);
                }
            }
        }
    }

    #[test]
    fn device_slots_never_exceed_capacity_or_steal_used_slots(n in 1usize..5, ops in proptest::collection::vec((0u8..8, any::<bool>()), 1..300)) {
        let mut d = DeviceSlots::new(n);
        let mut held: Vec<(u8, usize)> = Vec::new();
        for (k, acquire) in ops {
            if acquire {
                let key = (format!("a{k}"), 1);
                let resident = d.lookup(&key);
                let in_use_before = d.in_use();
                match d.acquire(&key) {
                    Some((slot, upload)) => {
                        prop_assert!(slot < n);
                        prop_assert_eq!(upload, resident.is_none());
                        // A slot used by another running adapter is never taken.
                        for &(hk, hs) in &held {
                            if hs == slot {
                                prop_assert_eq!(hk, k, "slot {} stolen from a{}", slot, hk);
                            }
                        }
                        held.push((k, slot));
                    }
                    None => {
                        prop_assert!(resident.is_none());
                        prop_assert_eq!(in_use_before, n, "refused although a slot was idle");
                    }
                }
            } else if let Some(pos) = held.iter().position(|&(hk, _)| hk == k) {
                let (_, slot) = held.remove(pos);
                d.release(slot);
            }
            prop_assert!(d.in_use() <= n);
            let distinct: std::collections::HashSet<u8> = held.iter().map(|&(k, _)| k).collect();
            prop_assert_eq!(distinct.len(), d.in_use());
        }
    }
}
