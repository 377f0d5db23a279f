//! AVX2/FMA matmul microkernels (x86_64 only; callers check the CPU features at runtime).
//!
//! Batch invariance: every output element `y[t, o]` is produced by the same instruction
//! sequence whatever tile it falls in: one 8-lane accumulator starting at zero, one
//! `fmadd(x[t, k..k+8], w[o, k..k+8], acc)` per 8-column chunk in increasing `k`, then the fixed
//! horizontal sum [`hsum`]. Tiles only decide which elements share register loads, so a row's
//! result never depends on how many rows are in the call, how they are tiled, or on threading.

use std::arch::x86_64::*;

/// Weight rows per microkernel tile.
pub(crate) const NW: usize = 4;
// A weight tile is exactly one packed panel.
const _: () = assert!(NW == super::weight::PANEL);

/// Activation rows per microkernel tile (4 x 3 = 12 accumulators + 3 x + 1 w = 16 registers).
pub(crate) const MX: usize = 3;

/// Activation rows per microkernel tile with AVX-512VL's 32 registers (4 x 6 = 24
/// accumulators + 4 w + 1 x).
pub(crate) const MX_WIDE: usize = 6;

/// Horizontal sum of 8 lanes in a fixed order: `(l0+l4) + (l2+l6)` + `(l1+l5) + (l3+l7)`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s4 = _mm_add_ps(lo, hi);
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2));
    _mm_cvtss_f32(s1)
}

/// Loads 8 f32 weights.
///
/// # Safety
/// `p..p+8` must be readable.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn load_f32(p: *const f32) -> __m256 {
    // SAFETY: the caller guarantees 8 readable f32 at `p`; loadu has no alignment requirement.
    unsafe { _mm256_loadu_ps(p) }
}

/// Loads 8 bf16 weights (raw bits) and widens them to f32 (bf16 is the top half of an f32).
///
/// # Safety
/// `p..p+8` must be readable.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn load_bf16(p: *const u16) -> __m256 {
    // SAFETY: the caller guarantees 8 readable u16 (16 bytes) at `p`; loadu is unaligned.
    let h = unsafe { _mm_loadu_si128(p as *const __m128i) };
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
}

/// One call of the blocked kernels: `yt[j * rows + t] = dot(x[t], w[o0 + j])` for `j < n`,
/// `t < rows`, with activation rows processed in blocks of `rb`. `x` is `[rows, kp]`, `w` packed
/// panels (see `weight.rs`) of `kp` columns. Activations are f32 (`A`), or bf16 bits for the
/// `vdpbf16ps` kernels (`bf16dot.rs`).
#[derive(Debug)]
pub(crate) struct Panels<'a, T, A = f32> {
    /// Activations `[rows, kp]`.
    pub x: &'a [A],
    /// Activation rows.
    pub rows: usize,
    /// Padded columns (a multiple of 8).
    pub kp: usize,
    /// The packed weight.
    pub w: &'a [T],
    /// First weight row (a multiple of `NW`).
    pub o0: usize,
    /// Weight rows computed.
    pub n: usize,
    /// Activation rows per block.
    pub rb: usize,
}

/// Whether a blocked kernel call may run: `kp % 8 == 0`, `o0` starts a panel, `rows` activation
/// rows of `kp` fit in `x_len` values and the whole panels of weight rows `o0 .. o0 + n` in
/// `w_len`.
pub(crate) fn panels_fit(
    x_len: usize,
    rows: usize,
    kp: usize,
    w_len: usize,
    o0: usize,
    n: usize,
) -> bool {
    kp.is_multiple_of(8)
        && o0.is_multiple_of(NW)
        && matches!(rows.checked_mul(kp), Some(l) if l <= x_len)
        && matches!(
            o0.checked_add(n)
                .and_then(|e| e.checked_next_multiple_of(NW))
                .and_then(|e| e.checked_mul(kp)),
            Some(l) if l <= w_len
        )
}

