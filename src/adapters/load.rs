//! The adapter loader entry point: format detection, safe file reading, dispatch to the format
//! readers, validation and the generation hash.
//!
//! Files are read only through [`read_adapter_file`], which refuses symlinks that resolve outside
//! the adapter directory and files over [`MAX_ADAPTER_FILE_BYTES`] (JSON configs over
//! [`MAX_CONFIG_BYTES`]). Everything here is synchronous and thread-safe (no shared state).

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::adapters::hf::{parse_hf, HfWeights};
use crate::adapters::nemo::parse_nemo;
use crate::adapters::normalize::{AdapterFormat, ModelShape, NormalizedAdapter};
use crate::adapters::snapshot::read_snapshot;
use crate::adapters::trtllm::{
    parse_trtllm, CONFIG_STEM as TRT_CONFIG, WEIGHTS_STEM as TRT_WEIGHTS,
};
use crate::adapters::validate::{validate, AdapterLimits};
use crate::error::{Error, Result};

/// Largest adapter weight file read (8 GiB: a rank-64 all-module f32 adapter of a 70B model is
/// about 1.7 GB).
pub const MAX_ADAPTER_FILE_BYTES: u64 = 8 << 30;
/// Largest `adapter_config.json` (or other `.json`) read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads `dir/file` after checking that it resolves (through any symlinks) to a regular file
/// inside `dir` and is no larger than the limit ([`MAX_CONFIG_BYTES`] for `*.json`, else
/// [`MAX_ADAPTER_FILE_BYTES`]). Errors: `IO` if missing/unreadable, `INVALID_ADAPTER` for an
/// escaping symlink, a non-file, or an oversized file (naming the file, its size and the limit).
pub fn read_adapter_file(dir: &Path, file: &str) -> Result<Vec<u8>> {
    let canon = checked_path(dir, file)?;
    let limit = if file.ends_with(".json") {
        MAX_CONFIG_BYTES
    } else {
        MAX_ADAPTER_FILE_BYTES
    };
    let path = dir.join(file);
    let meta = std::fs::metadata(&canon).map_err(|e| Error::io(&path, e))?;
    if meta.len() > limit {
        return Err(Error::invalid_adapter(format!(
            "{}: {} bytes exceeds the {limit}-byte limit for adapter files",
            path.display(),
            meta.len()
        )));
    }
    let f = std::fs::File::open(&canon).map_err(|e| Error::io(&path, e))?;
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(&path, e))?;
    if buf.len() as u64 > limit {
        return Err(Error::invalid_adapter(format!(
            "{}: grew past the {limit}-byte limit while being read",
            path.display()
        )));
    }
    Ok(buf)
}

