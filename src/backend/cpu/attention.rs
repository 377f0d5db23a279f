//! Causal grouped-query attention over the paged KV cache, blocked over keys with an online
//! (running) softmax, flash-attention style: no row's whole score vector is ever stored, only
//! one block of [`SPAN`] positions at a time. Optionally limited to a sliding window of the
//! most recent positions.
//!
//! Work is split into units of (rows, KV head): a unit computes every query head that shares the
//! KV head for a run of up to [`ROW_BLOCK`] consecutive rows of one sequence (a prompt's rows in
//! prefill; one row in decode), so each K/V vector is loaded once per group and row block
//! instead of once per row. Units run in parallel on the pool.
//!
//! Keys are taken in blocks of [`SPAN`] positions aligned to multiples of `SPAN`, and within a
//! block [`TILE`] positions at a time: the tile's K vectors are transposed into a
//! `[head_dim][TILE]` block, so the scores of one query head against the tile's keys are one
//! vector of `TILE` lanes, each lane a chain of fused multiply-adds over the head dimensions in
//! order (no horizontal sums). The weighted sum of V keeps each output element's chain of fused
//! multiply-adds over the block's keys in position order in registers.
//!
//! Precision, fixed for every path (portable, AVX2, AVX-512): a score is
//! `fma(q[hd-1], k[hd-1], ... fma(q[0], k[0], 0)) * scale`. Per (row, head), for each block the
//! row sees (in position order): `m' = max(m, the block's largest score)` (NaN ignored, `m`
//! starting at `-inf`), `α = exp_neg(m - m')` (0 for the first block), the sum's 16 lanes
//! (position `p` in lane `p % 16`) and the output accumulators are multiplied by `α`, each
//! score becomes `e_p = exp_neg(s_p - m')` ([`exp_neg`]) and is added into its lane, and an
//! output element is `fma(e_p, v_p, acc)` over the block's positions in order; at the end the
//! output is multiplied by `1 / sum`, the lanes reduced by [`reduce_lanes`]. Every operation is
//! element-wise and the blocks are fixed by position, so a row's output is bitwise independent
//! of the other rows in the call, of how rows are blocked, of threading and of the vector width.

use rayon::prelude::*;

use super::{CpuBackend, CpuKvCache};
use crate::backend::kv_store::{attn_row, attn_shapes};
use crate::backend::reference::window_start;
use crate::backend::AttentionArgs;

/// Keys per tile, and lanes of the softmax sum.
const TILE: usize = 16;

/// `e^x` for the softmax (`x <= 0`): Cephes-style range reduction and degree-6 polynomial in
/// plain f32 arithmetic (relative error ~2e-7), written so the compiler vectorises it. Inputs
/// below -87.3 are clamped (result ~1e-38); NaN propagates. Vectorises completely.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    let x = if x < -87.3 { -87.3 } else { x };
    let fx = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - fx * 0.693_359_4 - fx * -2.121_944_4e-4;
    let z = r * r;
    let y = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 0.166_666_65)
        * r
        + 0.5)
        * z
        + r
        + 1.0;
    // 2^fx without a float-to-int conversion (which does not vectorise): fx + 127 is an
    // integer in 1..=127, so adding it to 2^23 puts it in the low mantissa bits, and shifting
    // those into the exponent field gives 2^fx exactly. NaN shifts to 0 and y is NaN then.
    y * f32::from_bits((fx + (8_388_608.0 + 127.0)).to_bits() << 23)
}

/// The final sum of a softmax's [`TILE`] lanes: added pairwise, `(l0 + l8) + ...` halving
/// until one is left.
#[inline(always)]
fn reduce_lanes(mut acc: [f32; TILE]) -> f32 {
    let mut w = TILE / 2;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    acc[0]
}

