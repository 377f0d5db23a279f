//! The vector paths' kernel: one 256-bit vector lane per 32-element block. For each weight
//! row, each super-block ([`super::superblock`]) is unpacked into registers once and then, for
//! every activation row of the block of rows, the 8 blocks' exact integer dot products are
//! taken (the path's dot instruction), reduced to per-half sums with lane `j` = block `j`
//! ([`reduce8`]), and the twin's float combine runs on the 8 blocks at once ([`combine`]),
//! added lane-wise into the row's accumulator: block `b` lands in lane `b % 8`, which is the
//! twin's accumulation (`reference::quant_dot`, step 4). The final lane sum is the twin's tree.
//!
//! Paths differ only in how they take the exact integer dot products of 32 bytes; the path
//! functions in `dot_x86.rs` instantiate [`lanes_task`] with theirs.

use std::arch::x86_64::*;

use super::superblock::{Form, Sb};

/// Per-half sums of 8 blocks' lane sums: lane `j` of the results is `Σ v[j] lanes 0..4`
/// (elements 0-15 of block `j`) and `Σ v[j] lanes 4..8` (exact integer sums).
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn reduce8(v: [__m256i; 8]) -> (__m256i, __m256i) {
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

/// The twin's `combine` on 8 blocks (lane `j` = block `j`): `h` the per-half dot products of
/// the super-block's values (in `form`) with the activations, `dx`, `s0`, `s1` the activation
/// blocks' scales and half sums. The same IEEE operations in the same order as the twin; the
/// integer forms chosen by `form` give the twin's exact `P` and `M`.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn combine(
    sb: &Sb,
    form: Form,
    h: (__m256i, __m256i),
    dx: __m256,
    s0: __m256i,
    s1: __m256i,
) -> __m256 {
    let (mut h0, mut h1) = h;
    if let Some(k) = form.off_shift {
        // Σ (q + 2^k) x = Σ q x + 2^k Σ x.
        let k = _mm_cvtsi32_si128(k);
        h0 = _mm256_sub_epi32(h0, _mm256_sll_epi32(s0, k));
        h1 = _mm256_sub_epi32(h1, _mm256_sll_epi32(s1, k));
    }
    let p = if form.unit {
        _mm256_add_epi32(h0, h1)
    } else if form.equal_halves {
        _mm256_mullo_epi32(sb.isc[0], _mm256_add_epi32(h0, h1))
    } else {
        _mm256_add_epi32(
            _mm256_mullo_epi32(sb.isc[0], h0),
            _mm256_mullo_epi32(sb.isc[1], h1),
        )
    };
    let mut t = _mm256_mul_ps(sb.d, _mm256_cvtepi32_ps(p));
    if form.min {
        let m = if form.equal_halves {
            _mm256_mullo_epi32(sb.imin[0], _mm256_add_epi32(s0, s1))
        } else {
            _mm256_add_epi32(
                _mm256_mullo_epi32(sb.imin[0], s0),
                _mm256_mullo_epi32(sb.imin[1], s1),
            )
        };
        t = _mm256_add_ps(t, _mm256_mul_ps(sb.dm, _mm256_cvtepi32_ps(m)));
    }
    _mm256_mul_ps(dx, t)
}

/// The twin's final lane sum (`reduce_lanes`) of a vector accumulator.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn reduce_acc(acc: __m256) -> f32 {
    // [l0+l4, l1+l5, l2+l6, l3+l7]
    let s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
    // [s4_0 + s4_2, s4_1 + s4_3, ..]
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
}

/// 8 `f32` / `i32` of a slice at `at` (the caller guarantees `at + 8 <= v.len()`).
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn load8f(v: &[f32], at: usize) -> __m256 {
    debug_assert!(at + 8 <= v.len());
    // SAFETY: the caller guarantees 8 readable values from `at`.
    unsafe { _mm256_loadu_ps(v.as_ptr().add(at)) }
}

/// See [`load8f`].
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn load8i(v: &[i32], at: usize) -> __m256i {
    debug_assert!(at + 8 <= v.len());
    // SAFETY: the caller guarantees 8 readable values from `at`.
    unsafe { _mm256_loadu_si256(v.as_ptr().add(at) as *const __m256i) }
}

/// `n < 8` values of `v` from `at`, zeros after (a row's last, partial super-block).
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn load_partial_f(v: &[f32], at: usize, n: usize) -> __m256 {
    let a: [f32; 8] = std::array::from_fn(|j| if j < n { v[at + j] } else { 0.0 });
    load8f(&a, 0)
}

/// See [`load_partial_f`].
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn load_partial_i(v: &[i32], at: usize, n: usize) -> __m256i {
    let a: [i32; 8] = std::array::from_fn(|j| if j < n { v[at + j] } else { 0 });
    load8i(&a, 0)
}