/// The canonical path of `dir/file`, refusing anything that is not a regular file inside the
/// canonical `dir`.
fn checked_path(dir: &Path, file: &str) -> Result<PathBuf> {
    let cdir = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let path = dir.join(file);
    let canon = path.canonicalize().map_err(|e| Error::io(&path, e))?;
    if !canon.starts_with(&cdir) {
        return Err(Error::invalid_adapter(format!(
            "{}: symlink resolves to {}, outside the adapter directory {}; refused",
            path.display(),
            canon.display(),
            cdir.display()
        )));
    }
    if !canon.is_file() {
        return Err(Error::invalid_adapter(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    Ok(canon)
}

/// The generation id of an adapter: lower-case hex SHA-256 over the files read, sorted by name;
/// for each file the name, a 0 byte, its length as u64 LE, then its contents.
pub fn generation_of(files: &[(&str, &[u8])]) -> String {
    let mut sorted: Vec<&(&str, &[u8])> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    for (name, bytes) in sorted {
        h.update(name.as_bytes());
        h.update([0u8]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn list_names(dir: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut names = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, e))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// The adapter format of directory `dir`, with the file names that format reads.
///
/// * HF: `adapter_config.json` plus `adapter_model.safetensors` (preferred) or
///   `adapter_model.bin`;
/// * NeMo: exactly one `*.nemo` file (two or more is an error naming them);
/// * TensorRT-LLM: `model.lora_config.{npy,bin}` and `model.lora_weights.{npy,bin}` (config
///   first).
///
/// This is the one place adapter files are discovered; [`load_adapter`] reads exactly the files
/// returned here.
///
/// Errors (`INVALID_ADAPTER`): more than one format present, a partial HF or TRT-LLM set, both
/// the `.npy` and the `.bin` of one TRT-LLM file, or
/// nothing recognisable (naming the directory and what was looked for); `IO` if `dir` cannot be
/// listed.
pub fn detect_files(dir: &Path) -> Result<(AdapterFormat, Vec<String>)> {
    let names = list_names(dir)?;
    let has = |n: &str| names.iter().any(|x| x == n);
    let d = dir.display();
    let mut found: Vec<(AdapterFormat, Vec<String>)> = Vec::new();

    let hf_weights = if has("adapter_model.safetensors") {
        Some((AdapterFormat::HfSafetensors, "adapter_model.safetensors"))
    } else if has("adapter_model.bin") {
        Some((AdapterFormat::HfBin, "adapter_model.bin"))
    } else {
        None
    };
    match (has("adapter_config.json"), hf_weights) {
        (true, Some((f, w))) => found.push((f, vec!["adapter_config.json".into(), w.into()])),
        (true, None) => {
            return Err(Error::invalid_adapter(format!(
                "{d}: has adapter_config.json but neither adapter_model.safetensors nor \
                 adapter_model.bin"
            )))
        }
        (false, Some((_, w))) => {
            return Err(Error::invalid_adapter(format!(
                "{d}: has {w} but no adapter_config.json (required for HF PEFT adapters)"
            )))
        }
        (false, None) => {}
    }
    let nemos: Vec<&String> = names.iter().filter(|n| n.ends_with(".nemo")).collect();
    match nemos.as_slice() {
        [] => {}
        [one] => found.push((AdapterFormat::Nemo, vec![(*one).clone()])),
        many => {
            return Err(Error::invalid_adapter(format!(
                "{d}: holds {} .nemo files ({}); an adapter directory must hold exactly one",
                many.len(),
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }
    let trt = |stem: &str| -> Vec<String> {
        ["npy", "bin"]
            .iter()
            .map(|e| format!("{stem}.{e}"))
            .filter(|n| has(n))
            .collect()
    };
    let (tc, tw) = (trt(TRT_CONFIG), trt(TRT_WEIGHTS));
    for (stem, both) in [(TRT_CONFIG, &tc), (TRT_WEIGHTS, &tw)] {
        if both.len() > 1 {
            return Err(Error::invalid_adapter(format!(
                "{d}: both {stem}.npy and {stem}.bin are present; keep one"
            )));
        }
    }
    match (tc.is_empty(), tw.is_empty()) {
        (true, true) => {}
        (false, false) => found.push((AdapterFormat::TrtLlm, [tc, tw].concat())),
        (false, true) => {
            return Err(Error::invalid_adapter(format!(
                "{d}: has {} but no {TRT_WEIGHTS}.npy/.bin",
                tc.join(", ")
            )))
        }
        (true, false) => {
            return Err(Error::invalid_adapter(format!(
                "{d}: has {} but no {TRT_CONFIG}.npy/.bin",
                tw.join(", ")
            )))
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::invalid_adapter(format!(
            "{d}: no adapter found (looked for adapter_config.json + adapter_model.safetensors/\
             .bin, one *.nemo file, or {TRT_CONFIG}.npy/.bin + {TRT_WEIGHTS}.npy/.bin)"
        ))),
        _ => Err(Error::invalid_adapter(format!(
            "{d}: holds more than one adapter format ({}); keep exactly one",
            found
                .iter()
                .map(|(f, _)| f.name())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The adapter format of directory `dir` (see [`detect_files`] for the rules and errors).
pub fn detect_format(dir: &Path) -> Result<AdapterFormat> {
    detect_files(dir).map(|(f, _)| f)
}

/// Loads, normalises and validates the adapter in `dir`, named `name`.
///
/// Every file the format uses is read through [`read_adapter_file`] (symlink and size checks) as
/// one consistent snapshot ([`read_snapshot`]: a file changed while being read is read again,
/// never parsed torn) and hashed into `generation` ([`generation_of`]); the format's `parse_*` function
/// ([`parse_hf`], [`parse_nemo`], [`parse_trtllm`]) works on those bytes only. This is the one
/// way an adapter is read from disk. The result is checked with
/// [`validate`] against `shape` and `limits`; an adapter is either returned fully usable or
/// refused with an `INVALID_ADAPTER` (or `IO`) error naming what is wrong.
pub fn load_adapter(
    dir: &Path,
    name: &str,
    shape: &ModelShape,
    limits: &AdapterLimits,
) -> Result<NormalizedAdapter> {
    let snapshot = read_snapshot(dir, name)?;
    let generation = snapshot.content_hash();
    let format = snapshot.format;
    let contents: Vec<(&str, &[u8])> = snapshot
        .files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let mut adapter = match format {
        AdapterFormat::HfSafetensors | AdapterFormat::HfBin => {
            let (cfg, w) = match contents.as_slice() {
                [(_, c), (_, w)] => (*c, *w),
                _ => {
                    return Err(Error::internal(
                        "HF adapter file list is not [config, weights]",
                    ))
                }
            };
            let weights = if format == AdapterFormat::HfSafetensors {
                HfWeights::Safetensors(w)
            } else {
                HfWeights::Bin(w)
            };
            parse_hf(name, dir, cfg, weights, shape)?
        }
        // The readers parse the bytes read (and hashed) above: each file is read once.
        AdapterFormat::Nemo => {
            let [(file, bytes)] = contents.as_slice() else {
                return Err(Error::internal(
                    "NeMo adapter file list is not one .nemo file",
                ));
            };
            parse_nemo(dir, &dir.join(file), bytes, name, shape)
                .map_err(|e| e.context(format!("adapter '{name}'")))?
        }
        AdapterFormat::TrtLlm => {
            let [(cfg, cfg_bytes), (weights, w_bytes)] = contents.as_slice() else {
                return Err(Error::internal(
                    "TensorRT-LLM adapter file list is not [config, weights]",
                ));
            };
            parse_trtllm(dir, name, shape, (*cfg, *cfg_bytes), (*weights, *w_bytes))
                .map_err(|e| e.context(format!("adapter '{name}'")))?
        }
    };
    validate(&adapter, shape, limits)?;
    adapter.generation = generation;
    adapter.name = name.to_owned();
    adapter.format = format;
    adapter.source = dir.to_path_buf();
    Ok(adapter)
}