/// One (row, query head)'s running softmax: the largest score so far (`-inf` before any) and
/// the sum of the exponentials so far in [`TILE`] lanes (position `p` in lane `p % TILE`), both
/// relative to that maximum.
#[derive(Debug, Clone, Copy)]
struct Running {
    m: f32,
    lanes: [f32; TILE],
}

impl Default for Running {
    fn default() -> Self {
        Self {
            m: f32::NEG_INFINITY,
            lanes: [0.0; TILE],
        }
    }
}

/// The largest non-NaN value of `s` (`-inf` when there is none).
#[inline(always)]
fn max_lanes(s: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; TILE];
    let chunks = s.chunks_exact(TILE);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(rest) {
        *a = a.max(v);
    }
    acc.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Scores of `N` query vectors against one transposed key tile: lane `j` of result `c` is
/// `fma` over `d` in order of `qt[d][c] * kt[d][j]` (`qt` holds the queries transposed). The
/// `N` chains are independent, so they overlap in the pipeline.
#[inline(always)]
fn tile_dots<const N: usize>(qt: &[[f32; N]], kt: &[[f32; TILE]]) -> [[f32; TILE]; N] {
    let mut acc = [[0f32; TILE]; N];
    for (q, k) in qt.iter().zip(kt) {
        for c in 0..N {
            for j in 0..TILE {
                acc[c][j] = q[c].mul_add(k[j], acc[c][j]);
            }
        }
    }
    acc
}

/// Dimensions of V one accumulator slot covers (4 vectors of [`TILE`] lanes).
const PIECE: usize = 64;

/// Positions per key block (a multiple of [`TILE`]): the block's scores of a unit's pairs
/// (`SPAN` values each, 48 KB for 32 rows × 3 heads) stay in L1/L2 from the dot products to the
/// weighted sum of V, whose passes load and store their slots' accumulators once per block while
/// the block's V vectors (`SPAN * hd` values) stay in L1/L2 across passes.
const SPAN: usize = 128;

/// A register slot of the weighted sum of V: dimensions `d0..d0 + PIECE` of one query head of
/// one row, accumulated at `out[o..o + PIECE]`; the row's exponential for position `p` sits at
/// `scores[eb + p]` (wrapping), and the row sees `lo <= p <= pos`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    o: usize,
    eb: usize,
    d0: usize,
    lo: usize,
    pos: usize,
}

