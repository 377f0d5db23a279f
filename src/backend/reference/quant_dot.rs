//! The semantics of the quantized matmul `y = x · Wᵀ` with `W` in ggml blocks: the scalar twin
//! every kernel path (portable, AVX2, AVX-VNNI, AVX-512 VNNI) must match bit for bit.
//!
//! 1. Activations ([`QActs::quantize`]): each row of `x` is cut into 32-element blocks; block
//!    `b` gets `amax = max |x_i|` (NaN if any `x_i` is NaN), `d = amax / 127` (f32),
//!    `id = 1 / d` when `d > 0` else 0, and `q_i = clamp(round_ties_even(x_i * id), -127, 127)`
//!    as `i8`; plus the integer sums `s0 = Σ q_i` (elements 0-15) and `s1` (16-31).
//! 2. Weights are decoded per 32-element block into `i8` values and [`BlockParams`]
//!    ([`super::quant_block`]).
//! 3. Per block, the integer dot products of the two halves `dot[h] = Σ qw_i * qx_i` are exact
//!    (any summation order gives the same `i32`), and [`combine`] turns them into the block's
//!    float contribution in a fixed order:
//!    `P = isc[0]*dot[0] + isc[1]*dot[1]` (i32), `M = imin[0]*s0 + imin[1]*s1` (i32),
//!    `c = dx * (d * f32(P) + dm * f32(M))` (types with mins) or `c = dx * (d * f32(P))`,
//!    each operation rounded to f32 (no fused multiply-add). Every `|P|`, `|M|` is below
//!    2^24, so their conversions are exact.
//! 4. Accumulation in [`LANES`] = 8 lanes: block `b` is added to lane `b % 8`, in increasing
//!    `b` (`lane = lane + c`, f32, every lane starting at +0); then [`reduce_lanes`] sums the
//!    lanes in a fixed tree: `((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))`. This is the order a
//!    256-bit vector of 8 blocks (a K-quant super-block, or 8 consecutive 32-element blocks)
//!    accumulates in, so the vector paths run the combine on 8 blocks at once.
//!
//! Error bound against `Σ dequant(w)_i · x_i` (f64): rounding `x_i` to `d · q_i` errs by at most
//! `d / 2 = amax_b / 254` per element, so the block's product errs by at most
//! `amax_b / 254 · Σ_{i∈b} |w_i|`; the float combine adds a relative `2^-24` per operation
//! (at most `nb + 6` of them on the path of each term). See [`error_bound`].
//!
//! A row's result depends only on that row of `x` and the weight row: batch-invariant by
//! construction.

use super::quant_block::{decode_row, has_min, BlockParams, QBLOCK};
use crate::quant::{GgmlType, QuantData};

/// Activation rows quantized per 32-element block (see the module docs, step 1). Owned
/// buffers, reusable across calls ([`QActs::quantize`] resizes them).
#[derive(Debug, Clone, Default)]
pub struct QActs {
    /// Columns (a multiple of 32).
    pub cols: usize,
    /// Blocks per row (`cols / 32`).
    pub nb: usize,
    /// `rows * cols` quantized values.
    pub q: Vec<i8>,
    /// `rows * nb` block scales.
    pub d: Vec<f32>,
    /// `rows * nb` sums of each block's first half (elements 0-15).
    pub s0: Vec<i32>,
    /// `rows * nb` sums of each block's second half (elements 16-31).
    pub s1: Vec<i32>,
}

/// Accumulator lanes of one output (see the module docs, step 4).
pub const LANES: usize = 8;

impl QActs {
    /// Quantizes `rows` rows of `cols` values from `x` (`cols % 32 == 0`,
    /// `x.len() >= rows * cols`; otherwise leaves `self` with zero rows and returns false).
    /// Always inlined, so that callers compiled for wider vector instructions (the CPU
    /// backend's vector paths) run it with them: the same IEEE operations, without a libm call
    /// per element for the rounding.
    #[inline(always)]
    pub fn quantize(&mut self, x: &[f32], rows: usize, cols: usize) -> bool {
        let fits = self.resize_for(x.len(), rows, cols);
        let rows = if fits { rows } else { 0 };
        for ((((xb, qb), d), s0), s1) in x[..rows * cols]
            .chunks_exact(QBLOCK)
            .zip(self.q.chunks_exact_mut(QBLOCK))
            .zip(self.d.iter_mut())
            .zip(self.s0.iter_mut())
            .zip(self.s1.iter_mut())
        {
            let (dd, [a, b]) = quantize_block(xb, qb);
            (*d, *s0, *s1) = (dd, a, b);
        }
        fits
    }
}

impl QActs {
    /// Sizes the buffers for `rows` rows of `cols` values quantized from `x_len` inputs, or
    /// for zero rows when they do not fit (`cols % 32 != 0` or `rows * cols > x_len`);
    /// returns whether they fit. The values are left for the caller to write.
    pub fn resize_for(&mut self, x_len: usize, rows: usize, cols: usize) -> bool {
        let nb = cols / QBLOCK;
        let fits =
            cols.is_multiple_of(QBLOCK) && matches!(rows.checked_mul(cols), Some(n) if n <= x_len);
        let rows = if fits { rows } else { 0 };
        self.cols = cols;
        self.nb = nb;
        self.q.resize(rows * cols, 0);
        self.d.resize(rows * nb, 0.0);
        self.s0.resize(rows * nb, 0);
        self.s1.resize(rows * nb, 0);
        fits
    }
}

