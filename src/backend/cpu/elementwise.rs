//! Row-wise and element-wise ops: rms_norm, rope, silu_mul, add, and the embedding gather
//! (`gather_rows` is the reference's, shared).
//!
//! These are memory-light next to matmul and attention, so most run on the calling thread with
//! loops the compiler vectorises; `silu_mul` (an `exp` per element) is vectorised explicitly
//! and split across the pool. Each row is computed independently of the others.

use rayon::prelude::*;

use super::weight::CpuWeight;
use super::CpuBackend;
use crate::backend::reference::{fill_nan, rope_ok};
use crate::backend::{RopeArgs, View, ViewMut};

/// Sum of squares with 8 lane-wise partial sums (fixed order).
pub(super) fn sum_sq(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l] * c[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for &v in rem {
        s += v * v;
    }
    s
}

/// See [`crate::backend::Backend::rms_norm`].
pub(crate) fn rms_norm(x: &[f32], w: &[f32], rows: usize, dim: usize, eps: f32, out: &mut [f32]) {
    let ok = matches!(rows.checked_mul(dim), Some(n) if n <= x.len() && n <= out.len());
    if !ok || w.len() < dim {
        return fill_nan(out);
    }
    if dim == 0 {
        return;
    }
    let w = &w[..dim];
    for (xr, or) in x
        .chunks_exact(dim)
        .zip(out.chunks_exact_mut(dim))
        .take(rows)
    {
        let r = 1.0 / (sum_sq(xr) / dim as f32 + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * r * g;
        }
    }
}

/// The cos/sin of every (row position, frequency) of the last [`rope`] call, reused while the
/// positions and frequencies stay the same (every layer of a step): the same values, computed
/// once per step instead of once per layer.
#[derive(Debug, Default)]
pub(crate) struct RopeTable {
    pos: Vec<u32>,
    freq: Vec<f32>,
    /// `cos[t * half + i]` of `pos[t] * freq[i]`, likewise `sin`.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// The table for `row_pos` and `inv_freq`, recomputed only when either changed.
    fn get(&mut self, row_pos: &[u32], inv_freq: &[f32]) -> (&[f32], &[f32]) {
        if self.pos != row_pos || self.freq != inv_freq {
            let half = inv_freq.len();
            self.pos = row_pos.to_vec();
            self.freq = inv_freq.to_vec();
            self.cos.resize(row_pos.len() * half, 0.0);
            self.sin.resize(row_pos.len() * half, 0.0);
            for (t, &pos) in row_pos.iter().enumerate() {
                let cs = self.cos[t * half..(t + 1) * half].iter_mut();
                let sn = self.sin[t * half..(t + 1) * half].iter_mut();
                for ((c, s), &f) in cs.zip(sn).zip(inv_freq) {
                    let ang = pos as f32 * f;
                    (*s, *c) = ang.sin_cos();
                }
            }
        }
        (&self.cos, &self.sin)
    }
}

/// See [`crate::backend::Backend::rope`]. `cos`/`sin` come from `table` (computed once per
/// (position, frequency) while the step's positions stay the same) and are applied to every head
/// of the row.
pub(crate) fn rope(x: ViewMut<'_, [f32]>, a: &RopeArgs<'_>, table: &mut RopeTable) {
    let (rows, stride, col0) = (x.rows, x.stride, x.col);
    let x = x.buf;
    if !rope_ok(&View::new(&*x, rows, stride, col0), a) {
        return fill_nan(x);
    }
    let (head_dim, half) = (a.head_dim, a.head_dim / 2);
    if half == 0 || stride == 0 {
        return;
    }
    let (cos, sin) = table.get(&a.row_pos[..rows], &a.inv_freq[..half]);
    for (t, row) in x.chunks_exact_mut(stride).take(rows).enumerate() {
        let (cos, sin) = (
            &cos[t * half..(t + 1) * half],
            &sin[t * half..(t + 1) * half],
        );
        let heads = &mut row[col0..col0 + a.n_heads * head_dim];
        for head in heads.chunks_exact_mut(head_dim) {
            let (lo, hi) = head.split_at_mut(half);
            for (((x1, x2), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
                let (a, b) = (*x1, *x2);
                *x1 = a * c - b * s;
                *x2 = b * c + a * s;
            }
        }
    }
}

/// `e^x` for the whole f32 range: Cephes-style range reduction and degree-6 polynomial in plain
/// f32 arithmetic (relative error ~2e-7), written so the compiler vectorises it. Inputs are
/// clamped to `[-87.3, 88.3]` (results ~1e-38 .. ~2e38); NaN propagates.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let fx = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - fx * 0.693_359_4 - fx * -2.121_944_4e-4;
    let z = r * r;
    let y = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 0.166_666_65)
        * r
        + 0.5)
        * z
        + r
        + 1.0;
    y * f32::from_bits(((fx as i32 + 127) as u32) << 23)
}