/// Adds one span of positions (`p0..p0 + vt.len()`, V vectors `vt`; `v_ok`: every one of them
/// holds `hd` values) to `N` slots: for each position in order, each slot that sees it does
/// `acc[x] = fma(e, v[d0 + x], acc[x])`. Accumulators live in registers for the span and in
/// `out` between spans; on AVX-512 the slots share each V load, on AVX2 up to three slots do
/// (in two halves of 32 dimensions, for the 16 registers), the portable loop goes slot by slot.
/// A span that does not fit its slices ([`PvSpan::fits`]) is left alone.
///
/// # Safety
/// `P` names instructions the CPU must support (see [`load_tile`]).
#[inline(always)]
unsafe fn pv_tile<const N: usize, const P: u8>(
    out: &mut [f32],
    scores: &[f32],
    slots: &[Slot; N],
    p0: usize,
    vt: &[&[f32]],
    v_ok: bool,
) {
    let w = vt.len();
    let sp = PvSpan::<N> {
        a: std::array::from_fn(|c| slots[c].lo.clamp(p0, p0 + w) - p0),
        b: std::array::from_fn(|c| (slots[c].pos + 1).clamp(p0, p0 + w) - p0),
        eb: std::array::from_fn(|c| slots[c].eb.wrapping_add(p0)),
        o: std::array::from_fn(|c| slots[c].o),
        d0: std::array::from_fn(|c| slots[c].d0),
        vt,
        v_ok,
    };
    #[cfg(target_arch = "x86_64")]
    if P == AVX512 {
        // SAFETY: P == AVX512 means the CPU supports AVX2, FMA and AVX-512F (this function's
        // contract); the kernel checks its slices.
        unsafe { super::attention_x86::pv_tile_avx512::<N>(out, scores, &sp) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if P == AVX2 {
        // SAFETY: P == AVX2 means the CPU supports AVX2 and FMA (this function's contract); the
        // kernel checks its slices.
        unsafe { super::attention_x86::pv_tile_avx2::<N>(out, scores, &sp) };
        return;
    }
    if !sp.fits(out, scores) {
        return;
    }
    let PvSpan {
        o, eb, d0, a, b, ..
    } = sp;
    let mut acc = [[0f32; PIECE]; N];
    for c in 0..N {
        acc[c].copy_from_slice(&out[o[c]..o[c] + PIECE]);
        for (k, v) in vt[a[c]..b[c]].iter().enumerate() {
            let e = scores[eb[c].wrapping_add(a[c] + k)];
            let vv = &v[d0[c]..d0[c] + PIECE];
            for x in 0..PIECE {
                acc[c][x] = e.mul_add(vv[x], acc[c][x]);
            }
        }
        out[o[c]..o[c] + PIECE].copy_from_slice(&acc[c]);
    }
}

/// One span of a [`pv_tile`] call for `N` slots, relative to the span's first position: slot
/// `c` accumulates at `out[o[c]..o[c] + PIECE]` dimensions `d0[c]..d0[c] + PIECE` of V over the
/// span's positions `a[c]..b[c]`, its exponential for position `j` at `scores[eb[c] + j]`
/// (wrapping); `vt` holds the span's V vectors, all `hd` long when `v_ok`.
pub(super) struct PvSpan<'v, const N: usize> {
    pub o: [usize; N],
    pub eb: [usize; N],
    pub d0: [usize; N],
    pub a: [usize; N],
    pub b: [usize; N],
    pub vt: &'v [&'v [f32]],
    pub v_ok: bool,
}

impl<const N: usize> PvSpan<'_, N> {
    /// Each slot's exponentials in `scores`: slot `c`'s for the span's position `j` at
    /// `.wrapping_add(j)` of the `c`-th pointer (readable for `j` in `a[c]..b[c]` when the span
    /// [`fits`](Self::fits)).
    #[inline(always)]
    pub(super) fn exps(&self, scores: &[f32]) -> [*const f32; N] {
        std::array::from_fn(|c| scores.as_ptr().wrapping_add(self.eb[c]))
    }

    /// The span positions every slot sees, `max a .. min b` (empty when they share none).
    #[inline(always)]
    pub(super) fn common(&self) -> (usize, usize) {
        let ja = self.a.iter().copied().max().unwrap_or(0);
        let jb = self.b.iter().copied().min().unwrap_or(0);
        (ja, jb)
    }

    /// Whether every slot lies inside the slices: `v_ok`, `d0[c] + PIECE <= hd`,
    /// `a[c] <= b[c] <= vt.len()`, the scores of `a[c]..b[c]` exist and `out` holds
    /// `o[c] + PIECE` values. A span that does not fit is left alone on every path.
    #[inline(always)]
    pub(super) fn fits(&self, out: &[f32], scores: &[f32]) -> bool {
        let hd = self.vt.first().map_or(0, |v| v.len());
        self.v_ok
            && (0..N).all(|c| {
                let (a, b) = (self.a[c], self.b[c]);
                let (lo, hi) = (self.eb[c].wrapping_add(a), self.eb[c].wrapping_add(b));
                let e_ok = a == b || (lo <= hi && hi <= scores.len());
                e_ok && a <= b
                    && b <= self.vt.len()
                    && self.d0[c] + PIECE <= hd
                    && self.o[c] + PIECE <= out.len()
            })
    }
}

/// Shapes and the layer's K/V, shared by all units of one call.
struct Call<'a> {
    hd: usize,
    kv_dim: usize,
    group: usize,
    bs: usize,
    scale: f32,
    /// Sliding window (None = every position).
    window: Option<usize>,
    /// The layer's K (slot-major).
    kc: &'a [f32],
    /// The layer's V (slot-major).
    vc: &'a [f32],
}

