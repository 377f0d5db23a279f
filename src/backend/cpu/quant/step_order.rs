//! The step order of quantized super-blocks (Q4_K, Q5_K, Q6_K, IQ4_XS, and groups of 8 blocks
//! of Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q8_0): their values rearranged at load so that the vector
//! paths read the transposed super-block (`lanes::transpose8`: step `i`, 32-bit lane `j` =
//! elements `4i..4i+4` of 32-element block `j`) straight from memory, without the in-register
//! 8x8 transpose per weight row and super-block, and so that a single activation row takes the
//! transposed dot as well (no horizontal reduction per block).
//!
//! In step order 128 bytes hold a super-block's 256 values: byte `32s + 4j + b` holds element
//! `4s + b` of block `j` in its low nibble (step `s`) and element `16 + 4s + b` in its high
//! nibble (step `s + 4`). A Q4_K block (144 bytes) keeps its 16-byte header (`d`, `dmin`, the
//! packed scales) and has its 128 quant bytes in step order; a Q5_K block likewise, its 32
//! bytes of fifth bits becoming a fifth-bit plane as described below for Q5_0; an IQ4_XS block
//! (136 bytes) keeps its 8-byte header and has its 128 bytes of nibbles in step order. A Q6_K
//! block (210 bytes) has its 128 bytes of low nibbles in step order, then its 64 bytes of high
//! bit pairs as two planes (byte `32h + 4j + b`, bits `2k..2k+2`: the high bits of element
//! `4s + b` of block `j`, step `s = 4h + k`), then its scales and `d` as they were.
//!
//! Eight consecutive blocks of a 32-element type become their 8 `d` (16 bytes), their 8 `m`
//! (Q4_1, Q5_1; 16 bytes), a 32-byte plane of fifth bits (Q5_0, Q5_1: bit `s` of byte `4j + b`
//! is the fifth bit of element `4s + b` of block `j`, so one shift and one mask put step `s`'s
//! bits in place), then the 128 bytes in step order. Eight Q8_0 blocks become their 8 `d` (16
//! bytes), then their 256 values in step order: byte `32s + 4j + b` holds element `4s + b` of
//! block `j` (steps 0-7 of the transposed super-block, one 32-byte load each). The blocks of a
//! row past its last whole 8 stay as ggml wrote them. Either way a weight keeps exactly its
//! file's bytes.
//!
//! Which weights take it: those a backend on the AVX2 path packs ([`super::QuantKernel::Avx2`],
//! where the transposes and reductions cost most). Every path reads both orders (the weight
//! says which), so a weight computes the same bits whichever backend packed it.

use crate::backend::quant_stack::QuantStack;
use crate::quant::GgmlType;

/// Bytes of a Q4_K block.
const Q4_K_BLOCK: usize = 144;
/// Bytes of a Q5_K block.
const Q5_K_BLOCK: usize = 176;
/// Bytes of an IQ4_XS block.
const IQ4_XS_BLOCK: usize = 136;
/// Bytes of a Q6_K block.
const Q6_K_BLOCK: usize = 210;

/// The layout of a block of a 32-element type whose groups of 8 blocks take the step order:
/// `halves` f16 fields (`d`, then `m` when 2), a 4-byte `qh` of fifth bits when `fifth`, then
/// 16 bytes of nibbles (elements `e` and `e + 16` in byte `e`), or when `wide` 32 bytes, one
/// per element (Q8_0).
#[derive(Clone, Copy)]
struct Legacy {
    halves: usize,
    fifth: bool,
    wide: bool,
}

impl Legacy {
    /// The layout of `ty`'s blocks, if its groups take the step order.
    fn of(ty: GgmlType) -> Option<Self> {
        let (halves, fifth, wide) = match ty {
            GgmlType::Q4_0 | GgmlType::Iq4Nl => (1, false, false),
            GgmlType::Q4_1 => (2, false, false),
            GgmlType::Q5_0 => (1, true, false),
            GgmlType::Q5_1 => (2, true, false),
            GgmlType::Q8_0 => (1, false, true),
            _ => return None,
        };
        Some(Self {
            halves,
            fifth,
            wide,
        })
    }

    /// Bytes of the 4-byte `qh` (0 or 4).
    fn qh(self) -> usize {
        4 * usize::from(self.fifth)
    }

    /// Bytes of one block's values.
    fn values(self) -> usize {
        if self.wide {
            32
        } else {
            16
        }
    }

    /// Bytes of one block.
    fn block(self) -> usize {
        2 * self.halves + self.qh() + self.values()
    }

    /// Where the fifth-bit plane of a group in step order starts.
    fn plane_at(self) -> usize {
        16 * self.halves
    }

