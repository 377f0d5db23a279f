//! Device activation buffers: f32 arrays in device memory.

use cudarc::driver::CudaSlice;

/// An f32 activation buffer in device memory (the CUDA backend's [`crate::backend::Backend::Buf`]).
/// Owns its allocation, which is freed in stream order on the compute stream when dropped.
/// `len` is the logical length; a zero-length buffer still holds one element so that it has
/// a valid device pointer.
#[derive(Debug)]
pub struct CudaBuf {
    pub(crate) data: CudaSlice<f32>,
    len: usize,
}

impl CudaBuf {
    /// Wraps `data`, of which the first `len` values are the buffer.
    pub(crate) fn new(data: CudaSlice<f32>, len: usize) -> Self {
        Self { data, len }
    }

    /// f32 values the buffer holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer holds no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
