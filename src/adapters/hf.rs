//! HuggingFace PEFT LoRA adapters: `adapter_config.json` plus `adapter_model.safetensors` or
//! `adapter_model.bin` (adapter-formats.md section 1).
//!
//! Tensor keys are accepted with or without the `base_model.model.` prefix and with an adapter
//! name segment before `weight` (`…lora_A.default.weight`). Only
//! `model.layers.{i}.self_attn.{q,k,v,o}_proj` and `model.layers.{i}.mlp.{gate,up,down}_proj`
//! `lora_A`/`lora_B` weights are accepted; every other key is refused with a message naming it
//! (DoRA magnitudes, LoRA biases, embedding / lm_head LoRA, `modules_to_save` copies, trainable
//! tokens, anything unknown). Each module needs both A `[r, in]` and B `[out, r]` with the same
//! `r`, and that `r` must equal the rank PEFT resolves from the config (`rank_pattern` or `r`).
//! Scales follow PEFT per module (see [`HfConfig::scale`]).

use std::collections::BTreeMap;
use std::path::Path;

use crate::adapters::hf_config::HfConfig;
use crate::adapters::normalize::{AdapterFormat, LoraModule, ModelShape, NormalizedAdapter};
use crate::adapters::safetensors_check::read_safetensors;
use crate::adapters::torch_pickle::read_torch_zip;
use crate::error::{Error, Result};
use crate::lora_target::LoraTarget;
use crate::tensor::HostTensor;

/// The weight file of an HF adapter, already read into memory.
#[derive(Debug, Clone, Copy)]
pub enum HfWeights<'a> {
    /// Contents of `adapter_model.safetensors`.
    Safetensors(&'a [u8]),
    /// Contents of `adapter_model.bin` (torch zip checkpoint).
    Bin(&'a [u8]),
}

/// Builds a [`NormalizedAdapter`] from an HF adapter's config and weight bytes, as found by
/// [`crate::adapters::load::detect_files`] (safetensors preferred over `.bin`, as vLLM does) and
/// read by [`crate::adapters::load::load_adapter`]. `generation` is left empty (the loader hashes
/// the files). Layer indices ≥ `shape.num_layers` are refused here
/// (so a hostile index cannot size an allocation); dimensions are checked by
/// [`crate::adapters::validate::validate`]. Errors are `INVALID_ADAPTER` naming the adapter and
/// the key or field at fault.
pub fn parse_hf(
    name: &str,
    source: &Path,
    config_json: &[u8],
    weights: HfWeights<'_>,
    shape: &ModelShape,
) -> Result<NormalizedAdapter> {
    let cfg = HfConfig::parse(config_json, name)?;
    let (tensors, format, file) = match weights {
        HfWeights::Safetensors(b) => (
            read_safetensors(b, "adapter_model.safetensors"),
            AdapterFormat::HfSafetensors,
            "adapter_model.safetensors",
        ),
        HfWeights::Bin(b) => (
            read_torch_zip(b, "adapter_model.bin"),
            AdapterFormat::HfBin,
            "adapter_model.bin",
        ),
    };
    let tensors = tensors.map_err(|e| e.context(format!("adapter '{name}'")))?;
    let ctx = |m: String| Error::invalid_adapter(format!("adapter '{name}': {file}: {m}"));

    // (layer, target) -> (module key, A, B)
    type Pair = (String, Option<HostTensor>, Option<HostTensor>);
    let mut pairs: BTreeMap<(usize, LoraTarget), Pair> = BTreeMap::new();
    for (key, t) in tensors {
        let k = parse_key(&key).map_err(ctx)?;
        if k.layer >= shape.num_layers {
            return Err(ctx(format!(
                "key '{key}' is for layer {}, but the model has {} layers (0..{})",
                k.layer,
                shape.num_layers,
                shape.num_layers.saturating_sub(1)
            )));
        }
        let e = pairs
            .entry((k.layer, k.target))
            .or_insert_with(|| (k.module.clone(), None, None));
        let slot = if k.is_b { &mut e.2 } else { &mut e.1 };
        if slot.is_some() {
            return Err(ctx(format!(
                "key '{key}' duplicates another key for module {}",
                k.module
            )));
        }
        *slot = Some(t);
    }
    if pairs.is_empty() {
        return Err(ctx("contains no LoRA tensors".into()));
    }

    let mut layers: Vec<[Option<LoraModule>; 7]> =
        (0..shape.num_layers).map(|_| Default::default()).collect();
    for ((layer, target), (module, a, b)) in pairs {
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (Some(_), None) => {
                return Err(ctx(format!("module {module} has lora_A but no lora_B")))
            }
            (None, Some(_)) => {
                return Err(ctx(format!("module {module} has lora_B but no lora_A")))
            }
            (None, None) => continue,
        };
        let (&[ra, in_dim], &[out_dim, rb]) = (a.shape.as_slice(), b.shape.as_slice()) else {
            return Err(ctx(format!(
                "module {module}: lora_A shape {:?} and lora_B shape {:?} must both be 2-D",
                a.shape, b.shape
            )));
        };
        if ra != rb {
            return Err(ctx(format!(
                "module {module}: rank mismatch, lora_A is [{ra}, {in_dim}] (rank {ra}) but \
                 lora_B is [{out_dim}, {rb}] (rank {rb})"
            )));
        }
        let (r_cfg, _) = cfg.rank_alpha(&module);
        if ra != r_cfg {
            return Err(ctx(format!(
                "module {module}: tensors have rank {ra} but adapter_config.json (r / \
                 rank_pattern) gives rank {r_cfg}"
            )));
        }
        let m = LoraModule {
            rank: ra,
            in_dim,
            out_dim,
            a: a.into_f32_vec(),
            b: b.into_f32_vec(),
            scale: cfg.scale(&module),
        };
        if let Some(slot) = layers
            .get_mut(layer)
            .and_then(|l| l.get_mut(target.index()))
        {
            *slot = Some(m);
        }
    }
    Ok(NormalizedAdapter {
        name: name.to_owned(),
        format,
        source: source.to_path_buf(),
        generation: String::new(),
        layers,
    })
}

