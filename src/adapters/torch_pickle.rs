//! Safe reader for `torch.save` zip checkpoints (`adapter_model.bin`, NeMo `model_weights.ckpt`),
//! adapter-formats.md section 2.
//!
//! Nothing in the file is ever executed: the pickle is interpreted by a small VM ([`read_pickle`])
//! that only knows a whitelist of globals. The zip container is read with the `zip` crate; each
//! member's declared uncompressed size is checked against a bound relative to the archive size
//! (zip-bomb guard) and reads are capped with `take()`. TorchScript archives, legacy (pre-1.6)
//! pickle-stream files and storage types other than float/half/bfloat16 tensors are refused.
//!
//! Thread-safety: pure functions over borrowed bytes; callable from any thread.

mod vm;

use std::collections::HashMap;
use std::io::{Cursor, Read};

pub use vm::{Global, PickleValue, StorageDType, StorageRef, TensorRef, MAX_DEPTH};

use crate::error::{Error, Result};
use crate::tensor::decode::decode_le;
use crate::tensor::{checked_numel, DType, HostTensor};

/// Each zip member read may declare at most this many times the archive's size (stored torch
/// members are never larger than the archive; deflated ones rarely exceed 10x).
pub const MAX_EXPANSION: u64 = 16;
/// Fixed allowance added to the expansion bound, for tiny archives.
const EXPANSION_SLACK: u64 = 1 << 20;

/// Parses a pickle (protocol 2–5) into a [`PickleValue`] without executing anything.
///
/// `what` names the file in errors. Any global outside the whitelist (see [`Global`]) is an
/// `INVALID_ADAPTER` error naming `module.name`; so are unsupported opcodes, truncated operands,
/// lengths that exceed the remaining input, and stack/memo/nesting beyond fixed bounds.
pub fn read_pickle(bytes: &[u8], what: &str) -> Result<PickleValue> {
    vm::run(bytes, what)
}