/// Writes a finished tile into `yt` (viewed as `[n, rows]`), skipping anything out of range.
#[inline(always)]
pub(crate) fn store<const W: usize, const X: usize>(
    yt: &mut [f32],
    rows: usize,
    j: usize,
    t: usize,
    r: [[f32; X]; W],
) {
    for (jj, rr) in r.iter().enumerate() {
        for (i, &v) in rr.iter().enumerate() {
            if let Some(dst) = yt.get_mut((j + jj) * rows + t + i) {
                *dst = v;
            }
        }
    }
}

/// Panels ahead that the activation-tile passes over a panel prefetch (when a panel takes more
/// than one pass; a single pass is left to the hardware prefetcher).
///
/// Without it the first tile's pass over a panel stalls on DRAM while the other passes leave
/// the memory bus idle; with it a SmolLM2 decode step (weights from DRAM) at 8 rows took 54 ms
/// instead of 67 ms on one thread (1, 3 and 8 panels ahead measured the same). Spreading the
/// prefetches over the first two passes (one cache line per k-step each, f32) rather than all
/// in the first pass cut the 32-row step by another ~10% of CPU time.
const PF_DIST: usize = 3;
/// Activation tiles per block above which a bf16 panel is widened to f32 once for all of them
/// (see `widen_panel`). AVX2, SmolLM2's gate/up shape, one thread: 1.2x at 256 rows, 1.15x at 32.
const WIDEN_TILES: usize = 8;
/// Prefetch locality hint.
const PF_HINT: i32 = _MM_HINT_T0;

/// The body of `block` / `block_wide` (they differ in target features and tile sizes).
macro_rules! block_body {
    ($p:ident, $yt:ident, $mxmax:expr, $pick:expr, $widen:expr, [$($sz:literal),*]) => {{
        let Panels { x, rows, kp, w, o0, n, rb } = *$p;
        let yt = $yt;
        if !panels_fit(x.len(), rows, kp, w.len(), o0, n) || rb == 0 {
            return;
        }
        // The panel widened to f32 when many activation tiles pass over it (`$widen`): more
        // than WIDEN_TILES tiles' rows in the block (with few, the extra pass over the panel
        // costs more than the tiles' own widening: 8 rows ran 10-25% slower widened).
        let mut wide: Vec<f32> = Vec::new();
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + rb).min(rows);
            let widen = $widen && r1 - r0 > WIDEN_TILES * $mxmax;
            if widen {
                wide.resize(NW * kp, 0.0);
            }
            let mut j = 0;
            while j < n {
                // Whole panels (padding rows are zero; their results fall outside `yt`
                // and are dropped by `store`).
                let nw = NW;
                // SAFETY: o0 + j is a multiple of NW below o0 + n, so its whole panel
                // (NW * kp values from (o0 + j) * kp) is in bounds.
                let wp = unsafe { w.as_ptr().add((o0 + j) * kp) };
                // With several activation tiles per panel, prefetch the panel PF_DIST
                // ahead during the first passes, so that DRAM streams it while the
                // tiles compute from cache.
                let pnext = o0 + j + PF_DIST * NW;
                let pf = (r1 - r0 > $mxmax && pnext < o0 + n)
                    .then(|| w.as_ptr().wrapping_add(pnext * kp));
                if widen {
                    // SAFETY: the panel at wp holds NW * kp values (above) and `wide` as many.
                    unsafe { widen_panel(wp, kp, &mut wide, pf) };
                }
                // The widening pass prefetched the panel ahead; the tiles need not.
                let pf = pf.filter(|_| !widen);
                let mut t = r0;
                let mut pass = 0;
                while t < r1 {
                    // Pass p prefetches line p of each k-step's PF_LINES lines of the panel,
                    // spreading the prefetches over the passes.
                    let pft = pf
                        .filter(|_| pass < PF_LINES)
                        .map(|p| p.wrapping_add(pass * LINE_ELEMS));
                    pass += 1;
                    let mx = $pick(r1 - t);
                    // SAFETY: t + mx <= rows, so rows t .. t+mx of x are in bounds.
                    let xp = unsafe { x.as_ptr().add(t * kp) };
                    // SAFETY: every arm's tile reads mx <= rows - t rows of x from xp and one whole
                    // panel at wp (bounds and `kp % 8 == 0` validated at the top); the target
                    // features are enabled in the enclosing function.
                    unsafe {
                        match (mx, widen) {
                            $(($sz, false) => store(yt, rows, j, t, tile::<4, $sz>(xp, wp, kp, pft)),)*
                            $(($sz, true) => store(
                                yt,
                                rows,
                                j,
                                t,
                                super::f32w::tile::<4, $sz>(xp, wide.as_ptr(), kp, None),
                            ),)*
                            _ => {}
                        }
                    }
                    t += mx;
                }
                j += nw;
            }
            r0 = r1;
        }
    }};
}

