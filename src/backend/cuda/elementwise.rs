//! The row-wise ops: norms, RoPE, SiLU·up, residual add, biases, embedding and row gathers
//! (kernels/README.md: norm.cu, rope.cu, activation.cu, embedding.cu, sampling.cu). Each checks
//! its shapes on the host like [`crate::backend::reference`] and queues one kernel.

use cudarc::driver::PushKernelArg;

use super::launch::{ceil, grid, int, long, rope_block, stride_grid, Layout};
use super::step_meta::{words_f32, MetaKey};
use super::weight::WeightData;
use super::{CudaBackend, CudaBuf, CudaWeight};
use crate::backend::{RopeArgs, ViewMut};

impl CudaBackend {
    /// Fills the whole buffer with NaN (how an op marks an output it cannot compute).
    pub(crate) fn fill_nan(&self, buf: &mut CudaBuf) {
        let n = buf.data.len();
        let (Some(nl), Some(g)) = (long(n), stride_grid(n)) else {
            return;
        };
        let nan = f32::NAN;
        let mut b = self.dev.stream.launch_builder(&self.dev.kernels.fill_f32);
        b.arg(&mut buf.data).arg(&nl).arg(&nan);
        // SAFETY: lpx_fill_f32(float*, long long, float) over the buffer's whole allocation
        // (n elements), grid-stride grid and block 256 as kernels/README.md gives.
        unsafe { self.run("fill_f32", b, Some(g), (256, 1, 1)) };
    }

    pub(crate) fn op_rms_norm(
        &self,
        x: &CudaBuf,
        w: &CudaBuf,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut CudaBuf,
    ) {
        let ok = matches!(rows.checked_mul(dim), Some(n) if n <= x.len() && n <= out.len());
        if !ok || w.len() < dim {
            return self.fill_nan(out);
        }
        if rows == 0 || dim == 0 {
            return;
        }
        let (Some(r), Some(d)) = (int(rows), int(dim)) else {
            return self.fill_nan(out);
        };
        let mut b = self.dev.stream.launch_builder(&self.dev.kernels.rms_norm);
        b.arg(&x.data).arg(&w.data).arg(&mut out.data);
        b.arg(&r).arg(&d).arg(&eps);
        // SAFETY: lpx_rms_norm(x, w, out, rows, dim, eps): x and out hold rows*dim values and w
        // dim (checked above); grid (rows), block 256.
        unsafe { self.run("rms_norm", b, grid(rows, 1, 1), (256, 1, 1)) };
    }

    pub(crate) fn op_head_rms_norm(
        &self,
        x: ViewMut<'_, CudaBuf>,
        w: &CudaBuf,
        n_heads: usize,
        head_dim: usize,
        eps: f32,
    ) {
        let l = Layout::of_mut(&x);
        if !l.fits_heads(n_heads, head_dim) || w.len() < head_dim {
            return self.fill_nan(x.buf);
        }
        if l.rows == 0 || n_heads == 0 || head_dim == 0 {
            return;
        }
        let (Some((r, s, c)), Some(nh), Some(hd)) = (l.ints(), int(n_heads), int(head_dim)) else {
            return self.fill_nan(x.buf);
        };
        let mut b = self
            .dev
            .stream
            .launch_builder(&self.dev.kernels.head_rms_norm);
        b.arg(&mut x.buf.data)
            .arg(&r)
            .arg(&s)
            .arg(&c)
            .arg(&nh)
            .arg(&hd);
        b.arg(&w.data).arg(&eps);
        // SAFETY: lpx_head_rms_norm(x, rows, stride, col, n_heads, head_dim, w, eps): the heads
        // fit the view and w holds head_dim values (checked above); grid (rows, n_heads),
        // block 128.
        unsafe { self.run("head_rms_norm", b, grid(l.rows, n_heads, 1), (128, 1, 1)) };
    }

