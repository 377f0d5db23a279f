//! The step order of Q4_K and Q4_0 super-blocks: their 4-bit values rearranged at load so
//! that the vector paths read the transposed super-block (`lanes::transpose8`: step `i`,
//! 32-bit lane `j` = elements `4i..4i+4` of 32-element block `j`) straight from memory,
//! without the in-register 8x8 transpose per weight row and super-block, and so that a single
//! activation row takes the transposed dot as well (no horizontal reduction per block).
//!
//! In step order 128 bytes hold a super-block's 256 values: byte `32s + 4j + b` holds element
//! `4s + b` of block `j` in its low nibble (step `s`) and element `16 + 4s + b` in its high
//! nibble (step `s + 4`). A Q4_K block (144 bytes) keeps its 16-byte header (`d`, `dmin`, the
//! packed scales) and has its 128 quant bytes in step order. Eight consecutive Q4_0 blocks (8 x
//! 18 bytes) become their 8 `d` (16 bytes) followed by the 128 bytes in step order; the blocks
//! of a row past its last whole 8 stay as ggml wrote them. Either way a weight keeps exactly
//! its file's bytes.
//!
//! Which weights take it: those a backend on the AVX2 path packs ([`super::QuantKernel::Avx2`],
//! where the transposes and reductions cost most). Every path reads both orders (the weight
//! says which), so a weight computes the same bits whichever backend packed it.

use crate::backend::quant_stack::QuantStack;
use crate::quant::GgmlType;

/// Bytes of a super-block in step order: one Q4_K block, or 8 Q4_0 blocks.
const SB: usize = 144;
/// Bytes of a Q4_0 block.
const Q4_0_BLOCK: usize = 18;

/// Writes the 128 bytes of step order into `out` from `nib(j, e)`, the value of element `e`
/// of block `j`.
fn write_steps(nib: impl Fn(usize, usize) -> u8, out: &mut [u8]) {
    for s in 0..4 {
        for j in 0..8 {
            for b in 0..4 {
                out[32 * s + 4 * j + b] = nib(j, 4 * s + b) | (nib(j, 16 + 4 * s + b) << 4);
            }
        }
    }
}

/// Element `e` of block `j` in the 128 bytes of step order `steps`.
fn step_nibble(steps: &[u8], j: usize, e: usize) -> u8 {
    let byte = steps[32 * ((e % 16) / 4) + 4 * j + e % 4];
    if e < 16 {
        byte & 0x0F
    } else {
        byte >> 4
    }
}

/// A Q4_K block (144 bytes) from ggml order to step order (`back`: the other way).
fn q4_k_block(block: &mut [u8], back: bool) {
    let mut old = [0u8; 128];
    old.copy_from_slice(&block[16..SB]);
    let qs = &mut block[16..SB];
    if back {
        qs.fill(0);
        for j in 0..8 {
            for e in 0..32 {
                qs[32 * (j / 2) + e] |= step_nibble(&old, j, e) << (4 * (j % 2));
            }
        }
    } else {
        write_steps(|j, e| (old[32 * (j / 2) + e] >> (4 * (j % 2))) & 0x0F, qs);
    }
}

/// Eight Q4_0 blocks (144 bytes) from ggml order to step order (`back`: the other way).
fn q4_0_blocks(sb: &mut [u8], back: bool) {
    let mut old = [0u8; SB];
    old.copy_from_slice(&sb[..SB]);
    if back {
        for j in 0..8 {
            let blk = &mut sb[Q4_0_BLOCK * j..Q4_0_BLOCK * (j + 1)];
            blk[..2].copy_from_slice(&old[2 * j..2 * j + 2]);
            for e in 0..16 {
                blk[2 + e] =
                    step_nibble(&old[16..], j, e) | (step_nibble(&old[16..], j, e + 16) << 4);
            }
        }
    } else {
        for j in 0..8 {
            sb[2 * j..2 * j + 2].copy_from_slice(&old[Q4_0_BLOCK * j..Q4_0_BLOCK * j + 2]);
        }
        let nib = |j: usize, e: usize| {
            let qs = &old[Q4_0_BLOCK * j + 2..Q4_0_BLOCK * (j + 1)];
            if e < 16 {
                qs[e] & 0x0F
            } else {
                qs[e - 16] >> 4
            }
        };
        write_steps(nib, &mut sb[16..SB]);
    }
}