/// Tile rows for `m` remaining rows with up to `max` per tile: balanced tiles (`max` 6: 8 -> 4 + 4,
/// 11 -> 6 + 5) so that no small tail tile runs at low efficiency.
#[inline(always)]
pub(crate) fn balanced_tile_rows(m: usize, max: usize) -> usize {
    if m <= max {
        m
    } else if m <= 2 * max {
        m.div_ceil(2)
    } else {
        max
    }
}

/// [`balanced_tile_rows`] for the AVX-512VL f32 tiles.
#[inline(always)]
fn wide_tile_rows(m: usize) -> usize {
    balanced_tile_rows(m, MX_WIDE)
}

macro_rules! weight_kernels {
    ($modname:ident, $t:ty, $load:ident, $two:expr, $widen:expr) => {
        /// Microkernels for one weight element type.
        pub(crate) mod $modname {
            use super::*;

            /// Cache lines of the panel per k-step: two (f32) or one (bf16).
            const PF_LINES: usize = if $two { 2 } else { 1 };
            /// Weights per 64-byte cache line.
            const LINE_ELEMS: usize = 64 / std::mem::size_of::<$t>();

            /// Dot products of `X` activation rows with the first `W` rows of the packed weight
            /// panel at `w` (see `weight.rs`: chunk `k / 8` of panel row `j` is at `k * NW + j * 8`)
            /// over `kp` columns.
            ///
            /// With `pf`, also prefetches one cache line per k-step at `pf + k * NW` (see
            /// [`PF_DIST`](super::PF_DIST)); a prefetch never faults or changes a result.
            ///
            /// # Safety
            /// `x + i*kp .. + kp` for `i < X` and `w .. w + NW*kp` must be readable; `W <= NW`;
            /// `kp % 8 == 0`.
            #[target_feature(enable = "avx2,fma")]
            #[inline]
            pub(super) unsafe fn tile<const W: usize, const X: usize>(
                x: *const f32,
                w: *const $t,
                kp: usize,
                pf: Option<*const $t>,
            ) -> [[f32; X]; W] {
                let mut acc = [[_mm256_setzero_ps(); X]; W];
                let mut k = 0;
                while k < kp {
                    if let Some(pf) = pf {
                        // Prefetch is a hint: it never faults and never changes a result.
                        let p = pf.wrapping_add(k * NW) as *const i8;
                        _mm_prefetch::<PF_HINT>(p);
                    }
                    let mut xv = [_mm256_setzero_ps(); X];
                    for (i, xi) in xv.iter_mut().enumerate() {
                        // SAFETY: row i < X of x has kp readable values and k + 8 <= kp.
                        *xi = unsafe { _mm256_loadu_ps(x.add(i * kp + k)) };
                    }
                    for (j, aj) in acc.iter_mut().enumerate() {
                        // SAFETY: the panel at w holds NW * kp readable values and
                        // k * NW + j * 8 + 8 <= NW * kp for j < W <= NW, k + 8 <= kp.
                        let wv = unsafe { $load(w.add(k * NW + j * 8)) };
                        for (a, xi) in aj.iter_mut().zip(xv.iter()) {
                            *a = _mm256_fmadd_ps(*xi, wv, *a);
                        }
                    }
                    k += 8;
                }
                let mut r = [[0f32; X]; W];
                for (rj, aj) in r.iter_mut().zip(acc.iter()) {
                    for (v, a) in rj.iter_mut().zip(aj.iter()) {
                        *v = hsum(*a);
                    }
                }
                r
            }

            /// Widens the packed panel at `w` (`NW * kp` values, in its order) to f32 into
            /// `out`, so that the activation tiles of a block read f32 weights (the values the
            /// tiles would widen themselves: the same products, bit for bit) instead of
            /// widening the panel once per tile. With `pf`, prefetches the panel there (one
            /// cache line per line of this one).
            ///
            /// # Safety
            /// `w .. w + NW*kp` must be readable, `out.len() >= NW * kp`, `kp % 8 == 0`.
            #[target_feature(enable = "avx2,fma")]
            #[inline]
            unsafe fn widen_panel(w: *const $t, kp: usize, out: &mut [f32], pf: Option<*const $t>) {
                for (c, o) in out[..NW * kp].chunks_exact_mut(8).enumerate() {
                    if let Some(pf) = pf.filter(|_| (c * 8) % LINE_ELEMS == 0) {
                        // Prefetch is a hint: it never faults and never changes a result.
                        _mm_prefetch::<PF_HINT>(pf.wrapping_add(c * 8) as *const i8);
                    }
                    // SAFETY: chunk c of the panel is in bounds (NW * kp values, `kp % 8 ==
                    // 0`); `o` holds 8 f32.
                    unsafe { _mm256_storeu_ps(o.as_mut_ptr(), $load(w.add(c * 8))) };
                }
            }

            /// `yt[j * rows + t] = dot(x[t], w[o0 + j])` for `j < n`, `t < rows`, processing
            /// activation rows in blocks of `rb` (so a block stays in cache while every weight
            /// tile of the range streams past it), in tiles of up to [`MX`] rows.
            ///
            /// # Safety
            /// AVX2 and FMA must be available. Also `kp % 8 == 0`, `o0 % NW == 0`,
            /// `x.len() >= rows * kp`, `w.len() >=` (`o0 + n` rounded up to a multiple of `NW`)
            /// `* kp` (whole panels); the function checks these and returns if they fail.
            #[target_feature(enable = "avx2,fma")]
            pub(crate) unsafe fn block(p: &Panels<'_, $t>, yt: &mut [f32]) {
                block_body!(p, yt, MX, |m: usize| m.min(MX), $widen, [3, 2, 1]);
            }

            /// [`block`] with AVX-512VL's 32 vector registers: tiles of up to [`MX_WIDE`] rows
            /// (4 x 6 = 24 accumulators), the same 256-bit instruction sequence per output
            /// element, so bitwise the same results as [`block`].
            ///
            /// # Safety
            /// AVX2, FMA, AVX-512F and AVX-512VL must be available; otherwise as [`block`].
            #[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
            pub(crate) unsafe fn block_wide(p: &Panels<'_, $t>, yt: &mut [f32]) {
                block_body!(p, yt, MX_WIDE, wide_tile_rows, $widen, [6, 5, 4, 3, 2, 1]);
            }
        }
    };
}

