//! The host adapter cache (DESIGN.md 1.1): parsed, validated adapters in RAM, LRU with capacity
//! `max_cpu_loras`; an entry used by an active request is pinned. Pure logic, no I/O: loads are
//! started by the caller when [`HostCache::acquire`] says so and finished with
//! [`HostCache::complete`].
//!
//! Threading: not synchronised; the engine keeps it behind a mutex shared by submitting threads,
//! the loader and the worker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::adapters::NormalizedAdapter;
use crate::error::{Error, ErrorCode};

/// An adapter generation: `(name, generation number)`.
pub type AdapterKey = (String, u64);

/// Where an entry's load stands.
#[derive(Debug, Clone)]
pub enum LoadState {
    /// Being parsed and validated on the loader thread.
    Loading,
    /// Usable.
    Ready(Arc<NormalizedAdapter>),
    /// Refused; requests waiting on it fail with this error.
    Failed(Error),
}

/// One cached adapter generation.
#[derive(Debug, Clone)]
pub struct HostEntry {
    /// Load state.
    pub state: LoadState,
    /// Active requests using it (pinned while > 0).
    pub pins: usize,
    /// LRU clock value of the last acquire.
    pub last_used: u64,
    /// How long parsing and validation took.
    pub load_time: Option<Duration>,
}

/// What [`HostCache::acquire`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The entry exists (ready, loading or failed); it is now pinned once more.
    Cached,
    /// A new entry was made (pinned, `Loading`); the caller must start the load. `evicted` is the
    /// unpinned entry dropped to make room, if any.
    MustLoad {
        /// Entry evicted to make room.
        evicted: Option<AdapterKey>,
    },
}

/// See the module docs.
#[derive(Debug)]
pub struct HostCache {
    capacity: usize,
    entries: HashMap<AdapterKey, HostEntry>,
    clock: u64,
}

