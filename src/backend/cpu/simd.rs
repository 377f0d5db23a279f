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

/// Writes a finished tile into `yt` (viewed as `[n, rows]`), skipping anything out of range.
#[inline(always)]
fn store<const W: usize, const X: usize>(
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

macro_rules! weight_kernels {
    ($modname:ident, $t:ty, $load:ident) => {
        /// Microkernels for one weight element type.
        pub(crate) mod $modname {
            use super::*;

            /// Dot products of `X` activation rows with the first `W` rows of the packed weight
            /// panel at `w` (see `weight.rs`: chunk `k / 8` of panel row `j` is at `k * NW + j * 8`)
            /// over `kp` columns.
            ///
            /// There is no software prefetch: a panel is one sequential stream, which the
            /// hardware prefetcher follows better than explicit prefetches (measured).
            ///
            /// # Safety
            /// `x + i*kp .. + kp` for `i < X` and `w .. w + NW*kp` must be readable; `W <= NW`;
            /// `kp % 8 == 0`.
            #[target_feature(enable = "avx2,fma")]
            #[inline]
            unsafe fn tile<const W: usize, const X: usize>(
                x: *const f32,
                w: *const $t,
                kp: usize,
            ) -> [[f32; X]; W] {
                let mut acc = [[_mm256_setzero_ps(); X]; W];
                let mut k = 0;
                while k < kp {
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

            /// `yt[j * rows + t] = dot(x[t], w[o0 + j])` for `j < n`, `t < rows`, processing
            /// activation rows in blocks of `rb` (so a block stays in cache while every weight
            /// tile of the range streams past it).
            ///
            /// # Safety
            /// AVX2 and FMA must be available. Also `kp % 8 == 0`, `o0 % NW == 0`,
            /// `x.len() >= rows * kp`, `w.len() >=` (`o0 + n` rounded up to a multiple of `NW`)
            /// `* kp` (whole panels); the function checks these and returns if they fail.
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            pub(crate) unsafe fn block(
                x: &[f32],
                rows: usize,
                kp: usize,
                w: &[$t],
                o0: usize,
                n: usize,
                yt: &mut [f32],
                rb: usize,
            ) {
                let ok = kp % 8 == 0
                    && o0 % NW == 0
                    && matches!(rows.checked_mul(kp), Some(l) if l <= x.len())
                    && matches!(
                        o0.checked_add(n)
                            .and_then(|e| e.checked_next_multiple_of(NW))
                            .and_then(|e| e.checked_mul(kp)),
                        Some(l) if l <= w.len()
                    );
                if !ok || rb == 0 {
                    return;
                }
                let mut r0 = 0;
                while r0 < rows {
                    let r1 = (r0 + rb).min(rows);
                    let mut j = 0;
                    while j < n {
                        // Whole panels (padding rows are zero; their results fall outside `yt`
                        // and are dropped by `store`).
                        let nw = NW;
                        // SAFETY: o0 + j is a multiple of NW below o0 + n, so its whole panel
                        // (NW * kp values from (o0 + j) * kp) is in bounds.
                        let wp = unsafe { w.as_ptr().add((o0 + j) * kp) };
                        let mut t = r0;
                        while t < r1 {
                            let mx = (r1 - t).min(MX);
                            // SAFETY: t + mx <= rows, so rows t .. t+mx of x are in bounds.
                            let xp = unsafe { x.as_ptr().add(t * kp) };
                            // SAFETY (all arms): pointers and kp validated above.
                            unsafe {
                                match mx {
                                    3 => store(yt, rows, j, t, tile::<4, 3>(xp, wp, kp)),
                                    2 => store(yt, rows, j, t, tile::<4, 2>(xp, wp, kp)),
                                    _ => store(yt, rows, j, t, tile::<4, 1>(xp, wp, kp)),
                                }
                            }
                            t += mx;
                        }
                        j += nw;
                    }
                    r0 = r1;
                }
            }
        }
    };
}

weight_kernels!(f32w, f32, load_f32);
weight_kernels!(bf16w, u16, load_bf16);

/// `a · b` over `min(a.len(), b.len())`: 8 lanes accumulate `acc + a*b` (multiply then add, no
/// FMA) over chunks of 8, then [`hsum`], then the scalar tail in order. Bitwise equal to the
/// portable `attention::dot`, whose lane and summation order it mirrors.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) fn dot_mul_add(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = _mm256_setzero_ps();
    let mut k = 0;
    while k + 8 <= n {
        // SAFETY: k + 8 <= n, and both slices hold at least n values; loadu is unaligned.
        let (x, y) = unsafe {
            (
                _mm256_loadu_ps(a.as_ptr().add(k)),
                _mm256_loadu_ps(b.as_ptr().add(k)),
            )
        };
        acc = _mm256_add_ps(acc, _mm256_mul_ps(x, y));
        k += 8;
    }
    let mut s = hsum(acc);
    for (x, y) in a[k..n].iter().zip(&b[k..n]) {
        s += x * y;
    }
    s
}
