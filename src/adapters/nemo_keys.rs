//! NeMo LoRA state-dict key parsing (docs/adapter-formats.md 3.4).
//!
//! Accepted layer prefixes (after normalising a leading `model.module.` to `model.`):
//! `model.decoder.layers.N.` (Megatron-core), `model.language_model.encoder.layers.N.` (legacy
//! Megatron) and `model.layers.N.` (TensorRT-LLM test fixtures). Accepted adapter suffixes:
//! the fused (`variant: nemo`) and canonical adapters of NeMo 1.x, plus the NeMo 2.0 style
//! `<linear>.adapter.` names; each ends in `linear_in.weight` (A) or `linear_out.weight` (B).

use crate::lora_target::LoraTarget;

/// Which NeMo adapter a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NemoAdapter {
    /// Fused QKV (`lora_kqv_adapter`): `linear_out` rows interleaved per KV group.
    FusedQkv,
    /// Fused fc1 (`lora_hto4h_adapter`): `linear_out` rows `[gate; up]`.
    FusedFc1,
    /// One separate target (dense → o, 4htoh → down, canonical q/k/v/gate/up).
    Single(LoraTarget),
}

/// Key layout family, recorded so that a file mixing layouts is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLayout {
    /// `model.decoder.layers.N.`
    Mcore,
    /// `model.language_model.encoder.layers.N.`
    Legacy,
    /// `model.layers.N.`
    Plain,
}

/// A parsed key: layout, layer, adapter, and whether it is `linear_in` (A) or `linear_out` (B).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NemoKey {
    /// Prefix family.
    pub layout: KeyLayout,
    /// Layer index as written in the key.
    pub layer: usize,
    /// The adapter.
    pub adapter: NemoAdapter,
    /// `true` for `linear_in` (A), `false` for `linear_out` (B).
    pub is_in: bool,
}

const SUFFIXES: &[(&str, NemoAdapter)] = &[
    (
        "self_attention.adapter_layer.lora_kqv_adapter.",
        NemoAdapter::FusedQkv,
    ),
    (
        "self_attention.adapter_layer.lora_dense_attention_adapter.",
        NemoAdapter::Single(LoraTarget::O),
    ),
    (
        "mlp.adapter_layer.lora_hto4h_adapter.",
        NemoAdapter::FusedFc1,
    ),
    (
        "mlp.adapter_layer.lora_4htoh_adapter.",
        NemoAdapter::Single(LoraTarget::Down),
    ),
    (
        "self_attention.adapter_layer.lora_unfused_kqv_adapter.q_adapter.",
        NemoAdapter::Single(LoraTarget::Q),
    ),
    (
        "self_attention.adapter_layer.lora_unfused_kqv_adapter.k_adapter.",
        NemoAdapter::Single(LoraTarget::K),
    ),
    (
        "self_attention.adapter_layer.lora_unfused_kqv_adapter.v_adapter.",
        NemoAdapter::Single(LoraTarget::V),
    ),
    (
        "mlp.adapter_layer.lora_unfused_hto4h_adapter.gate_adapter.",
        NemoAdapter::Single(LoraTarget::Gate),
    ),
    (
        "mlp.adapter_layer.lora_unfused_hto4h_adapter.up_adapter.",
        NemoAdapter::Single(LoraTarget::Up),
    ),
    ("self_attention.linear_qkv.adapter.", NemoAdapter::FusedQkv),
    (
        "self_attention.linear_proj.adapter.",
        NemoAdapter::Single(LoraTarget::O),
    ),
    ("mlp.linear_fc1.adapter.", NemoAdapter::FusedFc1),
    (
        "mlp.linear_fc2.adapter.",
        NemoAdapter::Single(LoraTarget::Down),
    ),
];

/// The mcore key prefix of layer `l` (what the exporter writes).
pub fn mcore_prefix(l: usize) -> String {
    format!("model.decoder.layers.{l}.")
}

/// The key suffix (after the layer prefix, before `linear_in/out.weight`) of an adapter in the
/// NeMo 1.x naming the exporter writes.
pub fn adapter_suffix(a: NemoAdapter) -> &'static str {
    SUFFIXES
        .iter()
        .find(|(_, x)| *x == a)
        .map(|(s, _)| *s)
        .unwrap_or("")
}

/// Parses one state-dict key; `Err` carries the reason, for a message naming the key.
pub fn parse_key(key: &str) -> std::result::Result<NemoKey, &'static str> {
    let k = key
        .strip_prefix("model.module.")
        .map(|r| format!("model.{r}"))
        .unwrap_or_else(|| key.to_string());
    let (layout, rest) = if let Some(r) = k.strip_prefix("model.decoder.layers.") {
        (KeyLayout::Mcore, r)
    } else if let Some(r) = k.strip_prefix("model.language_model.encoder.layers.") {
        (KeyLayout::Legacy, r)
    } else if let Some(r) = k.strip_prefix("model.layers.") {
        (KeyLayout::Plain, r)
    } else {
        return Err(
            "not a decoder-layer adapter key (expected model.decoder.layers.N., \
                    model.language_model.encoder.layers.N. or model.layers.N.)",
        );
    };
    let (num, rest) = rest.split_once('.').ok_or("missing layer index")?;
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) || num.len() > 9 {
        return Err("bad layer index");
    }
    let layer: usize = num.parse().map_err(|_| "bad layer index")?;
    for (suffix, adapter) in SUFFIXES {
        if let Some(tail) = rest.strip_prefix(suffix) {
            let is_in = match tail {
                "linear_in.weight" => true,
                "linear_out.weight" => false,
                _ => return Err("expected linear_in.weight or linear_out.weight"),
            };
            return Ok(NemoKey {
                layout,
                layer,
                adapter: *adapter,
                is_in,
            });
        }
    }
    Err("unsupported NeMo adapter (only LoRA qkv/dense/fc1/fc2 and canonical q/k/v/gate/up)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_layouts() {
        let k = parse_key(
            "model.language_model.encoder.layers.2.self_attention.adapter_layer.lora_kqv_adapter.linear_out.weight",
        )
        .unwrap();
        assert_eq!(
            (k.layout, k.layer, k.adapter, k.is_in),
            (KeyLayout::Legacy, 2, NemoAdapter::FusedQkv, false)
        );
        let k = parse_key(
            "model.module.decoder.layers.0.mlp.adapter_layer.lora_unfused_hto4h_adapter.up_adapter.linear_in.weight",
        )
        .unwrap();
        assert_eq!(k.adapter, NemoAdapter::Single(LoraTarget::Up));
        assert!(parse_key(
            "model.decoder.layers.0.mlp.adapter_layer.lora_moe_hto4h_adapter.linear_in.weight"
        )
        .is_err());
        assert!(parse_key("model.decoder.layers.x.mlp").is_err());
        for a in [
            NemoAdapter::FusedQkv,
            NemoAdapter::FusedFc1,
            NemoAdapter::Single(LoraTarget::K),
        ] {
            let key = format!("{}{}linear_in.weight", mcore_prefix(1), adapter_suffix(a));
            assert_eq!(parse_key(&key).unwrap().adapter, a);
        }
    }
}