/// Reads a torch zip checkpoint and returns the tensors of its state dict in file order.
///
/// The pickle's root must be a dict (plain or `OrderedDict`). Keys are the dict's string keys;
/// nested dicts (e.g. `{"state_dict": {...}}` or NeMo's `model_0`) are flattened with `.`-joined
/// keys. Non-tensor leaves (ints, floats, strings, None, lists) are skipped. Tensors are returned
/// dense and row-major in their storage dtype (f32, f16 or bf16); views with arbitrary non-negative
/// strides are gathered element by element after checking that every element lies inside the
/// storage. `what` names the file in errors (all `INVALID_ADAPTER`).
///
/// Refused: non-zip input (legacy torch format, tar), TorchScript archives (`constants.pkl` /
/// `code/` members), archives without exactly one `data.pkl`, members whose declared size exceeds
/// [`MAX_EXPANSION`] times the archive, big-endian storages of odd sizes, storages shorter than
/// their declared element count, tensors reaching outside their storage, dtypes other than
/// f32/f16/bf16, and output totalling more than four times the archive size.
pub fn read_torch_zip(bytes: &[u8], what: &str) -> Result<Vec<(String, HostTensor)>> {
    if !bytes.starts_with(b"PK\x03\x04") {
        let kind = if bytes.first() == Some(&0x80) {
            "a legacy (pre-torch-1.6) pickle-stream checkpoint; re-save it with torch>=1.6"
        } else {
            "not a zip archive"
        };
        return Err(Error::invalid_adapter(format!(
            "{what}: not a torch zip checkpoint ({kind})"
        )));
    }
    let zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| Error::invalid_adapter(format!("{what}: invalid zip archive: {e}")))?;
    let names: Vec<String> = zip.file_names().map(str::to_owned).collect();
    if let Some(n) = names
        .iter()
        .find(|n| n.ends_with("constants.pkl") || n.starts_with("code/") || n.contains("/code/"))
    {
        return Err(Error::invalid_adapter(format!(
            "{what}: is a TorchScript archive (contains '{n}'); only torch.save state dicts are \
             accepted"
        )));
    }
    let pkls: Vec<&String> = names
        .iter()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .collect();
    let pkl_name = match pkls.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(Error::invalid_adapter(format!(
                "{what}: zip archive has no data.pkl record (not a torch checkpoint)"
            )))
        }
        many => {
            return Err(Error::invalid_adapter(format!(
                "{what}: zip archive has {} data.pkl records ({}); expected one",
                many.len(),
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_owned();
    let mut reader = ZipReader {
        zip,
        what,
        limit: (bytes.len() as u64)
            .saturating_mul(MAX_EXPANSION)
            .saturating_add(EXPANSION_SLACK),
        archive_len: bytes.len() as u64,
    };
    let big_endian = match reader.read_optional(&format!("{prefix}byteorder"))? {
        None => false,
        Some(b) => match b.as_slice() {
            b"little" => false,
            b"big" => true,
            other => {
                return Err(Error::invalid_adapter(format!(
                    "{what}: byteorder record is '{}', expected 'little' or 'big'",
                    String::from_utf8_lossy(other)
                )))
            }
        },
    };
    let pkl = reader.read(&pkl_name)?;
    let root = read_pickle(&pkl, what)?;
    let mut leaves = Vec::new();
    flatten(root, String::new(), &mut leaves, what, 0)?;

    let out_budget = (bytes.len() as u64)
        .saturating_mul(4)
        .saturating_add(1 << 16);
    let mut out_bytes = 0u64;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(leaves.len());
    for (key, t) in leaves {
        if !storages.contains_key(&t.storage.key) {
            let data = reader.read(&format!("{prefix}data/{}", t.storage.key))?;
            storages.insert(t.storage.key.clone(), data);
        }
        let raw = storages
            .get(&t.storage.key)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let tensor = materialize(&key, &t, raw, big_endian, what)?;
        out_bytes = out_bytes.saturating_add((tensor.numel() * t.storage.dtype.size()) as u64);
        if out_bytes > out_budget {
            return Err(Error::invalid_adapter(format!(
                "{what}: tensors expand to more than {out_budget} bytes (4x the archive); refused"
            )));
        }
        out.push((key, tensor));
    }
    Ok(out)
}

struct ZipReader<'a> {
    zip: zip::ZipArchive<Cursor<&'a [u8]>>,
    what: &'a str,
    limit: u64,
    archive_len: u64,
}

impl ZipReader<'_> {
    fn read_optional(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
        if self.zip.index_for_name(name).is_none() {
            return Ok(None);
        }
        self.read(name).map(Some)
    }

    fn read(&mut self, name: &str) -> Result<Vec<u8>> {
        let what = self.what;
        let mut f = self.zip.by_name(name).map_err(|e| {
            Error::invalid_adapter(format!("{what}: cannot open zip record '{name}': {e}"))
        })?;
        let declared = f.size();
        if declared > self.limit {
            return Err(Error::invalid_adapter(format!(
                "{what}: zip record '{name}' declares {declared} bytes uncompressed, more than \
                 {} ({MAX_EXPANSION}x the archive): refused as a zip bomb",
                self.limit
            )));
        }
        // Reserve no more than the archive itself holds; a member that really expands grows the
        // buffer as it is read, up to `declared + 1` bytes.
        let mut buf = Vec::with_capacity(declared.min(self.archive_len) as usize);
        (&mut f)
            .take(declared.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| {
                Error::invalid_adapter(format!("{what}: cannot read zip record '{name}': {e}"))
            })?;
        if buf.len() as u64 != declared {
            return Err(Error::invalid_adapter(format!(
                "{what}: zip record '{name}' declares {declared} bytes but holds {}",
                buf.len()
            )));
        }
        Ok(buf)
    }
}

fn flatten(
    v: PickleValue,
    prefix: String,
    out: &mut Vec<(String, TensorRef)>,
    what: &str,
    depth: usize,
) -> Result<()> {
    let PickleValue::Dict(items) = v else {
        return Err(Error::invalid_adapter(format!(
            "{what}: pickle root is a {}, expected a state dict",
            v.kind()
        )));
    };
    for (k, v) in items {
        let key = match k {
            PickleValue::Str(s) => s,
            PickleValue::Int(i) => i.to_string(),
            o => {
                return Err(Error::invalid_adapter(format!(
                    "{what}: state dict key under '{prefix}' is a {}",
                    o.kind()
                )))
            }
        };
        let full = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        match v {
            PickleValue::Tensor(t) => out.push((full, t)),
            PickleValue::Dict(_) if depth < MAX_DEPTH => flatten(v, full, out, what, depth + 1)?,
            PickleValue::Storage(_) => {
                return Err(Error::invalid_adapter(format!(
                    "{what}: '{full}' is a bare storage, not a tensor"
                )))
            }
            _ => {} // scalars, strings, lists: metadata, not tensors
        }
    }
    Ok(())
}

fn materialize(
    key: &str,
    t: &TensorRef,
    raw: &[u8],
    big_endian: bool,
    what: &str,
) -> Result<HostTensor> {
    let bad = |msg: String| Error::invalid_adapter(format!("{what}: tensor '{key}': {msg}"));
    let s = &t.storage;
    let dtype = match s.dtype {
        StorageDType::F32 => DType::F32,
        StorageDType::F16 => DType::F16,
        StorageDType::BF16 => DType::BF16,
        other => {
            return Err(bad(format!(
                "dtype torch.{} is not supported (only float32, float16, bfloat16)",
                other.torch_name()
            )))
        }
    };
    let es = dtype.size();
    let need = s
        .numel
        .checked_mul(es)
        .ok_or_else(|| bad(format!("storage numel {} overflows", s.numel)))?;
    if raw.len() < need {
        return Err(bad(format!(
            "storage '{}' declares {} elements ({need} bytes) but its record holds {} bytes",
            s.key,
            s.numel,
            raw.len()
        )));
    }
    let numel =
        checked_numel(&t.size).ok_or_else(|| bad(format!("size {:?} overflows", t.size)))?;
    if numel > 0 {
        // Largest element index reached: offset + sum((size_i - 1) * stride_i).
        let mut last = t.offset;
        for (&d, &st) in t.size.iter().zip(&t.stride) {
            last = (d - 1)
                .checked_mul(st)
                .and_then(|x| last.checked_add(x))
                .ok_or_else(|| bad("stride arithmetic overflows".into()))?;
        }
        if last >= s.numel {
            return Err(bad(format!(
                "view (offset {}, size {:?}, stride {:?}) reaches element {last} of a storage \
                 with {} elements",
                t.offset, t.size, t.stride, s.numel
            )));
        }
        if numel > s.numel {
            return Err(bad(format!(
                "view of {numel} elements repeats elements of a {}-element storage",
                s.numel
            )));
        }
    }
    // Gather the view's elements in row-major order as little-endian bytes (every index was
    // bounds-checked above), then decode them with the crate's one decoder.
    let mut le = Vec::with_capacity(numel * es);
    for i in element_indices(t, numel) {
        let at = le.len();
        le.extend_from_slice(&raw[i * es..i * es + es]);
        if big_endian {
            le[at..].reverse();
        }
    }
    let data = decode_le(dtype, &le).map_err(|e| bad(e.to_string()))?;
    Ok(HostTensor {
        shape: t.size.clone(),
        data,
    })
}

/// Storage element index of each tensor element in row-major order. All indices were bounds
/// checked by the caller (`last < storage numel`).
fn element_indices(t: &TensorRef, numel: usize) -> impl Iterator<Item = usize> + '_ {
    let mut counter = vec![0usize; t.size.len()];
    let mut cur = t.offset;
    (0..numel).map(move |n| {
        if n > 0 {
            // Increment the multi-index, innermost first.
            for d in (0..counter.len()).rev() {
                counter[d] += 1;
                cur = cur.wrapping_add(t.stride[d]);
                if counter[d] < t.size[d] {
                    break;
                }
                cur = cur.wrapping_sub(t.stride[d].wrapping_mul(t.size[d]));
                counter[d] = 0;
            }
        }
        cur
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_and_strides() {
        let t = TensorRef {
            storage: StorageRef {
                dtype: StorageDType::F32,
                key: "0".into(),
                numel: 6,
            },
            offset: 0,
            size: vec![3, 2],
            stride: vec![1, 3],
        };
        let v: Vec<usize> = element_indices(&t, 6).collect();
        assert_eq!(v, vec![0, 3, 1, 4, 2, 5]);
    }
}
