//! A strict NumPy `.npy` reader and writer (format versions 1, 2 and 3).
//!
//! Only what adapter files need: little-endian `f4`, `f2`, `V2` (bfloat16 as TensorRT-LLM writes
//! it, docs/adapter-formats.md 4.1), and the integer types `i2`, `i4`, `i8` used by
//! `model.lora_config.npy`. The header dict must hold exactly the keys `descr`, `fortran_order`
//! (which must be `False`) and `shape`. The data length implied by the shape is computed with
//! checked arithmetic and compared with the bytes actually present *before* anything is
//! allocated, so a tiny file that declares a huge shape is refused cheaply.

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::tensor::decode::{decode_le, decode_le_ints, IntType};
use crate::tensor::{checked_byte_size, DType, TensorData};

/// Element type of a `.npy` array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDType {
    /// `<f4`.
    F32,
    /// `<f2`.
    F16,
    /// `|V2`, interpreted as bfloat16 (numpy has no bf16; TensorRT-LLM writes it as void-2).
    BF16,
    /// `<i2`.
    I16,
    /// `<i4`.
    I32,
    /// `<i8`.
    I64,
}

impl NpyDType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            NpyDType::F32 | NpyDType::I32 => 4,
            NpyDType::F16 | NpyDType::BF16 | NpyDType::I16 => 2,
            NpyDType::I64 => 8,
        }
    }
    /// The `descr` string written for this type.
    pub fn descr(self) -> &'static str {
        match self {
            NpyDType::F32 => "<f4",
            NpyDType::F16 => "<f2",
            NpyDType::BF16 => "|V2",
            NpyDType::I16 => "<i2",
            NpyDType::I32 => "<i4",
            NpyDType::I64 => "<i8",
        }
    }
    fn from_descr(descr: &str, what: &str) -> Result<Self> {
        let (order, ty) = match descr.char_indices().nth(1) {
            Some((i, _)) => descr.split_at(i),
            None => ("", descr),
        };
        let little = matches!(order, "<" | "=" | "|");
        if order == ">" {
            return Err(Error::invalid_adapter(format!(
                "{what}: big-endian .npy dtype '{descr}' is not supported"
            )));
        }
        let t = match (little, order, ty) {
            (true, "<" | "=", "f4") => NpyDType::F32,
            (true, "<" | "=", "f2") => NpyDType::F16,
            (true, "|", "V2") => NpyDType::BF16,
            (true, "<" | "=", "i2") => NpyDType::I16,
            (true, "<" | "=", "i4") => NpyDType::I32,
            (true, "<" | "=", "i8") => NpyDType::I64,
            _ => {
                return Err(Error::invalid_adapter(format!(
                    "{what}: unsupported .npy dtype '{descr}' (expected <f4, <f2, |V2 (bf16), \
                     <i2, <i4 or <i8)"
                )))
            }
        };
        Ok(t)
    }
}

/// Element data of a `.npy` array. Integers are widened to `i64`.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    BF16(Vec<bf16>),
    /// Integer elements (from `i2`, `i4` or `i8`).
    Int(Vec<i64>),
}

/// A parsed `.npy` array (C order).
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Element type as stored in the file.
    pub dtype: NpyDType,
    /// Dimensions, outermost first (`()` is a scalar: empty vector, one element).
    pub shape: Vec<usize>,
    /// The elements.
    pub data: NpyData,
}

impl NpyArray {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        match &self.data {
            NpyData::F32(v) => v.len(),
            NpyData::F16(v) => v.len(),
            NpyData::BF16(v) => v.len(),
            NpyData::Int(v) => v.len(),
        }
    }
    /// Consumes the array, returning f32 elements (no copy when already f32); `None` for integer
    /// arrays.
    pub fn into_f32(self) -> Option<Vec<f32>> {
        self.data.into_float().map(TensorData::into_f32_vec)
    }
    /// Floating-point elements converted to f32; `None` for integer arrays.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        self.data.clone().into_float().map(TensorData::into_f32_vec)
    }
}