/// Rearranges one row of `ty` (whole blocks) into step order, or back (`back`); false when
/// `ty` has no step order.
fn row_steps(ty: GgmlType, row: &mut [u8], back: bool) -> bool {
    match ty {
        GgmlType::Q4K => row
            .chunks_exact_mut(SB)
            .for_each(|block| q4_k_block(block, back)),
        // The blocks past the last whole 8 stay in ggml order (`chunks_exact` leaves them).
        GgmlType::Q4_0 => row
            .chunks_exact_mut(SB)
            .for_each(|sb| q4_0_blocks(sb, back)),
        _ => return false,
    }
    true
}

/// Whether rows of `ty` are in step order when their weight is.
pub(crate) fn has_steps(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4K | GgmlType::Q4_0)
}

/// Rearranges the rows of every Q4_K and Q4_0 segment of `q` into step order.
pub(crate) fn to_steps(q: &mut QuantStack) {
    for seg in q.segments_mut() {
        let (ty, rb) = (seg.ty(), seg.row_bytes());
        if has_steps(ty) && rb > 0 {
            for row in seg.bytes_mut().chunks_exact_mut(rb) {
                row_steps(ty, row, false);
            }
        }
    }
}

/// A row of `ty` in step order written into `out` in ggml order; false when `ty` has no
/// step order.
pub(crate) fn row_from_steps(ty: GgmlType, row: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    out.extend_from_slice(row);
    row_steps(ty, out, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                s as u8
            })
            .collect()
    }

    /// Element `e` of block `j` of a super-block in step order is that of the ggml blocks.
    fn check_steps(what: &str, steps: &[u8], ggml_nib: impl Fn(usize, usize) -> u8) {
        for j in 0..8 {
            for e in 0..32 {
                assert_eq!(
                    step_nibble(steps, j, e),
                    ggml_nib(j, e),
                    "{what}: block {j} element {e}"
                );
            }
        }
    }

    #[test]
    fn q4_k_rows_round_trip_through_the_step_order() {
        let row = bytes(3 * SB, 1);
        let mut st = row.clone();
        assert!(row_steps(GgmlType::Q4K, &mut st, false));
        for (b, (s, g)) in st.chunks(SB).zip(row.chunks(SB)).enumerate() {
            assert_eq!(s[..16], g[..16], "block {b}: header");
            let nib = |j: usize, e: usize| (g[16 + 32 * (j / 2) + e] >> (4 * (j % 2))) & 0x0F;
            check_steps(&format!("Q4_K block {b}"), &s[16..], nib);
        }
        let mut back = Vec::new();
        assert!(row_from_steps(GgmlType::Q4K, &st, &mut back));
        assert_eq!(back, row);
    }

    #[test]
    fn q4_0_rows_round_trip_through_the_step_order_tail_kept() {
        // 19 blocks: two whole super-blocks and 3 blocks left in ggml order.
        let row = bytes(19 * Q4_0_BLOCK, 2);
        let mut st = row.clone();
        assert!(row_steps(GgmlType::Q4_0, &mut st, false));
        for g in 0..2 {
            let (s, o) = (&st[g * SB..(g + 1) * SB], &row[g * SB..(g + 1) * SB]);
            for j in 0..8 {
                assert_eq!(s[2 * j..2 * j + 2], o[18 * j..18 * j + 2], "d of block {j}");
            }
            let nib = |j: usize, e: usize| {
                let qs = &o[18 * j + 2..18 * j + 18];
                if e < 16 {
                    qs[e] & 0x0F
                } else {
                    qs[e - 16] >> 4
                }
            };
            check_steps(&format!("Q4_0 super-block {g}"), &s[16..], nib);
        }
        assert_eq!(st[2 * SB..], row[2 * SB..], "the tail stays");
        let mut back = Vec::new();
        assert!(row_from_steps(GgmlType::Q4_0, &st, &mut back));
        assert_eq!(back, row);
        assert!(!row_from_steps(GgmlType::Q6K, &st, &mut back));
    }
}
