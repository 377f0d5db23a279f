//! Row-wise and element-wise ops: rms_norm, rope, silu_mul, add, and the row gathers.
//!
//! These are memory-light next to matmul and attention, so they run on the calling thread with
//! loops the compiler vectorises. Each row is computed independently of the others.

use super::weight::CpuWeight;
use crate::backend::reference::rope_ok;

fn fill_nan(buf: &mut [f32]) {
    buf.iter_mut().for_each(|v| *v = f32::NAN);
}

/// Sum of squares with 8 lane-wise partial sums (fixed order).
fn sum_sq(x: &[f32]) -> f32 {
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

/// See [`crate::backend::Backend::rope`]. `cos`/`sin` are computed once per (row, frequency)
/// and applied to every head of the row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope(
    x: &mut [f32],
    rows: usize,
    stride: usize,
    col0: usize,
    n_heads: usize,
    head_dim: usize,
    row_pos: &[u32],
    inv_freq: &[f32],
) {
    if !rope_ok(
        x.len(),
        rows,
        stride,
        col0,
        n_heads,
        head_dim,
        row_pos,
        inv_freq,
    ) {
        return fill_nan(x);
    }
    let half = head_dim / 2;
    if half == 0 || stride == 0 {
        return;
    }
    let mut cos = vec![0f32; half];
    let mut sin = vec![0f32; half];
    for (row, &pos) in x.chunks_exact_mut(stride).zip(row_pos).take(rows) {
        for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(inv_freq) {
            let a = pos as f32 * f;
            (*s, *c) = a.sin_cos();
        }
        let heads = &mut row[col0..col0 + n_heads * head_dim];
        for head in heads.chunks_exact_mut(head_dim) {
            let (lo, hi) = head.split_at_mut(half);
            for (((x1, x2), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(&cos).zip(&sin) {
                let (a, b) = (*x1, *x2);
                *x1 = a * c - b * s;
                *x2 = b * c + a * s;
            }
        }
    }
}

/// See [`crate::backend::Backend::silu_mul`].
pub(crate) fn silu_mul(gate_up: &[f32], rows: usize, inter: usize, out: &mut [f32]) {
    let ok = matches!(rows.checked_mul(inter), Some(n) if n <= out.len())
        && matches!(rows.checked_mul(inter).and_then(|n| n.checked_mul(2)), Some(n) if n <= gate_up.len());
    if !ok {
        return fill_nan(out);
    }
    if inter == 0 {
        return;
    }
    for (gu, o) in gate_up
        .chunks_exact(2 * inter)
        .zip(out.chunks_exact_mut(inter))
        .take(rows)
    {
        let (g, u) = gu.split_at(inter);
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }
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

/// See [`crate::backend::Backend::gather_rows`]; an out-of-range row index yields a NaN row.
pub(crate) fn gather_rows(x: &[f32], dim: usize, rows: &[u32], out: &mut [f32]) {
    if !matches!(rows.len().checked_mul(dim), Some(n) if n <= out.len()) {
        return fill_nan(out);
    }
    if dim == 0 {
        return;
    }
    for (dst, &r) in out.chunks_exact_mut(dim).zip(rows) {
        let src = (r as usize)
            .checked_mul(dim)
            .and_then(|s| x.get(s..s.checked_add(dim)?));
        match src {
            Some(src) => dst.copy_from_slice(src),
            None => fill_nan(dst),
        }
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