impl NpyData {
    /// The floating-point elements as tensor data; `None` for integers.
    fn into_float(self) -> Option<TensorData> {
        match self {
            NpyData::F32(v) => Some(TensorData::F32(v)),
            NpyData::F16(v) => Some(TensorData::F16(v)),
            NpyData::BF16(v) => Some(TensorData::BF16(v)),
            NpyData::Int(_) => None,
        }
    }
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// Parses `.npy` bytes; `what` names the source in error messages.
///
/// Errors (`INVALID_ADAPTER`): bad magic, unknown version, malformed or non-strict header dict,
/// unsupported dtype, `fortran_order: True`, a shape whose byte size overflows or differs from
/// the bytes present.
pub fn parse_npy(bytes: &[u8], what: &str) -> Result<NpyArray> {
    let bad = |msg: String| Error::invalid_adapter(format!("{what}: {msg}"));
    if bytes.len() < 8 || &bytes[..6] != MAGIC {
        return Err(bad(
            "not a .npy file (bad magic, expected \\x93NUMPY)".into()
        ));
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => {
            let b = bytes
                .get(8..10)
                .ok_or_else(|| bad("truncated .npy header".into()))?;
            (u16::from_le_bytes([b[0], b[1]]) as usize, 10usize)
        }
        2 | 3 => {
            let b = bytes
                .get(8..12)
                .ok_or_else(|| bad("truncated .npy header".into()))?;
            (
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
                12usize,
            )
        }
        v => {
            return Err(bad(format!(
                "unsupported .npy format version {v}.{}",
                bytes[7]
            )))
        }
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad(format!("truncated .npy header (declares {hlen} bytes)")))?;
    let header = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| bad(".npy header is not valid text".into()))?;
    if major < 3 && !header.is_ascii() {
        return Err(bad(".npy v1/v2 header is not ASCII".into()));
    }
    let (descr, fortran, shape) = parse_header(header).map_err(bad)?;
    if fortran {
        return Err(bad(
            "fortran_order True is not supported (array must be C order)".into(),
        ));
    }
    let dtype = NpyDType::from_descr(&descr, what)?;
    let (_, nbytes) = checked_byte_size(&shape, dtype.size())
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    let data = &bytes[end..];
    if data.len() != nbytes {
        return Err(bad(format!(
            "shape {shape:?} of {} needs {nbytes} data bytes but the file has {}",
            descr,
            data.len()
        )));
    }
    let data = decode(dtype, data, what)?;
    Ok(NpyArray { dtype, shape, data })
}

/// Decodes the data section (a whole number of elements, checked by the caller) with the crate's
/// one little-endian decoder.
fn decode(dtype: NpyDType, data: &[u8], what: &str) -> Result<NpyData> {
    let float = |dt: DType| {
        decode_le(dt, data).and_then(|d| match d {
            TensorData::F32(v) => Ok(NpyData::F32(v)),
            TensorData::F16(v) => Ok(NpyData::F16(v)),
            TensorData::BF16(v) => Ok(NpyData::BF16(v)),
            // decode_le only yields dense data.
            TensorData::Quant(_) => Err(Error::internal("npy: decoder returned blocks")),
        })
    };
    let int = |ty: IntType| decode_le_ints(ty, data).map(NpyData::Int);
    match dtype {
        NpyDType::F32 => float(DType::F32),
        NpyDType::F16 => float(DType::F16),
        NpyDType::BF16 => float(DType::BF16),
        NpyDType::I16 => int(IntType::I16),
        NpyDType::I32 => int(IntType::I32),
        NpyDType::I64 => int(IntType::I64),
    }
    .map_err(|e| Error::invalid_adapter(format!("{what}: {e}")))
}

