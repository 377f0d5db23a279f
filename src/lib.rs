//! loraplex: an embeddable multi-LoRA inference engine for Llama-family models.
//!
//! One base model (HuggingFace safetensors directory or GGUF file) is served together with many
//! LoRA adapters; requests for different adapters share one batch. The Rust API is
//! [`engine::Engine`]; the C ABI lives in `ffi` (see `include/loraplex.h`).

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod adapters;
pub mod backend;
pub mod cache;
pub mod config;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod kv;
pub mod lora_target;
pub mod model;
pub mod openai;
pub mod quant;
pub mod sampling;
pub mod sched;
pub mod tensor;
pub mod tokenizer;

pub use cache::capacity::{plan_capacity, CapacityPlan, Workload};
pub use error::{Error, ErrorCode, Result};

/// The README's code blocks, compiled as doc tests so that its Rust example stays correct.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
