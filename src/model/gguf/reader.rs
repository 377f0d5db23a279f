//! GGUF container parsing (versions 2 and 3, little-endian): header, metadata key/values and
//! tensor infos, with every count, length and offset checked against the file size before
//! anything is allocated. Tensor data is read on demand, one tensor at a time.
//!
//! Threading: a [`GgufFile`] is plain data plus a path; [`GgufFile::read_tensor_bytes`] opens the
//! file for each call, so it may be used from several threads.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::types::GgmlType;
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Nesting depth allowed for arrays of arrays in metadata.
const MAX_ARRAY_DEPTH: u32 = 8;

/// One metadata value.
#[allow(missing_docs)] // variants are the GGUF value types of the same names
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// The GGUF type name ("u32", "string", "array", ...), for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::F32(_) => "f32",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F64(_) => "f64",
        }
    }
    /// The value as a non-negative integer, if it is an integer type holding one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// The value as a float, if it is a float or integer type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
    /// The boolean, if this is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }
    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's description from the GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The GGUF tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order, innermost (contiguous) first: `[in, out]` for a Linear weight.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Bytes of data.
    pub n_bytes: u64,
    /// Number of elements.
    pub n_elements: u64,
}

impl TensorInfo {
    /// Dimensions outermost first (row-major / HF order): the reverse of [`TensorInfo::dims`].
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF header. Tensor data stays on disk until [`GgufFile::read_tensor_bytes`].
#[derive(Debug, Clone)]
pub struct GgufFile {
    /// The file.
    pub path: PathBuf,
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Metadata by key.
    pub metadata: HashMap<String, MetaValue>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment (`general.alignment`, default 32).
    pub alignment: u64,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
    /// File size in bytes.
    pub file_size: u64,
}

/// Sequential header reader that knows how many bytes remain.
struct HeaderReader {
    inner: BufReader<File>,
    pos: u64,
    len: u64,
}

fn truncated(what: &str, need: u64, at: u64, len: u64) -> Error {
    Error::invalid_model(format!(
        "truncated or corrupt GGUF: {what} needs {need} bytes at offset {at}, but the file has {len} bytes"
    ))
}

impl HeaderReader {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }
    /// Fails unless `n` more bytes exist (checked before any allocation).
    fn ensure(&self, n: u64, what: &dyn Fn() -> String) -> Result<()> {
        if n > self.remaining() {
            return Err(truncated(&what(), n, self.pos, self.len));
        }
        Ok(())
    }
    fn bytes<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        self.ensure(N as u64, what)?;
        let mut buf = [0u8; N];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| Error::invalid_model(format!("{}: read failed: {e}", what())))?;
        self.pos += N as u64;
        Ok(buf)
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.u64(what)?;
        self.ensure(n, what)?;
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| Error::invalid_model(format!("{}: read failed: {e}", what())))?;
        self.pos += n;
        String::from_utf8(buf)
            .map_err(|_| Error::invalid_model(format!("{}: string is not valid UTF-8", what())))
    }
    fn value(&mut self, ty: u32, depth: u32, what: &dyn Fn() -> String) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(u8::from_le_bytes(self.bytes(what)?)),
            1 => MetaValue::I8(i8::from_le_bytes(self.bytes(what)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.bytes(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.bytes(what)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.bytes(what)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.bytes(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.bytes(what)?)),
            7 => {
                let [b] = self.bytes::<1>(what)?;
                match b {
                    0 => MetaValue::Bool(false),
                    1 => MetaValue::Bool(true),
                    other => {
                        return Err(Error::invalid_model(format!(
                            "{}: invalid bool byte {other}",
                            what()
                        )))
                    }
                }
            }
            8 => MetaValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::invalid_model(format!(
                        "{}: arrays nested deeper than {MAX_ARRAY_DEPTH}",
                        what()
                    )));
                }
                let elem_ty = self.u32(what)?;
                let n = self.u64(what)?;
                // Every element takes at least one byte (strings at least 8): bound the count by
                // the bytes left before reserving memory for it.
                let min_elem: u64 = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => {
                        return Err(Error::invalid_model(format!(
                            "{}: unknown array element type {other}",
                            what()
                        )))
                    }
                };
                let need = n.checked_mul(min_elem).ok_or_else(|| {
                    Error::invalid_model(format!("{}: array length {n} overflows", what()))
                })?;
                self.ensure(need, &|| format!("{} (array of {n} elements)", what()))?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem_ty, depth + 1, what)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.bytes(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.bytes(what)?)),
            other => {
                return Err(Error::invalid_model(format!(
                    "{}: unknown metadata value type {other}",
                    what()
                )))
            }
        })
    }
}