/// Tokens of the Python-literal header dict.
struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> std::result::Result<(), String> {
        match self.peek() {
            Some(x) if x == c => {
                self.i += 1;
                Ok(())
            }
            other => Err(format!(
                "malformed .npy header: expected '{}' at byte {}, found {}",
                c as char,
                self.i,
                other.map_or("end".to_string(), |x| format!("'{}'", x as char))
            )),
        }
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let q = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => {
                return Err(format!(
                    "malformed .npy header: expected a string at byte {}",
                    self.i
                ))
            }
        };
        self.i += 1;
        let start = self.i;
        while let Some(&c) = self.s.get(self.i) {
            if c == q {
                let v = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                return Ok(v);
            }
            if c == b'\\' {
                return Err("malformed .npy header: escapes in strings are not supported".into());
            }
            self.i += 1;
        }
        Err("malformed .npy header: unterminated string".into())
    }
    fn word(&mut self) -> String {
        self.ws();
        let start = self.i;
        while self
            .s
            .get(self.i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
}

type Header = (String, bool, Vec<usize>);

fn parse_header(h: &str) -> std::result::Result<Header, String> {
    let mut lx = Lexer {
        s: h.as_bytes(),
        i: 0,
    };
    lx.eat(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        if lx.peek() == Some(b'}') {
            lx.i += 1;
            break;
        }
        let key = lx.string()?;
        lx.eat(b':')?;
        match key.as_str() {
            "descr" if descr.is_none() => descr = Some(lx.string()?),
            "fortran_order" if fortran.is_none() => {
                fortran = Some(match lx.word().as_str() {
                    "True" => true,
                    "False" => false,
                    w => return Err(format!("malformed .npy header: fortran_order is '{w}'")),
                })
            }
            "shape" if shape.is_none() => {
                lx.eat(b'(')?;
                let mut dims = Vec::new();
                loop {
                    if lx.peek() == Some(b')') {
                        lx.i += 1;
                        break;
                    }
                    let w = lx.word();
                    let w = w.strip_suffix('L').unwrap_or(&w);
                    let d: usize = w
                        .parse()
                        .map_err(|_| format!("malformed .npy header: shape dimension '{w}'"))?;
                    dims.push(d);
                    match lx.peek() {
                        Some(b',') => lx.i += 1,
                        Some(b')') => {}
                        _ => return Err("malformed .npy header: bad shape tuple".into()),
                    }
                }
                shape = Some(dims);
            }
            "descr" | "fortran_order" | "shape" => {
                return Err(format!("malformed .npy header: duplicate key '{key}'"))
            }
            other => return Err(format!("malformed .npy header: unexpected key '{other}'")),
        }
        match lx.peek() {
            Some(b',') => lx.i += 1,
            Some(b'}') => {}
            _ => return Err("malformed .npy header: expected ',' or '}'".into()),
        }
    }
    lx.ws();
    if lx.i != h.len() {
        return Err("malformed .npy header: trailing characters after the dict".into());
    }
    match (descr, fortran, shape) {
        (Some(d), Some(f), Some(s)) => Ok((d, f, s)),
        _ => Err("malformed .npy header: needs 'descr', 'fortran_order' and 'shape'".into()),
    }
}

/// Serialises an array as `.npy` version 1 (version 2 if the header needs it), the way numpy
/// does: header padded with spaces and a final newline so that data start 64-byte aligned.
///
/// `data` holds the little-endian element bytes; its length must be `shape.product() *
/// dtype.size()` (`INVALID_ARGUMENT` otherwise).
pub fn encode_npy(dtype: NpyDType, shape: &[usize], data: &[u8]) -> Result<Vec<u8>> {
    let numel: usize = shape.iter().product();
    if numel.checked_mul(dtype.size()) != Some(data.len()) {
        return Err(Error::invalid_argument(format!(
            "encode_npy: {} data bytes do not match shape {shape:?} of {}",
            data.len(),
            dtype.descr()
        )));
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape_s}, }}",
        dtype.descr()
    );
    let (major, prefix) = if dict.len() + 11 < 65536 {
        (1u8, 10)
    } else {
        (2u8, 12)
    };
    let total = (prefix + dict.len() + 1).div_ceil(64) * 64;
    let hlen = total - prefix;
    let mut out = Vec::with_capacity(total + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(hlen as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(hlen as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out.extend_from_slice(data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_f32_and_int() {
        let vals = [1.5f32, -2.0, 3.25, 0.0, 7.0, 8.5];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let npy = encode_npy(NpyDType::F32, &[1, 2, 3], &bytes).unwrap();
        assert_eq!((npy.len() - 24) % 64, 0, "data must start 64-byte aligned");
        let a = parse_npy(&npy, "t").unwrap();
        assert_eq!(a.shape, vec![1, 2, 3]);
        assert_eq!(a.to_f32().unwrap(), vals.to_vec());
        let ints: Vec<u8> = [1i32, -2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse_npy(&encode_npy(NpyDType::I32, &[3], &ints).unwrap(), "t").unwrap();
        assert_eq!(a.data, NpyData::Int(vec![1, -2, 3]));
    }

    #[test]
    fn header_strictness() {
        let mk = |dict: &str, data: &[u8]| {
            let mut v = MAGIC.to_vec();
            v.extend_from_slice(&[1, 0]);
            v.extend_from_slice(&(dict.len() as u16).to_le_bytes());
            v.extend_from_slice(dict.as_bytes());
            v.extend_from_slice(data);
            v
        };
        let ok = mk(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n",
            &[0; 4],
        );
        assert!(parse_npy(&ok, "t").is_ok());
        let extra = mk(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}",
            &[0; 4],
        );
        assert!(parse_npy(&extra, "t")
            .unwrap_err()
            .message()
            .contains("unexpected key 'x'"));
        let dup = mk(
            "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': ()}",
            &[0; 4],
        );
        assert!(parse_npy(&dup, "t")
            .unwrap_err()
            .message()
            .contains("duplicate"));
        let be = mk(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (1,)}",
            &[0; 4],
        );
        assert!(parse_npy(&be, "t")
            .unwrap_err()
            .message()
            .contains("big-endian"));
        let scalar = mk(
            "{'descr': '<i8', 'fortran_order': False, 'shape': ()}",
            &[5, 0, 0, 0, 0, 0, 0, 0],
        );
        assert_eq!(parse_npy(&scalar, "t").unwrap().data, NpyData::Int(vec![5]));
        let short = mk(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}",
            &[0; 4],
        );
        assert!(parse_npy(&short, "t")
            .unwrap_err()
            .message()
            .contains("needs 8 data bytes"));
    }
}
