//! `lora_apply` as SGMV (kernels/README.md, lora.cu): for each lane of the batch, the rows are
//! grouped by adapter slot ([`super::sgmv`]), `lpx_lora_shrink` computes `h = A·x` for every
//! segment at its own rank and `lpx_lora_expand` adds `(scale · row scale) · B·h` to y (A and B
//! read as bf16 from the arena and widened to f32; x, h, y and the sums in f32). The compute
//! stream first waits for any pending upload of the slots a lane reads.

use cudarc::driver::PushKernelArg;

use super::launch::{ceil, grid, int, Layout};
use super::sgmv::build_segments;
use super::step_meta::{words_f32, words_i32, words_i64, MetaKey};
use super::{CudaBackend, CudaBuf, CudaLoraArena, Scratch};
use crate::backend::{lane_scale, LoraArgs, View, ViewMut};

impl CudaBackend {
    pub(crate) fn op_lora_apply(
        &self,
        x: View<'_, CudaBuf>,
        y: ViewMut<'_, CudaBuf>,
        a: &LoraArgs<'_, CudaLoraArena>,
    ) {
        let stack = a.stack;
        let g = stack.geometry();
        let (inp, out) = g.dims[a.target.index()];
        let (xl, yl) = (Layout::of(&x), Layout::of_mut(&y));
        let overlap = |col: usize, w: usize, stride: usize| !matches!(col.checked_add(w), Some(e) if e <= stride);
        if xl.rows != yl.rows || overlap(xl.col, inp, xl.stride) || overlap(yl.col, out, yl.stride)
        {
            return;
        }
        let rows = xl.rows;
        if rows == 0 || a.batch.is_empty() || inp == 0 || out == 0 {
            return;
        }
        let ints = (
            xl.ints(),
            yl.ints(),
            int(inp),
            int(out),
            int(g.max_rank),
            rows.checked_mul(g.max_rank),
        );
        let (Some((_, xs, xc)), Some((_, ys, yc)), Some(in_i), Some(out_i), Some(mr), Some(h_len)) =
            ints
        else {
            return;
        };
        let mut guard = self.scratch.lock();
        let Scratch { meta, lora_h } = &mut **guard;
        for (slots, scales) in a.batch.lanes() {
            let seg = build_segments(
                slots,
                rows,
                |s| stack.module(s, a.layer, a.target),
                |t| xl.row_inside(t, inp) && yl.row_inside(t, out),
            );
            if seg.is_empty() {
                continue;
            }
            let Some(n_seg) = int(seg.len()) else { return };
            if self
                .note("lora_apply", stack.wait_ready(seg.slot.iter().copied()))
                .is_none()
            {
                return;
            }
            if lora_h.as_ref().is_none_or(|h| h.len() < h_len) {
                *lora_h = self.note(
                    "lora_apply (scratch)",
                    self.dev
                        .stream
                        .alloc_zeros::<f32>(h_len.next_power_of_two()),
                );
            }
            let Some(h) = lora_h.as_mut() else { return };
            let row_scale: Vec<f32> = (0..rows).map(|t| lane_scale(scales, t)).collect();
            let (start, srows, rank) = (
                words_i32(&seg.start),
                words_i32(&seg.rows),
                words_i32(&seg.rank),
            );
            let (a_off, b_off) = (words_i64(&seg.a_off), words_i64(&seg.b_off));
            let (sscale, rscale) = (words_f32(&seg.scale), words_f32(&row_scale));
            let items = [
                (MetaKey::SegStart, &start[..]),
                (MetaKey::SegRows, &srows[..]),
                (MetaKey::SegAOff, &a_off[..]),
                (MetaKey::SegBOff, &b_off[..]),
                (MetaKey::SegRank, &rank[..]),
                (MetaKey::SegScale, &sscale[..]),
                (MetaKey::RowScale, &rscale[..]),
            ];
            let Some([d_start, d_rows, d_aoff, d_boff, d_rank, d_sscale, d_rscale]) =
                self.note("lora_apply", meta.upload(&self.dev.stream, items))
            else {
                return;
            };
            let arena = stack.data();
            let mut b = self
                .dev
                .stream
                .launch_builder(&self.dev.kernels.lora_shrink);
            b.arg(&x.buf.data).arg(&xs).arg(&xc).arg(&in_i).arg(arena);
            b.arg(d_start)
                .arg(d_rows)
                .arg(d_aoff)
                .arg(d_rank)
                .arg(&n_seg);
            b.arg(&mut *h).arg(&mr);
            // SAFETY: lpx_lora_shrink(x, x_stride, x_col, in_dim, arena, seg_start, seg_rows,
            // seg_a_off, seg_rank, n_seg, h, max_rank): every segment row's x columns lie
            // inside x (build_segments' row check), each A [rank, in] lies inside the arena at
            // its offset (module_offset: rank <= max_rank reserved; the arena is the bf16
            // `CudaSlice<u16>` the kernel's `const bf16*` expects), h holds rows*max_rank;
            // grid (n_seg, max_rank), block 128.
            unsafe {
                self.run(
                    "lora_shrink",
                    b,
                    grid(seg.len(), g.max_rank, 1),
                    (128, 1, 1),
                )
            };
            let mut b = self
                .dev
                .stream
                .launch_builder(&self.dev.kernels.lora_expand);
            b.arg(&*h)
                .arg(&mr)
                .arg(arena)
                .arg(d_start)
                .arg(d_rows)
                .arg(d_boff)
                .arg(d_rank);
            b.arg(d_sscale)
                .arg(d_rscale)
                .arg(&mut y.buf.data)
                .arg(&ys)
                .arg(&yc);
            b.arg(&out_i).arg(&n_seg);
            // SAFETY: lpx_lora_expand(h, max_rank, arena, seg_start, seg_rows, seg_b_off,
            // seg_rank, seg_scale, row_scale, y, y_stride, y_col, out_dim, n_seg): h was written
            // by the shrink above (same stream), each B [out, rank] lies inside the arena,
            // row_scale holds one value per step row, every segment row's y columns lie inside
            // y; grid (n_seg, ceil(out_dim/256)), block 256.
            unsafe {
                self.run(
                    "lora_expand",
                    b,
                    grid(seg.len(), ceil(out, 256), 1),
                    (256, 1, 1),
                )
            };
        }
    }
}
