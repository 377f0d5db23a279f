//! The AVX2 quantized path: exact block dot products with `vpmaddubsw` (|w| as u8 times x with
//! w's sign, pairs summed to i16: at most 2·128·127 = 32512, so no saturation) and `vpmaddwd`
//! (pairs to i32).

use std::arch::x86_64::*;

use super::dot::task_body;
use super::{Decoded, Task};

/// Loads 32 `i8`; `None` when `v` is shorter.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn load32(v: &[i8]) -> Option<__m256i> {
    let v = v.get(..32)?;
    // SAFETY: `v` holds 32 readable bytes; loadu has no alignment requirement.
    Some(unsafe { _mm256_loadu_si256(v.as_ptr() as *const __m256i) })
}

/// `[Σ lanes 0..4, Σ lanes 4..8]` of 8 `i32` lanes (the two halves of a block).
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn halves(v: __m256i) -> [i32; 2] {
    let h = _mm_hadd_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let h = _mm_hadd_epi32(h, h);
    [_mm_cvtsi128_si32(h), _mm_extract_epi32::<1>(h)]
}

/// The halves of four blocks' lane sums at once: `r[k] = halves(v[k])`.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn halves4(v: [__m256i; 4]) -> [[i32; 2]; 4] {
    let h01 = _mm256_hadd_epi32(v[0], v[1]);
    let h23 = _mm256_hadd_epi32(v[2], v[3]);
    // Lanes: [lo(v0), lo(v1), lo(v2), lo(v3) | hi(v0), hi(v1), hi(v2), hi(v3)].
    let s = _mm256_hadd_epi32(h01, h23);
    let mut r = [0i32; 8];
    // SAFETY: `r` holds 8 i32 (32 bytes); storeu has no alignment requirement.
    unsafe { _mm256_storeu_si256(r.as_mut_ptr() as *mut __m256i, s) };
    [[r[0], r[4]], [r[1], r[5]], [r[2], r[6]], [r[3], r[7]]]
}

/// 8 `i32` lanes of one block's products (lanes 0-3: elements 0-15).
#[target_feature(enable = "avx2")]
#[inline]
fn products(aw: __m256i, w: __m256i, x: __m256i) -> __m256i {
    let p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w));
    _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
}

/// The exact half dot products of one block (zeros for a short slice, which the task never
/// passes).
#[target_feature(enable = "avx2")]
#[inline]
fn dot(w: &[i8], x: &[i8]) -> [i32; 2] {
    let (Some(w), Some(x)) = (load32(w), load32(x)) else {
        return [0; 2];
    };
    halves(products(_mm256_abs_epi8(w), w, x))
}

/// [`dot`] of one weight block against four activation blocks.
#[target_feature(enable = "avx2")]
#[inline]
fn dot4(w: &[i8], x: [&[i8]; 4]) -> [[i32; 2]; 4] {
    let Some(w) = load32(w) else {
        return [[0; 2]; 4];
    };
    let aw = _mm256_abs_epi8(w);
    let mut v = [_mm256_setzero_si256(); 4];
    for (vk, xk) in v.iter_mut().zip(x) {
        if let Some(xv) = load32(xk) {
            *vk = products(aw, w, xv);
        }
    }
    halves4(v)
}

/// The AVX2 path of a task.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn task(t: &Task<'_>, dec: &mut Decoded, yt: &mut [f32]) {
    task_body!(t, dec, yt, dot, dot4)
}
