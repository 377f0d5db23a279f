//! The portable quantized path: the twin's loop per (weight row, activation row), with the
//! dot products of one weight block against four activation rows at a time. Decoding
//! (`decode_row`) and the float combine (`combine`) are the twin's own functions, so the
//! float operations are the twin's IEEE operations in the same order.

use super::{Decoded, Task};
use crate::backend::reference::quant_dot::dot_halves_scalar;

/// The body of a path's `task` function: for each weight row `o0 + j` of the task and each
/// activation row `t`, `yt[j * rows + t] = dot_row(...)` (see `quant_dot`), with `$dot4` the
/// path's dot products of one weight block against the same block of 4 activation rows and
/// `$dot` against one. A weight row is decoded once per block of `rb` activation rows.
macro_rules! task_body {
    ($t:ident, $dec:ident, $yt:ident, $dot:path, $dot4:path) => {{
        use crate::backend::reference::quant_block::{decode_row, has_min, QBLOCK};
        use crate::backend::reference::quant_dot::combine;
        let Task { w, a, rows, o0, rb } = *$t;
        let (cols, nb) = (a.cols, a.nb);
        let n = $yt.len() / rows.max(1);
        if !$t.fits(&$dec) {
            $yt.iter_mut().for_each(|v| *v = f32::NAN);
            return;
        }
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + rb).min(rows);
            for j in 0..n {
                let yrow = &mut $yt[j * rows..(j + 1) * rows];
                let decoded = match w.row(o0 + j) {
                    Some((ty, bytes)) => {
                        decode_row(ty, bytes, &mut $dec.q, &mut $dec.p).then(|| has_min(ty))
                    }
                    None => None,
                };
                let Some(min) = decoded else {
                    yrow[r0..r1].iter_mut().for_each(|v| *v = f32::NAN);
                    continue;
                };
                let (wq, wp) = (&$dec.q[..cols], &$dec.p[..nb]);
                let mut t = r0;
                while t + 4 <= r1 {
                    let mut acc = [0f32; 4];
                    for b in 0..nb {
                        let wb = &wq[b * QBLOCK..(b + 1) * QBLOCK];
                        let xo = t * cols + b * QBLOCK;
                        let xb = |k: usize| &a.q[xo + k * cols..xo + k * cols + QBLOCK];
                        let dots = $dot4(wb, [xb(0), xb(1), xb(2), xb(3)]);
                        for (k, (acc, dot)) in acc.iter_mut().zip(dots).enumerate() {
                            let i = (t + k) * nb + b;
                            *acc += combine(&wp[b], min, a.d[i], a.s[i], dot);
                        }
                    }
                    yrow[t..t + 4].copy_from_slice(&acc);
                    t += 4;
                }
                while t < r1 {
                    let mut acc = 0f32;
                    for b in 0..nb {
                        let wb = &wq[b * QBLOCK..(b + 1) * QBLOCK];
                        let xo = t * cols + b * QBLOCK;
                        let dot = $dot(wb, &a.q[xo..xo + QBLOCK]);
                        let i = t * nb + b;
                        acc += combine(&wp[b], min, a.d[i], a.s[i], dot);
                    }
                    yrow[t] = acc;
                    t += 1;
                }
            }
            r0 = r1;
        }
    }};
}

/// Four blocks' dot products, scalar.
#[inline(always)]
fn dot4_scalar(w: &[i8], x: [&[i8]; 4]) -> [[i32; 2]; 4] {
    x.map(|x| dot_halves_scalar(w, x))
}

/// The portable path.
pub(super) fn task_portable(t: &Task<'_>, dec: &mut Decoded, yt: &mut [f32]) {
    task_body!(t, dec, yt, dot_halves_scalar, dot4_scalar)
}
