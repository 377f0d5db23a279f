//! Checked reading of an untrusted adapter safetensors file (adapter-formats.md 1.1): the
//! crate's one checked safetensors reader ([`crate::tensor::safetensors_file`]) with adapter
//! error codes. Thread-safety: pure function.

use crate::error::{ErrorCode, Result};
use crate::tensor::HostTensor;

pub use crate::tensor::safetensors_file::MAX_HEADER_BYTES;

/// Reads every tensor of a safetensors file, sorted by key. `what` names the file in errors
/// (all `INVALID_ADAPTER`; see [`crate::tensor::safetensors_file::read_safetensors`] for the
/// checks). Never panics on any input.
pub fn read_safetensors(bytes: &[u8], what: &str) -> Result<Vec<(String, HostTensor)>> {
    crate::tensor::safetensors_file::read_safetensors(bytes, what, ErrorCode::InvalidAdapter)
}
