//! A weight matrix kept in ggml blocks for the host backends: one or more row segments, each a
//! [`QuantData`] of its own type, stacked along `out` (a fused QKV of a Q4_K_M file stacks
//! Q4_K q/k rows on Q6_K v rows). The blocks are kept as read, so the resident bytes are the
//! file's tensor bytes; a backend may ask for some segments in the row-interleaved layout
//! ([`QuantStack::interleave`]), a permutation of the same bytes.

use crate::backend::reference::fused_shape;
use crate::backend::reference::quant_block::is_kernel_type;
use crate::error::{Error, Result};
use crate::quant::{GgmlType, QuantData};
use crate::tensor::HostTensor;

/// Row segments of block-quantized types stacked into one `[out, cols]` matrix. Immutable;
/// shareable across threads.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantStack {
    segs: Vec<QuantData>,
    /// Bytes of one row of each segment (cached: the kernels look rows up per weight row).
    row_bytes: Vec<usize>,
    /// Per segment: the super-block bytes of its interleaved groups, or 0 when every row is
    /// stored as read (see [`QuantStack::interleave`]).
    group_sb: Vec<usize>,
    cols: usize,
}

/// Rows per interleaved group.
pub const GROUP_ROWS: usize = 8;
/// Bytes per interleaved word.
const WORD: usize = 4;

/// Where the bytes of row `q`'s super-block (`sb` bytes) go in an interleaved group's
/// super-block (see [`QuantStack::interleave`]): `(offset in the row's, offset in the group's,
/// length)` for each whole word, then for the bytes after the last one.
fn spans(sb: usize, q: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let (words, tail) = (sb / WORD, sb % WORD);
    let whole = (0..words).map(move |w| (w * WORD, (GROUP_ROWS * w + q) * WORD, WORD));
    let rest = (tail > 0).then(|| (words * WORD, GROUP_ROWS * words * WORD + q * tail, tail));
    whole.chain(rest)
}

impl QuantStack {
    /// Stacks `parts` when every one is kept quantized in a type the quantized kernels compute
    /// on; `Ok(None)` when some part is dense (the caller then packs every part dense, the
    /// quantized ones dequantized exactly as ggml does).
    ///
    /// Errors: INVALID_ARGUMENT for parts that do not stack (not 2-D, different `in`); UNSUPPORTED
    /// for a quantized part of a type without kernels (the message names the type and part).
    pub fn from_parts(parts: &[&HostTensor]) -> Result<Option<Self>> {
        let (_, cols) = fused_shape(parts)?;
        let mut segs = Vec::with_capacity(parts.len());
        for (k, p) in parts.iter().enumerate() {
            if let Some(q) = p.quant() {
                if !is_kernel_type(q.ty()) {
                    return Err(Error::unsupported(format!(
                        "weight part {k} has type {} which the quantized kernels do not support",
                        q.ty()
                    )));
                }
                segs.push(q.clone());
            }
        }
        if segs.len() < parts.len() {
            return Ok(None);
        }
        let row_bytes = segs.iter().map(|s| s.row_bytes()).collect();
        Ok(Some(Self {
            group_sb: vec![0; segs.len()],
            segs,
            row_bytes,
            cols,
        }))
    }