/// `out[t, j] = silu(g[t, j]) * u[t, j]` for whole rows of `gate_up` (`[rows, 2 * inter]`).
#[inline(always)]
fn silu_mul_rows(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    for (gu, o) in gate_up
        .chunks_exact(2 * inter)
        .zip(out.chunks_exact_mut(inter))
    {
        let (g, u) = gu.split_at(inter);
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + exp_f32(-g)) * u;
        }
    }
}

/// [`silu_mul_rows`] compiled for AVX2/FMA. Rust never contracts `a * b + c` into an FMA and
/// the body has no cross-lane reductions, so this gives the same bits as the portable build.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_rows_avx2(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    silu_mul_rows(gate_up, inter, out)
}

/// See [`crate::backend::Backend::silu_mul`]. Rows are split across the pool when there are
/// enough of them; each row is computed the same way wherever it runs.
pub(crate) fn silu_mul(
    be: &CpuBackend,
    gate_up: &[f32],
    rows: usize,
    inter: usize,
    out: &mut [f32],
) {
    let ok = matches!(rows.checked_mul(inter), Some(n) if n <= out.len())
        && matches!(rows.checked_mul(inter).and_then(|n| n.checked_mul(2)), Some(n) if n <= gate_up.len());
    if !ok {
        return fill_nan(out);
    }
    if inter == 0 || rows == 0 {
        return;
    }
    let (gate_up, out) = (&gate_up[..rows * 2 * inter], &mut out[..rows * inter]);
    let run = |gu: &[f32], o: &mut [f32]| {
        #[cfg(target_arch = "x86_64")]
        if be.simd {
            // SAFETY: `be.simd` is only set when AVX2 and FMA were detected at runtime.
            unsafe { silu_mul_rows_avx2(gu, inter, o) };
            return;
        }
        silu_mul_rows(gu, inter, o);
    };
    let threads = be.pool.current_num_threads();
    if threads <= 1 || rows * inter < (1 << 15) {
        return run(gate_up, out);
    }
    let per = rows.div_ceil(threads * 2).max(1);
    be.pool.install(|| {
        gate_up
            .par_chunks(per * 2 * inter)
            .zip(out.par_chunks_mut(per * inter))
            .for_each(|(gu, o)| run(gu, o));
    });
}

/// See [`crate::backend::Backend::add`].
pub(crate) fn add(acc: &mut [f32], x: &[f32], len: usize) {
    if len > acc.len() || len > x.len() {
        return fill_nan(acc);
    }
    for (a, &b) in acc[..len].iter_mut().zip(&x[..len]) {
        *a += b;
    }
}

/// See [`crate::backend::Backend::embedding_gather`]; an out-of-range id yields a NaN row.
pub(crate) fn embedding_gather(table: &CpuWeight, ids: &[u32], out: &mut [f32]) {
    let hidden = table.inp;
    if !matches!(ids.len().checked_mul(hidden), Some(n) if n <= out.len()) {
        return fill_nan(out);
    }
    for (dst, &id) in out.chunks_exact_mut(hidden).zip(ids) {
        if !table.row_into(id as usize, dst) {
            fill_nan(dst);
        }
    }
}
