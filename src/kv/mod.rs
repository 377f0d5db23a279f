//! Paged KV-cache bookkeeping (pure logic, no backend): a free list of fixed-size,
//! reference-counted blocks with an optional prefix cache of full blocks, and a per-sequence
//! block table mapping token positions to physical cache slots.
//!
//! Position `p` of a sequence lives at slot
//! `blocks[p / block_size] * block_size + p % block_size` (see
//! [`crate::backend::AttnMeta`]).

mod allocator;
mod block_table;
pub mod prefix;

pub use allocator::BlockAllocator;
pub use block_table::BlockTable;
pub use prefix::{block_hash, BlockHash, KvOwner};

/// How many blocks of `bytes_per_block` bytes fit in `bytes` (0 when `bytes_per_block` is 0).
pub fn blocks_for_memory(bytes: usize, bytes_per_block: usize) -> usize {
    bytes.checked_div(bytes_per_block).unwrap_or(0)
}
