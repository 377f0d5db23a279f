//! LoRA adapters: format readers, the safe torch-pickle reader, normalisation and validation.

pub mod normalize;
pub mod torch_pickle;

pub use normalize::{AdapterFormat, LoraModule, ModelShape, NormalizedAdapter};
pub mod archive;
pub mod export;
pub mod hf;
pub mod hf_config;
pub mod inspect;
pub mod load;
pub mod nemo;
pub mod nemo_keys;
pub mod npy;
pub mod safetensors_check;
pub mod snapshot;
pub mod source;
pub mod synth;
pub mod trtllm;
pub mod validate;

pub use load::{detect_format, load_adapter};
pub use validate::AdapterLimits;
