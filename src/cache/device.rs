//! The device adapter cache's bookkeeping (DESIGN.md 1.1): `max_gpu_loras` slots of the backend's
//! adapter arena, LRU among slots no running sequence uses. Pure logic; the worker uploads
//! weights into a slot when [`DeviceSlots::acquire`] says the slot is new.

use super::host::AdapterKey;

#[derive(Debug, Clone)]
struct Slot {
    key: AdapterKey,
    users: usize,
    last_used: u64,
}

/// See the module docs. Owned by the worker thread.
#[derive(Debug)]
pub struct DeviceSlots {
    slots: Vec<Option<Slot>>,
    clock: u64,
    uploads: u64,
}

impl DeviceSlots {
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
    pub fn lookup(&self, key: &AdapterKey) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| &s.key == key))
    }
    /// Uploads done so far.
    pub fn uploads(&self) -> u64 {
        self.uploads
    }
    /// Distinct adapters with running sequences.
    pub fn in_use(&self) -> usize {
        self.slots.iter().flatten().filter(|s| s.users > 0).count()
    }
    /// `(slot, key, users)` of every occupied slot.
    pub fn occupied(&self) -> impl Iterator<Item = (usize, &AdapterKey, usize)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, &s.key, s.users)))
    }

    /// Gives a running sequence of `key` a slot: the resident one, else an empty one, else the
    /// least recently used slot that no running sequence uses. Returns `(slot, needs_upload)`, or
    /// None when every slot is in use (the sequence waits).
    pub fn acquire(&mut self, key: &AdapterKey) -> Option<(usize, bool)> {
        self.clock += 1;
        if let Some(i) = self.lookup(key) {
            if let Some(s) = self.slots[i].as_mut() {
                s.users += 1;
                s.last_used = self.clock;
            }
            return Some((i, false));
        }
        let target = self.slots.iter().position(Option::is_none).or_else(|| {
            self.slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    s.as_ref()
                        .filter(|s| s.users == 0)
                        .map(|s| (s.last_used, i))
                })
                .min()
                .map(|(_, i)| i)
        })?;
        self.slots[target] = Some(Slot {
            key: key.clone(),
            users: 1,
            last_used: self.clock,
        });
        self.uploads += 1;
        Some((target, true))
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
        assert_eq!(d.acquire(&key("d")), None);
        assert_eq!(d.acquire(&key("a")), Some((sa, false)));
        assert_eq!(d.in_use(), 2);
        // a's two users end: its slot is the only one free.
        d.release(sa);
        d.release(sa);
        assert_eq!(d.acquire(&key("d")), Some((sa, true)));
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
