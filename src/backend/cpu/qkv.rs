//! Ops on the fused QKV row that some architectures add between the projection and RoPE: the
//! q/k/v bias (Qwen2) and the per-head RMSNorm of q and k (Qwen3).
//!
//! Both are light next to the matmul that precedes them and run on the calling thread; each row
//! (and each head) is computed on its own, so results do not depend on the other rows.

use super::elementwise::sum_sq;
use crate::backend::reference::{bias_ok, fill_nan, head_norm_ok};
use crate::backend::{View, ViewMut};

/// See [`crate::backend::Backend::add_bias`].
pub(crate) fn add_bias(y: ViewMut<'_, [f32]>, bias: &[f32], width: usize) {
    let (rows, stride, col) = (y.rows, y.stride, y.col);
    let y = y.buf;
    if !bias_ok(&View::new(&*y, rows, stride, col), bias.len(), width) {
        return fill_nan(y);
    }
    if width == 0 || stride == 0 {
        return;
    }
    let bias = &bias[..width];
    for row in y.chunks_exact_mut(stride).take(rows) {
        for (v, &b) in row[col..col + width].iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// See [`crate::backend::Backend::head_rms_norm`]. The sum of squares uses the same fixed
/// 8-lane order as `rms_norm`.
pub(crate) fn head_rms_norm(
    x: ViewMut<'_, [f32]>,
    w: &[f32],
    n_heads: usize,
    head_dim: usize,
    eps: f32,
) {
    let (rows, stride, col) = (x.rows, x.stride, x.col);
    let x = x.buf;
    if !head_norm_ok(
        &View::new(&*x, rows, stride, col),
        w.len(),
        n_heads,
        head_dim,
    ) {
        return fill_nan(x);
    }
    if head_dim == 0 || n_heads == 0 || stride == 0 {
        return;
    }
    let w = &w[..head_dim];
    for row in x.chunks_exact_mut(stride).take(rows) {
        for head in row[col..col + n_heads * head_dim].chunks_exact_mut(head_dim) {
            let r = 1.0 / (sum_sq(head) / head_dim as f32 + eps).sqrt();
            for (v, &g) in head.iter_mut().zip(w) {
                *v = *v * r * g;
            }
        }
    }
}
