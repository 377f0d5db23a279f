//! The twin's activation quantization ([`QActs::quantize`]) in AVX-512, writing the plain
//! layout (`a.q`, `a.d`, `a.s0`, `a.s1`) and the transposed super-block layout the row kernels
//! read (`super::transpose_acts`) in one pass, one row per call so that rows can be split
//! across threads.
//!
//! Per 32-element block, the same IEEE operations as the twin: `amax` is the maximum of the
//! absolute values (exact: a maximum does not round; a NaN anywhere makes `d` NaN whatever
//! `amax` is), `d = amax / 127`, `id = 1 / d` (both scalar, as in the twin), then per element
//! `v * id` rounded to nearest even (`vrndscaleps`), clamped to ±127 and converted (NaN, which
//! only arises where `id` is 0 and `v` is not finite, becomes 0 as in the twin). The half sums
//! are exact integer sums. So every output is bitwise the twin's (tested in `mod.rs`).

use std::arch::x86_64::*;

use super::lanes::transpose8;
use crate::backend::reference::quant_block::QBLOCK;

/// One activation row's outputs: `q` (`cols` values), `d`, `s0`, `s1` (`cols / 32` each) and
/// `xt` (`cols.div_ceil(256) * 256` bytes, the transposed layout of `q`, zero past the row's
/// last block).
pub(super) struct RowOut<'a> {
    pub q: &'a mut [i8],
    pub d: &'a mut [f32],
    pub s0: &'a mut [i32],
    pub s1: &'a mut [i32],
    pub xt: &'a mut [i8],
}

/// Quantizes `x` (one row, `x.len() % 32 == 0`) into `o`; returns false (writing nothing)
/// when a buffer is shorter than the row needs.
///
/// # Safety
/// The CPU must have AVX2, AVX-512F and AVX-512VL.
#[target_feature(enable = "avx2,avx512f,avx512vl")]
pub(super) unsafe fn quantize_row_avx512(x: &[f32], o: RowOut<'_>) -> bool {
    let nb = x.len() / QBLOCK;
    let nsb = nb.div_ceil(8);
    if !x.len().is_multiple_of(QBLOCK)
        || o.q.len() < x.len()
        || o.d.len() < nb
        || o.s0.len() < nb
        || o.s1.len() < nb
        || o.xt.len() < nsb * 256
    {
        return false;
    }
    let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
    for g in 0..nsb {
        let k = (nb - 8 * g).min(8);
        let mut blocks = [_mm256_setzero_si256(); 8];
        for (j, blk) in blocks.iter_mut().enumerate().take(k) {
            let b = 8 * g + j;
            let xb = &x[b * QBLOCK..(b + 1) * QBLOCK];
            // SAFETY: `xb` holds 32 values (two 16-lane loads); the q store below writes the
            // 32 bytes of `o.q[b * 32..]` (length checked above); registers otherwise.
            unsafe {
                let v0 = _mm512_loadu_ps(xb.as_ptr());
                let v1 = _mm512_loadu_ps(xb.as_ptr().add(16));
                let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v0, v0)
                    | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v1, v1);
                let amax =
                    _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
                let d = if nan != 0 { f32::NAN } else { amax / 127.0 };
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                let idv = _mm512_set1_ps(id);
                let quant = |v: __m512| {
                    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
                    let r = _mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(v, idv));
                    let ord = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(r, r);
                    // Integral values within ±127: the conversion is exact; NaN lanes 0.
                    _mm512_maskz_cvtps_epi32(ord, _mm512_min_ps(_mm512_max_ps(r, lo), hi))
                };
                let (i0, i1) = (quant(v0), quant(v1));
                o.d[b] = d;
                o.s0[b] = _mm512_reduce_add_epi32(i0);
                o.s1[b] = _mm512_reduce_add_epi32(i1);
                *blk = _mm256_set_m128i(_mm512_cvtepi32_epi8(i1), _mm512_cvtepi32_epi8(i0));
                _mm256_storeu_si256(o.q.as_mut_ptr().add(b * QBLOCK) as *mut __m256i, *blk);
            }
        }
        // SAFETY: AVX2 (this function's features); the 8 stores write `o.xt[g * 256..][..256]`
        // (length checked above).
        unsafe {
            let t = transpose8(blocks);
            let dst = o.xt.as_mut_ptr().add(g * 256);
            for (i, v) in t.iter().enumerate() {
                _mm256_storeu_si256(dst.add(32 * i) as *mut __m256i, *v);
            }
        }
    }
    true
}
