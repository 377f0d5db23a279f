//! A group of up to [`GROUP`] decoded weight rows, laid out so that one 256-bit vector lane
//! holds one row: within block `b`, step `s = 4h + i` (half `h`, `i < 4`) is 32 bytes, the 4
//! elements `16h + 4i ..+4` of each of the 8 rows (row `k` at bytes `4k..4k+4`). A 4-element
//! dot-product instruction against the activation's 4 bytes broadcast then sums straight into
//! row lanes (no horizontal reduction). Every block's [`BlockParams`] are transposed the same
//! way (lane `k` = row `k`), plus `128 · Σ w` per half for the unsigned-activation form of
//! `vpdpbusd`. Padding lanes (past the rows decoded, or a row that could not be decoded) hold
//! zeros; their results are discarded.

use super::Decoded;
use crate::backend::quant_stack::QuantStack;
use crate::backend::reference::quant_block::{decode_row, BlockParams, QBLOCK};

/// Weight rows per group: one per 32-bit lane of a 256-bit vector.
pub(super) const GROUP: usize = 8;
/// Bytes of one block of a group (8 rows × 32 values).
pub(super) const BLOCK_BYTES: usize = GROUP * QBLOCK;

/// See the module docs. Owned scratch, reused across the groups of a task.
pub(super) struct Group {
    /// `nb * BLOCK_BYTES` interleaved values.
    pub q: Vec<i8>,
    /// Per block: `d` of each row.
    pub d: Vec<[f32; GROUP]>,
    /// Per block: `dm` of each row.
    pub dm: Vec<[f32; GROUP]>,
    /// Per block: `isc[0]`, `isc[1]`, `imin[0]`, `imin[1]`, `128 Σ w` over half 0 and half 1,
    /// of each row.
    pub ints: Vec<[[i32; GROUP]; 6]>,
}

impl Group {
    pub fn new(nb: usize) -> Self {
        Self {
            q: vec![0; nb * BLOCK_BYTES],
            d: vec![[0.0; GROUP]; nb],
            dm: vec![[0.0; GROUP]; nb],
            ints: vec![[[0; GROUP]; 6]; nb],
        }
    }

    /// Decodes rows `o0 .. o0 + m` (`m <= GROUP`) of `w` into `dec.q` (`GROUP * cols` values,
    /// row after row) and, with `interleave`, into `self.q`; returns which lanes hold a
    /// decoded row.
    /// Always inlined, so the decoders use the caller's vector instructions.
    #[inline(always)]
    pub fn fill(
        &mut self,
        w: &QuantStack,
        o0: usize,
        m: usize,
        dec: &mut Decoded,
        interleave: bool,
    ) -> [bool; GROUP] {
        let nb = self.d.len();
        let cols = nb * QBLOCK;
        let mut ok = [false; GROUP];
        if dec.q.len() < GROUP * cols || dec.p.len() < nb {
            return ok;
        }
        for (k, okk) in ok.iter_mut().enumerate() {
            let qk = &mut dec.q[k * cols..(k + 1) * cols];
            *okk = k < m
                && match w.row(o0 + k) {
                    Some((ty, bytes)) => decode_row(ty, bytes, qk, &mut dec.p),
                    None => false,
                };
            if !*okk {
                // A padding lane: zero values and params (its results are discarded).
                qk.fill(0);
                dec.p[..nb].fill(BlockParams::default());
            }
            for (b, p) in dec.p[..nb].iter().enumerate() {
                self.d[b][k] = p.d;
                self.dm[b][k] = p.dm;
                // `128 Σ w` is only read by the interleaved (VNNI) kernel.
                let qb = &qk[b * QBLOCK..(b + 1) * QBLOCK];
                let sum = |h: usize| -> i32 {
                    if !interleave {
                        return 0;
                    }
                    qb[16 * h..16 * h + 16].iter().map(|&v| v as i32).sum()
                };
                let iv = [
                    p.isc[0],
                    p.isc[1],
                    p.imin[0],
                    p.imin[1],
                    128 * sum(0),
                    128 * sum(1),
                ];
                for (dst, v) in self.ints[b].iter_mut().zip(iv) {
                    dst[k] = v;
                }
            }
        }
        if !interleave {
            return ok;
        }
        // Interleave: step s of block b takes elements 4s..4s+4 of every row.
        let src = &dec.q[..GROUP * cols];
        for (b, dst) in self.q.chunks_exact_mut(BLOCK_BYTES).enumerate() {
            for (s, step) in dst.chunks_exact_mut(4 * GROUP).enumerate() {
                for (k, d4) in step.chunks_exact_mut(4).enumerate() {
                    let at = k * cols + b * QBLOCK + 4 * s;
                    d4.copy_from_slice(&src[at..at + 4]);
                }
            }
        }
        ok
    }
}
