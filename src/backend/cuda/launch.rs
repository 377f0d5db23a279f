//! Launch geometry and argument conversions shared by the CUDA ops, and the host-side layout
//! checks the ops run before launching (the CPU backend's checks, on a device buffer's length).

use super::buffer::CudaBuf;
use crate::backend::view::layout_fits;
use crate::backend::{View, ViewMut};

/// A grid or block: `(x, y, z)`.
pub(crate) type Dim3 = (u32, u32, u32);

/// The largest grid `y` / `z` dimension.
const MAX_GRID_YZ: usize = 65535;

/// `ceil(a / b)` for `b > 0`.
pub(crate) fn ceil(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// `v` as a kernel `int`, when it fits.
pub(crate) fn int(v: usize) -> Option<i32> {
    i32::try_from(v).ok()
}

/// `v` as a kernel `long long`, when it fits.
pub(crate) fn long(v: usize) -> Option<i64> {
    i64::try_from(v).ok()
}

/// A grid, when every dimension is within the device limits (`x < 2^31`, `y, z <= 65535`) and
/// none is zero.
pub(crate) fn grid(x: usize, y: usize, z: usize) -> Option<Dim3> {
    let ok = (1..=i32::MAX as usize).contains(&x)
        && (1..=MAX_GRID_YZ).contains(&y)
        && (1..=MAX_GRID_YZ).contains(&z);
    ok.then_some((x as u32, y as u32, z as u32))
}

/// The grid of the grid-stride kernels (`lpx_add`, `lpx_fill_f32`): `min(ceil(n/256), 65535)`.
pub(crate) fn stride_grid(n: usize) -> Option<Dim3> {
    grid(ceil(n, 256).clamp(1, MAX_GRID_YZ), 1, 1)
}

/// The layout of a view over a device buffer: `(rows, stride, col)` over `len` values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub len: usize,
    pub rows: usize,
    pub stride: usize,
    pub col: usize,
}

impl Layout {
    pub(crate) fn of(v: &View<'_, CudaBuf>) -> Self {
        Self {
            len: v.buf.len(),
            rows: v.rows,
            stride: v.stride,
            col: v.col,
        }
    }

    pub(crate) fn of_mut(v: &ViewMut<'_, CudaBuf>) -> Self {
        Self {
            len: v.buf.len(),
            rows: v.rows,
            stride: v.stride,
            col: v.col,
        }
    }

    /// See [`View::fits`](crate::backend::View).
    pub(crate) fn fits(&self, width: usize) -> bool {
        layout_fits(self.len, self.rows, self.stride, self.col, width)
    }

    /// `n_heads * head_dim` columns fit.
    pub(crate) fn fits_heads(&self, n_heads: usize, head_dim: usize) -> bool {
        matches!(n_heads.checked_mul(head_dim), Some(w) if self.fits(w))
    }

    /// True when row `t`'s columns `col..col + width` lie inside the buffer.
    pub(crate) fn row_inside(&self, t: usize, width: usize) -> bool {
        t.checked_mul(self.stride)
            .and_then(|s| s.checked_add(self.col))
            .and_then(|s| s.checked_add(width))
            .is_some_and(|end| end <= self.len)
    }

    /// `(rows, stride, col)` as kernel ints.
    pub(crate) fn ints(&self) -> Option<(i32, i32, i32)> {
        Some((int(self.rows)?, int(self.stride)?, int(self.col)?))
    }
}

/// The block of `lpx_rope`: `min(128, head_dim / 2)` rounded up to a multiple of 32.
pub(crate) fn rope_block(head_dim: usize) -> u32 {
    ((head_dim / 2).clamp(1, 128).div_ceil(32) * 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_respect_device_limits() {
        assert_eq!(grid(3, 65535, 1), Some((3, 65535, 1)));
        assert_eq!(grid(3, 65536, 1), None);
        assert_eq!(grid(0, 1, 1), None);
        assert_eq!(stride_grid(1), Some((1, 1, 1)));
        assert_eq!(stride_grid(257), Some((2, 1, 1)));
        assert_eq!(stride_grid(1 << 40), Some((65535, 1, 1)));
    }

    #[test]
    fn rope_blocks_are_warp_multiples_up_to_128() {
        assert_eq!(rope_block(64), 32);
        assert_eq!(rope_block(80), 64);
        assert_eq!(rope_block(128), 64);
        assert_eq!(rope_block(256), 128);
        assert_eq!(rope_block(512), 128);
    }

    #[test]
    fn rows_inside_check_each_rows_end() {
        let l = Layout {
            len: 10,
            rows: 3,
            stride: 4,
            col: 1,
        };
        assert!(l.row_inside(1, 3));
        assert!(!l.row_inside(2, 3));
        assert!(!l.fits(3));
    }
}
