//! HuggingFace model directories: `config.json`, single or sharded safetensors (memory-mapped;
//! F32/F16/BF16), tokenizer files.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{ModelConfig, ModelFiles, TensorMap};
use crate::error::{Error, ErrorCode, Result};
use crate::tensor::safetensors_file::read_safetensors;
use crate::tokenizer::Tokenizer;

/// Loads `dir/config.json`, the safetensors weights and the tokenizer.
pub fn load_hf_dir(dir: &Path) -> Result<ModelFiles> {
    let config = ModelConfig::from_hf_dir(dir)?;
    let mut tensors = TensorMap::new();
    for file in safetensors_files(dir)? {
        let mut shard = TensorMap::new();
        read_safetensors_into(&file, &mut shard)?;
        for (name, t) in shard {
            // Two shards holding one name would leave the loaded value to file order.
            if tensors.contains_key(&name) {
                return Err(Error::invalid_model(format!(
                    "{}: tensor \"{name}\" is also in another shard",
                    file.display()
                )));
            }
            tensors.insert(name, t);
        }
    }
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    Ok(ModelFiles {
        config,
        tensors,
        tokenizer,
    })
}

/// The weight files of a directory: the shards named by `model.safetensors.index.json` (sorted,
/// deduplicated) or `model.safetensors`.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::invalid_model(format!("{}: invalid JSON: {e}", index.display())))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                Error::invalid_model(format!(
                    "{}: missing \"weight_map\" object",
                    index.display()
                ))
            })?;
        let mut shards = BTreeSet::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| {
                Error::invalid_model(format!(
                    "{}: weight_map[\"{tensor}\"] is not a file name",
                    index.display()
                ))
            })?;
            if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
                return Err(Error::invalid_model(format!(
                    "{}: shard name \"{shard}\" must be a plain file name",
                    index.display()
                )));
            }
            shards.insert(dir.join(shard));
        }
        return Ok(shards.into_iter().collect());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(Error::invalid_model(format!(
        "{}: no model.safetensors or model.safetensors.index.json",
        dir.display()
    )))
}

/// Reads every tensor of one safetensors file (memory-mapped) into `out` as F32/F16/BF16,
/// through the crate's one checked safetensors reader (errors `INVALID_MODEL`, naming the file
/// and tensor).
pub fn read_safetensors_into(path: &Path, out: &mut TensorMap) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // The map is read-only and private; the file may change underneath only if another process
    // rewrites it, in which case the reader's bounds checks still hold on the mapped length.
    let mmap = map_file(&file, path)?;
    let tensors = read_safetensors(&mmap, &path.display().to_string(), ErrorCode::InvalidModel)?;
    for (name, tensor) in tensors {
        out.insert(name, tensor);
    }
    Ok(())
}

#[allow(unsafe_code)]
fn map_file(file: &File, path: &Path) -> Result<memmap2::Mmap> {
    // SAFETY: the mapping is read-only; loraplex never writes model files and copies every tensor
    // out before the map is dropped. Truncation by another process during load is the one hazard
    // memmap2 cannot exclude; model files are expected to be immutable while loading.
    unsafe { memmap2::Mmap::map(file) }.map_err(|e| Error::io(path, e))
}
