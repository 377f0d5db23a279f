//! The paged-KV layout of the attention op tests (tests/ops.rs, tests/device_ops.rs): sequences
//! whose block tables are shuffled physical blocks, and one step that mixes a full prefill
//! (sequence 0), a decode row (sequence 1, its last position) and prefill chunks (the last
//! min(len, 7) positions of every other sequence), rows in sequence order.

use loraplex::backend::KvGeometry;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// The cache geometry (2 layers, 5 blocks more than the sequences need), the block tables and
/// the step's rows with their cache slots.
pub struct PagedStep {
    pub geom: KvGeometry,
    pub tables: Vec<Vec<u32>>,
    pub row_seq: Vec<u32>,
    pub row_pos: Vec<u32>,
    pub slots: Vec<u32>,
}

/// The cache slot of position `p` of sequence `seq`.
pub fn slot(tables: &[Vec<u32>], bs: usize, seq: usize, p: usize) -> u32 {
    tables[seq][p / bs] * bs as u32 + (p % bs) as u32
}

/// A layout for sequences of lengths `lens` (each at least 1) in blocks of `bs` positions.
pub fn paged_step(
    rng: &mut ChaCha8Rng,
    nkv: usize,
    hd: usize,
    bs: usize,
    lens: &[usize],
) -> PagedStep {
    let need: usize = lens.iter().map(|l| l.div_ceil(bs)).sum();
    let num_blocks = need + 5;
    let geom = KvGeometry {
        num_layers: 2,
        num_blocks,
        block_size: bs,
        num_kv_heads: nkv,
        head_dim: hd,
    };
    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
    ids.shuffle(rng);
    let mut tables = Vec::new();
    let mut next = 0;
    for l in lens {
        let nb = l.div_ceil(bs);
        tables.push(ids[next..next + nb].to_vec());
        next += nb;
    }
    let (mut row_seq, mut row_pos) = (Vec::new(), Vec::new());
    for (s, &l) in lens.iter().enumerate() {
        let first = match s {
            0 => 0,
            1 => l - 1,
            _ => l - l.min(7),
        };
        for p in first..l {
            row_seq.push(s as u32);
            row_pos.push(p as u32);
        }
    }
    let slots = row_seq
        .iter()
        .zip(&row_pos)
        .map(|(&s, &p)| slot(&tables, bs, s as usize, p as usize))
        .collect();
    PagedStep {
        geom,
        tables,
        row_seq,
        row_pos,
        slots,
    }
}