    pub(crate) fn op_rope(&self, x: ViewMut<'_, CudaBuf>, a: &RopeArgs<'_>) {
        let l = Layout::of_mut(&x);
        let ok = l.fits_heads(a.n_heads, a.head_dim)
            && a.row_pos.len() >= l.rows
            && a.head_dim.is_multiple_of(2)
            && a.inv_freq.len() >= a.head_dim / 2;
        if !ok {
            return self.fill_nan(x.buf);
        }
        if l.rows == 0 || a.n_heads == 0 || a.head_dim == 0 {
            return;
        }
        let (Some((r, s, c)), Some(nh), Some(hd)) = (l.ints(), int(a.n_heads), int(a.head_dim))
        else {
            return self.fill_nan(x.buf);
        };
        let freq = words_f32(&a.inv_freq[..a.head_dim / 2]);
        let mut scratch = self.scratch.lock();
        let items = [
            (MetaKey::RopePos, &a.row_pos[..l.rows]),
            (MetaKey::InvFreq, &freq[..]),
        ];
        let Some([pos, inv]) = self.note("rope", scratch.meta.upload(&self.dev.stream, items))
        else {
            return self.fill_nan(x.buf);
        };
        let mut b = self.dev.stream.launch_builder(&self.dev.kernels.rope);
        b.arg(&mut x.buf.data)
            .arg(&r)
            .arg(&s)
            .arg(&c)
            .arg(&nh)
            .arg(&hd);
        b.arg(pos).arg(inv);
        let block = rope_block(a.head_dim);
        // SAFETY: lpx_rope(x, rows, stride, col, n_heads, head_dim, row_pos, inv_freq): the
        // heads fit the view, row_pos holds rows and inv_freq head_dim/2 values (checked and
        // uploaded above); grid (rows, n_heads), block min(128, head_dim/2) rounded up to 32.
        unsafe { self.run("rope", b, grid(l.rows, a.n_heads, 1), (block, 1, 1)) };
    }

    pub(crate) fn op_silu_mul(
        &self,
        gate_up: &CudaBuf,
        rows: usize,
        inter: usize,
        out: &mut CudaBuf,
    ) {
        let n = rows.checked_mul(inter);
        let ok = matches!(n, Some(n) if n <= out.len())
            && matches!(n.and_then(|n| n.checked_mul(2)), Some(n) if n <= gate_up.len());
        if !ok {
            return self.fill_nan(out);
        }
        if rows == 0 || inter == 0 {
            return;
        }
        let (Some(r), Some(i)) = (int(rows), int(inter)) else {
            return self.fill_nan(out);
        };
        let mut b = self.dev.stream.launch_builder(&self.dev.kernels.silu_mul);
        b.arg(&gate_up.data).arg(&mut out.data).arg(&r).arg(&i);
        // SAFETY: lpx_silu_mul(gu, out, rows, inter): gu holds rows*2*inter and out rows*inter
        // values (checked above); grid (ceil(inter/256), rows), block 256.
        unsafe { self.run("silu_mul", b, grid(ceil(inter, 256), rows, 1), (256, 1, 1)) };
    }

    pub(crate) fn op_add(&self, acc: &mut CudaBuf, x: &CudaBuf, len: usize) {
        if len > acc.len() || len > x.len() {
            return self.fill_nan(acc);
        }
        if len == 0 {
            return;
        }
        let Some(n) = long(len) else {
            return self.fill_nan(acc);
        };
        let mut b = self.dev.stream.launch_builder(&self.dev.kernels.add);
        b.arg(&mut acc.data).arg(&x.data).arg(&n);
        // SAFETY: lpx_add(acc, x, n): both hold at least n values (checked above); grid-stride
        // grid, block 256.
        unsafe { self.run("add", b, stride_grid(len), (256, 1, 1)) };
    }

