//! GGUF reader.
use super::ModelFiles;
use crate::error::{Error, Result};
use std::path::Path;
/// Loads a GGUF model file.
pub fn load_gguf(path: &Path) -> Result<ModelFiles> {
    Err(Error::unsupported(format!(
        "{}: GGUF loading not implemented yet",
        path.display()
    )))
}
