//! safetensors loading.
use super::ModelFiles;
use crate::error::{Error, Result};
use std::path::Path;
/// Loads a HuggingFace model directory.
pub fn load_hf_dir(path: &Path) -> Result<ModelFiles> {
    Err(Error::unsupported(format!(
        "{}: not implemented yet",
        path.display()
    )))
}
