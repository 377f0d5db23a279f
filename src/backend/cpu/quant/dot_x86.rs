//! The x86 vector paths: each instantiates the lanes kernel (`lanes.rs`) with its exact
//! integer dot products of a transposed super-block (8 four-byte steps per 32-bit lane):
//!
//! - AVX2: `vpmaddubsw` then `vpmaddwd`. Unsigned values (at most 63) times the signed
//!   activations pair-sum to at most 2·63·127 in `i16`; signed values use |w| with the
//!   activation carrying w's sign (at most 2·128·127 = 32512): nothing saturates. In the
//!   transposed layout a half's 4 steps are added in `i16` before the `vpmaddwd` in runs
//!   that cannot overflow ([`Form::i16_sums`]: 4 for values up to 31, 2 up to 63, else 1).
//! - AVX-VNNI (VEX `vpdpbusd`) and AVX-512 VNNI (EVEX `vpdpbusd` on 256-bit vectors): four
//!   `u8 × i8` products summed straight into `i32`. Signed values are offset to unsigned once
//!   per super-block (`q + 128`, xor 0x80) and `128 Σ x` is subtracted in the combine.
//!
//! Zen 4 runs 512-bit ops as two 256-bit halves, so 256-bit vectors cost the same throughput.

use std::arch::x86_64::*;

use super::lanes::{lanes_task, row_kernels};
use super::superblock::{Form, Sb};
use super::{Decoded, Task};

/// AVX2 dot of one block as unpacked: 8 lanes of partial sums (lane `i`: bytes `4i..4i+4`).
#[target_feature(enable = "avx2")]
#[inline]
fn dot_avx2(u: __m256i, x: __m256i, signed: bool) -> __m256i {
    // SAFETY: AVX2 (enabled here); registers only.
    unsafe { _mm256_madd_epi16(pairs_avx2(u, x, signed), _mm256_set1_epi16(1)) }
}

/// AVX-512 VNNI dot of one block as unpacked (unsigned values).
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn dot_avx512vnni(u: __m256i, x: __m256i, _signed: bool) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x)
}

/// AVX-VNNI dot of one block as unpacked (unsigned values).
#[target_feature(enable = "avx2,avxvnni")]
#[inline]
fn dot_avxvnni(u: __m256i, x: __m256i, _signed: bool) -> __m256i {
    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, x)
}

/// AVX2 product pairs of one four-byte step: `vpmaddubsw` of the values with the
/// activations, `i16` pair sums (|w| with w's sign moved onto the activation when signed).
///
/// # Safety
/// The CPU must have AVX2 (inlined into the path functions, which check it).
#[inline(always)]
unsafe fn pairs_avx2(w: __m256i, x: __m256i, signed: bool) -> __m256i {
    // SAFETY: AVX2 (the caller's contract); registers only.
    unsafe {
        if signed {
            _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w))
        } else {
            _mm256_maddubs_epi16(w, x)
        }
    }
}

/// One half's `i32` lane sums from its 4 steps' pairs `p`: added in `i16` in runs of `run`
/// (1, 2 or 4; exact where [`Form::i16_sums`] allows the run), each run widened by one
/// `vpmaddwd`, so the lanes are the exact integer sums whatever the run length.
///
/// # Safety
/// The CPU must have AVX2 (inlined into the path functions, which check it).
#[inline(always)]
unsafe fn half_avx2(p: [__m256i; 4], run: usize) -> __m256i {
    // SAFETY: AVX2 (the caller's contract); registers only.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let w = |v: __m256i| _mm256_madd_epi16(v, ones);
        match run {
            4 => w(_mm256_add_epi16(
                _mm256_add_epi16(p[0], p[1]),
                _mm256_add_epi16(p[2], p[3]),
            )),
            2 => _mm256_add_epi32(
                w(_mm256_add_epi16(p[0], p[1])),
                w(_mm256_add_epi16(p[2], p[3])),
            ),
            _ => _mm256_add_epi32(
                _mm256_add_epi32(w(p[0]), w(p[1])),
                _mm256_add_epi32(w(p[2]), w(p[3])),
            ),
        }
    }
}