/// Per-thread buffers, reused from unit to unit.
#[derive(Default)]
struct Scratch {
    /// The current block's scores, then exponentials, of every (row, query head): [`SPAN`]
    /// values each.
    scores: Vec<f32>,
    /// The current key tile, transposed.
    kt: Vec<[f32; TILE]>,
    /// The unit's queries (every row and head of the group, in order), transposed in chunks of
    /// up to 8 pairs.
    qt: Vec<f32>,
    /// Each (row, query head)'s running softmax.
    run: Vec<Running>,
}

/// Instruction set a unit is compiled for: the vector width of its loops and which register
/// transpose builds the key tiles (neither changes a result bit).
const PORTABLE: u8 = 0;
/// AVX2 and FMA.
const AVX2: u8 = 1;
/// AVX2, FMA and AVX-512F.
const AVX512: u8 = 2;

/// One unit compiled for AVX2/FMA (8-lane vectors, fused multiply-adds). The same bits as the
/// portable build: every operation is element-wise and `mul_add` is fused on both.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn unit_avx2(u: &Unit<'_, '_>, sc: &mut Scratch, out: &mut [f32]) {
    // SAFETY: this function's contract (AVX2 and FMA) is what `unit::<AVX2>` needs.
    unsafe { unit::<AVX2>(u, sc, out) }
}

/// [`unit_avx2`] compiled with AVX-512F as well (16-lane vectors): the same bits.
///
/// # Safety
/// The CPU must support AVX2, FMA and AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn unit_avx512(u: &Unit<'_, '_>, sc: &mut Scratch, out: &mut [f32]) {
    // SAFETY: this function's contract (AVX2, FMA, AVX-512F) is what `unit::<AVX512>` needs.
    unsafe { unit::<AVX512>(u, sc, out) }
}

/// Query rows per unit at most: the rows share each K tile's transpose and each V block. 32
/// measured 15–20 % faster than 16 on 2,048-token prompts (with the scores of whole rows
/// then), 64 no faster again.
const ROW_BLOCK: usize = 32;

/// A query row of a unit: its query (every head), its position, and the first position its
/// window lets it see.
#[derive(Debug, Clone, Copy)]
struct QRow<'a> {
    q: &'a [f32],
    pos: usize,
    lo: usize,
}

impl<'a> QRow<'a> {
    /// Query head `qi` of KV head `g`'s group (`hd` values; empty when out of range).
    fn head(&self, g: usize, group: usize, qi: usize, hd: usize) -> &'a [f32] {
        let at = (g * group + qi) * hd;
        self.q.get(at..at + hd).unwrap_or(&[])
    }
}

/// One unit of work: up to [`ROW_BLOCK`] rows of one sequence (block table `table`) × KV head
/// `g`.
struct Unit<'c, 'a> {
    d: &'c Call<'a>,
    rows: &'c [QRow<'a>],
    table: &'a [u32],
    g: usize,
}

impl Unit<'_, '_> {
    /// The K or V vectors (`cache`: the layer's K or V) of this unit's KV head at positions
    /// `p0..p0 + W`: `None` past `end` or outside the cache.
    fn tile<'k, const W: usize>(
        &self,
        cache: &'k [f32],
        p0: usize,
        end: usize,
    ) -> [Option<&'k [f32]>; W] {
        let d = self.d;
        std::array::from_fn(|j| {
            let p = p0 + j;
            if p >= end {
                return None;
            }
            let slot = *self.table.get(p / d.bs)? as usize * d.bs + p % d.bs;
            let at = slot * d.kv_dim + self.g * d.hd;
            cache.get(at..at + d.hd)
        })
    }
}