impl HostCache {
    /// An empty cache holding at most `capacity` adapter generations.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            clock: 0,
        }
    }

    /// Capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// An entry.
    pub fn get(&self, key: &AdapterKey) -> Option<&HostEntry> {
        self.entries.get(key)
    }
    /// Every entry.
    pub fn iter(&self) -> impl Iterator<Item = (&AdapterKey, &HostEntry)> {
        self.entries.iter()
    }

    /// Pins `key` for a new request, creating a `Loading` entry when absent. When the cache is
    /// full and every entry is pinned, fails with CAPACITY (the 429) naming the active adapters
    /// and the limit; nothing changes then.
    pub fn acquire(&mut self, key: &AdapterKey) -> Result<Acquired, Error> {
        self.clock += 1;
        if let Some(e) = self.entries.get_mut(key) {
            e.pins += 1;
            e.last_used = self.clock;
            return Ok(Acquired::Cached);
        }
        let mut evicted = None;
        if self.entries.len() >= self.capacity {
            let victim = self
                .entries
                .iter()
                .filter(|(_, e)| e.pins == 0)
                .min_by_key(|(k, e)| (e.last_used, (*k).clone()))
                .map(|(k, _)| k.clone());
            match victim {
                Some(v) => {
                    self.entries.remove(&v);
                    evicted = Some(v);
                }
                None => {
                    let mut active: Vec<&str> =
                        self.entries.keys().map(|(n, _)| n.as_str()).collect();
                    active.sort_unstable();
                    active.dedup();
                    return Err(Error::new(
                        ErrorCode::Capacity,
                        format!(
                            "adapter \"{}\" cannot be loaded: {} adapters are in use by active requests ({}) and limit max_cpu_loras ({}) reached; retry when one finishes",
                            key.0,
                            active.len(),
                            active.join(", "),
                            self.capacity
                        ),
                    ));
                }
            }
        }
        self.entries.insert(
            key.clone(),
            HostEntry {
                state: LoadState::Loading,
                pins: 1,
                last_used: self.clock,
                load_time: None,
            },
        );
        Ok(Acquired::MustLoad { evicted })
    }

    /// The fewest pins any pinned entry holds (how many sequences must end before some adapter
    /// can leave a full cache); 0 when nothing is pinned.
    pub fn fewest_pins(&self) -> usize {
        self.entries
            .values()
            .map(|e| e.pins)
            .filter(|&p| p > 0)
            .min()
            .unwrap_or(0)
    }

    /// Pins an existing entry `n` more times (a request's further sequences); absent keys are
    /// ignored (an entry just acquired is always present: pinned entries are never dropped).
    pub fn add_pins(&mut self, key: &AdapterKey, n: usize) {
        if let Some(e) = self.entries.get_mut(key) {
            e.pins += n;
        }
    }

    /// Unpins `key` once (a request using it ended). A failed entry with no pins is dropped.
    pub fn release(&mut self, key: &AdapterKey) {
        let drop_it = match self.entries.get_mut(key) {
            Some(e) => {
                e.pins = e.pins.saturating_sub(1);
                e.pins == 0 && matches!(e.state, LoadState::Failed(_))
            }
            None => false,
        };
        if drop_it {
            self.entries.remove(key);
        }
    }

    /// Records the outcome of a load started by `acquire`. A loaded adapter whose content hash
    /// (`NormalizedAdapter::generation`) equals that of an adapter already in the cache shares
    /// its copy (whatever the names): the new one is dropped.
    pub fn complete(
        &mut self,
        key: &AdapterKey,
        result: Result<Arc<NormalizedAdapter>, Error>,
        took: Duration,
    ) {
        let result = result.map(|a| self.shared_copy(&a).unwrap_or(a));
        if let Some(e) = self.entries.get_mut(key) {
            e.state = match result {
                Ok(a) => LoadState::Ready(a),
                Err(err) => LoadState::Failed(err),
            };
            e.load_time = Some(took);
            if e.pins == 0 && matches!(e.state, LoadState::Failed(_)) {
                self.entries.remove(key);
            }
        }
    }

    /// The copy already cached of an adapter with `a`'s content hash, if any.
    fn shared_copy(&self, a: &NormalizedAdapter) -> Option<Arc<NormalizedAdapter>> {
        self.entries.values().find_map(|e| match &e.state {
            LoadState::Ready(x) if x.generation == a.generation => Some(x.clone()),
            _ => None,
        })
    }

    /// Distinct adapter copies held (entries sharing content count once) and their bytes.
    pub fn distinct_copies(&self) -> (usize, usize) {
        let mut seen: Vec<*const NormalizedAdapter> = Vec::new();
        let mut bytes = 0;
        for e in self.entries.values() {
            if let LoadState::Ready(a) = &e.state {
                let p = Arc::as_ptr(a);
                if !seen.contains(&p) {
                    seen.push(p);
                    bytes += a.bytes();
                }
            }
        }
        (seen.len(), bytes)
    }

    /// Drops unpinned entries of generations other than `keep` for adapter `name` (after a
    /// refresh), and every unpinned entry of adapters no longer present when `keep` is None.
    pub fn forget_stale(&mut self, name: &str, keep: Option<u64>) {
        self.entries
            .retain(|(n, g), e| n != name || e.pins > 0 || Some(*g) == keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> AdapterKey {
        (name.to_string(), 1)
    }

    /// Pins `name` and releases it at once (an access by a request that already ended); returns
    /// the entry evicted to make room, if any.
    fn touch(c: &mut HostCache, name: &str) -> Option<AdapterKey> {
        let r = c.acquire(&key(name)).unwrap();
        c.release(&key(name));
        match r {
            Acquired::MustLoad { evicted } => evicted,
            Acquired::Cached => None,
        }
    }

    #[test]
    fn evicts_the_least_recently_acquired_entry() {
        let mut c = HostCache::new(3);
        for name in ["a", "b", "c"] {
            assert_eq!(touch(&mut c, name), None, "evicted while not full");
        }
        // Order of last use: b, c, a.
        assert_eq!(c.acquire(&key("a")).unwrap(), Acquired::Cached);
        c.release(&key("a"));
        assert_eq!(touch(&mut c, "d"), Some(key("b")));
        assert_eq!(touch(&mut c, "e"), Some(key("c")));
        // Order: a, d, e; using d makes a then e the oldest.
        touch(&mut c, "d");
        assert_eq!(touch(&mut c, "f"), Some(key("a")));
        assert_eq!(touch(&mut c, "g"), Some(key("e")));
        let mut left: Vec<_> = c.iter().map(|(k, _)| k.0.clone()).collect();
        left.sort();
        assert_eq!(left, ["d", "f", "g"]);
    }

    #[test]
    fn pinned_entries_are_never_evicted() {
        let mut c = HostCache::new(2);
        // a is the least recently used but pinned by an active request.
        assert!(matches!(
            c.acquire(&key("a")).unwrap(),
            Acquired::MustLoad { evicted: None }
        ));
        touch(&mut c, "b");
        assert_eq!(touch(&mut c, "c"), Some(key("b")));
        // a and c pinned: a new adapter is refused with CAPACITY and nothing changes.
        assert_eq!(c.acquire(&key("c")).unwrap(), Acquired::Cached);
        let err = c.acquire(&key("d")).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Capacity);
        assert!(
            err.message().contains("limit max_cpu_loras (2)"),
            "{}",
            err.message()
        );
        assert!(c.get(&key("a")).is_some() && c.get(&key("c")).is_some());
        assert_eq!(c.len(), 2);
        // Once c's request ends, c (not the older but pinned a) makes room.
        c.release(&key("c"));
        assert_eq!(touch(&mut c, "d"), Some(key("c")));
        assert_eq!(c.get(&key("a")).map(|e| e.pins), Some(1));
    }

    #[test]
    fn a_failed_load_leaves_once_unpinned() {
        let mut c = HostCache::new(2);
        c.acquire(&key("bad")).unwrap();
        c.acquire(&key("bad")).unwrap();
        c.complete(
            &key("bad"),
            Err(Error::invalid_adapter("broken")),
            Duration::ZERO,
        );
        c.release(&key("bad"));
        assert!(c.get(&key("bad")).is_some(), "dropped while still pinned");
        c.release(&key("bad"));
        assert!(c.get(&key("bad")).is_none());
    }
}
