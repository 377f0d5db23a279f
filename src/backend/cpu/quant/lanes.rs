//! The vector paths' kernel: one 256-bit vector lane per 32-element block. The activations
//! are written once per call in a transposed layout (`quant::transpose_acts`: per super-block
//! of 8 blocks, step `i` holds bytes `4i..4i+4` of block `j` at 32-bit lane `j`); for each
//! weight row, each super-block ([`super::superblock`]) is unpacked into registers and
//! transposed the same way ([`transpose8`]) once, and then, for every activation row of the
//! block of rows, 8 four-byte dot-product steps sum each block's two halves straight into its
//! lane (no horizontal reduction), and the twin's float combine runs on the 8 blocks at once
//! ([`combine`]), added lane-wise into the row's accumulator: block `b` lands in lane `b % 8`,
//! which is the twin's accumulation (`reference::quant_dot`, step 4). The final lane sum is
//! the twin's tree ([`reduce_acc`]).
//!
//! Paths differ only in how they take the exact integer dot products; the path modules in
//! `dot_x86.rs` instantiate [`row_kernels`] and [`lanes_task`] with theirs.
//!
//! # Safety
//! The `unsafe fn`s here only require AVX2 (plain `#[inline(always)]` functions so that they
//! inline into the path functions, whose target features include AVX2 and are checked at
//! runtime); memory reads are bounded as each notes.

use std::arch::x86_64::*;

use super::superblock::{Form, Sb};
use crate::backend::reference::quant_dot::QActs;

/// Per-half sums of 8 blocks' lane sums: lane `j` of the results is `Σ v[j] lanes 0..4`
/// (elements 0-15 of block `j`) and `Σ v[j] lanes 4..8` (exact integer sums). The reduction
/// of blocks dotted as unpacked (not transposed), used for a single activation row, where
/// transposing the weights would cost more.
#[inline(always)]
pub(super) unsafe fn reduce8(v: [__m256i; 8]) -> (__m256i, __m256i) {
    // SAFETY: AVX2 (module docs); registers only.
    unsafe {
        let h01 = _mm256_hadd_epi32(v[0], v[1]);
        let h23 = _mm256_hadd_epi32(v[2], v[3]);
        let h45 = _mm256_hadd_epi32(v[4], v[5]);
        let h67 = _mm256_hadd_epi32(v[6], v[7]);
        // [lo0, lo1, lo2, lo3 | hi0, hi1, hi2, hi3] and the same for blocks 4..8.
        let a = _mm256_hadd_epi32(h01, h23);
        let b = _mm256_hadd_epi32(h45, h67);
        (
            _mm256_permute2x128_si256::<0x20>(a, b),
            _mm256_permute2x128_si256::<0x31>(a, b),
        )
    }
}

/// Folds an equal-halves form's integer block scales into its float scales, once per
/// super-block: `d · isc[0]` and `dm · imin[0]` are exact in `f32` (an f16 times an integer of
/// at most 8 bits), so [`combine`] can then multiply the integer sums by them directly and
/// round once, as the twin's `d · (isc · P)` does (`isc · P` is below 2^24 for every
/// equal-halves type, so the twin's conversion is exact too): the same bits, two `vpmulld`
/// fewer per block and activation row. Unit forms already have `isc == imin == 1`.
#[inline(always)]
pub(super) unsafe fn prescale(mut sb: Sb, form: Form) -> Sb {
    if form.equal_halves && !form.unit {
        // SAFETY: AVX2 (module docs); registers only.
        unsafe {
            sb.d = _mm256_mul_ps(sb.d, _mm256_cvtepi32_ps(sb.isc[0]));
            if form.min {
                sb.dm = _mm256_mul_ps(sb.dm, _mm256_cvtepi32_ps(sb.imin[0]));
            }
        }
    }
    sb
}

