//! A group of up to [`GROUP`] decoded weight rows, laid out for the vector kernels: the `i8`
//! values row after row, and every block's [`BlockParams`] transposed so that lane `k` of a
//! vector holds row `k`'s value. Padding lanes (past the rows decoded, or a row that could not
//! be decoded) hold zeros; their results are discarded.

use super::Decoded;
use crate::backend::quant_stack::QuantStack;
use crate::backend::reference::quant_block::decode_row;

/// Weight rows per group: one per f32 lane of a 256-bit vector.
pub(super) const GROUP: usize = 8;

/// See the module docs. Owned scratch, reused across the groups of a task.
pub(super) struct Group {
    /// `GROUP * cols` values, row `k` at `k * cols`.
    pub q: Vec<i8>,
    /// Per block: `d` of each row.
    pub d: Vec<[f32; GROUP]>,
    /// Per block: `dm` of each row.
    pub dm: Vec<[f32; GROUP]>,
    /// Per block: `isc[0]`, `isc[1]`, `imin[0]`, `imin[1]` of each row.
    pub isc: Vec<[[i32; GROUP]; 4]>,
}

impl Group {
    pub fn new(cols: usize, nb: usize) -> Self {
        Self {
            q: vec![0; GROUP * cols],
            d: vec![[0.0; GROUP]; nb],
            dm: vec![[0.0; GROUP]; nb],
            isc: vec![[[0; GROUP]; 4]; nb],
        }
    }

    /// Decodes rows `o0 .. o0 + m` (`m <= GROUP`) of `w` (through `dec`'s params buffer);
    /// returns which lanes hold a decoded row. Always inlined, so the decoders use the
    /// caller's vector instructions.
    #[inline(always)]
    pub fn fill(
        &mut self,
        w: &QuantStack,
        o0: usize,
        m: usize,
        dec: &mut Decoded,
    ) -> [bool; GROUP] {
        let cols = w.cols();
        let nb = self.d.len();
        let mut ok = [false; GROUP];
        for (k, okk) in ok.iter_mut().enumerate() {
            let qk = &mut self.q[k * cols..(k + 1) * cols];
            *okk = k < m
                && match w.row(o0 + k) {
                    Some((ty, bytes)) => decode_row(ty, bytes, qk, &mut dec.p),
                    None => false,
                };
            if !*okk {
                qk.iter_mut().for_each(|v| *v = 0);
            }
            for b in 0..nb {
                let p = dec.p[b];
                let lane = *okk;
                self.d[b][k] = if lane { p.d } else { 0.0 };
                self.dm[b][k] = if lane { p.dm } else { 0.0 };
                let iv = [p.isc[0], p.isc[1], p.imin[0], p.imin[1]];
                for (dst, v) in self.isc[b].iter_mut().zip(iv) {
                    dst[k] = if lane { v } else { 0 };
                }
            }
        }
        ok
    }
}