impl GgufFile {
    /// Parses the header of the GGUF file at `path`. Errors (each naming the file, and the key or
    /// tensor at fault): IO when the file cannot be opened; INVALID_MODEL for a bad magic, a
    /// truncated file, counts/lengths/offsets beyond the file, duplicate keys or tensor names,
    /// misaligned data; UNSUPPORTED for GGUF v1, big-endian files and unknown ggml type ids.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_inner(path).map_err(|e| e.context(path.display()))
    }

    fn open_inner(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut r = HeaderReader {
            inner: BufReader::with_capacity(1 << 16, file),
            pos: 0,
            len,
        };
        let magic: [u8; 4] = r.bytes(&|| "GGUF magic".to_string())?;
        if &magic != MAGIC {
            return Err(Error::invalid_model(format!(
                "not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"
            )));
        }
        let version = r.u32(&|| "GGUF version".to_string())?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(Error::unsupported(
                    "GGUF version 1 is not supported (convert the file to v3)",
                ))
            }
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(Error::unsupported(
                    "big-endian GGUF files are not supported",
                ))
            }
            v => {
                return Err(Error::unsupported(format!(
                    "GGUF version {v} is not supported (2 and 3 are)"
                )))
            }
        }
        let n_tensors = r.u64(&|| "tensor count".to_string())?;
        let n_kv = r.u64(&|| "metadata count".to_string())?;
        // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info at least
        // 8 + 4 + 4 + 8 bytes.
        r.ensure(n_kv.saturating_mul(13), &|| {
            format!("{n_kv} metadata entries")
        })?;
        let mut metadata = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = r.string(&|| format!("metadata key #{i}"))?;
            let what = || format!("metadata key \"{key}\"");
            let ty = r.u32(&what)?;
            let value = r.value(ty, 0, &what)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(Error::invalid_model(format!(
                    "metadata key \"{key}\" appears twice"
                )));
            }
        }
        r.ensure(n_tensors.saturating_mul(24), &|| {
            format!("{n_tensors} tensor infos")
        })?;
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(Error::invalid_model(format!(
                        "metadata key \"general.alignment\" = {v:?} is not a power of two"
                    )))
                }
            },
        };
        let mut raw = Vec::with_capacity(n_tensors as usize);
        let mut names = std::collections::HashSet::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&|| format!("tensor info #{i} name"))?;
            let what = || format!("tensor \"{name}\" info");
            let n_dims = r.u32(&what)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(Error::invalid_model(format!(
                    "tensor \"{name}\": {n_dims} dimensions (1..={MAX_DIMS} allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&what)?);
            }
            let type_id = r.u32(&what)?;
            let offset = r.u64(&what)?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                Error::unsupported(format!("tensor \"{name}\": unknown ggml type id {type_id}"))
            })?;
            if !names.insert(name.clone()) {
                return Err(Error::invalid_model(format!(
                    "tensor \"{name}\" appears twice"
                )));
            }
            raw.push((name, dims, ggml_type, offset));
        }
        let data_offset = r
            .pos
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| Error::invalid_model("tensor data offset overflows".to_string()))?;
        if data_offset > len && !raw.is_empty() {
            return Err(truncated("tensor data section", 0, data_offset, len));
        }
        let data_len = len.saturating_sub(data_offset);
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ggml_type, rel) in raw {
            let info = tensor_layout(&name, dims, ggml_type, rel, alignment)?;
            let end = rel.checked_add(info.1).ok_or_else(|| {
                Error::invalid_model(format!("tensor \"{name}\": offset {rel} overflows"))
            })?;
            if end > data_len {
                return Err(Error::invalid_model(format!(
                    "truncated or corrupt GGUF: tensor \"{name}\" data [{}, {}) extends past the end of the file ({len} bytes)",
                    data_offset + rel,
                    data_offset.saturating_add(end)
                )));
            }
            tensors.push(TensorInfo {
                name,
                dims: info.0,
                ggml_type,
                offset: data_offset + rel,
                n_bytes: info.1,
                n_elements: info.2,
            });
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            file_size: len,
        })
    }

    /// The metadata value under `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// The tensor info named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Reads the raw bytes of `info` (which must come from this file). Errors name the file and
    /// tensor (IO on a read failure, e.g. the file shrank since [`GgufFile::open`]).
    pub fn read_tensor_bytes(&self, info: &TensorInfo) -> Result<Vec<u8>> {
        let err = |e: std::io::Error| {
            Error::io(&self.path, e).context(format!("reading tensor \"{}\"", info.name))
        };
        let inside =
            matches!(info.offset.checked_add(info.n_bytes), Some(end) if end <= self.file_size);
        if !inside {
            return Err(Error::invalid_model(format!(
                "{}: tensor \"{}\" lies outside the file",
                self.path.display(),
                info.name
            )));
        }
        let mut f = File::open(&self.path).map_err(err)?;
        f.seek(SeekFrom::Start(info.offset)).map_err(err)?;
        let mut buf = vec![0u8; info.n_bytes as usize];
        f.read_exact(&mut buf).map_err(err)?;
        Ok(buf)
    }
}

/// Validates a tensor's dims/type/offset; returns (dims, n_bytes, n_elements).
fn tensor_layout(
    name: &str,
    dims: Vec<u64>,
    ty: GgmlType,
    rel_offset: u64,
    alignment: u64,
) -> Result<(Vec<u64>, u64, u64)> {
    let mut n: u64 = 1;
    for &d in &dims {
        n = n.checked_mul(d).ok_or_else(|| {
            Error::invalid_model(format!("tensor \"{name}\": dimensions {dims:?} overflow"))
        })?;
    }
    let block = ty.block_size();
    let inner = dims.first().copied().unwrap_or(0);
    if inner % block != 0 {
        return Err(Error::invalid_model(format!(
            "tensor \"{name}\": type {ty} needs the inner dimension ({inner}) to be a multiple of {block}"
        )));
    }
    let n_bytes = (n / block)
        .checked_mul(ty.type_size())
        .ok_or_else(|| Error::invalid_model(format!("tensor \"{name}\": byte size overflows")))?;
    if !rel_offset.is_multiple_of(alignment) {
        return Err(Error::invalid_model(format!(
            "tensor \"{name}\": data offset {rel_offset} is not a multiple of the alignment {alignment}"
        )));
    }
    Ok((dims, n_bytes, n))
}
