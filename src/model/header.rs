//! What a model's files say without their weights: the config and every used tensor's shape and
//! storage type ([`ModelHeader::read`]), and from them the bytes the backend will hold once the
//! weights are packed ([`ModelHeader::packed_weight_bytes`]), for the capacity planner.
//!
//! Reads config.json or a GGUF header only; no tensor data, no threads.

use std::collections::HashMap;
use std::path::Path;

use super::layout::expected_tensors;
use super::packed_weights::PackedWeights;
use super::{weight_quant, ModelConfig};
use crate::backend::select::{packed_weight_bytes, WeightPartLayout};
use crate::backend::WeightFormat;
use crate::error::{Error, ErrorCode, Result};
use crate::quant::GgmlType;

/// One tensor of a model as the loader will hand it to the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorLayout {
    /// HF name.
    pub name: String,
    /// HF shape (outermost first).
    pub shape: Vec<usize>,
    /// The ggml block type the loader keeps it in, or `None` when it is dense.
    pub quant: Option<GgmlType>,
}

/// A model's config and tensor layouts, read without the weight data.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelHeader {
    /// Shape and hyper-parameters.
    pub config: ModelConfig,
    /// Every tensor the model uses.
    pub tensors: Vec<TensorLayout>,
}

impl ModelHeader {
    /// Reads the model at `path` as [`super::ModelFiles::load`] would find it: a HuggingFace
    /// directory's `config.json` (its tensors are the dense ones the config implies: a
    /// checkpoint's F32/F16/BF16 dtype does not change what is packed) or a GGUF file's header
    /// ([`super::gguf::read_layout`], with the loader's checks on every tensor info).
    ///
    /// Errors: those of the loader for the config / header (IO, INVALID_MODEL, UNSUPPORTED, each
    /// naming the file and the key or tensor at fault); IO for a path that does not exist.
    pub fn read(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let config = ModelConfig::from_hf_dir(path)?;
            let tensors = expected_tensors(&config)
                .into_iter()
                .map(|(name, shape)| TensorLayout {
                    name,
                    shape,
                    quant: None,
                })
                .collect();
            Ok(Self { config, tensors })
        } else if path.is_file() {
            let (config, tensors) = super::gguf::read_layout(path)?;
            Ok(Self { config, tensors })
        } else {
            Err(Error::new(
                ErrorCode::Io,
                format!(
                    "model path {} does not exist (expected a HuggingFace directory or a .gguf file)",
                    path.display()
                ),
            ))
        }
    }

    /// The bytes of packed weights the backend for `device` reports after loading this model in
    /// `format` (`Llama::load`'s `weight_bytes`): every [`PackedWeights`] entry, its parts given
    /// the types [`weight_quant::packed_types`] decides, sized by
    /// [`packed_weight_bytes`]. Errors: INVALID_MODEL for a bad config or a missing / non-2-D
    /// matrix (naming it); the errors of [`packed_weight_bytes`].
    pub fn packed_weight_bytes(&self, device: &str, format: WeightFormat) -> Result<usize> {
        self.config.validate()?;
        let n_layers = self.config.num_layers;
        let by_name: HashMap<&str, &TensorLayout> =
            self.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut total = 0usize;
        for weight in PackedWeights::of(&self.config).all() {
            let mut parts = Vec::with_capacity(weight.len());
            for p in weight {
                let t = by_name.get(p.name.as_str()).ok_or_else(|| {
                    Error::invalid_model(format!("missing tensor \"{}\"", p.name))
                })?;
                let [rows, cols] = t.shape[..] else {
                    return Err(Error::invalid_model(format!(
                        "tensor \"{}\" has shape {:?}, expected a matrix",
                        p.name, t.shape
                    )));
                };
                parts.push((rows, cols, t.quant, p.role));
            }
            let kinds: Vec<_> = parts.iter().map(|&(_, c, q, r)| (c, q, r)).collect();
            let (types, fmt) = weight_quant::packed_types(&kinds, n_layers, format);
            let layouts: Vec<_> = parts
                .iter()
                .zip(types)
                .map(|(&(rows, cols, _, _), quant)| WeightPartLayout { rows, cols, quant })
                .collect();
            total = total.saturating_add(packed_weight_bytes(device, &layouts, fmt)?);
        }
        Ok(total)
    }
}
