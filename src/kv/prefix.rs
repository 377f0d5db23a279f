//! Prefix caching: full KV blocks named by a hash chain, so that a request whose tokens start
//! like an earlier one's reuses its blocks instead of recomputing them.
//!
//! Block `j` of a sequence is named by `hash(name of block j-1, owner, its block_size token ids)`
//! (SHA-256), so a name stands for every token before the block's end and for who computed the
//! K/V: the base model or one adapter generation (the same tokens under two adapters, or under a
//! refreshed adapter, have different K/V and different names). [`PrefixIndex`] maps names to
//! blocks; the [`crate::kv::BlockAllocator`] owns it and evicts its least recently used blocks
//! that nobody else holds when it runs out of free ones.

use std::collections::{BTreeSet, HashMap};

use sha2::{Digest, Sha256};

/// The name of one full KV block: see the module docs.
pub type BlockHash = [u8; 32];

/// Who computed a block's K/V: empty for the base model, else every adapter the sequence runs
/// with, in order, as (name, generation, mixture scale) (one entry at scale 1 for a request
/// naming one adapter).
pub type KvOwner<'a> = &'a [(&'a str, u64, f32)];

/// The name of a block holding `tokens` after the block named `parent` (`None` for the first
/// block), computed by `owner`.
pub fn block_hash(parent: Option<&BlockHash>, owner: KvOwner<'_>, tokens: &[u32]) -> BlockHash {
    let mut h = Sha256::new();
    match parent {
        Some(p) => {
            h.update([1u8]);
            h.update(p);
        }
        None => h.update([0u8]),
    }
    h.update((owner.len() as u64).to_le_bytes());
    for (name, generation, scale) in owner {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(generation.to_le_bytes());
        h.update(scale.to_bits().to_le_bytes());
    }
    h.update((tokens.len() as u64).to_le_bytes());
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    h.finalize().into()
}

/// The cached blocks: name → block, each block's name and last use, and the blocks only the
/// cache holds (evictable), least recently used first. Pure bookkeeping; the allocator keeps
/// the reference counts.
#[derive(Debug, Clone, Default)]
pub(crate) struct PrefixIndex {
    by_hash: HashMap<BlockHash, u32>,
    by_block: HashMap<u32, (BlockHash, u64)>,
    evictable: BTreeSet<(u64, u32)>,
    clock: u64,
}

impl PrefixIndex {
    /// Blocks in the cache.
    pub fn len(&self) -> usize {
        self.by_block.len()
    }

    /// Blocks only the cache holds.
    pub fn num_evictable(&self) -> usize {
        self.evictable.len()
    }

    pub fn is_cached(&self, block: u32) -> bool {
        self.by_block.contains_key(&block)
    }

    pub fn get(&self, hash: &BlockHash) -> Option<u32> {
        self.by_hash.get(hash).copied()
    }

    /// Adds `block` under `hash` (not evictable: its writer holds it). False when the name or the
    /// block is already cached.
    pub fn insert(&mut self, hash: BlockHash, block: u32) -> bool {
        if self.by_hash.contains_key(&hash) || self.by_block.contains_key(&block) {
            return false;
        }
        self.clock += 1;
        self.by_hash.insert(hash, block);
        self.by_block.insert(block, (hash, self.clock));
        true
    }

    /// `block` gained a holder besides the cache: not evictable, and used now.
    pub fn pin(&mut self, block: u32) {
        self.clock += 1;
        if let Some((_, used)) = self.by_block.get_mut(&block) {
            self.evictable.remove(&(*used, block));
            *used = self.clock;
        }
    }

    /// Only the cache holds `block` now: it may be evicted, after those unused for longer.
    pub fn unpin(&mut self, block: u32) {
        if let Some((_, used)) = self.by_block.get(&block) {
            self.evictable.insert((*used, block));
        }
    }

    /// Forgets the least recently used evictable block and returns it (the cache's reference
    /// passes to the caller).
    pub fn evict(&mut self) -> Option<u32> {
        let (_, block) = self.evictable.pop_first()?;
        if let Some((hash, _)) = self.by_block.remove(&block) {
            self.by_hash.remove(&hash);
        }
        Some(block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_depend_on_the_whole_prefix_and_the_owner() {
        let a = block_hash(None, &[], &[1, 2, 3]);
        assert_eq!(a, block_hash(None, &[], &[1, 2, 3]));
        assert_ne!(a, block_hash(None, &[], &[1, 2, 4]));
        assert_ne!(a, block_hash(None, &[("x", 1, 1.0)], &[1, 2, 3]));
        // A mixture differs from its parts, by scale and by order.
        let mix = block_hash(None, &[("x", 1, 0.5), ("y", 1, 0.5)], &[1, 2, 3]);
        assert_ne!(mix, block_hash(None, &[("x", 1, 0.5)], &[1, 2, 3]));
        assert_ne!(
            mix,
            block_hash(None, &[("x", 1, 0.5), ("y", 1, 0.25)], &[1, 2, 3])
        );
        assert_ne!(
            mix,
            block_hash(None, &[("y", 1, 0.5), ("x", 1, 0.5)], &[1, 2, 3])
        );
        // Names cannot run into each other.
        assert_ne!(
            block_hash(None, &[("ab", 1, 1.0), ("c", 1, 1.0)], &[1]),
            block_hash(None, &[("a", 1, 1.0), ("bc", 1, 1.0)], &[1])
        );
        assert_ne!(
            block_hash(None, &[("x", 1, 1.0)], &[1, 2, 3]),
            block_hash(None, &[("x", 2, 1.0)], &[1, 2, 3])
        );
        let b = block_hash(Some(&a), &[], &[4]);
        assert_ne!(
            b,
            block_hash(Some(&block_hash(None, &[], &[9, 2, 3])), &[], &[4])
        );
        assert_ne!(b, block_hash(None, &[], &[4]));
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let mut ix = PrefixIndex::default();
        for (k, b) in [(1u8, 10u32), (2, 11), (3, 12)] {
            assert!(ix.insert([k; 32], b));
        }
        assert!(!ix.insert([1; 32], 13), "name already cached");
        ix.unpin(11);
        ix.unpin(10);
        ix.unpin(12);
        ix.pin(11);
        ix.unpin(11); // used last now
        assert_eq!(ix.num_evictable(), 3);
        assert_eq!(ix.evict(), Some(10));
        assert_eq!(ix.evict(), Some(12));
        assert_eq!(ix.get(&[2; 32]), Some(11));
        assert_eq!(ix.evict(), Some(11));
        assert_eq!((ix.evict(), ix.len()), (None, 0));
    }
}