/// Step 1 for one block: writes `q`, returns `(d, [s0, s1])`.
#[inline(always)]
fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, [i32; 2]) {
    let mut amax = 0f32;
    let mut nan = false;
    for &v in x {
        nan |= v.is_nan();
        amax = amax.max(v.abs());
    }
    let d = if nan { f32::NAN } else { amax / 127.0 };
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut s = [0i32; 2];
    for (i, (o, &v)) in q.iter_mut().zip(x).enumerate() {
        let r = (v * id).round_ties_even().clamp(-127.0, 127.0);
        // NaN (only when d is not a positive number, where id = 0 and v is NaN) becomes 0.
        *o = if r.is_nan() { 0 } else { r as i8 };
        s[i / 16] += *o as i32;
    }
    (d, s)
}

/// Step 3: the float contribution of one block (see the module docs).
#[inline(always)]
pub fn combine(p: &BlockParams, min: bool, dx: f32, s: [i32; 2], dot: [i32; 2]) -> f32 {
    let ip = p.isc[0] * dot[0] + p.isc[1] * dot[1];
    if min {
        let im = p.imin[0] * s[0] + p.imin[1] * s[1];
        dx * (p.d * ip as f32 + p.dm * im as f32)
    } else {
        dx * (p.d * ip as f32)
    }
}

/// The exact integer dot products of the two 16-element halves of a block.
#[inline(always)]
pub fn dot_halves_scalar(w: &[i8], x: &[i8]) -> [i32; 2] {
    let mut r = [0i32; 2];
    for (h, rh) in r.iter_mut().enumerate() {
        for i in 16 * h..16 * h + 16 {
            *rh += w[i] as i32 * x[i] as i32;
        }
    }
    r
}

/// Step 4's final sum of the lanes.
#[inline(always)]
pub fn reduce_lanes(l: [f32; LANES]) -> f32 {
    let s4 = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    (s4[0] + s4[2]) + (s4[1] + s4[3])
}

/// Steps 3-4 for one decoded weight row (`wq`, `wp`) and activation row `t` of `a`.
#[inline(always)]
pub fn dot_row(wq: &[i8], wp: &[BlockParams], min: bool, a: &QActs, t: usize) -> f32 {
    let (cols, nb) = (a.cols, a.nb);
    let (xq, xd) = (&a.q[t * cols..(t + 1) * cols], &a.d[t * nb..(t + 1) * nb]);
    let (s0, s1) = (&a.s0[t * nb..(t + 1) * nb], &a.s1[t * nb..(t + 1) * nb]);
    let mut acc = [0f32; LANES];
    for b in 0..nb {
        let dot = dot_halves_scalar(&wq[b * QBLOCK..][..QBLOCK], &xq[b * QBLOCK..][..QBLOCK]);
        acc[b % LANES] += combine(&wp[b], min, xd[b], [s0[b], s1[b]], dot);
    }
    reduce_lanes(acc)
}

/// The reference quantized matmul over stacked segments (each `[rows_k, cols]` of its own
/// type, rows stacked in order): `y[t * out + o]` for every activation row of `a`. Rows of a
/// type without a decoder become NaN.
pub fn matmul(segments: &[QuantData], a: &QActs, rows: usize, y: &mut [f32]) {
    let out: usize = segments.iter().map(|s| s.rows()).sum();
    let cols = a.cols;
    let mut wq = vec![0i8; cols];
    let mut wp = vec![BlockParams::default(); a.nb];
    let mut o = 0;
    for seg in segments {
        let min = has_min(seg.ty());
        for r in 0..seg.rows() {
            let ok = seg.cols() == cols && decode_row(seg.ty(), seg.row(r), &mut wq, &mut wp);
            for t in 0..rows {
                y[t * out + o] = if ok {
                    dot_row(&wq, &wp, min, a, t)
                } else {
                    f32::NAN
                };
            }
            o += 1;
        }
    }
}

/// The bound of the module docs for one output: `|twin − Σ w_i x_i| <= error_bound(...)` with
/// `w` the dequantized row (f32) and `x` the f32 activation row. Used by tests.
pub fn error_bound(w: &[f32], x: &[f32]) -> f64 {
    let nb = x.len() / QBLOCK;
    let mut quant = 0f64;
    let mut mag = 0f64;
    for (wb, xb) in w.chunks(QBLOCK).zip(x.chunks(QBLOCK)) {
        let amax = xb.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
        let sw: f64 = wb.iter().map(|v| v.abs() as f64).sum();
        quant += amax / 254.0 * sw;
        // |x̂_i| <= |x_i| + amax/254 <= 2 amax: the magnitude the float combine rounds.
        mag += 2.0 * amax * sw;
    }
    let eps = f64::powi(2.0, -24);
    quant * (1.0 + 1e-6) + (nb as f64 + 8.0) * eps * mag + 1e-30
}

/// Whether [`matmul`] can compute a weight of this type.
pub fn supports(ty: GgmlType) -> bool {
    super::quant_block::is_kernel_type(ty)
}