/// AVX2 per-half sums of one weight row's transposed super-block, values in `form`, against
/// the 8 activation steps `x` (see `lanes::transpose8`).
///
/// # Safety
/// The CPU must have AVX2 (inlined into the path functions, which check it).
#[inline(always)]
unsafe fn halves_avx2(w: &[__m256i; 8], x: &[__m256i; 8], form: Form) -> (__m256i, __m256i) {
    // SAFETY: AVX2 (the caller's contract); registers only.
    unsafe {
        let p = |i: usize| pairs_avx2(w[i], x[i], form.signed);
        (
            half_avx2([p(0), p(1), p(2), p(3)], form.i16_sums),
            half_avx2([p(4), p(5), p(6), p(7)], form.i16_sums),
        )
    }
}

/// The 8 activation steps of a transposed super-block at `x`.
///
/// # Safety
/// The CPU must have AVX2; `x` must point to 256 readable bytes.
#[inline(always)]
unsafe fn steps_avx2(x: *const i8) -> [__m256i; 8] {
    // SAFETY: `x` points to 256 readable bytes (the caller's contract); loadu has no
    // alignment requirement.
    std::array::from_fn(|i| unsafe { _mm256_loadu_si256(x.add(32 * i) as *const __m256i) })
}

/// AVX2 transposed super-block dot: the per-half sums (see `lanes::transpose8`).
///
/// # Safety
/// The CPU must have AVX2 (inlined into the path functions, which check it); `x`
/// must point to 256 readable bytes.
#[inline(always)]
unsafe fn dot_t_avx2(w: &[__m256i; 8], x: *const i8, form: Form) -> (__m256i, __m256i) {
    // SAFETY: AVX2 (the caller's contract); `x` as the caller guarantees.
    unsafe { halves_avx2(w, &steps_avx2(x), form) }
}

/// AVX2 transposed super-block dot of two weight rows against one activation load.
///
/// # Safety
/// The CPU must have AVX2 (inlined into the path functions, which check it); `x`
/// must point to 256 readable bytes.
#[inline(always)]
unsafe fn dot_t2_avx2(
    wa: &[__m256i; 8],
    wb: &[__m256i; 8],
    x: *const i8,
    form: Form,
) -> ((__m256i, __m256i), (__m256i, __m256i)) {
    // SAFETY: AVX2 (the caller's contract); `x` as the caller guarantees.
    unsafe {
        let xs = steps_avx2(x);
        (halves_avx2(wa, &xs, form), halves_avx2(wb, &xs, form))
    }
}

/// AVX2 keeps signed values as they are.
///
/// # Safety
/// None needed (kept `unsafe` to share the signature of [`prep_vnni`]).
#[inline(always)]
unsafe fn prep_avx2(sb: Sb, form: Form) -> (Sb, Form) {
    (sb, form)
}

/// The VNNI paths hold signed values as `q + 128` (see the module docs).
///
/// # Safety
/// The CPU must have AVX2 (inlined into the path functions, which check it).
#[inline(always)]
pub(super) unsafe fn prep_vnni(mut sb: Sb, form: Form) -> (Sb, Form) {
    if !form.signed {
        return (sb, form);
    }
    // SAFETY: AVX2 (the caller's contract); registers only.
    unsafe {
        let flip = _mm256_set1_epi8(-128);
        for v in sb.v.iter_mut() {
            *v = _mm256_xor_si256(*v, flip);
        }
    }
    let form = Form {
        signed: false,
        off_shift: Some(7),
        i16_sums: 1,
        ..form
    };
    (sb, form)
}

/// The VNNI transposed super-block dot with `$dp` the `vpdpbusd` intrinsic of the path
/// (unsigned values); expanded in `unsafe fn`s whose callers guarantee the path's features.
macro_rules! vnni_dot_t {
    ($w:ident, $x:ident, $dp:ident) => {{
        // SAFETY: the path's features (the caller's contract); `x` points to 256 readable
        // bytes (the caller's contract); loadu has no alignment requirement.
        unsafe {
            let mut h = [_mm256_setzero_si256(); 2];
            for (i, wi) in $w.iter().enumerate() {
                let xi = _mm256_loadu_si256($x.add(32 * i) as *const __m256i);
                h[i / 4] = $dp(h[i / 4], *wi, xi);
            }
            (h[0], h[1])
        }
    }};
}

/// The VNNI transposed super-block dot of two weight rows against one activation load.
macro_rules! vnni_dot_t2 {
    ($wa:ident, $wb:ident, $x:ident, $dp:ident) => {{
        // SAFETY: as in `vnni_dot_t`.
        unsafe {
            let (mut ha, mut hb) = ([_mm256_setzero_si256(); 2], [_mm256_setzero_si256(); 2]);
            for i in 0..8 {
                let xi = _mm256_loadu_si256($x.add(32 * i) as *const __m256i);
                ha[i / 4] = $dp(ha[i / 4], $wa[i], xi);
                hb[i / 4] = $dp(hb[i / 4], $wb[i], xi);
            }
            ((ha[0], ha[1]), (hb[0], hb[1]))
        }
    }};
}