/// The twin's `combine` on 8 blocks (lane `j` = block `j`): `h` the per-half dot products of
/// the super-block's values (in `form`) with the activations, `dx`, `s0`, `s1` the activation
/// blocks' scales and half sums. For equal-halves forms `sb` must have been through
/// [`prescale`]. The twin's bits: its IEEE operations in its order (for equal-halves forms the
/// products with the prescaled scales, which round to the same values); the integer forms
/// chosen by `form` give the twin's exact `P` and `M`.
#[inline(always)]
pub(super) unsafe fn combine(
    sb: &Sb,
    form: Form,
    h: (__m256i, __m256i),
    dx: __m256,
    s0: __m256i,
    s1: __m256i,
) -> __m256 {
    // SAFETY: AVX2 (module docs); registers only.
    unsafe {
        let (h0, h1) = h;
        let (p, m) = if form.equal_halves {
            // One scale per block, carried by `d` and `dm` (`prescale`): the block sums.
            let s = _mm256_add_epi32(s0, s1);
            let mut p = _mm256_add_epi32(h0, h1);
            if let Some(k) = form.off_shift {
                // Σ (q + 2^k) x = Σ q x + 2^k Σ x.
                p = _mm256_sub_epi32(p, _mm256_sll_epi32(s, _mm_cvtsi32_si128(k)));
            }
            (p, s)
        } else {
            let (mut h0, mut h1) = (h0, h1);
            if let Some(k) = form.off_shift {
                let k = _mm_cvtsi32_si128(k);
                h0 = _mm256_sub_epi32(h0, _mm256_sll_epi32(s0, k));
                h1 = _mm256_sub_epi32(h1, _mm256_sll_epi32(s1, k));
            }
            let p = _mm256_add_epi32(
                _mm256_mullo_epi32(sb.isc[0], h0),
                _mm256_mullo_epi32(sb.isc[1], h1),
            );
            let m = if form.min {
                _mm256_add_epi32(
                    _mm256_mullo_epi32(sb.imin[0], s0),
                    _mm256_mullo_epi32(sb.imin[1], s1),
                )
            } else {
                _mm256_setzero_si256()
            };
            (p, m)
        };
        let mut t = _mm256_mul_ps(sb.d, _mm256_cvtepi32_ps(p));
        if form.min {
            t = _mm256_add_ps(t, _mm256_mul_ps(sb.dm, _mm256_cvtepi32_ps(m)));
        }
        _mm256_mul_ps(dx, t)
    }
}

/// The twin's final lane sum (`reduce_lanes`) of a vector accumulator.
#[inline(always)]
pub(super) unsafe fn reduce_acc(acc: __m256) -> f32 {
    // SAFETY: AVX2 (module docs); registers only.
    unsafe {
        // [l0+l4, l1+l5, l2+l6, l3+l7]
        let s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        // [s4_0 + s4_2, s4_1 + s4_3, ..]
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
    }
}

/// The 8x8 transpose of 32-bit lanes: lane `j` of result `i` is lane `i` of `v[j]` (bytes
/// `4i..4i+4` of block `j`), the weight side of the transposed layout.
#[inline(always)]
pub(super) unsafe fn transpose8(v: [__m256i; 8]) -> [__m256i; 8] {
    // SAFETY: AVX2 (module docs); registers only.
    unsafe {
        let t0 = _mm256_unpacklo_epi32(v[0], v[1]);
        let t1 = _mm256_unpackhi_epi32(v[0], v[1]);
        let t2 = _mm256_unpacklo_epi32(v[2], v[3]);
        let t3 = _mm256_unpackhi_epi32(v[2], v[3]);
        let t4 = _mm256_unpacklo_epi32(v[4], v[5]);
        let t5 = _mm256_unpackhi_epi32(v[4], v[5]);
        let t6 = _mm256_unpacklo_epi32(v[6], v[7]);
        let t7 = _mm256_unpackhi_epi32(v[6], v[7]);
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        [
            _mm256_permute2x128_si256::<0x20>(u0, u4),
            _mm256_permute2x128_si256::<0x20>(u1, u5),
            _mm256_permute2x128_si256::<0x20>(u2, u6),
            _mm256_permute2x128_si256::<0x20>(u3, u7),
            _mm256_permute2x128_si256::<0x31>(u0, u4),
            _mm256_permute2x128_si256::<0x31>(u1, u5),
            _mm256_permute2x128_si256::<0x31>(u2, u6),
            _mm256_permute2x128_si256::<0x31>(u3, u7),
        ]
    }
}