    /// Stores the segments for which `sb_bytes` names a super-block size in the row-interleaved
    /// layout, for kernels that compute [`GROUP_ROWS`] rows at once from one sequential stream:
    /// the first `rows / 8 * 8` rows of such a segment form groups of 8 consecutive rows; group
    /// `G` takes the bytes of its rows (`8 * row_bytes`, at the same offset as before), and
    /// within them super-block `g` takes `8 * sb` bytes where 4-byte word `w` of row `q`'s
    /// super-block lands at `(8 w + q) * 4` (so lane `q` of a 256-bit load holds row `q`'s
    /// word), and the `sb % 4` bytes after its last whole word at `8 (sb - sb % 4) + q (sb % 4)`.
    /// The remaining rows stay as read. A segment is left as read when `sb` does not divide its
    /// rows. Only the order changes: [`QuantStack::bytes`] is the same, and
    /// [`QuantStack::row_to`] gives every row's original bytes.
    pub fn interleave(mut self, sb_bytes: impl Fn(GgmlType) -> Option<usize>) -> Self {
        for (k, seg) in self.segs.iter_mut().enumerate() {
            let rb = self.row_bytes[k];
            let Some(sb) = sb_bytes(seg.ty()) else {
                continue;
            };
            let groups = seg.rows() / GROUP_ROWS;
            if sb == 0 || !rb.is_multiple_of(sb) || groups == 0 {
                continue;
            }
            let mut bytes = seg.bytes().to_vec();
            let gb = GROUP_ROWS * rb;
            for (dst, src) in bytes
                .chunks_exact_mut(gb)
                .zip(seg.bytes().chunks_exact(gb))
                .take(groups)
            {
                for (q, row) in src.chunks_exact(rb).enumerate() {
                    for (g, s) in row.chunks_exact(sb).enumerate() {
                        let d = &mut dst[g * GROUP_ROWS * sb..(g + 1) * GROUP_ROWS * sb];
                        for (from, to, n) in spans(sb, q) {
                            d[to..to + n].copy_from_slice(&s[from..from + n]);
                        }
                    }
                }
            }
            // The same length, type and shape: `new` cannot fail here.
            if let Ok(d) = QuantData::new(seg.ty(), seg.rows(), seg.cols(), bytes) {
                *seg = d;
                self.group_sb[k] = sb;
            }
        }
        self
    }
    /// The segments, in row order (a segment's bytes are in the interleaved order where
    /// [`QuantStack::interleave`] chose it: read rows through [`QuantStack::row_to`]).
    pub fn segments(&self) -> &[QuantData] {
        &self.segs
    }
    /// Columns (`in`).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Rows (`out`, the sum over segments).
    pub fn rows(&self) -> usize {
        self.segs.iter().map(|s| s.rows()).sum()
    }
    /// Bytes of all blocks.
    pub fn bytes(&self) -> usize {
        self.segs.iter().map(|s| s.bytes().len()).sum()
    }
    /// The segment index of row `r` and the row's index in it.
    #[inline]
    fn locate(&self, mut r: usize) -> Option<(usize, usize)> {
        for (k, s) in self.segs.iter().enumerate() {
            if r < s.rows() {
                return Some((k, r));
            }
            r -= s.rows();
        }
        None
    }
    /// Whether row `l` of segment `k` lies in an interleaved group.
    #[inline]
    fn grouped(&self, k: usize, l: usize) -> bool {
        self.group_sb[k] > 0 && l < self.segs[k].rows() / GROUP_ROWS * GROUP_ROWS
    }
    /// The type and blocks of row `r` as read (whole blocks of `cols` elements, a
    /// [`QuantData`] invariant), or `None` when out of range or in an interleaved group (see
    /// [`QuantStack::row_to`]).
    #[inline]
    pub fn row(&self, r: usize) -> Option<(GgmlType, &[u8])> {
        let (k, l) = self.locate(r)?;
        if self.grouped(k, l) {
            return None;
        }
        let (s, rb) = (&self.segs[k], self.row_bytes[k]);
        Some((s.ty(), s.bytes().get(l * rb..(l + 1) * rb)?))
    }
    /// As [`QuantStack::row`] for any row: a row of an interleaved group is gathered into
    /// `buf` (resized to the row's bytes).
    pub fn row_to<'a>(&'a self, r: usize, buf: &'a mut Vec<u8>) -> Option<(GgmlType, &'a [u8])> {
        let (k, l) = self.locate(r)?;
        if !self.grouped(k, l) {
            return self.row(r);
        }
        let (s, rb, sb) = (&self.segs[k], self.row_bytes[k], self.group_sb[k]);
        let (g0, q) = (l / GROUP_ROWS * GROUP_ROWS, l % GROUP_ROWS);
        let group = s.bytes().get(g0 * rb..(g0 + GROUP_ROWS) * rb)?;
        buf.resize(rb, 0);
        for (g, dst) in buf.chunks_exact_mut(sb).enumerate() {
            let src = &group[g * GROUP_ROWS * sb..(g + 1) * GROUP_ROWS * sb];
            for (from, to, n) in spans(sb, q) {
                dst[from..from + n].copy_from_slice(&src[to..to + n]);
            }
        }
        Some((s.ty(), &buf[..]))
    }
    /// When row `r` starts an interleaved group: the type, the group's bytes (`8 * row bytes`,
    /// super-block after super-block) and the super-block bytes.
    #[inline]
    pub fn group(&self, r: usize) -> Option<(GgmlType, &[u8], usize)> {
        let (k, l) = self.locate(r)?;
        if !l.is_multiple_of(GROUP_ROWS) || !self.grouped(k, l) {
            return None;
        }
        let (s, rb) = (&self.segs[k], self.row_bytes[k]);
        let bytes = s.bytes().get(l * rb..(l + GROUP_ROWS) * rb)?;
        Some((s.ty(), bytes, self.group_sb[k]))
    }
}
