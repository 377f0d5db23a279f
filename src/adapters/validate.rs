//! Validation of a normalised adapter against the base model (DESIGN.md 1.2): an adapter is
//! either fully usable or refused with a precise message.

use crate::adapters::normalize::{ModelShape, NormalizedAdapter};
use crate::error::{Error, Result};

/// Engine limits an adapter must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdapterLimits {
    /// Largest LoRA rank accepted for any module.
    pub max_lora_rank: usize,
}

impl Default for AdapterLimits {
    /// `max_lora_rank = 64`.
    fn default() -> Self {
        Self { max_lora_rank: 64 }
    }
}

/// Checks `adapter` against `shape` and `limits`.
///
/// Errors (`INVALID_ADAPTER`, message names the adapter and, where relevant, the layer and
/// module): no module at all; a module in a layer ≥ `shape.num_layers`; rank 0; rank above
/// `limits.max_lora_rank` (naming the rank and the limit); `in_dim`/`out_dim` different from
/// [`ModelShape::module_dims`] (naming expected and got); `a`/`b` lengths not `rank*in_dim` /
/// `out_dim*rank`; a non-finite scale or a non-finite value in A or B.
pub fn validate(
    adapter: &NormalizedAdapter,
    shape: &ModelShape,
    limits: &AdapterLimits,
) -> Result<()> {
    let name = &adapter.name;
    let err = |m: String| Error::invalid_adapter(format!("adapter '{name}': {m}"));
    if adapter.modules().next().is_none() {
        return Err(err("has no LoRA modules".into()));
    }
    for (layer, target, m) in adapter.modules() {
        let module = format!("layer {layer} {}", target.hf_name());
        if layer >= shape.num_layers {
            return Err(err(format!(
                "{module}: layer {layer} does not exist, the model has {} layers",
                shape.num_layers
            )));
        }
        if m.rank == 0 {
            return Err(err(format!("{module}: rank is 0")));
        }
        if m.rank > limits.max_lora_rank {
            return Err(err(format!(
                "{module}: rank {} exceeds max_lora_rank {}",
                m.rank, limits.max_lora_rank
            )));
        }
        let (want_in, want_out) = shape.module_dims(target);
        if (m.in_dim, m.out_dim) != (want_in, want_out) {
            return Err(err(format!(
                "{module}: expected in {want_in} x out {want_out} for this model, got in {} x \
                 out {}",
                m.in_dim, m.out_dim
            )));
        }
        let a_len = m.rank.checked_mul(m.in_dim);
        let b_len = m.rank.checked_mul(m.out_dim);
        if a_len != Some(m.a.len()) || b_len != Some(m.b.len()) {
            return Err(err(format!(
                "{module}: A has {} values and B {}, expected {} ({}x{}) and {} ({}x{})",
                m.a.len(),
                m.b.len(),
                m.rank * m.in_dim,
                m.rank,
                m.in_dim,
                m.out_dim * m.rank,
                m.out_dim,
                m.rank
            )));
        }
        if !m.scale.is_finite() {
            return Err(err(format!("{module}: scale {} is not finite", m.scale)));
        }
        for (which, v) in [("A", &m.a), ("B", &m.b)] {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(err(format!(
                    "{module}: {which} has a non-finite value ({}) at element {i}",
                    v[i]
                )));
            }
        }
    }
    // Modules past the model's layers were named above; what is left is a layer count that does
    // not match (the backend packs adapters per model layer).
    if adapter.layers.len() != shape.num_layers {
        return Err(err(format!(
            "has {} layers, the model has {}",
            adapter.layers.len(),
            shape.num_layers
        )));
    }
    Ok(())
}
