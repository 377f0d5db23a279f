//! The portable quantized path: the twin's own loop (`quant_dot::dot_row`) per weight row and
//! activation row, each weight row decoded once per block of activation rows.

use super::{step_order, Decoded, Task};
use crate::backend::reference::quant_block::{decode_row, has_min};
use crate::backend::reference::quant_dot::dot_row;

/// The portable path of a task.
pub(super) fn task_portable(t: &Task<'_>, dec: &mut Decoded, yt: &mut [f32]) {
    let Task {
        w, a, rows, o0, rb, ..
    } = *t;
    let (cols, nb) = (a.cols, a.nb);
    let n = yt.len() / rows.max(1);
    if !t.fits(dec) {
        yt.iter_mut().for_each(|v| *v = f32::NAN);
        return;
    }
    let mut ggml = Vec::new();
    let mut r0 = 0;
    while r0 < rows {
        let r1 = (r0 + rb).min(rows);
        for j in 0..n {
            let yrow = &mut yt[j * rows..(j + 1) * rows];
            let min = match w.row(o0 + j) {
                Some((ty, bytes)) if t.steps && step_order::has_steps(ty) => {
                    // Back to ggml order for the twin's decoder.
                    (step_order::row_from_steps(ty, bytes, &mut ggml)
                        && decode_row(ty, &ggml, &mut dec.q, &mut dec.p))
                    .then(|| has_min(ty))
                }
                Some((ty, bytes)) => {
                    decode_row(ty, bytes, &mut dec.q, &mut dec.p).then(|| has_min(ty))
                }
                None => None,
            };
            for (t, y) in yrow.iter_mut().enumerate().take(r1).skip(r0) {
                *y = match min {
                    Some(min) => dot_row(&dec.q[..cols], &dec.p[..nb], min, a, t),
                    None => f32::NAN,
                };
            }
        }
        r0 = r1;
    }
}