    /// Where the values of a group in step order (128 bytes of nibbles, 256 when `wide`) start.
    fn steps_at(self) -> usize {
        self.plane_at() + 8 * self.qh()
    }
}

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

/// The fifth bit of element `e` of block `j` in the 32-byte plane of a group in step order:
/// bit `s` of byte `4j + b` is that of element `4s + b` (the element of step `s`, lane `j`,
/// byte `b` of the transposed super-block).
fn plane_bit(plane: &[u8], j: usize, e: usize) -> u8 {
    (plane[4 * j + e % 4] >> (e / 4)) & 1
}

/// A Q4_K block (144 bytes) or, with `fifth`, a Q5_K block (176 bytes) from ggml order to step
/// order (`back`: the other way). The 16-byte header stays; Q5_K's 32 bytes of fifth bits
/// (`qh`: bit `j` of byte `e` for element `e` of block `j`) become the fifth-bit plane of the
/// step order ([`plane_bit`]); the 128 quant bytes (block `2k` the low nibbles of
/// `qs[32k..]`, `2k + 1` the high ones) go into step order.
fn k_block(block: &mut [u8], fifth: bool, back: bool) {
    let qs_at = if fifth { 48 } else { 16 };
    if fifth {
        let mut old = [0u8; 32];
        old.copy_from_slice(&block[16..48]);
        let qh = &mut block[16..48];
        qh.fill(0);
        for j in 0..8 {
            for e in 0..32 {
                if back {
                    qh[e] |= plane_bit(&old, j, e) << j;
                } else {
                    qh[4 * j + e % 4] |= ((old[e] >> j) & 1) << (e / 4);
                }
            }
        }
    }
    let pos = |j: usize, e: usize| (32 * (j / 2) + e, 4 * (j % 2));
    nibble_steps(&mut block[qs_at..qs_at + 128], pos, back);
}

/// A super-block's 128 bytes of nibbles `qs` from ggml order, where element `e` of block `j`
/// is the nibble at `pos(j, e)` (byte, shift 0 or 4), to step order (`back`: the other way).
fn nibble_steps(qs: &mut [u8], pos: impl Fn(usize, usize) -> (usize, usize), back: bool) {
    let mut old = [0u8; 128];
    old.copy_from_slice(&qs[..128]);
    if back {
        qs.fill(0);
        for j in 0..8 {
            for e in 0..32 {
                let (at, sh) = pos(j, e);
                qs[at] |= step_nibble(&old, j, e) << sh;
            }
        }
    } else {
        write_steps(
            |j, e| {
                let (at, sh) = pos(j, e);
                (old[at] >> sh) & 0x0F
            },
            qs,
        );
    }
}

/// The places of a wide group's values in step order: `(at, j, e)` for byte `at` of the 256,
/// which holds element `e` of block `j` (byte `b` of step `s`, lane `j`: element `4s + b`).
fn wide_steps() -> impl Iterator<Item = (usize, usize, usize)> {
    (0..8).flat_map(|s| {
        (0..8).flat_map(move |j| (0..4).map(move |b| (32 * s + 4 * j + b, j, 4 * s + b)))
    })
}

/// The 6-bit value (`q + 32`) of element `e` of 32-element block `j` of a Q6_K block in ggml
/// order (its 128 bytes of low nibbles `ql`, then 64 of high bit pairs `qh`): block `4n + k`
/// takes the low (`k < 2`) or high nibbles of `ql[64n + 32 (k % 2)..]` and bits `2k..2k+2` of
/// `qh[32n..]`.
fn q6_k_value(b: &[u8], j: usize, e: usize) -> u8 {
    let (n, k) = (j / 4, j % 4);
    let lo = (b[64 * n + 32 * (k % 2) + e] >> (4 * (k / 2))) & 0x0F;
    let hi = (b[128 + 32 * n + e] >> (2 * k)) & 3;
    lo | (hi << 4)
}

/// Where the high bit pair of element `e` of block `j` lies in a Q6_K block's two planes in step
/// order: `(byte, shift)` within the 64 bytes (step `s = e / 4 = 4h + k`: byte `32h + 4j + e %
/// 4`, bits `2k..2k+2`).
fn q6_k_plane_at(j: usize, e: usize) -> (usize, usize) {
    let s = e / 4;
    (32 * (s / 4) + 4 * j + e % 4, 2 * (s % 4))
}