/// Fills `kt` (`hd` rows) with the K vectors of positions `p0..p0 + TILE` transposed
/// (`kt[d][j]` = element `d` of position `p0 + j`): NaN for a position outside the cache, zero
/// past `end`.
///
/// # Safety
/// `P` names instructions the CPU must support ([`AVX2`]: AVX2 and FMA; [`AVX512`]: AVX-512F
/// as well).
#[inline(always)]
unsafe fn load_tile<const P: u8>(u: &Unit<'_, '_>, p0: usize, end: usize, kt: &mut [[f32; TILE]]) {
    let hd = u.d.hd;
    let rows = u.tile::<TILE>(u.d.kc, p0, end);
    let full = rows.iter().all(Option::is_some);
    let mut d0 = 0;
    #[cfg(target_arch = "x86_64")]
    if full && P != PORTABLE {
        let rs: [&[f32]; TILE] = rows.map(|r| r.unwrap_or(&[]));
        while d0 + TILE <= hd {
            if P == AVX512 {
                // SAFETY: P == AVX512 means the CPU supports AVX2, FMA and AVX-512F (this
                // function's contract); the transpose checks its slices.
                unsafe { super::simd::transpose16_avx512(&rs, d0, &mut kt[d0..]) };
            } else {
                // SAFETY: P == AVX2 means the CPU supports AVX2 and FMA.
                unsafe { super::simd::transpose16_avx2(&rs, d0, &mut kt[d0..]) };
            }
            d0 += TILE;
        }
    }
    for (j, r) in rows.iter().enumerate() {
        let fill = if p0 + j >= end { 0.0 } else { f32::NAN };
        match r {
            Some(k) => {
                for (row, &x) in kt[d0..].iter_mut().zip(&k[d0..]) {
                    row[j] = x;
                }
            }
            None => kt[d0..].iter_mut().for_each(|row| row[j] = fill),
        }
    }
}

/// Stores a tile's scores (positions `p0..p0 + TILE`, times `scale`) for the positions `row`
/// sees into `s`, the row's scores of one head in the block starting at `b0` (index =
/// position - `b0`).
#[inline(always)]
fn put_scores(row: &QRow<'_>, s: &mut [f32], b0: usize, p0: usize, acc: &[f32; TILE], scale: f32) {
    if p0 >= row.lo && p0 + TILE <= row.pos + 1 {
        let at = p0 - b0;
        if let Some(s) = s.get_mut(at..at + TILE) {
            for (s, &a) in s.iter_mut().zip(acc) {
                *s = a * scale;
            }
        }
        return;
    }
    for (j, &a) in acc.iter().enumerate() {
        let p = p0 + j;
        if (row.lo..=row.pos).contains(&p) {
            if let Some(s) = s.get_mut(p - b0) {
                *s = a * scale;
            }
        }
    }
}

