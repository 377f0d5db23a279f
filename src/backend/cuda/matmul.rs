//! `matmul` (kernels/README.md, matmul.cu): bf16 weights through the tensor-core kernels
//! (`lpx_gemv_bf16` for up to [`GEMV_MAX_ROWS`] rows, `lpx_gemm_bf16` above, bitwise the same
//! per element), f32 weights through `lpx_gemm_f32`.

use cudarc::driver::PushKernelArg;

use super::launch::{ceil, grid, int, Dim3};
use super::weight::WeightData;
use super::{CudaBackend, CudaBuf, CudaWeight};
use crate::backend::reference::matmul_shapes_ok;

/// The most rows `lpx_gemv_bf16` takes.
pub(crate) const GEMV_MAX_ROWS: usize = 8;

/// The kernel `matmul` launches for `rows` rows of a weight of this kind, its grid and block.
pub(crate) fn plan(bf16: bool, rows: usize, out: usize) -> (&'static str, Option<Dim3>, Dim3) {
    if !bf16 {
        (
            "gemm_f32",
            grid(ceil(out, 64), ceil(rows, 64), 1),
            (16, 16, 1),
        )
    } else if rows <= GEMV_MAX_ROWS {
        ("gemv_bf16", grid(ceil(out, 64), 1, 1), (128, 1, 1))
    } else {
        (
            "gemm_bf16",
            grid(ceil(out, 64), ceil(rows, 64), 1),
            (128, 1, 1),
        )
    }
}

impl CudaBackend {
    pub(crate) fn op_matmul(&self, x: &CudaBuf, rows: usize, w: &CudaWeight, y: &mut CudaBuf) {
        let (out, inp) = (w.out, w.inp);
        if !matmul_shapes_ok(x.len(), y.len(), rows, out, inp) {
            return self.fill_nan(y);
        }
        if rows == 0 {
            return;
        }
        let (Some(r), Some(o), Some(i)) = (int(rows), int(out), int(inp)) else {
            return self.fill_nan(y);
        };
        let k = &self.dev.kernels;
        let (name, g, block) = plan(matches!(w.data, WeightData::Bf16(_)), rows, out);
        let func = match name {
            "gemv_bf16" => &k.gemv_bf16,
            "gemm_bf16" => &k.gemm_bf16,
            _ => &k.gemm_f32,
        };
        let mut b = self.dev.stream.launch_builder(func);
        b.arg(&x.data);
        match &w.data {
            WeightData::Bf16(d) => b.arg(d),
            WeightData::F32(d) => b.arg(d),
        };
        b.arg(&mut y.data).arg(&r).arg(&o).arg(&i);
        // SAFETY: lpx_{gemv_bf16,gemm_bf16,gemm_f32}(x, w, y, rows, out, in): x holds rows*in
        // and y rows*out values (checked above), w is [out, in] of the kernel's type; grid and
        // block as kernels/README.md gives for the kernel (see `plan`).
        unsafe { self.run(name, b, g, block) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_uses_gemv_up_to_8_rows_then_gemm() {
        assert_eq!(
            plan(true, 1, 4096),
            ("gemv_bf16", Some((64, 1, 1)), (128, 1, 1))
        );
        assert_eq!(plan(true, 8, 100).0, "gemv_bf16");
        assert_eq!(
            plan(true, 9, 100),
            ("gemm_bf16", Some((2, 1, 1)), (128, 1, 1))
        );
        assert_eq!(plan(true, 2048, 4096).1, Some((64, 32, 1)));
        assert_eq!(plan(false, 3, 65).0, "gemm_f32");
        assert_eq!(plan(false, 3, 65).1, Some((2, 1, 1)));
    }
}
