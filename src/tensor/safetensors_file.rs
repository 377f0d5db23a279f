//! The one checked reader of untrusted safetensors bytes, for adapters (adapter-formats.md 1.1)
//! and model weights alike.
//!
//! The header is validated completely before any tensor data is copied: the declared header
//! length against the file size, the header as a JSON object, every entry's dtype (F32, F16 and
//! BF16 only), shape, and `data_offsets` (ordered, inside the data section, exactly
//! `numel × dtype size` bytes). Allocation is bounded by the input length, so a file that
//! declares more than it holds errors without allocating. Thread-safety: pure function.

use serde_json::Value;

use super::decode::decode_le;
use super::{checked_byte_size, DType, HostTensor};
use crate::error::{Error, ErrorCode, Result};

/// Largest accepted header (the safetensors crate uses the same 100 MB bound).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Reads every tensor of a safetensors file, sorted by key. `what` names the file in errors,
/// which all carry `code` (`INVALID_ADAPTER` for adapters, `INVALID_MODEL` for model weights).
/// Never panics on any input.
pub fn read_safetensors(
    bytes: &[u8],
    what: &str,
    code: ErrorCode,
) -> Result<Vec<(String, HostTensor)>> {
    let bad = |m: String| Error::new(code, format!("{what}: invalid safetensors file: {m}"));
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(bad(format!(
            "{} bytes is too short for the 8-byte header length",
            bytes.len()
        )));
    };
    let mut a = [0u8; 8];
    a.copy_from_slice(len_bytes);
    let n = u64::from_le_bytes(a);
    let avail = (bytes.len() - 8) as u64;
    if n > avail {
        return Err(bad(format!(
            "header declares {n} bytes but the file holds only {avail} after the length prefix \
             (truncated or corrupt)"
        )));
    }
    if n > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "header of {n} bytes exceeds {MAX_HEADER_BYTES}"
        )));
    }
    let n = n as usize; // <= avail <= bytes.len()
    let header = &bytes[8..8 + n];
    let data = &bytes[8 + n..];
    let text = std::str::from_utf8(header).map_err(|e| bad(format!("header is not UTF-8: {e}")))?;
    let v: Value = serde_json::from_str(text.trim_end_matches(' '))
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;

    let mut entries = Vec::with_capacity(obj.len());
    for (key, info) in obj {
        if key == "__metadata__" {
            continue;
        }
        let tbad = |m: String| bad(format!("tensor '{key}': {m}"));
        let dtype = info
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| tbad("missing dtype".into()))?;
        let dt = match dtype {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            other => {
                return Err(tbad(format!(
                    "dtype {other} is not supported (only F32, F16, BF16)"
                )))
            }
        };
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| tbad("missing shape".into()))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| tbad("shape entries must be non-negative integers".into()))?;
        let offs = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
            .ok_or_else(|| tbad("data_offsets must be [begin, end]".into()))?;
        let (begin, end) = offs;
        if begin > end || end > data.len() as u64 {
            return Err(tbad(format!(
                "data_offsets [{begin}, {end}] lie outside the {}-byte data section",
                data.len()
            )));
        }
        let (_, need) = checked_byte_size(&shape, dt.size())
            .ok_or_else(|| tbad(format!("shape {shape:?} overflows")))?;
        if (end - begin) as usize != need {
            return Err(tbad(format!(
                "data_offsets span {} bytes but shape {shape:?} of {dtype} needs {need}",
                end - begin
            )));
        }
        entries.push((key.clone(), dt, shape, begin as usize, end as usize));
    }
    // The data section must be exactly covered, without overlaps (as the safetensors crate
    // requires): sort by offset and walk.
    let mut spans: Vec<(usize, usize, &str)> =
        entries.iter().map(|e| (e.3, e.4, e.0.as_str())).collect();
    spans.sort_unstable();
    let mut at = 0usize;
    for (b, e, k) in &spans {
        if *b != at {
            return Err(bad(format!(
                "tensor '{k}' starts at byte {b} of the data section, expected {at} (gap or \
                 overlap)"
            )));
        }
        at = *e;
    }
    if at != data.len() {
        return Err(bad(format!(
            "tensors cover {at} bytes but the data section holds {}",
            data.len()
        )));
    }

    let mut out = Vec::with_capacity(entries.len());
    for (key, dtype, shape, b, e) in entries {
        let raw = data.get(b..e).unwrap_or(&[]);
        // Whole elements: the span was checked to be numel × element size above.
        let data = decode_le(dtype, raw).map_err(|e| bad(format!("tensor '{key}': {e}")))?;
        out.push((key, HostTensor { shape, data }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn decodes_each_dtype_and_keeps_it() {
        let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                    "b":{"dtype":"BF16","shape":[1,1],"data_offsets":[8,10]}}"#;
        let mut data = [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat();
        data.extend_from_slice(&[0x80, 0x3F]); // bf16 1.0
        let t = read_safetensors(&file(h, &data), "m", ErrorCode::InvalidModel).unwrap();
        assert_eq!(t[0].0, "a");
        assert_eq!(t[0].1.dtype(), Some(DType::F32));
        assert_eq!(t[0].1.to_f32_vec(), vec![1.5, -2.0]);
        assert_eq!(
            (t[1].1.dtype(), t[1].1.shape.clone()),
            (Some(DType::BF16), vec![1, 1])
        );
        assert_eq!(t[1].1.to_f32_vec(), vec![1.0]);
    }

    #[test]
    fn errors_carry_the_callers_code_and_name_the_tensor() {
        let h = r#"{"w":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#;
        for code in [ErrorCode::InvalidModel, ErrorCode::InvalidAdapter] {
            let e = read_safetensors(&file(h, &[0; 8]), "x.safetensors", code).unwrap_err();
            assert_eq!(e.code(), code);
            assert!(
                e.message().contains("x.safetensors") && e.message().contains("tensor 'w'"),
                "{}",
                e.message()
            );
        }
        let short = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        let e = read_safetensors(&file(short, &[0; 8]), "s", ErrorCode::InvalidModel).unwrap_err();
        assert!(e.message().contains("needs 12"), "{}", e.message());
    }
}
