//! LoRA adapters: format readers, the safe torch-pickle reader, normalisation and validation.

pub mod normalize;
pub mod torch_pickle;

pub use normalize::{AdapterFormat, LoraModule, ModelShape, NormalizedAdapter};
pub mod npy;
pub mod trtllm;
pub mod archive;
pub mod nemo;
pub mod nemo_keys;
pub mod export;
