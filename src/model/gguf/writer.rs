//! Writing GGUF v3 files: metadata and tensors (dense or ggml blocks), in the layout
//! [`super::reader::GgufFile`] and llama.cpp read.
//!
//! Used by the quantizer example (`examples/quantize.rs`) to re-quantize a model file; tensors
//! are written in the order added, keys sorted (the output is a pure function of the input).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::reader::MetaValue;
use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// Data alignment written to `general.alignment` (ggml's default).
const ALIGNMENT: u64 = 32;

/// One tensor to write.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    bytes: Vec<u8>,
}

/// A GGUF file being assembled in memory. Owns the tensor bytes until [`GgufWriter::write`].
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<Entry>,
}

/// The GGUF value type id of `v` (arrays: 9).
fn type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends the encoding of `v` (without its type id). Errors for an array whose elements differ
/// in type (GGUF arrays are homogeneous).
fn put_value(out: &mut Vec<u8>, v: &MetaValue, key: &str) -> Result<()> {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Array(items) => {
            // An empty array keeps a string element type (what llama.cpp's writers use for
            // empty token lists).
            let elem = items.first().map_or(8, type_id);
            if items.iter().any(|i| type_id(i) != elem) {
                return Err(Error::invalid_argument(format!(
                    "metadata \"{key}\": array elements differ in type"
                )));
            }
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i, key)?;
            }
        }
    }
    Ok(())
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets metadata `key` (replacing an earlier value). `general.alignment` is always written
    /// as 32 by [`GgufWriter::write`]; a value set here is replaced.
    pub fn set(&mut self, key: &str, value: MetaValue) {
        self.metadata.insert(key.to_string(), value);
    }

    /// Adds a tensor with ggml-order `dims` (innermost first: `[in, out]` for a Linear weight)
    /// holding `bytes` of type `ty`.
    ///
    /// Errors (INVALID_ARGUMENT, naming the tensor): a repeated name, no dims, an innermost
    /// dimension that is not a whole number of blocks, or `bytes` not exactly the data of `dims`.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        bytes: Vec<u8>,
    ) -> Result<()> {
        let err = |m: String| Error::invalid_argument(format!("tensor \"{name}\": {m}"));
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(err("added twice".into()));
        }
        let Some(&inner) = dims.first() else {
            return Err(err("no dimensions".into()));
        };
        if inner % ty.block_size() != 0 {
            return Err(err(format!(
                "{inner} columns are not a whole number of {}-element {ty} blocks",
                ty.block_size()
            )));
        }
        let n = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| err(format!("dims {dims:?} overflow")))?;
        let need = (n / ty.block_size()).checked_mul(ty.type_size());
        if need != Some(bytes.len() as u64) {
            return Err(err(format!(
                "{n} elements of {ty} need {need:?} bytes, got {}",
                bytes.len()
            )));
        }
        self.tensors.push(Entry {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
            bytes,
        });
        Ok(())
    }

    /// Writes the file (GGUF v3, little-endian, 32-byte aligned data).
    ///
    /// Errors: IO naming `path`; INVALID_ARGUMENT for a heterogeneous metadata array.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut meta = self.metadata.clone();
        meta.insert("general.alignment".into(), MetaValue::U32(ALIGNMENT as u32));
        let mut head = Vec::new();
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        for (k, v) in &meta {
            put_str(&mut head, k);
            head.extend_from_slice(&type_id(v).to_le_bytes());
            put_value(&mut head, v, k)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ty.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.bytes.len() as u64).next_multiple_of(ALIGNMENT);
        }
        let pad = |len: u64| vec![0u8; (len.next_multiple_of(ALIGNMENT) - len) as usize];
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut w = std::io::BufWriter::new(file);
        let mut put = |b: &[u8]| w.write_all(b).map_err(|e| Error::io(path, e));
        put(&head)?;
        put(&pad(head.len() as u64))?;
        for t in &self.tensors {
            put(&t.bytes)?;
            put(&pad(t.bytes.len() as u64))?;
        }
        w.flush().map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::GgufFile;

    #[test]
    fn round_trips_through_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let mut w = GgufWriter::new();
        w.set("general.architecture", MetaValue::String("llama".into()));
        w.set("llama.block_count", MetaValue::U32(2));
        w.set(
            "tokenizer.ggml.tokens",
            MetaValue::Array(vec![
                MetaValue::String("a".into()),
                MetaValue::String("b".into()),
            ]),
        );
        w.add_tensor("x", &[3], GgmlType::F32, vec![0; 12]).unwrap();
        let q8: Vec<u8> = (0..68).map(|i| i as u8).collect();
        w.add_tensor("y", &[32, 2], GgmlType::Q8_0, q8.clone())
            .unwrap();
        w.write(&path).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.get("llama.block_count").and_then(|v| v.as_u64()), Some(2));
        assert_eq!(
            g.get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len()),
            Some(2)
        );
        let y = g.tensor("y").unwrap();
        assert_eq!((y.ggml_type, y.dims.clone()), (GgmlType::Q8_0, vec![32, 2]));
        assert_eq!(g.read_tensor_bytes(y).unwrap(), q8);
        assert_eq!(
            g.read_tensor_bytes(g.tensor("x").unwrap()).unwrap(),
            vec![0; 12]
        );
    }

    #[test]
    fn refuses_inconsistent_tensors() {
        let mut w = GgufWriter::new();
        let e = w
            .add_tensor("q", &[16, 2], GgmlType::Q8_0, vec![0; 34])
            .unwrap_err();
        assert!(e.to_string().contains("\"q\""), "{e}");
        let e = w
            .add_tensor("q", &[32, 2], GgmlType::Q8_0, vec![0; 34])
            .unwrap_err();
        assert!(e.to_string().contains("need"), "{e}");
        w.add_tensor("q", &[32], GgmlType::Q8_0, vec![0; 34])
            .unwrap();
        assert!(w
            .add_tensor("q", &[32], GgmlType::Q8_0, vec![0; 34])
            .is_err());
        let mut w = GgufWriter::new();
        w.set(
            "k",
            MetaValue::Array(vec![MetaValue::U8(1), MetaValue::String("x".into())]),
        );
        let dir = tempfile::tempdir().unwrap();
        let e = w.write(&dir.path().join("bad.gguf")).unwrap_err();
        assert!(e.to_string().contains("\"k\""), "{e}");
    }
}
