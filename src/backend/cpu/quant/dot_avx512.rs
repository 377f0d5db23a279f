//! The AVX-512 VNNI quantized path: exact block dot products with `vpdpbusd` on 256-bit
//! vectors (|w| as u8 times x with w's sign, four products summed straight into i32: no
//! intermediate i16, so nothing can saturate). Zen 4 runs 512-bit ops as two 256-bit halves,
//! so one block per vector costs the same throughput.

use std::arch::x86_64::*;

use super::dot_avx2::{combine8, group_row_body, group_task, load32, reduce8};
use super::group::Group;
use super::{Decoded, Task};
use crate::backend::reference::quant_dot::QActs;

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

/// Activation row `t` against a group (VNNI products).
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn group_row(g: &Group, a: &QActs, t: usize) -> [f32; 8] {
    group_row_body!(g, a, t, products)
}

/// The AVX-512 VNNI path of a task.
///
/// # Safety
/// The CPU must have AVX2, AVX-512F, AVX-512VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn task(t: &Task<'_>, dec: &mut Decoded, yt: &mut [f32]) {
    group_task!(t, dec, yt, group_row)
}