/// The body of a vector path's `task` (see the module docs): `$dot` is the path's
/// `fn(u: __m256i, x: __m256i, signed: bool) -> __m256i` (8 lanes of exact partial sums of
/// one block, lanes 0-3 covering elements 0-15) and `$prep` its `fn(Sb, Form) -> (Sb, Form)`
/// (how it holds signed values).
macro_rules! lanes_task {
    ($t:ident, $dec:ident, $yt:ident, $dot:ident, $prep:ident) => {{
        use super::lanes::{
            combine, load8f, load8i, load_partial_f, load_partial_i, reduce8, reduce_acc,
        };
        use super::superblock::{self as sbk, Form, SB_BLOCKS, SB_ELEMS};
        use crate::backend::reference::quant_block::{decode_row, has_min, QBLOCK};
        use crate::quant::GgmlType;
        let Task { w, a, rows, o0, rb } = *$t;
        let (cols, nb) = (a.cols, a.nb);
        let n = $yt.len() / rows.max(1);
        if !$t.fits($dec) {
            $yt.iter_mut().for_each(|v| *v = f32::NAN);
            return;
        }
        let nsb = nb.div_ceil(SB_BLOCKS);
        let mut acc = vec![_mm256_setzero_ps(); rb.min(rows)];
        // One super-block `$sb` (index `$g`, `$nblk` blocks) against rows r0..r1.
        macro_rules! pass {
            ($sb:expr, $form:expr, $g:expr, $nblk:expr, $r0:ident, $r1:ident) => {{
                let (sb, form) = $prep($sb, $form);
                let (g, nblk) = ($g, $nblk);
                for (t, acc) in ($r0..$r1).zip(acc.iter_mut()) {
                    let xo = t * cols + g * SB_ELEMS;
                    let xs = &a.q[xo..xo + nblk * QBLOCK];
                    let mut v = [_mm256_setzero_si256(); SB_BLOCKS];
                    for (jb, vj) in v.iter_mut().enumerate().take(nblk) {
                        // SAFETY: `xs` holds `nblk` blocks of 32 bytes; loadu has no
                        // alignment requirement.
                        let x = unsafe {
                            _mm256_loadu_si256(xs.as_ptr().add(jb * QBLOCK) as *const __m256i)
                        };
                        *vj = $dot(sb.v[jb], x, form.signed);
                    }
                    let at = t * nb + g * SB_BLOCKS;
                    let (dx, s0, s1) = if nblk == SB_BLOCKS {
                        (load8f(&a.d, at), load8i(&a.s0, at), load8i(&a.s1, at))
                    } else {
                        (
                            load_partial_f(&a.d, at, nblk),
                            load_partial_i(&a.s0, at, nblk),
                            load_partial_i(&a.s1, at, nblk),
                        )
                    };
                    let c = combine(&sb, form, reduce8(v), dx, s0, s1);
                    *acc = _mm256_add_ps(*acc, c);
                }
            }};
        }
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + rb).min(rows);
            for j in 0..n {
                acc.iter_mut().for_each(|v| *v = _mm256_setzero_ps());
                // A row whose bytes are not `cols` elements of its type is NaN (QuantStack
                // never holds one; checked so the unpackers' slices are whole).
                let row = w.row(o0 + j).filter(|(ty, b)| {
                    b.len() * ty.block_size() as usize == cols * ty.type_size() as usize
                });
                let ok = match row {
                    Some((GgmlType::Q4K, bytes)) => {
                        for (g, blk) in bytes.chunks_exact(144).enumerate().take(nsb) {
                            pass!(sbk::q4_k(blk), sbk::FORM_K4, g, SB_BLOCKS, r0, r1);
                        }
                        true
                    }
                    Some((GgmlType::Q5K, bytes)) => {
                        for (g, blk) in bytes.chunks_exact(176).enumerate().take(nsb) {
                            pass!(sbk::q5_k(blk), sbk::FORM_K4, g, SB_BLOCKS, r0, r1);
                        }
                        true
                    }
                    Some((GgmlType::Q6K, bytes)) => {
                        for (g, blk) in bytes.chunks_exact(210).enumerate().take(nsb) {
                            pass!(sbk::q6_k(blk), sbk::FORM_Q6K, g, SB_BLOCKS, r0, r1);
                        }
                        true
                    }
                    Some((GgmlType::Q8_0, bytes)) => {
                        for (g, blk) in bytes.chunks(34 * SB_BLOCKS).enumerate().take(nsb) {
                            let m = blk.len() / 34;
                            pass!(sbk::q8_0(blk, m), sbk::FORM_SIGNED_UNIT, g, m, r0, r1);
                        }
                        true
                    }
                    Some((GgmlType::Q4_0, bytes)) => {
                        for (g, blk) in bytes.chunks(18 * SB_BLOCKS).enumerate().take(nsb) {
                            let m = blk.len() / 18;
                            pass!(sbk::q4_0(blk, m), sbk::FORM_Q4_0, g, m, r0, r1);
                        }
                        true
                    }
                    Some((GgmlType::Iq4Nl, bytes)) => {
                        for (g, blk) in bytes.chunks(18 * SB_BLOCKS).enumerate().take(nsb) {
                            let m = blk.len() / 18;
                            pass!(sbk::iq4_nl(blk, m), sbk::FORM_SIGNED_UNIT, g, m, r0, r1);
                        }
                        true
                    }
                    Some((ty, bytes)) => {
                        let ok = decode_row(ty, bytes, &mut $dec.q, &mut $dec.p);
                        if ok {
                            let form = Form {
                                signed: true,
                                off_shift: None,
                                min: has_min(ty),
                                equal_halves: false,
                                unit: false,
                            };
                            for g in 0..nsb {
                                let m = (nb - g * SB_BLOCKS).min(SB_BLOCKS);
                                let (q, p) = (&$dec.q[g * SB_ELEMS..], &$dec.p[g * SB_BLOCKS..]);
                                pass!(sbk::from_decoded(q, p, m), form, g, m, r0, r1);
                            }
                        }
                        ok
                    }
                    None => false,
                };
                for (t, acc) in (r0..r1).zip(&acc) {
                    $yt[j * rows + t] = if ok { reduce_acc(*acc) } else { f32::NAN };
                }
            }
            r0 = r1;
        }
    }};
}
pub(super) use lanes_task;