/// Computes a unit: `out` is `rows × group × hd` (each row's outputs of the group's query heads).
/// Row `r` attends to positions `lo..=pos` of the sequence. Keys are taken in blocks of
/// [`SPAN`] positions aligned to multiples of `SPAN` (the same blocks for a row whatever unit it
/// is in): each block's scores, the running softmax's update, then the block's weighted sum of V
/// (see the module docs).
///
/// # Safety
/// `P` names instructions the CPU must support (see [`load_tile`]).
#[inline(always)]
unsafe fn unit<const P: u8>(u: &Unit<'_, '_>, sc: &mut Scratch, out: &mut [f32]) {
    let (d, rows, g) = (u.d, u.rows, u.g);
    let (hd, group) = (d.hd, d.group);
    let Scratch {
        scores,
        kt,
        qt,
        run,
    } = sc;
    kt.resize(hd, [0.0; TILE]);
    let lo = rows.iter().map(|r| r.lo).min().unwrap_or(0);
    let end = rows.iter().map(|r| r.pos + 1).max().unwrap_or(0);
    // The unit's (row, head) queries, transposed in chunks of 8 (the last 4, 2, 1): chunk `k0`
    // (its first pair) of `n` pairs at `qt[k0 * hd..]`, element `(d, c)` at `d * n + c`.
    let npairs = rows.len() * group;
    let chunks = || {
        let mut k0 = 0;
        std::iter::from_fn(move || {
            let n = [8, 4, 2, 1].into_iter().find(|&k| k <= npairs - k0)?;
            k0 += n;
            Some((k0 - n, n))
        })
    };
    qt.clear();
    qt.resize(npairs * hd, f32::NAN);
    for (k0, n) in chunks() {
        for c in 0..n {
            let k = k0 + c;
            let q = rows[k / group].head(g, group, k % group, hd);
            for (dd, &x) in q.iter().enumerate() {
                qt[k0 * hd + dd * n + c] = x;
            }
        }
    }
    // Pair `k` = (row k / group, query head k % group): its block's scores, then
    // exponentials, at `scores[k * SPAN..]` (index = position - block start).
    scores.clear();
    scores.resize(npairs * SPAN, 0.0);
    run.clear();
    run.resize(npairs, Running::default());
    out.fill(0.0);
    let pieces = hd / PIECE;
    let nslots = npairs * pieces;
    for b0 in (lo / SPAN * SPAN..end).step_by(SPAN) {
        let b1 = (b0 + SPAN).min(end);
        // Scores of the block, one key tile at a time, for every pair (those that see none
        // of the tile are computed and dropped: only around the diagonal).
        for p0 in (b0.max(lo / TILE * TILE)..b1).step_by(TILE) {
            // The next tile's K vectors on their way to L1 and this tile's V vectors to L2
            // (for the block's weighted sum) while this tile computes.
            #[cfg(target_arch = "x86_64")]
            if P != PORTABLE {
                let pf = super::attention_x86::prefetch_rows::<TILE>;
                pf(&u.tile::<TILE>(d.kc, p0 + TILE, end), true);
                pf(&u.tile::<TILE>(d.vc, p0, end), false);
            }
            // SAFETY: as this function's contract.
            unsafe { load_tile::<P>(u, p0, end, kt) };
            let mut put = |k: usize, acc: &[f32; TILE]| {
                let row = &rows[k / group];
                put_scores(
                    row,
                    &mut scores[k * SPAN..(k + 1) * SPAN],
                    b0,
                    p0,
                    acc,
                    d.scale,
                );
            };
            for (k0, n) in chunks() {
                let qc = &qt[k0 * hd..(k0 + n) * hd];
                macro_rules! dots {
                    ($n:literal) => {{
                        let qc = qc.as_chunks::<$n>().0;
                        #[cfg(target_arch = "x86_64")]
                        let acc = match P {
                            // SAFETY: P == AVX512 means the CPU supports AVX2, FMA and
                            // AVX-512F.
                            AVX512 => unsafe {
                                super::attention_x86::tile_dots_avx512::<$n>(qc, kt)
                            },
                            // SAFETY: P == AVX2 means the CPU supports AVX2 and FMA.
                            AVX2 => unsafe { super::attention_x86::tile_dots_avx2::<$n>(qc, kt) },
                            _ => tile_dots::<$n>(qc, kt),
                        };
                        #[cfg(not(target_arch = "x86_64"))]
                        let acc = tile_dots::<$n>(qc, kt);
                        acc.iter().enumerate().for_each(|(c, a)| put(k0 + c, a));
                    }};
                }
                match n {
                    8 => dots!(8),
                    4 => dots!(4),
                    2 => dots!(2),
                    _ => dots!(1),
                }
            }
        }
        // The running softmax of every pair that sees part of the block: the new maximum,
        // the rescale of what was accumulated, the block's exponentials (zero where the row
        // sees nothing) added into the sum's lanes.
        for (k, st) in run.iter_mut().enumerate() {
            let row = &rows[k / group];
            let (a, b) = (row.lo.max(b0), (row.pos + 1).min(b1));
            if a >= b {
                continue;
            }
            let s = &mut scores[k * SPAN..(k + 1) * SPAN];
            let m = st.m.max(max_lanes(&s[a - b0..b - b0]));
            let alpha = if st.m == f32::NEG_INFINITY {
                0.0
            } else {
                exp_neg(st.m - m)
            };
            st.m = m;
            for v in s[a - b0..b - b0].iter_mut() {
                *v = exp_neg(*v - m);
            }
            s[..a - b0].fill(0.0);
            s[b - b0..].fill(0.0);
            for l in st.lanes.iter_mut() {
                *l *= alpha;
            }
            for c in s.chunks_exact(TILE) {
                for (l, &v) in st.lanes.iter_mut().zip(c) {
                    *l += v;
                }
            }
            for v in out[k * hd..(k + 1) * hd].iter_mut() {
                *v *= alpha;
            }
        }
        // The block's weighted sum of V: slots of PIECE dimensions of one pair, up to 4 at a
        // time (3 on AVX2), share each V load.
        let vt = u.tile::<SPAN>(d.vc, b0, end).map(|v| v.unwrap_or(&[]));
        let vt = &vt[..b1 - b0];
        let v_ok = vt.iter().all(|v| v.len() == hd);
        if hd % PIECE != 0 {
            // Any head size: the same operations, accumulators in memory.
            for (j, v) in vt.iter().enumerate() {
                let p = b0 + j;
                for k in 0..npairs {
                    let row = &rows[k / group];
                    if !(row.lo..=row.pos).contains(&p) || v.is_empty() {
                        continue;
                    }
                    let e = scores[k * SPAN + j];
                    for (a, &x) in out[k * hd..(k + 1) * hd].iter_mut().zip(*v) {
                        *a = e.mul_add(x, *a);
                    }
                }
            }
            continue;
        }
        let slot = |i: usize| {
            let (k, c) = (i / pieces, i % pieces);
            let row = &rows[k / group];
            Slot {
                o: k * hd + c * PIECE,
                eb: (k * SPAN).wrapping_sub(b0),
                d0: c * PIECE,
                lo: row.lo,
                pos: row.pos,
            }
        };
        // Slots per pass: at most as many as the path's kernel shares each V load between.
        #[cfg(target_arch = "x86_64")]
        let most = if P == AVX2 {
            super::attention_x86::PV_SLOTS_AVX2
        } else {
            4
        };
        #[cfg(not(target_arch = "x86_64"))]
        let most = 4;
        let mut i0 = 0;
        while i0 < nslots {
            let take = [4, 3, 2, 1]
                .into_iter()
                .find(|&k| k <= most && k <= nslots - i0)
                .unwrap_or(1);
            macro_rules! pass {
                ($n:literal) => {{
                    let sl: [Slot; $n] = std::array::from_fn(|c| slot(i0 + c));
                    // SAFETY: as this function's contract.
                    unsafe { pv_tile::<$n, P>(out, scores, &sl, b0, vt, v_ok) };
                }};
            }
            match take {
                4 => pass!(4),
                3 => pass!(3),
                2 => pass!(2),
                _ => pass!(1),
            }
            i0 += take;
        }
    }
    for (o, st) in out.chunks_exact_mut(hd).zip(run.iter()) {
        let z = 1.0 / reduce_lanes(st.lanes);
        o.iter_mut().for_each(|v| *v *= z);
    }
}

