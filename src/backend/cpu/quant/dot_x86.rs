//! The x86 vector paths: each instantiates the lanes kernel (`lanes.rs`) with its exact
//! integer dot product of one 32-byte block (8 `i32` lanes, lane `i` = bytes `4i..4i+4`):
//!
//! - AVX2: `vpmaddubsw` then `vpmaddwd`. Unsigned values (at most 63) times the signed
//!   activations pair-sum to at most 2·63·127 in `i16`; signed values use |w| with the
//!   activation carrying w's sign (at most 2·128·127 = 32512): nothing saturates.
//! - AVX-VNNI (VEX `vpdpbusd`) and AVX-512 VNNI (EVEX `vpdpbusd` on 256-bit vectors): four
//!   `u8 × i8` products summed straight into `i32`. Signed values are offset to unsigned once
//!   per super-block (`q + 128`, xor 0x80) and `128 Σ x` is subtracted in the combine.
//!
//! Zen 4 runs 512-bit ops as two 256-bit halves, so 256-bit vectors cost the same throughput.

use std::arch::x86_64::*;

use super::lanes::lanes_task;
use super::superblock::{Form, Sb};
use super::{Decoded, Task};

/// AVX2 block dot (see the module docs).
#[target_feature(enable = "avx2")]
#[inline]
fn dot_avx2(u: __m256i, x: __m256i, signed: bool) -> __m256i {
    let p16 = if signed {
        _mm256_maddubs_epi16(_mm256_abs_epi8(u), _mm256_sign_epi8(x, u))
    } else {
        _mm256_maddubs_epi16(u, x)
    };
    _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
}

/// AVX2 keeps signed values as they are.
#[target_feature(enable = "avx2")]
#[inline]
fn prep_avx2(sb: Sb, form: Form) -> (Sb, Form) {
    (sb, form)
}

/// The VNNI paths hold signed values as `q + 128` (see the module docs).
#[target_feature(enable = "avx2")]
#[inline]
fn prep_vnni(mut sb: Sb, form: Form) -> (Sb, Form) {
    if !form.signed {
        return (sb, form);
    }
    let flip = _mm256_set1_epi8(-128);
    for v in sb.v.iter_mut() {
        *v = _mm256_xor_si256(*v, flip);
    }
    let form = Form {
        signed: false,
        off_shift: Some(7),
        ..form
    };
    (sb, form)
}

/// AVX-512 VNNI block dot (EVEX `vpdpbusd`, unsigned values).
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn dot_avx512vnni(u: __m256i, x: __m256i, _signed: bool) -> __m256i {
    let mut acc = _mm256_setzero_si256();
    // `vpdpbusd` through asm: its intrinsic is newer than the crate's MSRV. LLVM's default
    // encoding without `{vex}` is the EVEX (AVX-512 VNNI + VL) form.
    // SAFETY: the instruction only reads and writes the three vector registers; the
    // enclosing function's target features (checked by the caller at runtime) include it.
    unsafe {
        std::arch::asm!(
            "vpdpbusd {acc}, {a}, {b}",
            acc = inout(ymm_reg) acc,
            a = in(ymm_reg) u,
            b = in(ymm_reg) x,
            options(pure, nomem, nostack),
        );
    }
    acc
}

/// AVX-VNNI block dot (VEX `vpdpbusd`, unsigned values).
#[target_feature(enable = "avx2,avxvnni")]
#[inline]
fn dot_avxvnni(u: __m256i, x: __m256i, _signed: bool) -> __m256i {
    let mut acc = _mm256_setzero_si256();
    // SAFETY: as in `dot_avx512vnni`; `{vex}` selects the AVX-VNNI encoding, which only
    // allows ymm0-15 (`ymm_reg` without AVX-512 in the enabled features).
    unsafe {
        std::arch::asm!(
            "{{vex}} vpdpbusd {acc}, {a}, {b}",
            acc = inout(ymm_reg) acc,
            a = in(ymm_reg) u,
            b = in(ymm_reg) x,
            options(pure, nomem, nostack),
        );
    }
    acc
}

/// The AVX2 path of a task.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn task_avx2(t: &Task<'_>, dec: &mut Decoded, yt: &mut [f32]) {
    lanes_task!(t, dec, yt, dot_avx2, prep_avx2)
}

/// The AVX-VNNI path of a task.
///
/// # Safety
/// The CPU must have AVX2 and AVX-VNNI.
#[target_feature(enable = "avx2,avxvnni")]
pub(super) unsafe fn task_avxvnni(t: &Task<'_>, dec: &mut Decoded, yt: &mut [f32]) {
    lanes_task!(t, dec, yt, dot_avxvnni, prep_vnni)
}

/// The AVX-512 VNNI path of a task.
///
/// # Safety
/// The CPU must have AVX2, AVX-512F, AVX-512VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn task_avx512vnni(t: &Task<'_>, dec: &mut Decoded, yt: &mut [f32]) {
    lanes_task!(t, dec, yt, dot_avx512vnni, prep_vnni)
}
