//! bf16 × bf16 matmul microkernels on AVX-512 BF16 (`vdpbf16ps`) for bf16 weights (x86_64 only;
//! callers check the CPU features at runtime).
//!
//! A bf16 weight's matmul multiplies bf16-rounded activations by the bf16 weights and
//! accumulates in f32 (the [`WeightFormat::BF16`](crate::backend::WeightFormat::BF16)
//! definition shared by every path and the reference backend). Each product of two bf16 values
//! is exact in f32, so paths differ only in their summation order.
//!
//! Here one 512-bit `vdpbf16ps` takes one 64-byte k-step of a packed panel (4 weight rows × 8
//! columns, see `weight.rs`) against the activation row's 8 columns broadcast to the four
//! 128-bit lanes: lane `4j + i` of the accumulator adds the pair `(k + 2i, k + 2i + 1)` of weight
//! row `j`, odd element first (the instruction's definition), so 32 multiply-adds per
//! instruction against 8 for a 256-bit f32 FMA.
//!
//! Batch invariance: every output element `y[t, o]` comes from one accumulator lane group that
//! starts at zero, takes one `vdpbf16ps` per k-step in increasing `k`, and is then summed in the
//! fixed order of [`reduce`]. Tiles only decide which rows share a weight load, so a row's result
//! does not depend on how many rows are in the call, on tiling or on threading.

use std::arch::x86_64::*;

use super::simd::{balanced_tile_rows, panels_fit, store, Panels, NW};

/// Activation rows per tile (one zmm accumulator each, plus the weight and broadcast registers).
pub(crate) const MXB: usize = 12;

/// A range of weight rows of a packed bf16 weight against bf16 activation rows (as bits).
pub(crate) type Bf16Panels<'a> = Panels<'a, u16, u16>;

/// The four row sums of an accumulator: row `j`'s lanes `4j .. 4j + 4` summed as
/// `(l0 + l2) + (l1 + l3)`.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
fn reduce(acc: __m512) -> [f32; NW] {
    // (l0 + l2, l1 + l3) within each 128-bit lane, then their sum.
    let hi = _mm512_permute_ps::<0b01_00_11_10>(acc);
    let s = _mm512_add_ps(acc, hi);
    let s1 = _mm512_permute_ps::<0b10_11_00_01>(s);
    let t = _mm512_add_ps(s, s1);
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds 16 f32, the size of one 512-bit store.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), t) };
    [lanes[0], lanes[4], lanes[8], lanes[12]]
}

/// Dot products of `X` bf16 activation rows at `x` (row stride `kp`) with the 4 rows of each of
/// the `P` consecutive packed panels at `w`, over `kp` columns; with `pf`, prefetches one cache
/// line per panel and k-step at the same offsets from `pf` (a hint: never faults, never changes
/// a result). Every (row, panel) accumulator takes the same instruction sequence whatever `P` and
/// `X` are.
///
/// # Safety
/// `x + i*kp .. + kp` for `i < X` and `w .. w + P*NW*kp` must be readable; `kp % 8 == 0`.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn tile<const P: usize, const X: usize>(
    x: *const u16,
    w: *const u16,
    kp: usize,
    pf: Option<*const u16>,
) -> [[[f32; X]; NW]; P] {
    let mut acc = [[_mm512_setzero_ps(); X]; P];
    let panel = NW * kp;
    let mut k = 0;
    while k < kp {
        let off = k * NW;
        let mut wv = [_mm512_setzero_ps(); P];
        for (p, v) in wv.iter_mut().enumerate() {
            if let Some(pf) = pf {
                _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(p * panel + off) as *const i8);
            }
            // SAFETY: panel p < P holds NW * kp values from w + p * panel and off + 32 <= NW * kp
            // (k + 8 <= kp); the load is unaligned.
            *v = unsafe { _mm512_castsi512_ps(_mm512_loadu_si512(w.add(p * panel + off).cast())) };
        }
        // `i` picks both the activation row and its accumulator in every panel.
        #[allow(clippy::needless_range_loop)]
        for i in 0..X {
            // SAFETY: row i < X of x has kp readable values and k + 8 <= kp.
            let xs = unsafe { _mm_loadu_si128(x.add(i * kp + k).cast()) };
            // SAFETY: __m512i and __m512bh are both 512 bits of plain data.
            let xv: __m512bh = unsafe { std::mem::transmute(_mm512_broadcast_i32x4(xs)) };
            for p in 0..P {
                // SAFETY: as above (__m512 and __m512bh are 512 bits of plain data).
                let wb: __m512bh = unsafe { std::mem::transmute(wv[p]) };
                acc[p][i] = _mm512_dpbf16_ps(acc[p][i], wb, xv);
            }
        }
        k += 8;
    }
    let mut r = [[[0f32; X]; NW]; P];
    for (rp, ap) in r.iter_mut().zip(acc.iter()) {
        for (i, a) in ap.iter().enumerate() {
            for (j, v) in reduce(*a).iter().enumerate() {
                rp[j][i] = *v;
            }
        }
    }
    r
}