/// See [`crate::backend::Backend::attention_paged`]. Fills the output with NaN when shapes are
/// inconsistent, and a row's output with NaN when its metadata points outside the cache.
pub(crate) fn attention_paged(
    be: &CpuBackend,
    a: AttentionArgs<'_, [f32], CpuKvCache>,
    out: &mut [f32],
) {
    let (q, n_heads, meta) = (a.q, a.n_heads, &a.meta);
    let geom = a.cache.geom;
    let (Some((nkv, hd, group)), Some((kc, vc))) = (
        attn_shapes(&q, out.len(), n_heads, &geom),
        a.cache.layer(a.layer),
    ) else {
        out.iter_mut().for_each(|v| *v = f32::NAN);
        return;
    };
    let rows = q.rows;
    if rows == 0 || hd == 0 {
        return;
    }
    let d = Call {
        hd,
        kv_dim: nkv * hd,
        group,
        bs: geom.block_size,
        scale: 1.0 / (hd as f32).sqrt(),
        window: a.window,
        kc,
        vc,
    };
    let q_dim = n_heads * hd;
    let out = &mut out[..rows * q_dim];
    let threads = be.pool.current_num_threads();
    // Row blocks: runs of consecutive rows of one sequence with valid metadata, small enough
    // that every thread gets several units; a row with invalid metadata is a block alone.
    let rb = (rows * nkv / (threads * 4)).clamp(1, ROW_BLOCK);
    let mut blocks: Vec<(usize, usize)> = Vec::new();
    let mut t = 0;
    while t < rows {
        let ok = |t: usize| attn_row(meta, t, &geom).is_some() && q.row(t, q_dim).is_some();
        let mut t1 = t + 1;
        if ok(t) {
            while t1 < rows && t1 - t < rb && meta.row_seq.get(t1) == meta.row_seq.get(t) && ok(t1)
            {
                t1 += 1;
            }
        }
        blocks.push((t, t1));
        t = t1;
    }
    #[cfg(target_arch = "x86_64")]
    let wide = be.wide;
    let gh = group * hd;
    // Unit `c`: row block `c / nkv`, KV head `c % nkv`; its output is `rows × gh` values.
    let run = |c: usize, sc: &mut Scratch| -> Vec<f32> {
        let ((t0, t1), g) = (blocks[c / nkv], c % nkv);
        let mut res = vec![f32::NAN; (t1 - t0) * gh];
        let mut qrows = Vec::with_capacity(t1 - t0);
        let mut table: &[u32] = &[];
        for t in t0..t1 {
            let (Some((tb, pos)), Some(q_row)) = (attn_row(meta, t, &geom), q.row(t, q_dim)) else {
                return res;
            };
            table = tb;
            qrows.push(QRow {
                q: q_row,
                pos,
                lo: window_start(pos, d.window),
            });
        }
        let u = Unit {
            d: &d,
            rows: &qrows,
            table,
            g,
        };
        #[cfg(target_arch = "x86_64")]
        if be.simd {
            if wide {
                // SAFETY: `be.simd` is only set when AVX2 and FMA were detected at runtime, and
                // `be.wide` when AVX-512F/VL were as well.
                unsafe { unit_avx512(&u, sc, &mut res) };
            } else {
                // SAFETY: `be.simd` is only set when AVX2 and FMA were detected at runtime.
                unsafe { unit_avx2(&u, sc, &mut res) };
            }
            return res;
        }
        // SAFETY: the portable build needs no CPU features.
        unsafe { unit::<PORTABLE>(&u, sc, &mut res) };
        res
    };
    let work: usize = meta
        .row_pos
        .iter()
        .take(rows)
        .map(|&p| p as usize + 1)
        .sum::<usize>()
        .saturating_mul(q_dim);
    let units = blocks.len() * nkv;
    let results: Vec<Vec<f32>> = if threads <= 1 || work < (1 << 16) {
        let mut sc = Scratch::default();
        (0..units).map(|c| run(c, &mut sc)).collect()
    } else {
        be.pool.install(|| {
            (0..units)
                .into_par_iter()
                .with_max_len(1)
                .map_init(Scratch::default, |sc, c| run(c, sc))
                .collect()
        })
    };
    for (c, res) in results.iter().enumerate() {
        let ((t0, _), g) = (blocks[c / nkv], c % nkv);
        for (r, src) in res.chunks_exact(gh).enumerate() {
            let at = (t0 + r) * q_dim + g * gh;
            out[at..at + gh].copy_from_slice(src);
        }
    }
}