/// A parsed LoRA tensor key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfKey {
    /// Module key without prefix, e.g. `model.layers.0.self_attn.q_proj`.
    pub module: String,
    /// Layer index.
    pub layer: usize,
    /// Target module.
    pub target: LoraTarget,
    /// `lora_B` (else `lora_A`).
    pub is_b: bool,
}

/// Parses one tensor key of a PEFT weight file. The error message names the key and why it is
/// refused (DoRA, bias, embedding/lm_head LoRA, modules_to_save copy, trainable tokens, unknown).
pub fn parse_key(key: &str) -> std::result::Result<HfKey, String> {
    let bare = key.strip_prefix("base_model.model.").unwrap_or(key);
    let refuse = |why: &str| Err(format!("tensor key '{key}': {why}"));
    if bare.contains("lora_magnitude_vector") || bare.contains("weight_m_wdecomp") {
        return refuse("DoRA magnitude vector (use_dora) is not supported");
    }
    if bare.contains("lora_embedding_A") || bare.contains("lora_embedding_B") {
        return refuse("embedding LoRA (lora_embedding_A/B on embed_tokens) is not supported");
    }
    if bare.contains("trainable_tokens") || bare.contains("token_adapter") {
        return refuse("trainable token embeddings (trainable_token_indices) are not supported");
    }
    if bare.contains("modules_to_save") || bare.contains("original_module") {
        return refuse("full module copy (modules_to_save) is not supported");
    }
    let parts: Vec<&str> = bare.split('.').collect();
    // Find the lora_A / lora_B component.
    let Some(li) = parts.iter().position(|p| *p == "lora_A" || *p == "lora_B") else {
        if bare.ends_with(".bias") {
            return refuse("a bias tensor (bias != \"none\") is not supported");
        }
        if bare.contains("embed_tokens") || bare.contains("lm_head") {
            return refuse(
                "full embedding / lm_head weight (modules_to_save or resized vocabulary) is not \
                 supported",
            );
        }
        return refuse("not a LoRA weight (expected <module>.lora_A.weight / lora_B.weight)");
    };
    let is_b = parts[li] == "lora_B";
    let tail = &parts[li + 1..];
    match tail {
        ["weight"] | [_, "weight"] => {}
        ["bias"] | [_, "bias"] => {
            return refuse("LoRA bias (lora_bias=true) is not supported");
        }
        _ => return refuse("unexpected suffix after lora_A/lora_B (expected .weight)"),
    }
    let module_parts = &parts[..li];
    let module = module_parts.join(".");
    match module_parts {
        ["model", "layers", idx, sub, proj] => {
            let layer: usize = idx
                .parse()
                .map_err(|_| format!("tensor key '{key}': layer index '{idx}' is not a number"))?;
            let target = match (*sub, *proj) {
                ("self_attn", "q_proj") => LoraTarget::Q,
                ("self_attn", "k_proj") => LoraTarget::K,
                ("self_attn", "v_proj") => LoraTarget::V,
                ("self_attn", "o_proj") => LoraTarget::O,
                ("mlp", "gate_proj") => LoraTarget::Gate,
                ("mlp", "up_proj") => LoraTarget::Up,
                ("mlp", "down_proj") => LoraTarget::Down,
                _ => {
                    return refuse(&format!(
                        "module '{sub}.{proj}' is not a supported LoRA target (q/k/v/o_proj, \
                         gate/up/down_proj)"
                    ))
                }
            };
            Ok(HfKey {
                module,
                layer,
                target,
                is_b,
            })
        }
        _ if module.ends_with("lm_head") || module.ends_with("embed_tokens") => {
            refuse("LoRA on lm_head / embed_tokens is not supported")
        }
        _ => refuse(&format!(
            "module '{module}' is not model.layers.<i>.(self_attn|mlp).<proj>"
        )),
    }
}
