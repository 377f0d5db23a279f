//! Paged-KV bookkeeping: BlockAllocator, BlockTable, blocks_for_memory (pure logic).

use std::collections::HashSet;

use loraplex::kv::{blocks_for_memory, BlockAllocator, BlockTable};
use loraplex::ErrorCode;
use proptest::prelude::*;

#[test]
fn allocator_hands_out_each_block_once_then_none() {
    let mut a = BlockAllocator::new(4, 16).unwrap();
    assert_eq!((a.num_total(), a.num_free(), a.block_size()), (4, 4, 16));
    let got: Vec<u32> = (0..4).map(|_| a.allocate().unwrap()).collect();
    assert_eq!(got, [0, 1, 2, 3], "fresh allocator hands out ids in order");
    assert_eq!(a.num_free(), 0);
    assert_eq!(a.allocate(), None);
    a.free(2).unwrap();
    assert_eq!(a.num_free(), 1);
    assert_eq!(a.allocate(), Some(2));
}

#[test]
fn allocator_rejects_double_free_and_out_of_range() {
    let mut a = BlockAllocator::new(3, 8).unwrap();
    let b = a.allocate().unwrap();
    a.free(b).unwrap();
    let e = a.free(b).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Internal);
    assert!(
        e.message().contains(&format!("block {b}")),
        "{}",
        e.message()
    );
    let e = a.free(3).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Internal);
    assert!(e.message().contains('3'), "{}", e.message());
    let e = a.free(1).unwrap_err(); // never allocated
    assert_eq!(e.code(), ErrorCode::Internal);
    assert_eq!(a.num_free(), 3, "failed frees change nothing");
}

#[test]
fn allocator_rejects_bad_geometry() {
    let e = BlockAllocator::new(10, 0).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(e.message().contains("block_size"));
    let e = BlockAllocator::new((1 << 16) + 1, 1 << 16).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(e.message().contains("2^32"), "{}", e.message());
    BlockAllocator::new(1 << 16, 1 << 16).unwrap(); // exactly 2^32 slots
    BlockAllocator::new(0, 16).unwrap();
}

#[test]
fn blocks_needed_and_reserve() {
    let mut a = BlockAllocator::new(5, 4).unwrap();
    let mut t = BlockTable::new();
    assert_eq!(t.blocks_needed(0, 4), 0);
    assert_eq!(t.blocks_needed(1, 4), 1);
    assert_eq!(t.blocks_needed(4, 4), 1);
    assert_eq!(t.blocks_needed(5, 4), 2);
    assert_eq!(t.blocks_needed(5, 0), 0);
    assert!(t.reserve(&mut a, 5));
    assert_eq!(t.blocks(), [0, 1]);
    assert_eq!(t.num_tokens(), 0, "reserve does not advance");
    assert!(t.reserve(&mut a, 8), "8 positions already fit");
    assert_eq!(t.blocks().len(), 2);
    t.advance(6);
    assert_eq!(t.blocks_needed(2, 4), 0);
    assert_eq!(t.blocks_needed(3, 4), 1);
    // 6 + 15 = 21 positions need 6 blocks; only 3 more are free: nothing is taken.
    assert!(!t.reserve(&mut a, 15));
    assert_eq!((t.blocks().len(), a.num_free()), (2, 3));
    assert!(t.reserve(&mut a, 14)); // 20 positions = 5 blocks
    assert_eq!((t.blocks().len(), a.num_free()), (5, 0));
}

#[test]
fn slots_follow_the_block_table() {
    let mut a = BlockAllocator::new(8, 4).unwrap();
    let mut other = BlockTable::new();
    assert!(other.reserve(&mut a, 4)); // takes block 0
    let mut t = BlockTable::new();
    assert!(t.reserve(&mut a, 6)); // blocks 1, 2
    assert_eq!(t.blocks(), [1, 2]);
    assert_eq!(t.slot(0, 4), Some(4));
    assert_eq!(t.slot(3, 4), Some(7));
    assert_eq!(t.slot(4, 4), Some(8));
    assert_eq!(t.slot(7, 4), Some(11));
    assert_eq!(t.slot(8, 4), None, "position beyond the reserved blocks");
    assert_eq!(t.slot(0, 0), None);
    other.release(&mut a).unwrap();
    assert!(t.reserve(&mut a, 9)); // third block: block 0 is reused
    assert_eq!(t.blocks(), [1, 2, 0]);
    assert_eq!(t.slot(8, 4), Some(0));
}

