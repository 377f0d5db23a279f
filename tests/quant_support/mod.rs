//! Test support for the quantization tests: the gguf-py fixtures written by
//! scripts/quant-oracle.py under tests/fixtures/quant (committed, so never missing).
#![allow(dead_code)]

use std::path::PathBuf;

use loraplex::quant::GgmlType;

/// One fixture case of manifest.json.
pub struct Case {
    /// File stem ("random-Q4_K", "real-Q6_K-blk.0.ffn_down.weight", "quant-Q8_0").
    pub name: String,
    /// The ggml type of the blocks.
    pub ty: GgmlType,
    /// Elements the blocks hold.
    pub elements: usize,
    /// The blocks, as stored in a GGUF file.
    pub blocks: Vec<u8>,
    /// gguf-py's dequantization of the blocks.
    pub expected: Vec<f32>,
    /// For quantize cases: the f32 rows gguf-py quantized into `blocks`.
    pub input: Option<Vec<f32>>,
}

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant")
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn type_named(name: &str) -> GgmlType {
    GgmlType::all()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("manifest names unknown type {name}"))
}

/// Every case of the manifest.
pub fn cases() -> Vec<Case> {
    let d = dir();
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        m["gguf"], "0.17.1",
        "fixtures must come from the pinned gguf-py"
    );
    m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_string();
            let read = |suffix: &str| std::fs::read(d.join(format!("{name}{suffix}"))).unwrap();
            Case {
                ty: type_named(c["type"].as_str().unwrap()),
                elements: c["elements"].as_u64().unwrap() as usize,
                blocks: read(".bin"),
                expected: f32s(&read(".f32")),
                input: c.get("quantize_input").map(|_| f32s(&read(".in.f32"))),
                name,
            }
        })
        .collect()
}

/// Asserts `got` and `want` are bitwise equal, naming the first differing element.
pub fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: element {i}: got {g:e}, gguf-py {w:e}"
        );
    }
}
