//! The free list of KV-cache blocks.

use super::prefix::{BlockHash, PrefixIndex};
use crate::error::{Error, Result};

/// Hands out fixed-size KV-cache blocks (ids `0..num_blocks`). Owned by the engine worker; not
/// shared between threads. Allocation is O(1); freed blocks are reused first (LIFO), and a
/// fresh allocator hands out `0, 1, 2, …` in order.
///
/// Blocks are reference-counted: [`BlockAllocator::share`] adds a holder to a block in use (the
/// choices of one request share the full blocks of its prompt), and a block returns to the free
/// list when its last holder frees it.
///
/// With prefix caching on, full blocks can also be kept by name ([`BlockAllocator::cache_insert`],
/// [`BlockAllocator::cache_lookup`], see [`crate::kv::prefix`]): the cache is one more holder,
/// and a cached block that only the cache holds counts as free — it is evicted, least recently
/// used first, when a block is allocated and the free list is empty.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    block_size: usize,
    free: Vec<u32>,
    /// Holders of each block (0 = free).
    refs: Vec<u32>,
    /// The prefix cache, when on.
    cache: Option<PrefixIndex>,
}

impl BlockAllocator {
    /// An allocator of `num_blocks` blocks of `block_size` token positions each.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` if `block_size` is 0 or the cache has more than `2^32` slots
    /// (`num_blocks * block_size`; slots are `u32`).
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self> {
        if block_size == 0 {
            return Err(Error::invalid_argument("KV block_size must be at least 1"));
        }
        let fits = matches!(num_blocks.checked_mul(block_size), Some(s) if s as u64 <= 1u64 << 32);
        if !fits {
            return Err(Error::invalid_argument(format!(
                "KV cache of {num_blocks} blocks x {block_size} positions exceeds 2^32 slots"
            )));
        }
        let n = u32::try_from(num_blocks).map_err(|_| {
            Error::invalid_argument(format!("KV num_blocks {num_blocks} exceeds u32"))
        })?;
        Ok(Self {
            block_size,
            free: (0..n).rev().collect(),
            refs: vec![0; num_blocks],
            cache: None,
        })
    }

    /// Turns prefix caching on (see the type docs). Off by default.
    pub fn with_prefix_cache(mut self) -> Self {
        self.cache = Some(PrefixIndex::default());
        self
    }

    /// True when prefix caching is on.
    pub fn caches_prefixes(&self) -> bool {
        self.cache.is_some()
    }

    /// Blocks that can be allocated: free ones and cached ones only the cache holds.
    pub fn num_free(&self) -> usize {
        self.free.len() + self.cache.as_ref().map_or(0, PrefixIndex::num_evictable)
    }

    /// Blocks held by the prefix cache (some may also be in use by sequences).
    pub fn num_cached(&self) -> usize {
        self.cache.as_ref().map_or(0, PrefixIndex::len)
    }

    /// Keeps `block` (in use, full) in the prefix cache under `hash`, unless that name or block
    /// is cached already or caching is off. Returns whether it was added.
    ///
    /// # Errors
    /// `INTERNAL` if `block` is not in use.
    pub fn cache_insert(&mut self, hash: BlockHash, block: u32) -> Result<bool> {
        let Some(cache) = &mut self.cache else {
            return Ok(false);
        };
        match self.refs.get_mut(block as usize) {
            Some(r) if *r > 0 => {
                if cache.insert(hash, block) {
                    *r += 1;
                    Ok(true)
                } else {
                    Ok(false)
                }
            }
            _ => Err(Error::internal(format!(
                "KV block {block} cached but it is not in use"
            ))),
        }
    }

    /// The cached block named `hash`, with one more holder (the caller, who frees it once), or
    /// `None` when it is not cached.
    pub fn cache_lookup(&mut self, hash: &BlockHash) -> Option<u32> {
        let block = self.cache.as_ref()?.get(hash)?;
        self.share(block).ok()?;
        Some(block)
    }

    /// All blocks, free or not.
    pub fn num_total(&self) -> usize {
        self.refs.len()
    }

    /// Token positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Takes a free block, or `None` when all are in use.
    pub fn allocate(&mut self) -> Option<u32> {
        if let Some(block) = self.free.pop() {
            if let Some(r) = self.refs.get_mut(block as usize) {
                *r = 1;
            }
            return Some(block);
        }
        // The cache's reference passes to the caller.
        self.cache.as_mut()?.evict()
    }

    /// Adds a holder to `block`, which must be in use; each holder frees it once.
    ///
    /// # Errors
    /// `INTERNAL` (a bookkeeping bug) if `block` is out of range or free.
    pub fn share(&mut self, block: u32) -> Result<()> {
        match self.refs.get_mut(block as usize) {
            Some(r) if *r > 0 => {
                *r += 1;
                if let Some(c) = &mut self.cache {
                    c.pin(block);
                }
                Ok(())
            }
            _ => Err(Error::internal(format!(
                "KV block {block} shared but it is not in use"
            ))),
        }
    }

    /// Holders of `block` (0 when free or out of range).
    pub fn holders(&self, block: u32) -> u32 {
        self.refs.get(block as usize).copied().unwrap_or(0)
    }

    /// Drops one holder of `block`; the last one returns it to the free list.
    ///
    /// # Errors
    /// `INTERNAL` (a bookkeeping bug) if `block` is out of range or already free; the allocator
    /// is left unchanged.
    pub fn free(&mut self, block: u32) -> Result<()> {
        let total = self.refs.len();
        let Some(r) = self.refs.get_mut(block as usize) else {
            return Err(Error::internal(format!(
                "KV block {block} freed but the cache has only {total} blocks"
            )));
        };
        if *r == 0 {
            return Err(Error::internal(format!(
                "KV block {block} freed twice (it is not in use)"
            )));
        }
        *r -= 1;
        match (*r, &mut self.cache) {
            (0, _) => self.free.push(block),
            (1, Some(c)) if c.is_cached(block) => c.unpin(block),
            _ => {}
        }
        Ok(())
    }
}