/// The activation side of super-block `g` of row `t`: block scales and half sums of its
/// `n <= 8` blocks (zeros past `n`).
#[inline(always)]
pub(super) unsafe fn acts8(a: &QActs, t: usize, g: usize, n: usize) -> (__m256, __m256i, __m256i) {
    let at = t * a.nb + g * 8;
    let (d, s0, s1) = (&a.d[at..at + n], &a.s0[at..at + n], &a.s1[at..at + n]);
    // SAFETY: AVX2 (module docs); the slices hold `n` values: all 8 lanes are read when
    // `n == 8`, otherwise the masked loads read lanes `< n` only (the others are zero and not
    // accessed).
    unsafe {
        if n == 8 {
            return (
                _mm256_loadu_ps(d.as_ptr()),
                _mm256_loadu_si256(s0.as_ptr() as *const __m256i),
                _mm256_loadu_si256(s1.as_ptr() as *const __m256i),
            );
        }
        let mask = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        (
            _mm256_maskload_ps(d.as_ptr(), mask),
            _mm256_maskload_epi32(s0.as_ptr(), mask),
            _mm256_maskload_epi32(s1.as_ptr(), mask),
        )
    }
}

/// Bytes ahead of the super-block being unpacked that [`prefetch`] asks for.
pub(super) const PREFETCH_AHEAD: usize = 4096;

/// Hints the cache to fetch the 3 lines `PREFETCH_AHEAD` bytes past `at` in `bytes` (a weight
/// row; rows are contiguous, so near the end this reaches into the next one). A hint only:
/// it reads nothing and cannot fault, whatever the address.
#[inline(always)]
pub(super) fn prefetch(bytes: &[u8], at: usize) {
    let p = bytes.as_ptr().wrapping_add(at + PREFETCH_AHEAD) as *const i8;
    // SAFETY: `prefetcht0` never faults and reads no memory architecturally; SSE is part of
    // x86_64's baseline.
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(p);
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(128));
    }
}