/// A Q6_K block (210 bytes) from ggml order to step order (`back`: the other way); its scales
/// and `d` stay.
fn q6_k_block(block: &mut [u8], back: bool) {
    let mut old = [0u8; 192];
    old.copy_from_slice(&block[..192]);
    block[..192].fill(0);
    let (ql, qh) = block[..192].split_at_mut(128);
    for j in 0..8 {
        for e in 0..32 {
            let (at, sh) = q6_k_plane_at(j, e);
            if back {
                let v = step_nibble(&old, j, e) | (((old[128 + at] >> sh) & 3) << 4);
                let (n, k) = (j / 4, j % 4);
                ql[64 * n + 32 * (k % 2) + e] |= (v & 0x0F) << (4 * (k / 2));
                qh[32 * n + e] |= (v >> 4) << (2 * k);
            } else {
                qh[at] |= (q6_k_value(&old, j, e) >> 4) << sh;
            }
        }
    }
    if !back {
        write_steps(|j, e| q6_k_value(&old, j, e) & 0x0F, ql);
    }
}

/// Eight blocks of layout `lay` from ggml order to step order (`back`: the other way). In
/// step order the group holds the 8 blocks' first f16 fields (16 bytes), their second ones
/// (Q4_1 / Q5_1), the 32-byte fifth-bit plane ([`plane_bit`]; Q5_0 / Q5_1), then the 128
/// bytes of nibbles in step order, or for `wide` blocks the 256 value bytes in step order
/// (byte `32s + 4j + b` = element `4s + b` of block `j`).
fn legacy_group(g: &mut [u8], lay: Legacy, back: bool) {
    let (bl, n) = (lay.block(), 8 * lay.block());
    let mut old = [0u8; 8 * 34];
    old[..n].copy_from_slice(&g[..n]);
    let old = &old[..n];
    let (pa, sa, qa) = (lay.plane_at(), lay.steps_at(), 2 * lay.halves + lay.qh());
    if back {
        g[..n].fill(0);
        for j in 0..8 {
            let blk = &mut g[bl * j..bl * (j + 1)];
            for f in 0..lay.halves {
                blk[2 * f..2 * f + 2].copy_from_slice(&old[16 * f + 2 * j..16 * f + 2 * j + 2]);
            }
            for e in (0..32).filter(|_| !lay.wide) {
                if lay.fifth {
                    blk[2 * lay.halves + e / 8] |= plane_bit(&old[pa..], j, e) << (e % 8);
                }
                blk[qa + e % 16] |= step_nibble(&old[sa..], j, e) << (4 * (e / 16));
            }
        }
        if lay.wide {
            for (at, j, e) in wide_steps() {
                g[bl * j + qa + e] = old[sa + at];
            }
        }
    } else {
        let at = |j: usize| &old[bl * j..bl * (j + 1)];
        for j in 0..8 {
            for f in 0..lay.halves {
                g[16 * f + 2 * j..16 * f + 2 * j + 2].copy_from_slice(&at(j)[2 * f..2 * f + 2]);
            }
        }
        if lay.fifth {
            for j in 0..8 {
                let qh = &at(j)[2 * lay.halves..2 * lay.halves + 4];
                for b in 0..4 {
                    g[pa + 4 * j + b] = (0..8)
                        .map(|s| ((qh[(4 * s + b) / 8] >> ((4 * s + b) % 8)) & 1) << s)
                        .fold(0, |acc, v| acc | v);
                }
            }
        }
        if lay.wide {
            for (to, j, e) in wide_steps() {
                g[sa + to] = at(j)[qa + e];
            }
            return;
        }
        let nib = |j: usize, e: usize| (at(j)[qa + e % 16] >> (4 * (e / 16))) & 0x0F;
        write_steps(nib, &mut g[sa..sa + 128]);
    }
}

/// Rearranges one row of `ty` (whole blocks) into step order, or back (`back`); false when
/// `ty` has no step order. A row's blocks past its last whole group of 8 (32-element types)
/// stay in ggml order.
fn row_steps(ty: GgmlType, row: &mut [u8], back: bool) -> bool {
    if ty == GgmlType::Q4K {
        row.chunks_exact_mut(Q4_K_BLOCK)
            .for_each(|block| k_block(block, false, back));
        return true;
    }
    if ty == GgmlType::Q5K {
        row.chunks_exact_mut(Q5_K_BLOCK)
            .for_each(|block| k_block(block, true, back));
        return true;
    }
    if ty == GgmlType::Iq4Xs {
        // Block `j`'s 16 bytes at `8 + 16j`, elements `e` and `e + 16` in byte `e`.
        let pos = |j: usize, e: usize| (16 * j + e % 16, 4 * (e / 16));
        row.chunks_exact_mut(IQ4_XS_BLOCK)
            .for_each(|block| nibble_steps(&mut block[8..], pos, back));
        return true;
    }
    if ty == GgmlType::Q6K {
        row.chunks_exact_mut(Q6_K_BLOCK)
            .for_each(|block| q6_k_block(block, back));
        return true;
    }
    let Some(lay) = Legacy::of(ty) else {
        return false;
    };
    // `chunks_exact` leaves the tail as it is.
    row.chunks_exact_mut(8 * lay.block())
        .for_each(|g| legacy_group(g, lay, back));
    true
}

