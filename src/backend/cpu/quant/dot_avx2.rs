//! The AVX2 quantized path, and the group kernel both vector paths share: weight rows in
//! groups of 8 interleaved so that each 32-bit lane is one row (`group.rs`); per half-block,
//! four 4-element dot-product steps against the broadcast activation bytes sum straight into
//! the row lanes, and the twin's float combine runs on the 8 lanes at once ([`combine8`]).
//! Products here: `vpmaddubsw` (|w| as u8 times x with w's sign, pairs summed to i16: at most
//! 2·128·127 = 32512, so no saturation) and `vpmaddwd` (pairs to i32).

use std::arch::x86_64::*;

use super::group::Group;
use super::{Decoded, Task};
use crate::backend::reference::quant_dot::QActs;

/// Loads 32 `i8`; `None` when `v` is shorter.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn load32(v: &[i8]) -> Option<__m256i> {
    let v = v.get(..32)?;
    // SAFETY: `v` holds 32 readable bytes; loadu has no alignment requirement.
    Some(unsafe { _mm256_loadu_si256(v.as_ptr() as *const __m256i) })
}

/// The lo-half and hi-half sums of eight blocks' lane sums: lane `k` of the results is
/// `Σ v[k] lanes 0..4` and `Σ v[k] lanes 4..8` (exact integer sums).
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn reduce8(v: [__m256i; 8]) -> (__m256i, __m256i) {
    let h01 = _mm256_hadd_epi32(v[0], v[1]);
    let h23 = _mm256_hadd_epi32(v[2], v[3]);
    let h45 = _mm256_hadd_epi32(v[4], v[5]);
    let h67 = _mm256_hadd_epi32(v[6], v[7]);
    // [lo0, lo1, lo2, lo3 | hi0, hi1, hi2, hi3] and the same for rows 4..8.
    let a = _mm256_hadd_epi32(h01, h23);
    let b = _mm256_hadd_epi32(h45, h67);
    (
        _mm256_permute2x128_si256::<0x20>(a, b),
        _mm256_permute2x128_si256::<0x31>(a, b),
    )
}

/// The twin's `combine` on 8 lanes (one weight row each) for block `b` of `g`, added to
/// `acc`: the same IEEE operations in the same order. Rows without mins have `dm = 0` and
/// `imin = 0`, so their extra `+ dm * M` term is `+0`, which cannot change the accumulator
/// (it starts at +0 and never becomes -0).
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn combine8(
    acc: __m256,
    g: &Group,
    b: usize,
    dots: (__m256i, __m256i),
    dx: f32,
    s: [i32; 2],
) -> __m256 {
    let (Some(d), Some(dm), Some(ints)) = (g.d.get(b), g.dm.get(b), g.ints.get(b)) else {
        return _mm256_set1_ps(f32::NAN);
    };
    // SAFETY: each array holds 8 values (32 bytes); loadu has no alignment requirement.
    let (d, dm, i) = unsafe {
        (
            _mm256_loadu_ps(d.as_ptr()),
            _mm256_loadu_ps(dm.as_ptr()),
            ints.map(|v| _mm256_loadu_si256(v.as_ptr() as *const __m256i)),
        )
    };
    let ip = _mm256_add_epi32(
        _mm256_mullo_epi32(i[0], dots.0),
        _mm256_mullo_epi32(i[1], dots.1),
    );
    let im = _mm256_add_epi32(
        _mm256_mullo_epi32(i[2], _mm256_set1_epi32(s[0])),
        _mm256_mullo_epi32(i[3], _mm256_set1_epi32(s[1])),
    );
    let t = _mm256_add_ps(
        _mm256_mul_ps(d, _mm256_cvtepi32_ps(ip)),
        _mm256_mul_ps(dm, _mm256_cvtepi32_ps(im)),
    );
    _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(dx), t))
}

/// Activation rows from which the vector paths interleave a group (below, they dot each
/// activation block against the 8 row-major weight rows and transpose the sums with
/// [`reduce8`]; both give the twin's integers, so the choice never changes a result).
pub(super) const INTERLEAVE_ROWS: usize = 4;

/// The body of a vector path's `task`: weight rows in groups of [`GROUP`] decoded once per
/// block of `rb` activation rows, each activation row dotted against the whole group with
/// `$row` (interleaved group) or `$row_rm` (row-major group, few activation rows), the path's
/// `fn(&Group, &QActs, t)` / `fn(&Group, &[i8], &QActs, t) -> [f32; GROUP]`.
macro_rules! group_task {
    ($t:ident, $dec:ident, $yt:ident, $row:ident, $row_rm:ident) => {{
        use super::group::{Group, GROUP};
        let Task { w, a, rows, o0, rb } = *$t;
        let nb = a.nb;
        let n = $yt.len() / rows.max(1);
        if !$t.fits(&$dec) {
            $yt.iter_mut().for_each(|v| *v = f32::NAN);
            return;
        }
        let mut g = Group::new(nb);
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + rb).min(rows);
            let mut j0 = 0;
            while j0 < n {
                let m = (n - j0).min(GROUP);
                // Few activation rows: the interleave would cost more than it saves.
                let interleave = r1 - r0 >= super::dot_avx2::INTERLEAVE_ROWS;
                let valid = g.fill(w, o0 + j0, m, $dec, interleave);
                for t in r0..r1 {
                    let acc = if interleave {
                        $row(&g, a, t)
                    } else {
                        $row_rm(&g, &$dec.q, a, t)
                    };
                    for k in 0..m {
                        $yt[(j0 + k) * rows + t] = if valid[k] { acc[k] } else { f32::NAN };
                    }
                }
                j0 += GROUP;
            }
            r0 = r1;
        }
    }};
}
pub(super) use group_task;