/// Generates a path's row kernels, monomorphic per type code (`superblock::T_*`) and small, so
/// that each keeps its super-blocks in registers: `row2::<TY>` (two weight rows of one type
/// against each activation load; transposed layout, or for a single activation row the blocks
/// dotted as unpacked and reduced, except whole super-blocks in the step order, which
/// unpack transposed) and `row1::<TY>` (one weight row, transposed layout: the odd row left
/// over, a row whose neighbour has another type, and the decoded types). The path's functions:
/// - `$dot`: `fn(u: __m256i, x: __m256i, signed: bool) -> __m256i`, 8 lanes of exact partial
///   sums of one block dotted as unpacked (lanes 0-3 covering elements 0-15);
/// - `$dot_t`: `unsafe fn(&[__m256i; 8], *const i8 /* 256 bytes */, Form) -> (__m256i,
///   __m256i)`, the per-half sums of a transposed super-block (see [`transpose8`]) whose
///   values are held in `form`;
/// - `$dot_t2`: the same for two weight rows against one activation load;
/// - `$prep`: `unsafe fn(Sb, Form) -> (Sb, Form)`, how it holds signed values (needs AVX2);
/// - `$bw`: whether `$feat` includes AVX-512BW and AVX-512VL (see `superblock::unpack`).
macro_rules! row_kernels {
    ($feat:literal, $bw:literal, $dot:ident, $dot_t:ident, $dot_t2:ident, $prep:ident) => {
        use crate::backend::cpu::quant::lanes::{
            acts8, combine, prefetch, prescale, reduce8, transpose8,
        };
        use crate::backend::cpu::quant::superblock::{
            is_steps, unpack, unpack_blocks, Form, RowRef, Sb,
        };
        use crate::backend::cpu::quant::superblock::{SB_BLOCKS, SB_ELEMS};
        use crate::backend::reference::quant_dot::QActs;

        /// Super-block `g` of row `w`: [`unpack`] (or [`unpack_blocks`] when `BLOCKS`) with
        /// a constant block count for whole super-blocks (all but possibly the last), so that
        /// its per-block loops unroll without bounds tests.
        #[inline(always)]
        unsafe fn unpack_k<const TY: u8, const BLOCKS: bool>(
            w: RowRef<'_>,
            g: usize,
            k: usize,
        ) -> (Sb, Form) {
            // SAFETY: the caller's contract (as `unpack`'s).
            unsafe {
                match (k == SB_BLOCKS, BLOCKS) {
                    (true, _) => unpack::<TY, $bw>(w, g, SB_BLOCKS),
                    (false, true) => unpack_blocks::<TY, $bw>(w, g, k),
                    (false, false) => unpack::<TY, $bw>(w, g, k),
                }
            }
        }

        /// Super-block `g` (`k` blocks; `wt` its transposed values) against activation row
        /// `t` in the transposed layout `xt`.
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn block_t(
            sb: &Sb,
            form: Form,
            wt: &[__m256i; 8],
            a: &QActs,
            xt: &[i8],
            t: usize,
            g: usize,
            k: usize,
        ) -> __m256 {
            let xo = (t * a.nb.div_ceil(SB_BLOCKS) + g) * SB_ELEMS;
            let xs = &xt[xo..xo + SB_ELEMS];
            // SAFETY: the row kernel's target features (checked by the caller of the path
            // function); `xs` holds the 256 bytes `$dot_t` reads.
            unsafe {
                let h = $dot_t(wt, xs.as_ptr(), form);
                let (dx, s0, s1) = acts8(a, t, g, k);
                combine(sb, form, h, dx, s0, s1)
            }
        }

        /// Weight row `w` of type code `TY` against activation rows `r0 .. r0 + acc.len()` of
        /// `a` (`xt`: their transposed layout), added into `acc`.
        ///
        /// # Safety
        /// The CPU must have the path's features; `w.bytes` is a whole row of `a.cols`
        /// elements of its type (or `w.dq`/`w.dp` its decoded row for `T_DECODED`); `a` and
        /// `xt` hold the rows.
        #[target_feature(enable = $feat)]
        #[inline(never)]
        pub(super) unsafe fn row1<const TY: u8>(
            w: RowRef<'_>,
            a: &QActs,
            xt: &[i8],
            r0: usize,
            acc: &mut [__m256],
        ) {
            let nb = a.nb;
            let nsb = nb.div_ceil(SB_BLOCKS);
            // SAFETY: the caller's contract (features, whole rows); registers and bounded
            // slices only.
            unsafe {
                let sbb = w.bytes.len() / nsb.max(1);
                for g in 0..nsb {
                    let k = (nb - g * SB_BLOCKS).min(SB_BLOCKS);
                    prefetch(w.bytes, g * sbb);
                    let (s, f) = unpack_k::<TY, false>(w, g, k);
                    let (sb, form) = $prep(s, f);
                    let sb = prescale(sb, form);
                    // Rows in the step order unpack as the transposed super-block already.
                    let wt = if is_steps(TY) { sb.v } else { transpose8(sb.v) };
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let c = block_t(&sb, form, &wt, a, xt, r0 + i, g, k);
                        *acc = _mm256_add_ps(*acc, c);
                    }
                }
            }
        }

        /// Weight rows `wa`, `wb` (same type code `TY`, not `T_DECODED`) against activation
        /// rows `r0 .. r0 + acc_a.len()` (`xt`: their transposed layout, read from two rows
        /// on), added into `acc_a`, `acc_b`.
        ///
        /// # Safety
        /// As [`row1`], with `xt` required.
        #[target_feature(enable = $feat)]
        #[inline(never)]
        pub(super) unsafe fn row2<const TY: u8>(
            wa: RowRef<'_>,
            wb: RowRef<'_>,
            a: &QActs,
            xt: &[i8],
            r0: usize,
            acc_a: &mut [__m256],
            acc_b: &mut [__m256],
        ) {
            let nb = a.nb;
            let nsb = nb.div_ceil(SB_BLOCKS);
            // Super-block `g` of both rows, prefetched ahead and held as the path holds them:
            // `(sa, sb2, form)`; `$blocks`: a step-order row's last group of fewer than 8
            // blocks as blocks (`unpack_blocks`), not transposed.
            let sbb = wa.bytes.len() / nsb.max(1);
            // A macro rather than a closure, so that it is certainly inlined.
            macro_rules! pair {
                ($g:expr, $k:expr, $blocks:literal) => {{
                    let (g, k) = ($g, $k);
                    prefetch(wa.bytes, g * sbb);
                    prefetch(wb.bytes, g * sbb);
                    // Used inside the `unsafe` block below (features, whole rows).
                    let (s, f) = unpack_k::<TY, $blocks>(wa, g, k);
                    let (sa, form) = $prep(s, f);
                    let (s2, _) = unpack_k::<TY, $blocks>(wb, g, k);
                    let (sb2, _) = $prep(s2, f);
                    let (sa, sb2) = (prescale(sa, form), prescale(sb2, form));
                    (sa, sb2, form)
                }};
            }
            // Super-block `g` (`k` blocks) of both rows (`p`, from `pair!`) in the transposed
            // layout (`ta`, `tb`) against activation row `t`, added into `aa`, `ab`.
            macro_rules! dot_t2 {
                ($p:expr, $ta:expr, $tb:expr, $t:expr, $g:expr, $k:expr, $aa:expr, $ab:expr) => {{
                    let ((sa, sb2, form), t, g, k) = ($p, $t, $g, $k);
                    let xo = (t * nsb + g) * SB_ELEMS;
                    let xs = &xt[xo..xo + SB_ELEMS];
                    let (ha, hb) = $dot_t2(&$ta, &$tb, xs.as_ptr(), form);
                    let (dx, s0, s1) = acts8(a, t, g, k);
                    $aa = _mm256_add_ps($aa, combine(&sa, form, ha, dx, s0, s1));
                    $ab = _mm256_add_ps($ab, combine(&sb2, form, hb, dx, s0, s1));
                }};
            }
            // SAFETY: the caller's contract (features, whole rows, `xt` present); registers
            // and bounded slices only.
            unsafe {
                if let ([aa], [ab]) = (&mut *acc_a, &mut *acc_b) {
                    // A single activation row: the accumulators stay in registers; blocks
                    // that come unpacked (not in the step order, or a step-order row's last
                    // group of fewer than 8) are dotted as unpacked and reduced (cheaper than
                    // transposing two rows of weights for one row).
                    let (mut ra, mut rb) = (*aa, *ab);
                    // Super-block `g` of `k` blocks; expanded with a constant `k` for whole
                    // super-blocks, so that the per-block loops unroll without tests.
                    macro_rules! single {
                        ($g:expr, $k:expr) => {{
                            let (g, k) = ($g, $k);
                            let (sa, sb2, form) = pair!(g, k, true);
                            let xo = r0 * a.cols + g * SB_ELEMS;
                            let xs = &a.q[xo..xo + k * 32];
                            let mut va = [_mm256_setzero_si256(); SB_BLOCKS];
                            let mut vb = [_mm256_setzero_si256(); SB_BLOCKS];
                            for jb in 0..k {
                                let x =
                                    _mm256_loadu_si256(xs.as_ptr().add(jb * 32) as *const __m256i);
                                va[jb] = $dot(sa.v[jb], x, form.signed);
                                vb[jb] = $dot(sb2.v[jb], x, form.signed);
                            }
                            let (dx, s0, s1) = acts8(a, r0, g, k);
                            ra = _mm256_add_ps(ra, combine(&sa, form, reduce8(va), dx, s0, s1));
                            rb = _mm256_add_ps(rb, combine(&sb2, form, reduce8(vb), dx, s0, s1));
                        }};
                    }
                    for g in 0..nsb {
                        match (nb - g * SB_BLOCKS).min(SB_BLOCKS) {
                            SB_BLOCKS if is_steps(TY) => {
                                let p = pair!(g, SB_BLOCKS, false);
                                dot_t2!(p, p.0.v, p.1.v, r0, g, SB_BLOCKS, ra, rb);
                            }
                            SB_BLOCKS => single!(g, SB_BLOCKS),
                            k => single!(g, k),
                        }
                    }
                    (*aa, *ab) = (ra, rb);
                    return;
                }
                for g in 0..nsb {
                    let k = (nb - g * SB_BLOCKS).min(SB_BLOCKS);
                    let p = pair!(g, k, false);
                    let (ta, tb) = if is_steps(TY) {
                        (p.0.v, p.1.v)
                    } else {
                        (transpose8(p.0.v), transpose8(p.1.v))
                    };
                    for (i, (aa, ab)) in acc_a.iter_mut().zip(acc_b.iter_mut()).enumerate() {
                        dot_t2!(p, ta, tb, r0 + i, g, k, *aa, *ab);
                    }
                }
            }
        }
    };
}
pub(super) use row_kernels;

