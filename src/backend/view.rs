//! Strided row views: how an op sees part of a buffer.
//!
//! Activations are row-major `[rows, stride]` matrices, and several ops read or write a column
//! range of each row (Q, K and V inside the fused QKV row, gate and up inside the fused MLP row).
//! A [`View`] (read) or [`ViewMut`] (write) names the buffer, the number of rows, the row stride
//! and the first column; the op knows the width (a head count times the head size, a LoRA
//! target's `in` or `out`). Element `j` of row `t` is `buf[t * stride + col + j]`.
//!
//! Views borrow their buffer for the duration of one op call; they carry no ownership.

/// A read-only strided view of `rows` rows of a buffer (see the module docs).
#[derive(Debug)]
pub struct View<'a, B: ?Sized> {
    /// The buffer.
    pub buf: &'a B,
    /// Rows the op processes.
    pub rows: usize,
    /// Elements from the start of one row to the next.
    pub stride: usize,
    /// First column of the view in each row.
    pub col: usize,
}

impl<B: ?Sized> Clone for View<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: ?Sized> Copy for View<'_, B> {}

/// A writable strided view of `rows` rows of a buffer (see the module docs).
#[derive(Debug)]
pub struct ViewMut<'a, B: ?Sized> {
    /// The buffer.
    pub buf: &'a mut B,
    /// Rows the op processes.
    pub rows: usize,
    /// Elements from the start of one row to the next.
    pub stride: usize,
    /// First column of the view in each row.
    pub col: usize,
}

/// True when `rows` rows of `stride` elements fit in `len` and `col + width <= stride`
/// (checked arithmetic: an overflowing layout does not fit).
pub(crate) fn layout_fits(
    len: usize,
    rows: usize,
    stride: usize,
    col: usize,
    width: usize,
) -> bool {
    matches!(col.checked_add(width), Some(e) if e <= stride)
        && matches!(rows.checked_mul(stride), Some(n) if n <= len)
}

impl<'a, B: ?Sized> View<'a, B> {
    /// A view of `rows` rows of `buf`, `stride` apart, starting at column `col`.
    pub fn new(buf: &'a B, rows: usize, stride: usize, col: usize) -> Self {
        Self {
            buf,
            rows,
            stride,
            col,
        }
    }

    /// The same rows, stride and column over `f(buf)` (a backend unwrapping its buffer type,
    /// e.g. from an enum).
    pub fn map<C: ?Sized>(self, f: impl FnOnce(&'a B) -> &'a C) -> View<'a, C> {
        View::new(f(self.buf), self.rows, self.stride, self.col)
    }
}

impl<'a, B: ?Sized> ViewMut<'a, B> {
    /// A view of `rows` rows of `buf`, `stride` apart, starting at column `col`.
    pub fn new(buf: &'a mut B, rows: usize, stride: usize, col: usize) -> Self {
        Self {
            buf,
            rows,
            stride,
            col,
        }
    }

    /// The same rows, stride and column over `f(buf)` (see [`View::map`]).
    pub fn map<C: ?Sized>(self, f: impl FnOnce(&'a mut B) -> &'a mut C) -> ViewMut<'a, C> {
        ViewMut::new(f(self.buf), self.rows, self.stride, self.col)
    }
}

impl<'a> View<'a, Vec<f32>> {
    /// The view over the vector's slice.
    pub fn slice(self) -> View<'a, [f32]> {
        self.map(|v| v.as_slice())
    }
}

impl<'a> ViewMut<'a, Vec<f32>> {
    /// The view over the vector's slice.
    pub fn slice(self) -> ViewMut<'a, [f32]> {
        self.map(|v| v.as_mut_slice())
    }
}

impl<'a> View<'a, [f32]> {
    /// True when every row's columns `col..col + width` lie inside its stride and all `rows`
    /// rows lie inside the buffer.
    pub fn fits(&self, width: usize) -> bool {
        layout_fits(self.buf.len(), self.rows, self.stride, self.col, width)
    }

    /// Columns `col..col + width` of row `t`, or `None` when they fall outside the buffer.
    pub fn row(&self, t: usize, width: usize) -> Option<&'a [f32]> {
        let start = t.checked_mul(self.stride)?.checked_add(self.col)?;
        self.buf.get(start..start.checked_add(width)?)
    }
}

impl ViewMut<'_, [f32]> {
    /// See [`View::fits`].
    pub fn fits(&self, width: usize) -> bool {
        layout_fits(self.buf.len(), self.rows, self.stride, self.col, width)
    }

    /// Columns `col..col + width` of row `t`, or `None` when they fall outside the buffer.
    pub fn row_mut(&mut self, t: usize, width: usize) -> Option<&mut [f32]> {
        let start = t.checked_mul(self.stride)?.checked_add(self.col)?;
        self.buf.get_mut(start..start.checked_add(width)?)
    }
}