/// The body of a path's `group_row`: activation row `t` of `a` against every row of `g`,
/// one lane per weight row. `$half` is the path's
/// `fn(&[i8] /* 16 activations */, &[i8] /* 4 interleaved steps */, &[i32; 8]) -> __m256i`,
/// the exact dot products of one half-block with the 8 rows.
macro_rules! group_row_body {
    ($g:ident, $a:ident, $t:ident, $half:ident) => {{
        use super::group::{BLOCK_BYTES, GROUP};
        use crate::backend::reference::quant_block::QBLOCK;
        let (cols, nb) = ($a.cols, $a.nb);
        let xq = &$a.q[$t * cols..($t + 1) * cols];
        let (dx, s) = (&$a.d[$t * nb..($t + 1) * nb], &$a.s[$t * nb..($t + 1) * nb]);
        let mut acc = _mm256_setzero_ps();
        for b in 0..nb {
            let (Some(xb), Some(wb), Some(ints)) = (
                xq.get(b * QBLOCK..(b + 1) * QBLOCK),
                $g.q.get(b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES),
                $g.ints.get(b),
            ) else {
                acc = _mm256_set1_ps(f32::NAN);
                break;
            };
            let lo = $half(&xb[..16], &wb[..BLOCK_BYTES / 2], &ints[4]);
            let hi = $half(&xb[16..], &wb[BLOCK_BYTES / 2..], &ints[5]);
            acc = combine8(acc, $g, b, (lo, hi), dx[b], s[b]);
        }
        let mut r = [0f32; GROUP];
        // SAFETY: `r` holds 8 f32 (32 bytes); storeu has no alignment requirement.
        unsafe { _mm256_storeu_ps(r.as_mut_ptr(), acc) };
        r
    }};
}
pub(super) use group_row_body;

/// The body of a path's `group_row_rm`: activation row `t` of `a` against the 8 row-major
/// weight rows `q` (`GROUP * cols` values) with the params of `g`; `$products` is the path's
/// `fn(|w|, w, x) -> __m256i`, 8 lanes of exact partial sums (lanes 0-3: first half).
macro_rules! group_row_rm_body {
    ($g:ident, $q:ident, $a:ident, $t:ident, $products:ident) => {{
        use super::group::GROUP;
        use crate::backend::reference::quant_block::QBLOCK;
        let (cols, nb) = ($a.cols, $a.nb);
        let xq = &$a.q[$t * cols..($t + 1) * cols];
        let (dx, s) = (&$a.d[$t * nb..($t + 1) * nb], &$a.s[$t * nb..($t + 1) * nb]);
        let mut acc = _mm256_setzero_ps();
        for b in 0..nb {
            let Some(x) = load32(&xq[b * QBLOCK..]) else {
                break;
            };
            let mut v = [_mm256_setzero_si256(); GROUP];
            for (k, vk) in v.iter_mut().enumerate() {
                if let Some(wv) = load32($q.get(k * cols + b * QBLOCK..).unwrap_or(&[])) {
                    *vk = $products(_mm256_abs_epi8(wv), wv, x);
                }
            }
            acc = combine8(acc, $g, b, reduce8(v), dx[b], s[b]);
        }
        let mut r = [0f32; GROUP];
        // SAFETY: `r` holds 8 f32 (32 bytes); storeu has no alignment requirement.
        unsafe { _mm256_storeu_ps(r.as_mut_ptr(), acc) };
        r
    }};
}
pub(super) use group_row_rm_body;

/// 8 `i32` lanes of one block's products (lanes 0-3: elements 0-15), AVX2.
#[target_feature(enable = "avx2")]
#[inline]
fn products(aw: __m256i, w: __m256i, x: __m256i) -> __m256i {
    let p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w));
    _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
}

/// Activation row `t` against a row-major group (AVX2 products).
#[target_feature(enable = "avx2")]
#[inline]
fn group_row_rm(g: &Group, q: &[i8], a: &QActs, t: usize) -> [f32; 8] {
    group_row_rm_body!(g, q, a, t, products)
}

/// Four activation bytes `x[4i..4i+4]` broadcast to every 32-bit lane.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn broadcast4(x: &[i8], i: usize) -> __m256i {
    let v = match x.get(4 * i..4 * i + 4) {
        Some(&[a, b, c, d]) => i32::from_le_bytes([a as u8, b as u8, c as u8, d as u8]),
        _ => 0,
    };
    _mm256_set1_epi32(v)
}

/// One half-block against 8 interleaved rows (AVX2): per step, |w| times x with w's sign
/// (`vpmaddubsw`, no saturation: 2·128·127 < 2^15), pairs to i32 (`vpmaddwd`), summed.
#[target_feature(enable = "avx2")]
#[inline]
fn half(x: &[i8], w: &[i8], _wsum128: &[i32; 8]) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    for i in 0..4 {
        let Some(wv) = load32(w.get(32 * i..).unwrap_or(&[])) else {
            return _mm256_setzero_si256();
        };
        let xv = broadcast4(x, i);
        let p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(xv, wv));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p16, ones));
    }
    acc
}

/// Activation row `t` against a group (AVX2 products).
#[target_feature(enable = "avx2")]
#[inline]
fn group_row(g: &Group, a: &QActs, t: usize) -> [f32; 8] {
    group_row_body!(g, a, t, half)
}

/// The AVX2 path of a task.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn task(t: &Task<'_>, dec: &mut Decoded, yt: &mut [f32]) {
    group_task!(t, dec, yt, group_row, group_row_rm)
}