/// The body of a vector path's `task` (see the module docs), with the path's row kernels
/// (`row_kernels!`) in module `$rows`. Consecutive weight rows of the same type with an
/// unpacker are taken two at a time, so each activation load feeds both.
macro_rules! lanes_task {
    ($t:ident, $dec:ident, $yt:ident, $rows:ident) => {{
        use super::lanes::reduce_acc;
        use super::superblock::*;
        use crate::backend::reference::quant_block::{decode_row, has_min};
        let Task {
            w,
            a,
            xt,
            rows,
            o0,
            rb,
            steps,
            side,
        } = *$t;
        let n = $yt.len() / rows.max(1);
        let mut side = side.share(o0, o0 + n, w.rows());
        // The row kernels read the transposed layout: required here.
        if !$t.fits($dec) || xt.is_empty() {
            $yt.iter_mut().for_each(|v| *v = f32::NAN);
            return;
        }
        let m = rb.min(rows);
        let mut acc = vec![_mm256_setzero_ps(); 2 * m];
        // Row `o` of `w`: whole blocks of `cols` elements (QuantStack's invariant, and
        // `fits` checked `w.cols() == cols`; the unpackers' slices are bounds-checked).
        let row = |o: usize| w.row(o);
        let dform = Form {
            signed: true,
            off_shift: None,
            min: false,
            equal_halves: false,
            unit: false,
            i16_sums: 1,
        };
        let plain = |bytes| RowRef {
            bytes,
            dq: &[],
            dp: &[],
            dform,
        };
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + rb).min(rows);
            let mut j = 0;
            while j < n {
                side.advance(j, n);
                acc.iter_mut().for_each(|v| *v = _mm256_setzero_ps());
                let (acc_a, acc_b) = acc.split_at_mut(m);
                let (acc_a, acc_b) = (&mut acc_a[..r1 - r0], &mut acc_b[..r1 - r0]);
                let ra = row(o0 + j);
                let rb2 = if j + 1 < n { row(o0 + j + 1) } else { None };
                if let (Some((ty, ba)), Some((tb, bb))) = (ra, rb2) {
                    let code = row_code(ty, steps);
                    if ty == tb && code != T_DECODED {
                        let (wa, wb) = (plain(ba), plain(bb));
                        // SAFETY: the path function's target features are the row kernels'
                        // (checked at runtime by its caller); whole rows (checked above);
                        // `fits` checked the activations and `xt`.
                        unsafe {
                            by_code!(code, T_IQ4NL, |C| {
                                $rows::row2::<C>(wa, wb, a, xt, r0, acc_a, acc_b)
                            })
                        }
                        for (t, (aa, ab)) in (r0..r1).zip(acc_a.iter().zip(acc_b.iter())) {
                            // SAFETY: AVX2 (as above); registers only.
                            unsafe {
                                $yt[j * rows + t] = reduce_acc(*aa);
                                $yt[(j + 1) * rows + t] = reduce_acc(*ab);
                            }
                        }
                        j += 2;
                        continue;
                    }
                }
                let ok = match ra {
                    Some((ty, bytes)) => {
                        let code = row_code(ty, steps);
                        let wr = if code == T_DECODED {
                            decode_row(ty, bytes, &mut $dec.q, &mut $dec.p).then(|| RowRef {
                                bytes,
                                dq: &$dec.q,
                                dp: &$dec.p,
                                dform: Form {
                                    min: has_min(ty),
                                    ..dform
                                },
                            })
                        } else {
                            Some(plain(bytes))
                        };
                        if let Some(wr) = wr {
                            // SAFETY: as above (for `T_DECODED`, `decode_row` filled the
                            // decoded row).
                            unsafe {
                                by_code!(code, T_DECODED, |C| $rows::row1::<C>(
                                    wr, a, xt, r0, acc_a
                                ))
                            }
                        }
                        wr.is_some()
                    }
                    None => false,
                };
                for (t, acc) in (r0..r1).zip(acc_a.iter()) {
                    $yt[j * rows + t] = if ok {
                        // SAFETY: AVX2 (as above); registers only.
                        unsafe { reduce_acc(*acc) }
                    } else {
                        f32::NAN
                    };
                }
                j += 1;
            }
            r0 = r1;
        }
        side.advance(n, n);
    }};
}
pub(super) use lanes_task;