    pub(crate) fn op_add_bias(&self, y: ViewMut<'_, CudaBuf>, bias: &CudaBuf, width: usize) {
        let l = Layout::of_mut(&y);
        if !l.fits(width) || bias.len() < width {
            return self.fill_nan(y.buf);
        }
        if l.rows == 0 || width == 0 {
            return;
        }
        let (Some((r, s, c)), Some(wd)) = (l.ints(), int(width)) else {
            return self.fill_nan(y.buf);
        };
        let mut b = self.dev.stream.launch_builder(&self.dev.kernels.add_bias);
        b.arg(&mut y.buf.data)
            .arg(&r)
            .arg(&s)
            .arg(&c)
            .arg(&bias.data)
            .arg(&wd);
        // SAFETY: lpx_add_bias(y, rows, stride, col, bias, width): the view fits with width
        // columns and bias holds width values (checked above); grid (ceil(width/256), rows),
        // block 256.
        unsafe {
            self.run(
                "add_bias",
                b,
                grid(ceil(width, 256), l.rows, 1),
                (256, 1, 1),
            )
        };
    }

    pub(crate) fn op_embedding(&self, table: &CudaWeight, ids: &[u32], out: &mut CudaBuf) {
        let hidden = table.inp;
        if !matches!(ids.len().checked_mul(hidden), Some(n) if n <= out.len()) {
            return self.fill_nan(out);
        }
        if ids.is_empty() || hidden == 0 {
            return;
        }
        let (Some(trows), Some(n), Some(h)) = (long(table.out), int(ids.len()), int(hidden)) else {
            return self.fill_nan(out);
        };
        let mut scratch = self.scratch.lock();
        let Some([dids]) = self.note(
            "embedding_gather",
            scratch.meta.upload(&self.dev.stream, [(MetaKey::Ids, ids)]),
        ) else {
            return self.fill_nan(out);
        };
        let (func, mut b) = match &table.data {
            WeightData::Bf16(t) => {
                let f = &self.dev.kernels.embedding_bf16;
                let mut b = self.dev.stream.launch_builder(f);
                b.arg(t);
                ("embedding_bf16", b)
            }
            WeightData::F32(t) => {
                let f = &self.dev.kernels.embedding_f32;
                let mut b = self.dev.stream.launch_builder(f);
                b.arg(t);
                ("embedding_f32", b)
            }
        };
        b.arg(&trows).arg(dids).arg(&mut out.data).arg(&n).arg(&h);
        // SAFETY: lpx_embedding_{bf16,f32}(table, table_rows, ids, out, n, hidden): the table
        // is [table_rows, hidden] of its type, ids holds n ids (uploaded above), out holds
        // n*hidden values (checked above); ids past the table give NaN rows in the kernel;
        // grid (ceil(hidden/256), n), block 256.
        unsafe { self.run(func, b, grid(ceil(hidden, 256), ids.len(), 1), (256, 1, 1)) };
    }

    pub(crate) fn op_gather_rows(&self, x: &CudaBuf, dim: usize, rows: &[u32], out: &mut CudaBuf) {
        if !matches!(rows.len().checked_mul(dim), Some(n) if n <= out.len()) {
            return self.fill_nan(out);
        }
        if dim == 0 || rows.is_empty() {
            return;
        }
        let (Some(d), Some(n), Some(xr)) = (int(dim), int(rows.len()), long(x.len() / dim)) else {
            return self.fill_nan(out);
        };
        let mut scratch = self.scratch.lock();
        let Some([drows]) = self.note(
            "gather_rows",
            scratch
                .meta
                .upload(&self.dev.stream, [(MetaKey::Rows, rows)]),
        ) else {
            return self.fill_nan(out);
        };
        let mut b = self
            .dev
            .stream
            .launch_builder(&self.dev.kernels.gather_rows);
        b.arg(&x.data)
            .arg(&d)
            .arg(drows)
            .arg(&mut out.data)
            .arg(&n)
            .arg(&xr);
        // SAFETY: lpx_gather_rows(x, dim, rows, out, n, x_rows): x holds x_rows*dim values,
        // rows n indices (uploaded above; indices >= x_rows give NaN rows in the kernel), out
        // n*dim values (checked above); grid (ceil(dim/256), n), block 256.
        unsafe {
            self.run(
                "gather_rows",
                b,
                grid(ceil(dim, 256), rows.len(), 1),
                (256, 1, 1),
            )
        };
    }
}
