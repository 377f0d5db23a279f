//! The device adapter cache's bookkeeping (DESIGN.md 1.1): `max_gpu_loras` slots of the backend's
//! adapter arena, LRU among slots no running sequence uses. Pure logic; the worker uploads
//! weights into a slot when [`DeviceSlots::acquire`] says the slot is new, and ahead of
//! admission into slots [`DeviceSlots::prefetch`] frees up.
//!
//! Slots are keyed by `K`: the engine uses the adapter's content hash, so adapters whose files
//! hash the same share one slot whatever their names (tests use [`AdapterKey`]).

use super::host::AdapterKey;

/// The engine's device-slot key: an adapter's content hash (`NormalizedAdapter::generation`), so
/// adapters with the same files share a slot.
pub type DeviceKey = String;

#[derive(Debug, Clone)]
struct Slot<K> {
    key: K,
    users: usize,
    last_used: u64,
}

/// See the module docs. Owned by the worker thread.
#[derive(Debug)]
pub struct DeviceSlots<K = AdapterKey> {
    slots: Vec<Option<Slot<K>>>,
    clock: u64,
    uploads: u64,
}

impl<K: Clone + Eq> DeviceSlots<K> {
    /// `n` empty slots.
    pub fn new(n: usize) -> Self {
        Self {
            slots: vec![None; n.max(1)],
            clock: 0,
            uploads: 0,
        }
    }
    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }
    /// Always false (at least one slot).
    pub fn is_empty(&self) -> bool {
        false
    }
    /// The slot holding `key`, if resident.
    pub fn lookup(&self, key: &K) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| &s.key == key))
    }
    /// Uploads done so far.
    pub fn uploads(&self) -> u64 {
        self.uploads
    }
    /// True when some slot is empty or used by no running sequence (room for a prefetch).
    pub fn has_idle(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.as_ref().is_none_or(|s| s.users == 0))
    }
    /// Distinct adapters with running sequences.
    pub fn in_use(&self) -> usize {
        self.slots.iter().flatten().filter(|s| s.users > 0).count()
    }
    /// `(slot, key, users)` of every occupied slot.
    pub fn occupied(&self) -> impl Iterator<Item = (usize, &K, usize)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, &s.key, s.users)))
    }

    /// Gives a running sequence of `key` a slot: the resident one, else an empty one, else the
    /// least recently used slot that no running sequence uses. Returns `(slot, needs_upload)`, or
    /// None when every slot is in use (the sequence waits).
    pub fn acquire(&mut self, key: &K) -> Option<(usize, bool)> {
        self.clock += 1;
        if let Some(i) = self.lookup(key) {
            if let Some(s) = self.slots[i].as_mut() {
                s.users += 1;
                s.last_used = self.clock;
            }
            return Some((i, false));
        }
        let target = self.free_slot(|_| true)?;
        self.slots[target] = Some(Slot {
            key: key.clone(),
            users: 1,
            last_used: self.clock,
        });
        self.uploads += 1;
        Some((target, true))
    }

    /// An empty slot, else the least recently used slot no running sequence uses whose key
    /// `may_evict` allows.
    fn free_slot(&self, may_evict: impl Fn(&K) -> bool) -> Option<usize> {
        self.slots.iter().position(Option::is_none).or_else(|| {
            self.slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    s.as_ref()
                        .filter(|s| s.users == 0 && may_evict(&s.key))
                        .map(|s| (s.last_used, i))
                })
                .min()
                .map(|(_, i)| i)
        })
    }

    /// Makes room for `key` ahead of admission (no user yet): returns the slot to upload it
    /// into, an empty one or the least recently used idle one whose key is not in `keep` (the
    /// adapters that requests ahead in line need); `None` when `key` is already resident or no
    /// such slot exists. The slot counts as resident from now on: the caller uploads into it
    /// and, if that fails, evicts it.
    pub fn prefetch(&mut self, key: &K, keep: &[K]) -> Option<usize> {
        if self.lookup(key).is_some() {
            return None;
        }
        let target = self.free_slot(|k| !keep.contains(k))?;
        self.clock += 1;
        self.slots[target] = Some(Slot {
            key: key.clone(),
            users: 0,
            last_used: self.clock,
        });
        self.uploads += 1;
        Some(target)
    }

    /// A sequence using `slot` left the running set.
    pub fn release(&mut self, slot: usize) {
        if let Some(Some(s)) = self.slots.get_mut(slot) {
            s.users = s.users.saturating_sub(1);
        }
    }

    /// Forgets a slot's content (e.g. its upload failed).
    pub fn evict(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = None;
        }
    }
}

