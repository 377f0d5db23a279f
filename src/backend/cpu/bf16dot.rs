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

/// Dot products of `X` bf16 activation rows at `x` (row stride `kp`) with the 4 rows of the packed
/// panel at `w`, over `kp` columns; with `pf`, prefetches one cache line per k-step at
/// `pf + 32 k / 8` (a hint: never faults, never changes a result).
///
/// # Safety
/// `x + i*kp .. + kp` for `i < X` and `w .. w + NW*kp` must be readable; `kp % 8 == 0`.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn tile<const X: usize>(
    x: *const u16,
    w: *const u16,
    kp: usize,
    pf: Option<*const u16>,
) -> [[f32; X]; NW] {
    let mut acc = [_mm512_setzero_ps(); X];
    let mut k = 0;
    while k < kp {
        let off = k * NW;
        if let Some(pf) = pf {
            _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(off) as *const i8);
        }
        // SAFETY: the panel holds NW * kp values and off + 32 <= NW * kp (k + 8 <= kp); the
        // load is unaligned and both vector types are 512 bits of plain data.
        let wv: __m512bh = unsafe { std::mem::transmute(_mm512_loadu_si512(w.add(off).cast())) };
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: row i < X of x has kp readable values and k + 8 <= kp.
            let xs = unsafe { _mm_loadu_si128(x.add(i * kp + k).cast()) };
            // SAFETY: __m512i and __m512bh are both 512 bits of plain data.
            let xv: __m512bh = unsafe { std::mem::transmute(_mm512_broadcast_i32x4(xs)) };
            *a = _mm512_dpbf16_ps(*a, wv, xv);
        }
        k += 8;
    }
    let mut r = [[0f32; X]; NW];
    for (i, a) in acc.iter().enumerate() {
        let s = reduce(*a);
        for (j, v) in s.iter().enumerate() {
            r[j][i] = *v;
        }
    }
    r
}

/// `yt[j * rows + t] = dot(x[t], w[o0 + j])` for `j < n`, `t < rows`: activation rows in blocks
/// of `rb`, weight panels streaming past each block, tiles of up to [`MXB`] rows.
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
    let mut r0 = 0;
    while r0 < rows {
        let r1 = (r0 + rb).min(rows);
        let mut j = 0;
        while j < n {
            // SAFETY: o0 + j is a multiple of NW below o0 + n, so its whole panel (NW * kp
            // values from (o0 + j) * kp) is in bounds.
            let wp = unsafe { w.as_ptr().add((o0 + j) * kp) };
            // With several tiles per panel, the first pass prefetches the panel 3 ahead, so that
            // DRAM streams it while the later passes compute from cache.
            let pnext = o0 + j + 3 * NW;
            let pf = (r1 - r0 > MXB && pnext < o0 + n).then(|| w.as_ptr().wrapping_add(pnext * kp));
            let mut t = r0;
            let mut first = true;
            while t < r1 {
                let mx = balanced_tile_rows(r1 - t, MXB);
                let pft = pf.filter(|_| first);
                first = false;
                // SAFETY: t + mx <= rows, so rows t .. t+mx of x are in bounds.
                let xp = unsafe { x.as_ptr().add(t * kp) };
                // SAFETY: each arm reads mx rows of x from xp and one whole panel at wp (bounds
                // and kp % 8 == 0 checked above); the target features are enabled here.
                unsafe {
                    match mx {
                        12 => store::<NW, 12>(yt, rows, j, t, tile::<12>(xp, wp, kp, pft)),
                        11 => store::<NW, 11>(yt, rows, j, t, tile::<11>(xp, wp, kp, pft)),
                        10 => store::<NW, 10>(yt, rows, j, t, tile::<10>(xp, wp, kp, pft)),
                        9 => store::<NW, 9>(yt, rows, j, t, tile::<9>(xp, wp, kp, pft)),
                        8 => store::<NW, 8>(yt, rows, j, t, tile::<8>(xp, wp, kp, pft)),
                        7 => store::<NW, 7>(yt, rows, j, t, tile::<7>(xp, wp, kp, pft)),
                        6 => store::<NW, 6>(yt, rows, j, t, tile::<6>(xp, wp, kp, pft)),
                        5 => store::<NW, 5>(yt, rows, j, t, tile::<5>(xp, wp, kp, pft)),
                        4 => store::<NW, 4>(yt, rows, j, t, tile::<4>(xp, wp, kp, pft)),
                        3 => store::<NW, 3>(yt, rows, j, t, tile::<3>(xp, wp, kp, pft)),
                        2 => store::<NW, 2>(yt, rows, j, t, tile::<2>(xp, wp, kp, pft)),
                        1 => store::<NW, 1>(yt, rows, j, t, tile::<1>(xp, wp, kp, pft)),
                        _ => {}
                    }
                }
                t += mx;
            }
            j += NW;
        }
        r0 = r1;
    }
}

/// Whether this CPU runs [`block`] (AVX-512F and AVX-512 BF16, detected at runtime).
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
}
