//! LoRA adapters: format readers, the safe torch-pickle reader, normalisation and validation.

pub mod normalize;

pub use normalize::{AdapterFormat, LoraModule, ModelShape, NormalizedAdapter};
