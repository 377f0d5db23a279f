//! The AVX-512 VNNI quantized path: the group kernel of `dot_avx2` with `vpdpbusd` on 256-bit
//! vectors (unsigned-offset activations times signed weights, four products summed straight
//! into i32: nothing can saturate). Zen 4 runs 512-bit ops as two 256-bit halves, so 256-bit
//! vectors cost the same throughput.

use std::arch::x86_64::*;

use super::dot_avx2::{
    broadcast4, combine8, group_row_body, group_row_rm_body, group_task, load32, reduce8,
};
use super::group::Group;
use super::{Decoded, Task};
use crate::backend::reference::quant_dot::QActs;

/// One half-block against 8 interleaved rows (VNNI): per step, `vpdpbusd` of the activation
/// bytes offset to unsigned (`x + 128`, xor 0x80) with the signed weights, four products
/// summed into each row's lane with no intermediate narrowing; `128 Σ w` is then subtracted
/// (exact: `Σ (x + 128) w − 128 Σ w = Σ x w`).
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn half(x: &[i8], w: &[i8], wsum128: &[i32; 8]) -> __m256i {
    let flip = _mm256_set1_epi8(-128);
    let mut acc = _mm256_setzero_si256();
    for i in 0..4 {
        let Some(wv) = load32(w.get(32 * i..).unwrap_or(&[])) else {
            return _mm256_setzero_si256();
        };
        let xu = _mm256_xor_si256(broadcast4(x, i), flip);
        // `vpdpbusd` through asm: its intrinsic is newer than the crate's MSRV (1.85). The
        // EVEX form (LLVM's default encoding without `{vex}`) is AVX-512 VNNI + VL.
        // SAFETY: the instruction only reads and writes the three vector registers; the
        // enclosing function's target features (checked by the caller at runtime) include
        // AVX-512 VNNI/VL.
        unsafe {
            std::arch::asm!(
                "vpdpbusd {acc}, {a}, {b}",
                acc = inout(ymm_reg) acc,
                a = in(ymm_reg) xu,
                b = in(ymm_reg) wv,
                options(pure, nomem, nostack),
            );
        }
    }
    // SAFETY: `wsum128` holds 8 i32 (32 bytes); loadu has no alignment requirement.
    let corr = unsafe { _mm256_loadu_si256(wsum128.as_ptr() as *const __m256i) };
    _mm256_sub_epi32(acc, corr)
}

/// 8 `i32` lanes of one block's products (lanes 0-3: elements 0-15): `vpdpbusd` of |w| (as
/// u8) with x carrying w's sign.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn products(aw: __m256i, w: __m256i, x: __m256i) -> __m256i {
    let sx = _mm256_sign_epi8(x, w);
    let mut acc = _mm256_setzero_si256();
    // SAFETY: as in `half`: registers only; AVX-512 VNNI/VL are enabled features.
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

/// Activation row `t` against a row-major group (VNNI products).
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn group_row_rm(g: &Group, q: &[i8], a: &QActs, t: usize) -> [f32; 8] {
    group_row_rm_body!(g, q, a, t, products)
}

/// Activation row `t` against a group (VNNI products).
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn group_row(g: &Group, a: &QActs, t: usize) -> [f32; 8] {
    group_row_body!(g, a, t, half)
}

/// The AVX-512 VNNI path of a task.
///
/// # Safety
/// The CPU must have AVX2, AVX-512F, AVX-512VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn task(t: &Task<'_>, dec: &mut Decoded, yt: &mut [f32]) {
    group_task!(t, dec, yt, group_row, group_row_rm)
}
