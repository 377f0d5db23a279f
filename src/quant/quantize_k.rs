//! f32 → K-quant blocks (Q4_K, Q5_K, Q6_K): Rust ports of the algorithm of ggml's reference
//! quantizers `quantize_row_q{4,5,6}_K_ref` (no importance matrix), producing blocks in the
//! layouts [`super::dequant_k`] documents.
//!
//! Q4_K/Q5_K fit each 32-element group with an affine grid `x ≈ scale * l - min`
//! (`l in 0..=nmax`) by `fit_affine`, then store the eight group scales and mins as 6-bit
//! multiples of two f16 super-scales and re-round every element against the stored grid.
//! Q6_K fits each 16-element group with a symmetric grid (`l in -32..32`) by `fit_symmetric`
//! and stores the sixteen group scales as i8 multiples of one f16 super-scale.
//!
//! Every function quantizes exactly one 256-element block; callers slice whole blocks
//! (see [`super::quantize::quantize`]), so the indexing below stays in range. Inputs are finite.

use super::dequant_k::{f16_at, scale_min_k4, QK_K};
use super::quantize::put_f16;

/// ggml's `nearest_int`: round to nearest, ties to even, via the 1.5 * 2^23 trick (exact for
/// `|v| < 2^22`, the only range the quantizers use).
#[inline]
fn nearest_int(v: f32) -> i32 {
    let shifted = v + 12_582_912.0;
    (shifted.to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

/// Groups below this magnitude are all zero (ggml's `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// Search parameters of [`fit_affine`] (ggml's `make_qkx2_quants` arguments).
struct AffineSearch {
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
}

/// ggml's search for Q4_K: 4-bit levels, 21 grids from `(nmax - 1) / range` upwards.
const Q4_K_SEARCH: AffineSearch = AffineSearch {
    nmax: 15,
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
};

/// ggml's search for Q5_K: 5-bit levels, 16 grids from `(nmax - 0.5) / range` upwards.
const Q5_K_SEARCH: AffineSearch = AffineSearch {
    nmax: 31,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
};

/// Weighted least-squares affine fit of `x` (ggml's `make_qkx2_quants` with squared error):
/// starts from the grid spanning `[min(x, 0), max(x)]`, then tries `nstep + 1` stretched grids
/// (`iscale = (rmin + rdelta * is + nmax) / range`), solving the 2x2 normal equations for scale
/// and min on each rounding and keeping the one of least weighted error. Writes the levels to
/// `l` and returns `(scale, -min)` (`min <= 0`, so the second value is `>= 0`).
fn fit_affine(x: &[f32], w: &[f32], l: &mut [u8], s: &AffineSearch) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.iter_mut().for_each(|v| *v = 0);
        return (0.0, -min);
    }
    let nmax = s.nmax as f32;
    let level = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, s.nmax);
    let mut iscale = nmax / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = level(iscale, x[i], min);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += w[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for is in 0..=s.nstep {
        iscale = (s.rmin + s.rdelta * is as f32 + nmax) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = level(iscale, x[i], min);
            aux[i] = q as u8;
            let qf = q as f32;
            sum_l += w[i] * qf;
            sum_l2 += w[i] * qf * qf;
            sum_xl += w[i] * qf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += w[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Symmetric fit of a group with levels `-nmax..nmax` weighted by `x²` (ggml's `make_qx_quants`
/// with `rmse_type = 1`): the largest-magnitude element maps to `-nmax`, then 18 nearby grids
/// are tried, keeping the one that maximises `(Σ w x l)² / Σ w l²`. Writes `l + nmax` to `l`
/// and returns the least-squares scale.
fn fit_symmetric(x: &[f32], nmax: i32, l: &mut [u8]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.iter_mut().for_each(|v| *v = 0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let q = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (o, &v) in l.iter_mut().zip(x) {
        *o = (level(iscale, v) + nmax) as u8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in l.iter_mut().zip(x) {
                *o = (level(iscale, v) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The shared first half of Q4_K and Q5_K: fits the eight 32-element groups of `x`, writes
/// `d`, `dmin` and the 12 packed scale bytes to `out[0..16]`, and returns every element's level
/// re-rounded against the stored grid (in `0..=nmax`).
fn affine_super_block(x: &[f32], out: &mut [u8], s: &AffineSearch) -> [u8; QK_K] {
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    let mut weights = [0f32; 32];
    for j in 0..8 {
        let g = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = g.iter().fold(0.0, |a, v| a + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(g) {
            *w = av_x + v.abs();
        }
        let (sc, m) = fit_affine(g, &weights, &mut l[32 * j..32 * j + 32], s);
        scales[j] = sc;
        mins[j] = m;
        max_scale = max_scale.max(sc);
        max_min = max_min.max(m);
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let packed = &mut out[4..16];
    packed.fill(0);
    for j in 0..8 {
        // ggml stores the int in a u8 before clamping; the wrap is kept for equal results.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    put_f16(out, 0, max_scale / 63.0);
    put_f16(out, 2, max_min / 63.0);
    let (d_all, dmin_all) = (f16_at(out, 0), f16_at(out, 2));
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &out[4..16]);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        for i in 32 * j..32 * j + 32 {
            l[i] = nearest_int((x[i] + dm) / d).clamp(0, s.nmax) as u8;
        }
    }
    l
}

/// One Q4_K block (ggml's `quantize_row_q4_K_ref`).
pub fn q4_k(x: &[f32], out: &mut [u8]) {
    let l = affine_super_block(x, out, &Q4_K_SEARCH);
    let qs = &mut out[16..144];
    for (c, chunk) in qs.chunks_exact_mut(32).enumerate() {
        for (i, q) in chunk.iter_mut().enumerate() {
            *q = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
        }
    }
}

/// One Q5_K block (ggml's `quantize_row_q5_K_ref`).
pub fn q5_k(x: &[f32], out: &mut [u8]) {
    let l = affine_super_block(x, out, &Q5_K_SEARCH);
    let (qh, qs) = out[16..176].split_at_mut(32);
    qh.fill(0);
    for c in 0..4 {
        let (bit_lo, bit_hi) = (1u8 << (2 * c), 1u8 << (2 * c + 1));
        for i in 0..32 {
            let (mut l1, mut l2) = (l[64 * c + i], l[64 * c + 32 + i]);
            if l1 > 15 {
                l1 -= 16;
                qh[i] |= bit_lo;
            }
            if l2 > 15 {
                l2 -= 16;
                qh[i] |= bit_hi;
            }
            qs[32 * c + i] = l1 | (l2 << 4);
        }
    }
}

/// One Q6_K block (ggml's `quantize_row_q6_K_ref`).
pub fn q6_k(x: &[f32], out: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for (ib, sc) in scales.iter_mut().enumerate() {
        *sc = fit_symmetric(&x[16 * ib..16 * ib + 16], 32, &mut l[16 * ib..16 * ib + 16]);
        if sc.abs() > max_abs_scale {
            max_abs_scale = sc.abs();
            max_scale = *sc;
        }
    }
    out[..210].fill(0);
    if max_abs_scale < GROUP_MAX_EPS {
        return;
    }
    let iscale = -128.0 / max_scale;
    put_f16(out, 208, 1.0 / iscale);
    let d_all = f16_at(out, 208);
    for (ib, &sc) in scales.iter().enumerate() {
        let q = nearest_int(iscale * sc).min(127) as i8;
        out[192 + ib] = q as u8;
        let d = d_all * q as f32;
        if d == 0.0 {
            continue;
        }
        for i in 16 * ib..16 * ib + 16 {
            l[i] = (nearest_int(x[i] / d).clamp(-32, 31) + 32) as u8;
        }
    }
    let (ql, qh) = out[..192].split_at_mut(128);
    for c in 0..2 {
        let base = 128 * c;
        for i in 0..32 {
            let at = |k: usize| l[base + 32 * k + i];
            ql[64 * c + i] = (at(0) & 0x0F) | ((at(2) & 0x0F) << 4);
            ql[64 * c + 32 + i] = (at(1) & 0x0F) | ((at(3) & 0x0F) << 4);
            qh[32 * c + i] =
                (at(0) >> 4) | ((at(1) >> 4) << 2) | ((at(2) >> 4) << 4) | ((at(3) >> 4) << 6);
        }
    }
}