/// An adapter's modules as the backend's upload format (borrowing the adapter's weights).
pub fn slot_data(
    adapter: &crate::adapters::NormalizedAdapter,
) -> Vec<[Option<crate::backend::LoraWeights<'_>>; 7]> {
    adapter
        .layers
        .iter()
        .map(|mods| {
            std::array::from_fn(|t| {
                mods[t].as_ref().map(|m| crate::backend::LoraWeights {
                    rank: m.rank,
                    a: &m.a,
                    b: &m.b,
                    scale: m.scale,
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> AdapterKey {
        (name.to_string(), 1)
    }

    /// Acquires `name` and releases it at once (a request that ran and ended); returns
    /// `(slot, uploaded)`.
    fn touch(d: &mut DeviceSlots, name: &str) -> (usize, bool) {
        let r = d.acquire(&key(name)).unwrap();
        d.release(r.0);
        r
    }

    #[test]
    fn empty_slots_first_then_the_least_recently_used() {
        let mut d = DeviceSlots::new(3);
        assert_eq!(touch(&mut d, "a"), (0, true));
        assert_eq!(touch(&mut d, "b"), (1, true));
        assert_eq!(
            touch(&mut d, "a"),
            (0, false),
            "a resident adapter was uploaded again"
        );
        assert_eq!(touch(&mut d, "c"), (2, true));
        // Order of last use: b, a, c.
        assert_eq!(touch(&mut d, "d"), (1, true));
        assert_eq!(d.lookup(&key("b")), None);
        assert_eq!(touch(&mut d, "e"), (0, true));
        assert_eq!(d.lookup(&key("a")), None);
        touch(&mut d, "c");
        assert_eq!(
            touch(&mut d, "f"),
            (1, true),
            "d was the least recently used"
        );
        assert_eq!(d.uploads(), 6);
    }

    #[test]
    fn slots_in_use_are_never_taken() {
        let mut d = DeviceSlots::new(2);
        // a: least recently used but running; b: idle.
        let (sa, _) = d.acquire(&key("a")).unwrap();
        touch(&mut d, "b");
        let (sc, up) = d.acquire(&key("c")).unwrap();
        assert!(up);
        assert_ne!(sc, sa, "took the slot of a running adapter");
        assert_eq!(d.lookup(&key("a")), Some(sa));
        // Both slots in use: a fourth adapter waits; a running one still shares its slot.
        assert!(!d.has_idle());
        assert_eq!(d.acquire(&key("d")), None);
        assert_eq!(d.acquire(&key("a")), Some((sa, false)));
        assert_eq!(d.in_use(), 2);
        // a's two users end: its slot is the only one free.
        d.release(sa);
        d.release(sa);
        assert_eq!(d.acquire(&key("d")), Some((sa, true)));
    }

    #[test]
    fn prefetch_takes_free_slots_only_and_spares_what_is_kept() {
        let mut d = DeviceSlots::new(3);
        let (sa, _) = d.acquire(&key("a")).unwrap(); // running
        touch(&mut d, "b"); // idle, older
        touch(&mut d, "c"); // idle, newer
                            // b is the LRU idle slot, but kept for a request ahead in line: c's slot is taken.
        let s = d.prefetch(&key("p"), &[key("b")]).unwrap();
        assert_eq!(d.lookup(&key("p")), Some(s));
        assert_eq!(d.lookup(&key("c")), None);
        assert!(d.lookup(&key("b")).is_some() && d.lookup(&key("a")) == Some(sa));
        assert!(d.has_idle());
        // Resident already: nothing to do. Everything else running or kept: no room.
        assert_eq!(d.prefetch(&key("p"), &[]), None);
        assert_eq!(d.prefetch(&key("q"), &[key("b"), key("p")]), None);
        // The prefetched adapter's request then finds it resident.
        assert_eq!(d.acquire(&key("p")), Some((s, false)));
        assert_eq!(d.uploads(), 4);
    }

    #[test]
    fn an_evicted_slot_is_empty_and_reused_first() {
        let mut d = DeviceSlots::new(2);
        touch(&mut d, "a");
        touch(&mut d, "b");
        d.evict(1);
        assert_eq!(d.lookup(&key("b")), None);
        // The empty slot wins over the older idle a.
        assert_eq!(touch(&mut d, "c"), (1, true));
        assert_eq!(d.lookup(&key("a")), Some(0));
    }
}
