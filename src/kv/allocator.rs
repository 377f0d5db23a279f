//! The free list of KV-cache blocks.

use crate::error::{Error, Result};

/// Hands out fixed-size KV-cache blocks (ids `0..num_blocks`). Owned by the engine worker; not
/// shared between threads. Allocation is O(1); freed blocks are reused first (LIFO), and a
/// fresh allocator hands out `0, 1, 2, …` in order.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    block_size: usize,
    free: Vec<u32>,
    in_use: Vec<bool>,
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
            in_use: vec![false; num_blocks],
        })
    }

    /// Blocks currently free.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// All blocks, free or not.
    pub fn num_total(&self) -> usize {
        self.in_use.len()
    }

    /// Token positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Takes a free block, or `None` when all are in use.
    pub fn allocate(&mut self) -> Option<u32> {
        let block = self.free.pop()?;
        if let Some(flag) = self.in_use.get_mut(block as usize) {
            *flag = true;
        }
        Some(block)
    }

    /// Returns `block` to the free list.
    ///
    /// # Errors
    /// `INTERNAL` (a bookkeeping bug) if `block` is out of range or already free; the allocator
    /// is left unchanged.
    pub fn free(&mut self, block: u32) -> Result<()> {
        let total = self.in_use.len();
        let Some(flag) = self.in_use.get_mut(block as usize) else {
            return Err(Error::internal(format!(
                "KV block {block} freed but the cache has only {total} blocks"
            )));
        };
        if !*flag {
            return Err(Error::internal(format!(
                "KV block {block} freed twice (it is not in use)"
            )));
        }
        *flag = false;
        self.free.push(block);
        Ok(())
    }
}
