//! One sequence's list of KV-cache blocks.

use super::allocator::BlockAllocator;
use crate::error::{Error, Result};

/// The blocks of one sequence, in position order, and how many token positions are filled.
///
/// Block `j` holds positions `j*block_size .. (j+1)*block_size`. The table does not store the
/// block size: pass the allocator's ([`BlockAllocator::block_size`]). Owned by the engine
/// worker alongside the sequence. Dropping a table does not free its blocks: call
/// [`BlockTable::release`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    blocks: Vec<u32>,
    num_tokens: usize,
}

impl BlockTable {
    /// An empty table (no blocks, no tokens).
    pub fn new() -> Self {
        Self::default()
    }

    /// The physical block ids, in position order.
    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// Token positions filled so far (advanced by [`BlockTable::advance`]).
    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// Extra blocks needed so that `num_tokens + extra_tokens` positions fit (0 if they already
    /// do, or if `block_size` is 0).
    pub fn blocks_needed(&self, extra_tokens: usize, block_size: usize) -> usize {
        if block_size == 0 {
            return 0;
        }
        let tokens = self.num_tokens.saturating_add(extra_tokens);
        tokens
            .div_ceil(block_size)
            .saturating_sub(self.blocks.len())
    }

    /// Makes room for `extra_tokens` more positions, taking blocks from `alloc`.
    /// All-or-nothing: if `alloc` has too few free blocks, nothing is allocated and `false` is
    /// returned. Does not advance `num_tokens`.
    pub fn reserve(&mut self, alloc: &mut BlockAllocator, extra_tokens: usize) -> bool {
        let needed = self.blocks_needed(extra_tokens, alloc.block_size());
        if needed > alloc.num_free() {
            return false;
        }
        self.blocks.reserve(needed);
        let before = self.blocks.len();
        for _ in 0..needed {
            match alloc.allocate() {
                Some(block) => self.blocks.push(block),
                None => {
                    // Unreachable after the check above; undo to stay all-or-nothing.
                    for block in self.blocks.drain(before..) {
                        // These blocks were just allocated, so freeing them cannot fail.
                        let _ = alloc.free(block);
                    }
                    return false;
                }
            }
        }
        true
    }

    /// A new table holding this table's first `tokens` positions, sharing their blocks (one
    /// more holder each in `alloc`). `tokens` must be a whole number of blocks and at most
    /// [`BlockTable::num_tokens`]: shared blocks are full, so nobody writes to them again.
    ///
    /// # Errors
    /// `INTERNAL` if `tokens` is not a multiple of the block size, exceeds the filled positions,
    /// or a block is not in use; nothing is shared then.
    pub fn share_prefix(&self, tokens: usize, alloc: &mut BlockAllocator) -> Result<BlockTable> {
        let bs = alloc.block_size();
        if bs == 0 || !tokens.is_multiple_of(bs) || tokens > self.num_tokens {
            return Err(Error::internal(format!(
                "cannot share {tokens} positions of a table with {} filled (block size {bs})",
                self.num_tokens
            )));
        }
        let Some(blocks) = self.blocks.get(..tokens / bs) else {
            return Err(Error::internal(format!(
                "cannot share {tokens} positions of a table with {} blocks",
                self.blocks.len()
            )));
        };
        if let Some(&b) = blocks.iter().find(|&&b| alloc.holders(b) == 0) {
            return Err(Error::internal(format!(
                "KV block {b} shared but it is not in use"
            )));
        }
        for &b in blocks {
            alloc.share(b)?;
        }
        Ok(BlockTable {
            blocks: blocks.to_vec(),
            num_tokens: tokens,
        })
    }

    /// Appends `block`, already holding the K/V of the next `block_size` positions (a prefix
    /// cache hit; the caller passes its hold on the block to the table), and marks them filled.
    ///
    /// # Errors
    /// `INTERNAL` unless every position of the table's blocks is filled.
    pub fn push_full_block(&mut self, block: u32, block_size: usize) -> Result<()> {
        if self.num_tokens != self.blocks.len() * block_size {
            return Err(Error::internal(format!(
                "a full block appended to a table of {} blocks with {} positions filled",
                self.blocks.len(),
                self.num_tokens
            )));
        }
        self.blocks.push(block);
        self.num_tokens += block_size;
        Ok(())
    }

    /// Marks `n` more positions filled (after their K/V were written). Does not check capacity:
    /// positions without a block have no [`BlockTable::slot`].
    pub fn advance(&mut self, n: usize) {
        self.num_tokens = self.num_tokens.saturating_add(n);
    }

    /// Physical slot of position `pos`: `blocks[pos / block_size] * block_size + pos %
    /// block_size`, or `None` if no block holds `pos` (not reserved), `block_size` is 0, or the
    /// slot does not fit in `u32`. `pos` may be beyond `num_tokens` (positions being written).
    pub fn slot(&self, pos: usize, block_size: usize) -> Option<u32> {
        let block = *self.blocks.get(pos.checked_div(block_size)?)?;
        let slot = (block as usize)
            .checked_mul(block_size)?
            .checked_add(pos % block_size)?;
        u32::try_from(slot).ok()
    }

    /// Frees every block to `alloc` and resets the table to empty (even on error).
    ///
    /// # Errors
    /// `INTERNAL` if a block was not in use in `alloc` (a bookkeeping bug); the remaining
    /// blocks are still freed and the first error is returned.
    pub fn release(&mut self, alloc: &mut BlockAllocator) -> Result<()> {
        let mut first_err = None;
        for block in self.blocks.drain(..) {
            if let Err(e) = alloc.free(block) {
                first_err.get_or_insert(e);
            }
        }
        self.num_tokens = 0;
        first_err.map_or(Ok(()), Err)
    }
}