#[test]
fn release_frees_and_resets() {
    let mut a = BlockAllocator::new(4, 2).unwrap();
    let mut t = BlockTable::new();
    assert!(t.reserve(&mut a, 7));
    t.advance(7);
    assert_eq!(a.num_free(), 0);
    t.release(&mut a).unwrap();
    assert_eq!(a.num_free(), 4);
    assert_eq!(t, BlockTable::new());
    // Releasing into the wrong allocator is reported, and the table is still reset.
    let mut a2 = BlockAllocator::new(2, 2).unwrap();
    assert!(t.reserve(&mut a, 8));
    let e = t.release(&mut a2).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Internal);
    assert!(t.blocks().is_empty());
}

#[test]
fn blocks_for_memory_divides() {
    assert_eq!(blocks_for_memory(1000, 100), 10);
    assert_eq!(blocks_for_memory(999, 100), 9);
    assert_eq!(blocks_for_memory(99, 100), 0);
    assert_eq!(blocks_for_memory(1000, 0), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Reserve(usize, usize),
    Advance(usize, usize),
    Release(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..4, 0usize..40).prop_map(|(s, n)| Op::Reserve(s, n)),
        (0usize..4, 0usize..40).prop_map(|(s, n)| Op::Advance(s, n)),
        (0usize..4).prop_map(Op::Release),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn random_reserve_advance_release_keeps_invariants(
        num_blocks in 0usize..24,
        block_size in 1usize..6,
        ops in prop::collection::vec(op(), 0..80),
    ) {
        let mut a = BlockAllocator::new(num_blocks, block_size).unwrap();
        let mut tables = vec![BlockTable::new(); 4];
        for op in ops {
            match op {
                Op::Reserve(s, n) => {
                    let t = &mut tables[s];
                    let needed = t.blocks_needed(n, block_size);
                    let (free, len) = (a.num_free(), t.blocks().len());
                    let ok = t.reserve(&mut a, n);
                    prop_assert_eq!(ok, needed <= free);
                    if ok {
                        prop_assert_eq!(t.blocks().len(), len + needed);
                        prop_assert_eq!(a.num_free(), free - needed);
                        prop_assert!(t.blocks().len() * block_size >= t.num_tokens() + n);
                    } else {
                        prop_assert_eq!((t.blocks().len(), a.num_free()), (len, free));
                    }
                }
                Op::Advance(s, n) => {
                    // Like the engine: only advance over reserved positions.
                    let t = &mut tables[s];
                    let room = t.blocks().len() * block_size - t.num_tokens();
                    let before = t.num_tokens();
                    t.advance(n.min(room));
                    prop_assert_eq!(t.num_tokens(), before + n.min(room));
                }
                Op::Release(s) => {
                    let free = a.num_free();
                    let len = tables[s].blocks().len();
                    tables[s].release(&mut a).unwrap();
                    prop_assert_eq!(a.num_free(), free + len);
                    prop_assert!(tables[s].blocks().is_empty());
                    prop_assert_eq!(tables[s].num_tokens(), 0);
                }
            }
            // No block is held twice, none is out of range, and held + free = total.
            let mut held = HashSet::new();
            for t in &tables {
                for &b in t.blocks() {
                    prop_assert!((b as usize) < num_blocks);
                    prop_assert!(held.insert(b), "block {} held twice", b);
                }
            }
            prop_assert_eq!(held.len() + a.num_free(), num_blocks);
            // Slots of every reserved position of every live sequence are distinct and in range.
            let mut slots = HashSet::new();
            for t in &tables {
                for pos in 0..t.blocks().len() * block_size {
                    let slot = t.slot(pos, block_size).unwrap();
                    prop_assert!((slot as usize) < num_blocks * block_size);
                    prop_assert!(slots.insert(slot), "slot {} used twice", slot);
                }
                prop_assert_eq!(t.slot(t.blocks().len() * block_size, block_size), None);
            }
        }
        for t in &mut tables {
            t.release(&mut a).unwrap();
        }
        prop_assert_eq!(a.num_free(), num_blocks);
        // Every block can be handed out again, each once.
        let mut again = HashSet::new();
        while let Some(b) = a.allocate() {
            prop_assert!(again.insert(b));
        }
        prop_assert_eq!(again.len(), num_blocks);
    }
}