weight_kernels!(f32w, f32, load_f32, true, false);
weight_kernels!(bf16w, u16, load_bf16, false, true);

/// Transposes 8 rows of 8 f32 in registers: `v[i][j]` becomes `v[j][i]`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn transpose8(v: &mut [__m256; 8]) {
    let t0 = _mm256_unpacklo_ps(v[0], v[1]);
    let t1 = _mm256_unpackhi_ps(v[0], v[1]);
    let t2 = _mm256_unpacklo_ps(v[2], v[3]);
    let t3 = _mm256_unpackhi_ps(v[2], v[3]);
    let t4 = _mm256_unpacklo_ps(v[4], v[5]);
    let t5 = _mm256_unpackhi_ps(v[4], v[5]);
    let t6 = _mm256_unpacklo_ps(v[6], v[7]);
    let t7 = _mm256_unpackhi_ps(v[6], v[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    v[0] = _mm256_permute2f128_ps::<0x20>(s0, s4);
    v[1] = _mm256_permute2f128_ps::<0x20>(s1, s5);
    v[2] = _mm256_permute2f128_ps::<0x20>(s2, s6);
    v[3] = _mm256_permute2f128_ps::<0x20>(s3, s7);
    v[4] = _mm256_permute2f128_ps::<0x31>(s0, s4);
    v[5] = _mm256_permute2f128_ps::<0x31>(s1, s5);
    v[6] = _mm256_permute2f128_ps::<0x31>(s2, s6);
    v[7] = _mm256_permute2f128_ps::<0x31>(s3, s7);
}

/// Rows `t0 .. t0 + n` of `y = transpose(yt)` (`yt`: `[out, rows]`) into `yb` (`n = yb.len() /
/// out` rows of `out`): `yb[(t - t0) * out + o] = yt[o * rows + t]` for `t - t0 < n / 8 * 8`,
/// `o < out / 8 * 8` (whole 8 x 8 blocks, transposed in registers); the caller does the edges.
/// Writes nothing when `yt` is shorter than `rows * out` or the band passes `rows`.
#[target_feature(enable = "avx2,fma")]
pub(crate) fn transpose_blocks(yt: &[f32], rows: usize, out: usize, t0: usize, yb: &mut [f32]) {
    let n = yb.len() / out.max(1);
    let Some(len) = rows.checked_mul(out) else {
        return;
    };
    if yt.len() < len || t0.checked_add(n).is_none_or(|e| e > rows) {
        return;
    }
    for o0 in (0..out / 8 * 8).step_by(8) {
        for t in (0..n / 8 * 8).step_by(8) {
            let mut v = [_mm256_setzero_ps(); 8];
            for (i, vi) in v.iter_mut().enumerate() {
                // SAFETY: (o0 + i) * rows + t0 + t + 8 <= out * rows <= yt.len() (o0 + i < out,
                // t0 + t + 8 <= t0 + n <= rows); loadu is unaligned.
                *vi = unsafe { _mm256_loadu_ps(yt.as_ptr().add((o0 + i) * rows + t0 + t)) };
            }
            transpose8(&mut v);
            for (i, vi) in v.iter().enumerate() {
                // SAFETY: (t + i) * out + o0 + 8 <= n * out <= yb.len(); storeu is unaligned.
                unsafe { _mm256_storeu_ps(yb.as_mut_ptr().add((t + i) * out + o0), *vi) };
            }
        }
    }
}

/// Rows `rows[j][d0..d0 + 16]` (`j < 16`) transposed into `kt[d - d0][j]` for `d` in
/// `d0..d0 + 16`, through 8 x 8 register transposes. Writes nothing when a row is shorter than
/// `d0 + 16` or `kt` holds fewer than 16 rows.
#[target_feature(enable = "avx2,fma")]
pub(crate) fn transpose16_avx2(rows: &[&[f32]; 16], d0: usize, kt: &mut [[f32; 16]]) {
    if kt.len() < 16 || rows.iter().any(|r| r.len() < d0 + 16) {
        return;
    }
    for (rb, cb) in [(0, 0), (0, 8), (8, 0), (8, 8)] {
        let mut v = [_mm256_setzero_ps(); 8];
        for (i, vi) in v.iter_mut().enumerate() {
            // SAFETY: rows[rb + i] holds at least d0 + 16 >= d0 + cb + 8 values (checked above);
            // loadu is unaligned.
            *vi = unsafe { _mm256_loadu_ps(rows[rb + i].as_ptr().add(d0 + cb)) };
        }
        transpose8(&mut v);
        for (i, vi) in v.iter().enumerate() {
            // SAFETY: kt[cb + i] is a [f32; 16] (cb + i < 16 <= kt.len()), and rb + 8 <= 16;
            // storeu is unaligned.
            unsafe { _mm256_storeu_ps(kt[cb + i].as_mut_ptr().add(rb), *vi) };
        }
    }
}

/// [`transpose16_avx2`] as one 16 x 16 register transpose on AVX-512 (64 shuffles): the same
/// result.
#[target_feature(enable = "avx2,fma,avx512f")]
pub(crate) fn transpose16_avx512(rows: &[&[f32]; 16], d0: usize, kt: &mut [[f32; 16]]) {
    if kt.len() < 16 || rows.iter().any(|r| r.len() < d0 + 16) {
        return;
    }
    let mut r = [_mm512_setzero_ps(); 16];
    for (ri, row) in r.iter_mut().zip(rows) {
        // SAFETY: row holds at least d0 + 16 values (checked above); loadu is unaligned.
        *ri = unsafe { _mm512_loadu_ps(row.as_ptr().add(d0)) };
    }
    // t[2i], t[2i+1]: rows 2i and 2i+1 interleaved, per 128-bit lane k columns (4k, 4k+1) and
    // (4k+2, 4k+3).
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4i + c], lane k: column 4k + c of rows 4i..4i + 4.
    let mut u = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        let (a, b) = (_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 2]));
        let (c, d) = (
            _mm512_castps_pd(t[4 * i + 1]),
            _mm512_castps_pd(t[4 * i + 3]),
        );
        u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    // Lanes of the four row groups brought together: column 4k + c is lane k of u[c],
    // u[4 + c], u[8 + c], u[12 + c].
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let w0 = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let w1 = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(v0, v1);
        out[8 + c] = _mm512_shuffle_f32x4::<0xDD>(v0, v1);
        out[4 + c] = _mm512_shuffle_f32x4::<0x88>(w0, w1);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(w0, w1);
    }
    for (k, o) in kt.iter_mut().zip(out) {
        // SAFETY: k is a [f32; 16], one 512-bit unaligned store.
        unsafe { _mm512_storeu_ps(k.as_mut_ptr(), o) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Both 16 x 16 transposes put `rows[j][d0 + i]` at `kt[i][j]`.
    #[test]
    fn transposes_of_16_rows() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let data: Vec<Vec<f32>> = (0..16)
            .map(|_| (0..40).map(|_| rng.gen_range(-3.0f32..3.0)).collect())
            .collect();
        let rows: [&[f32]; 16] = std::array::from_fn(|j| data[j].as_slice());
        for d0 in [0usize, 7, 24] {
            let mut kt = vec![[0f32; 16]; 16];
            // SAFETY: AVX2 and FMA were detected above.
            unsafe { transpose16_avx2(&rows, d0, &mut kt) };
            for (i, k) in kt.iter().enumerate() {
                for (j, v) in k.iter().enumerate() {
                    assert_eq!(
                        v.to_bits(),
                        rows[j][d0 + i].to_bits(),
                        "avx2 d0={d0} {i} {j}"
                    );
                }
            }
            if is_x86_feature_detected!("avx512f") {
                let mut kt2 = vec![[0f32; 16]; 16];
                // SAFETY: AVX2, FMA and AVX-512F were detected.
                unsafe { transpose16_avx512(&rows, d0, &mut kt2) };
                assert_eq!(kt, kt2, "avx512 d0={d0}");
            }
        }
    }
}