/// Whether rows of `ty` are in step order when their weight is.
pub(crate) fn has_steps(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K | GgmlType::Iq4Xs
    ) || Legacy::of(ty).is_some()
}

/// Rearranges the rows of every segment of `q` whose type has a step order ([`has_steps`]).
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
    fn q4_k_and_q5_k_rows_round_trip_through_the_step_order() {
        // (type, block bytes, quant bytes at, fifth bits at): written out here.
        for (ty, bl, qs, qh) in [
            (GgmlType::Q4K, Q4_K_BLOCK, 16, None),
            (GgmlType::Q5K, 176, 48, Some(16)),
        ] {
            let row = bytes(3 * bl, 1 + bl as u32);
            let mut st = row.clone();
            assert!(row_steps(ty, &mut st, false), "{ty}");
            for (b, (s, g)) in st.chunks(bl).zip(row.chunks(bl)).enumerate() {
                assert_eq!(s[..16], g[..16], "{ty} block {b}: header");
                let nib = |j: usize, e: usize| (g[qs + 32 * (j / 2) + e] >> (4 * (j % 2))) & 0x0F;
                check_steps(&format!("{ty} block {b}"), &s[qs..], nib);
                if let Some(h) = qh {
                    for (j, e) in (0..8).flat_map(|j| (0..32).map(move |e| (j, e))) {
                        let want = (g[h + e] >> j) & 1;
                        let got = plane_bit(&s[h..], j, e);
                        assert_eq!(got, want, "{ty} block {b}: fifth bit {e} of block {j}");
                    }
                }
            }
            let mut back = Vec::new();
            assert!(row_from_steps(ty, &st, &mut back), "{ty}");
            assert_eq!(back, row, "{ty}: round trip");
        }
    }

    #[test]
    fn legacy_rows_round_trip_through_the_step_order_tail_kept() {
        // (type, block bytes, f16 fields, fifth bits): written out here, not from `Legacy`.
        for (ty, bl, halves, fifth) in [
            (GgmlType::Q4_0, 18, 1, false),
            (GgmlType::Iq4Nl, 18, 1, false),
            (GgmlType::Q4_1, 20, 2, false),
            (GgmlType::Q5_0, 22, 1, true),
            (GgmlType::Q5_1, 24, 2, true),
        ] {
            // 19 blocks: two whole groups and 3 blocks left in ggml order.
            let row = bytes(19 * bl, 2 + bl as u32);
            let mut st = row.clone();
            assert!(row_steps(ty, &mut st, false), "{ty}");
            let gb = 8 * bl;
            for g in 0..2 {
                let (s, o) = (&st[g * gb..(g + 1) * gb], &row[g * gb..(g + 1) * gb]);
                let qs_at = 2 * halves + if fifth { 4 } else { 0 };
                for j in 0..8 {
                    let blk = &o[bl * j..bl * (j + 1)];
                    for f in 0..halves {
                        let field = &s[16 * f + 2 * j..16 * f + 2 * j + 2];
                        assert_eq!(
                            field,
                            &blk[2 * f..2 * f + 2],
                            "{ty}: field {f} of block {j}"
                        );
                    }
                    for e in (0..32).filter(|_| fifth) {
                        let want = (blk[2 * halves + e / 8] >> (e % 8)) & 1;
                        let got = plane_bit(&s[16 * halves..], j, e);
                        assert_eq!(got, want, "{ty}: fifth bit {e} of block {j}");
                    }
                }
                let nib = |j: usize, e: usize| {
                    let qs = &o[bl * j + qs_at..bl * (j + 1)];
                    if e < 16 {
                        qs[e] & 0x0F
                    } else {
                        qs[e - 16] >> 4
                    }
                };
                let at = 16 * halves + if fifth { 32 } else { 0 };
                check_steps(&format!("{ty} group {g}"), &s[at..], nib);
            }
            assert_eq!(st[2 * gb..], row[2 * gb..], "{ty}: the tail stays");
            let mut back = Vec::new();
            assert!(row_from_steps(ty, &st, &mut back));
            assert_eq!(back, row, "{ty}: round trip");
        }
        let mut back = Vec::new();
        assert!(!row_from_steps(GgmlType::Q3K, &bytes(110, 3), &mut back));
        assert!(!row_from_steps(GgmlType::Q2K, &bytes(84, 3), &mut back));
    }

    #[test]
    fn iq4_xs_rows_round_trip_through_the_step_order() {
        let row = bytes(3 * IQ4_XS_BLOCK, 11);
        let mut st = row.clone();
        assert!(row_steps(GgmlType::Iq4Xs, &mut st, false));
        for (i, (s, g)) in st
            .chunks(IQ4_XS_BLOCK)
            .zip(row.chunks(IQ4_XS_BLOCK))
            .enumerate()
        {
            assert_eq!(s[..8], g[..8], "block {i}: header");
            // dequantize_row_iq4_xs: block `j`'s 16 bytes at `8 + 16j`, element `e < 16` the
            // low nibble of byte `e`, `e + 16` its high nibble.
            let nib = |j: usize, e: usize| {
                let q = g[8 + 16 * j + e % 16];
                if e < 16 {
                    q & 0x0F
                } else {
                    q >> 4
                }
            };
            check_steps(&format!("IQ4_XS block {i}"), &s[8..], nib);
        }
        let mut back = Vec::new();
        assert!(row_from_steps(GgmlType::Iq4Xs, &st, &mut back));
        assert_eq!(back, row);
    }

    #[test]
    fn q6_k_rows_round_trip_through_the_step_order() {
        let row = bytes(3 * Q6_K_BLOCK, 9);
        let mut st = row.clone();
        assert!(row_steps(GgmlType::Q6K, &mut st, false));
        for (i, (s, g)) in st
            .chunks(Q6_K_BLOCK)
            .zip(row.chunks(Q6_K_BLOCK))
            .enumerate()
        {
            assert_eq!(s[192..], g[192..], "block {i}: scales and d");
            // The ggml layout written out here (dequantize_row_q6_K), not from `q6_k_value`:
            // element `l + 32k` of half `n` (`l < 32`, `k < 4`) of the 256.
            for n in 0..2 {
                for l in 0..32 {
                    let (ql, qh) = (&g[64 * n..], g[128 + 32 * n + l]);
                    let q = [
                        (ql[l] & 0xF) | ((qh & 3) << 4),
                        (ql[l + 32] & 0xF) | (((qh >> 2) & 3) << 4),
                        (ql[l] >> 4) | (((qh >> 4) & 3) << 4),
                        (ql[l + 32] >> 4) | (((qh >> 6) & 3) << 4),
                    ];
                    for (k, &want) in q.iter().enumerate() {
                        let (j, e) = (4 * n + k, l);
                        // Step `e / 4`, lane `j`, byte `e % 4`.
                        let st_ = e / 4;
                        let lo = (s[32 * (st_ % 4) + 4 * j + e % 4] >> (4 * (st_ / 4))) & 0xF;
                        let pb = s[128 + 32 * (st_ / 4) + 4 * j + e % 4];
                        let hi = (pb >> (2 * (st_ % 4))) & 3;
                        assert_eq!(lo | (hi << 4), want, "block {i}: sub-block {j} element {e}");
                    }
                }
            }
        }
        let mut back = Vec::new();
        assert!(row_from_steps(GgmlType::Q6K, &st, &mut back));
        assert_eq!(back, row);
    }

    #[test]
    fn q8_0_rows_round_trip_through_the_step_order_tail_kept() {
        // 18 blocks (576 columns): two whole groups and 2 blocks left in ggml order.
        let row = bytes(18 * 34, 7);
        let mut st = row.clone();
        assert!(row_steps(GgmlType::Q8_0, &mut st, false));
        for g in 0..2 {
            let (s, o) = (&st[g * 272..(g + 1) * 272], &row[g * 272..(g + 1) * 272]);
            for j in 0..8 {
                let blk = &o[34 * j..34 * (j + 1)];
                assert_eq!(s[2 * j..2 * j + 2], blk[..2], "group {g}: d of block {j}");
                for e in 0..32 {
                    // Step `e / 4`, lane `j`, byte `e % 4`.
                    let got = s[16 + 32 * (e / 4) + 4 * j + e % 4];
                    assert_eq!(got, blk[2 + e], "group {g}: block {j} element {e}");
                }
            }
        }
        assert_eq!(st[2 * 272..], row[2 * 272..], "the tail stays");
        let mut back = Vec::new();
        assert!(row_from_steps(GgmlType::Q8_0, &st, &mut back));
        assert_eq!(back, row, "round trip");
    }
}