/// AVX-512 VNNI transposed super-block dot of two weight rows.
///
/// # Safety
/// The CPU must have AVX-512VL and AVX-512 VNNI (inlined into the path functions, which
/// check them); `x` must point to 256 readable bytes.
#[inline(always)]
unsafe fn dot_t2_avx512vnni(
    wa: &[__m256i; 8],
    wb: &[__m256i; 8],
    x: *const i8,
    _form: Form,
) -> ((__m256i, __m256i), (__m256i, __m256i)) {
    vnni_dot_t2!(wa, wb, x, _mm256_dpbusd_epi32)
}

/// AVX-VNNI transposed super-block dot of two weight rows.
///
/// # Safety
/// The CPU must have AVX-VNNI (inlined into the path functions, which check it); `x`
/// must point to 256 readable bytes.
#[inline(always)]
unsafe fn dot_t2_avxvnni(
    wa: &[__m256i; 8],
    wb: &[__m256i; 8],
    x: *const i8,
    _form: Form,
) -> ((__m256i, __m256i), (__m256i, __m256i)) {
    vnni_dot_t2!(wa, wb, x, _mm256_dpbusd_avx_epi32)
}

/// AVX-512 VNNI transposed super-block dot.
///
/// # Safety
/// The CPU must have AVX-512VL and AVX-512 VNNI (inlined into the path functions, which
/// check them); `x` must point to 256 readable bytes.
#[inline(always)]
unsafe fn dot_t_avx512vnni(w: &[__m256i; 8], x: *const i8, _form: Form) -> (__m256i, __m256i) {
    vnni_dot_t!(w, x, _mm256_dpbusd_epi32)
}

/// AVX-VNNI transposed super-block dot.
///
/// # Safety
/// The CPU must have AVX-VNNI (inlined into the path functions, which check it); `x`
/// must point to 256 readable bytes.
#[inline(always)]
unsafe fn dot_t_avxvnni(w: &[__m256i; 8], x: *const i8, _form: Form) -> (__m256i, __m256i) {
    vnni_dot_t!(w, x, _mm256_dpbusd_avx_epi32)
}

/// The AVX2 row kernels.
mod avx2_rows {
    use super::*;
    row_kernels!(
        "avx2,f16c",
        false,
        dot_avx2,
        dot_t_avx2,
        dot_t2_avx2,
        prep_avx2
    );
}

/// The AVX-VNNI row kernels.
mod avxvnni_rows {
    use super::*;
    row_kernels!(
        "avx2,f16c,avxvnni",
        false,
        dot_avxvnni,
        dot_t_avxvnni,
        dot_t2_avxvnni,
        prep_vnni
    );
}

/// The AVX-512 VNNI row kernels.
mod avx512vnni_rows {
    use super::*;
    row_kernels!(
        "avx2,f16c,avx512f,avx512vl,avx512bw,avx512vnni",
        true,
        dot_avx512vnni,
        dot_t_avx512vnni,
        dot_t2_avx512vnni,
        prep_vnni
    );
}

/// The AVX2 path of a task.
///
/// # Safety
/// The CPU must have AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn task_avx2(t: &Task<'_>, dec: &mut Decoded, yt: &mut [f32]) {
    lanes_task!(t, dec, yt, avx2_rows)
}

/// The AVX-VNNI path of a task.
///
/// # Safety
/// The CPU must have AVX2, F16C and AVX-VNNI.
#[target_feature(enable = "avx2,f16c,avxvnni")]
pub(super) unsafe fn task_avxvnni(t: &Task<'_>, dec: &mut Decoded, yt: &mut [f32]) {
    lanes_task!(t, dec, yt, avxvnni_rows)
}

/// The AVX-512 VNNI path of a task.
///
/// # Safety
/// The CPU must have AVX2, F16C, AVX-512F, AVX-512VL, AVX-512BW and AVX-512 VNNI.
#[target_feature(enable = "avx2,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) unsafe fn task_avx512vnni(t: &Task<'_>, dec: &mut Decoded, yt: &mut [f32]) {
    lanes_task!(t, dec, yt, avx512vnni_rows)
}