/// Runs the `(P, X)` tile for `mx` rows (`X` one of the listed sizes) and stores it at weight
/// row `j`, activation row `t` of `yt`.
macro_rules! run_tile {
    ($p:literal, $mx:expr, $a:ident, [$($x:literal),*]) => {{
        let (yt, rows, j, t, xp, wp, kp, pf) = $a;
        match $mx {
            $($x => {
                let r = tile::<$p, $x>(xp, wp, kp, pf);
                for (q, rq) in r.into_iter().enumerate() {
                    store::<NW, $x>(yt, rows, j + q * NW, t, rq);
                }
            })*
            _ => {}
        }
    }};
}

/// `yt[j * rows + t] = dot(x[t], w[o0 + j])` for `j < n`, `t < rows`: activation rows in blocks
/// of `rb`, pairs of weight panels streaming past each block, tiles of up to [`MXB`] rows.
///
/// # Safety
/// AVX-512F and AVX-512 BF16 must be available. Also `kp % 8 == 0`, `o0 % NW == 0`,
/// `x.len() >= rows * kp`, `w.len() >=` (`o0 + n` rounded up to a multiple of `NW`) `* kp`
/// (whole panels); the function checks these and returns, leaving `yt` as it is, if they fail.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn block(p: &Bf16Panels<'_>, yt: &mut [f32]) {
    let Panels {
        x,
        rows,
        kp,
        w,
        o0,
        n,
        rb,
    } = *p;
    if !panels_fit(x.len(), rows, kp, w.len(), o0, n) || rb == 0 {
        return;
    }
    // Whole panels: padding rows are zero and their results fall outside `yt` (`store`).
    let np = n.next_multiple_of(NW);
    let mut r0 = 0;
    while r0 < rows {
        let r1 = (r0 + rb).min(rows);
        let mut j = 0;
        while j < np {
            let pair = j + 2 * NW <= np;
            let step = if pair { 2 * NW } else { NW };
            // SAFETY: o0 + j is a multiple of NW and o0 + j + step <= o0 + np, so the `step / NW`
            // panels from (o0 + j) * kp are in bounds (checked by `panels_fit`).
            let wp = unsafe { w.as_ptr().add((o0 + j) * kp) };
            // With several tiles per panel pair, the first pass prefetches the panels 3 steps
            // ahead, so that DRAM streams them while the later passes compute from cache.
            let pnext = o0 + j + 3 * step;
            let pf = (r1 - r0 > MXB && pnext + step <= o0 + np)
                .then(|| w.as_ptr().wrapping_add(pnext * kp));
            let mut t = r0;
            let mut first = true;
            while t < r1 {
                let mx = balanced_tile_rows(r1 - t, MXB);
                let pft = pf.filter(|_| first);
                first = false;
                // SAFETY: t + mx <= rows, so rows t .. t+mx of x are in bounds.
                let xp = unsafe { x.as_ptr().add(t * kp) };
                // SAFETY: each arm reads mx rows of x from xp and `step / NW` whole panels at wp
                // (bounds and kp % 8 == 0 checked above); the target features are enabled here.
                unsafe {
                    if pair {
                        let a = (&mut *yt, rows, j, t, xp, wp, kp, pft);
                        run_tile!(2, mx, a, [12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]);
                    } else {
                        let a = (&mut *yt, rows, j, t, xp, wp, kp, pft);
                        run_tile!(1, mx, a, [12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]);
                    }
                }
                t += mx;
            }
            j += step;
        }
        r0 = r1;
    }
}

/// Whether this CPU runs [`block`] (AVX-512F and AVX-512 BF16, detected at runtime).
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
}
