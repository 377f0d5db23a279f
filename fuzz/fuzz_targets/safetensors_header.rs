//! Fuzz the checked safetensors reader and the HF adapter parser built on it: any input must give
//! Ok or Err, never a panic or an unbounded allocation.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use loraplex::adapters::hf::{parse_hf, HfWeights};
use loraplex::adapters::safetensors_check::read_safetensors;
use loraplex::adapters::ModelShape;
use loraplex::tensor::DType;

const SHAPE: ModelShape = ModelShape {
    num_layers: 3,
    hidden_size: 64,
    intermediate_size: 176,
    num_heads: 4,
    num_kv_heads: 2,
    head_dim: 16,
    dtype: DType::F32,
};
const CONFIG: &[u8] = br#"{"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":["q_proj","v_proj"],"rank_pattern":{"o_proj":4}}"#;

fuzz_target!(|data: &[u8]| {
    let _ = read_safetensors(data, "fuzz.safetensors");
    let _ = parse_hf(
        "fuzz",
        Path::new("fuzz"),
        CONFIG,
        HfWeights::Safetensors(data),
        &SHAPE,
    );
    // The same bytes as a config (exercises the JSON/regex pattern handling).
    let _ = parse_hf(
        "fuzz",
        Path::new("fuzz"),
        data,
        HfWeights::Safetensors(&[]),
        &SHAPE,
    );
});
