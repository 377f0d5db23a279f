//! The AVX-512 VNNI quantized path: exact block dot products with `vpdpbusd` on 256-bit
//! vectors (|w| as u8 times x with w's sign, four products summed straight into i32: no
//! intermediate i16, so nothing can saturate). Zen 4 runs 512-bit ops as two 256-bit halves,
//! so one block per vector costs the same throughput.

use std::arch::x86_64::*;

use super::dot::task_body;
use super::dot_avx2::{halves, halves4, load32};
use super::{Decoded, Task};

/// 8 `i32` lanes of one block's products (lanes 0-3: elements 0-15).
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn products(aw: __m256i, w: __m256i, x: __m256i) -> __m256i {
    let sx = _mm256_sign_epi8(x, w);
    let mut acc = _mm256_setzero_si256();
    // `vpdpbusd` through asm: its intrinsic is newer than the crate's MSRV (1.85). The EVEX
    // form (LLVM's default encoding without `{vex}`) is AVX-512 VNNI + VL.
    // SAFETY: the instruction only reads and writes the three vector registers; the enclosing
    // function's target features (checked by the caller at runtime) include AVX-512 VNNI/VL.
    unsafe {
        std::arch::asm!(
            "vpdpbusd {acc}, {a}, {b}",
            acc = inout(ymm_reg) acc,
            a = in(ymm_reg) aw,
            b = in(ymm_reg) sx,
            options(pure, nomem, nostack),
        );
    }
    acc
}

/// The exact half dot products of one block.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn dot(w: &[i8], x: &[i8]) -> [i32; 2] {
    let (Some(w), Some(x)) = (load32(w), load32(x)) else {
        return [0; 2];
    };
    halves(products(_mm256_abs_epi8(w), w, x))
}

/// [`dot`] of one weight block against four activation blocks.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
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

/// The AVX-512 VNNI path of a task.
///
/// # Safety
/// The CPU must have AVX2, AVX-512F, AVX-512VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn task(t: &Task<'_>, dec: &mut Decoded, yt: &mut [f32]) {
    task_body!(t, dec, yt, dot, dot4)
}
