//! GGUF base models: container parsing ([`reader`]), dequantization ([`dequant`]), llama.cpp's
//! q/k permutation ([`permute`]) and the tokenizer from metadata ([`tokenizer`]).
//!
//! [`load_gguf`] turns a `general.architecture = "llama"`, `"qwen2"` or `"qwen3"` GGUF file into
//! [`ModelFiles`] in HuggingFace naming and layout: block-quantized matrices stay in their ggml
//! blocks ([`HostTensor::quantized`]; backends compute on them directly), everything else is
//! expanded to f32.

pub mod permute;
pub mod reader;
pub mod requantize;
pub mod tokenizer;
pub mod writer;

/// ggml block types and dequantization live in [`crate::quant`]; re-exported under their old paths.
pub use crate::quant::{dequant, types};

use std::path::Path;

pub use crate::quant::dequantize;
pub use crate::quant::GgmlType;
pub use permute::{permute_qk, unpermute_qk, unpermute_rows};
pub use reader::{GgufFile, MetaValue, TensorInfo};
pub use writer::GgufWriter;

use super::header::TensorLayout;
use super::{Architecture, ModelConfig, ModelFiles, RopeScaling, TensorMap};
use crate::backend::reference::quant_block::is_kernel_type;
use crate::error::{Error, Result};
use crate::quant::QuantData;
use crate::tensor::HostTensor;

/// Loads a Llama-family GGUF file (v2/v3; `general.architecture` llama, qwen2 or qwen3): config
/// from `{arch}.*` metadata, tensors under their HF names (q/k rows of `llama` files un-permuted
/// to HF order, as whole rows; llama.cpp does not permute qwen2/qwen3) — 2-D tensors of a
/// block-quantized type kept in their blocks, the rest dequantized to f32 — tokenizer and chat
/// template from `tokenizer.*` metadata. [`crate::tensor::HostTensor::to_f32_vec`] expands a kept
/// tensor exactly as the f32 path would have. `rope_freqs.weight` (llama3 frequency factors)
/// becomes the config's [`RopeScaling::FreqFactors`].
///
/// Errors (every message starts with the file path and names the key or tensor at fault):
/// IO if the file cannot be read; INVALID_MODEL for a malformed/truncated file, missing or
/// ill-typed keys, missing tensors, wrong shapes or a tensor the model does not use (biases of a
/// llama file, extra layers...); UNSUPPORTED for another architecture (naming it), a tensor type
/// outside F32/F16/BF16 and the quantized kernel types (naming tensor and type), or a tokenizer
/// model or pre-tokenizer [`tokenizer::build_tokenizer`] does not know.
/// `llama.attention.sliding_window` (0 = none) becomes the config's window (every layer).
pub fn load_gguf(path: &Path) -> Result<ModelFiles> {
    let g = GgufFile::open(path)?;
    load_parsed(&g).map_err(|e| e.context(path.display()))
}

fn load_parsed(g: &GgufFile) -> Result<ModelFiles> {
    let config = model_config(g)?;
    let plan = checked_tensors(g, &config)?;
    let mut tensors = TensorMap::with_capacity(plan.len());
    for (info, hf) in plan {
        let name_err = |e: Error| e.context(format!("tensor \"{}\"", info.name));
        let bytes = g.read_tensor_bytes(info)?;
        let n = usize::try_from(info.n_elements)
            .map_err(|_| Error::invalid_model("too many elements").context(&info.name))?;
        let shape = info.shape();
        let heads = if !config.architecture.gguf_permutes_qk() {
            None
        } else if info.name.ends_with(".attn_q.weight") {
            Some(config.num_heads)
        } else if info.name.ends_with(".attn_k.weight") {
            Some(config.num_kv_heads)
        } else {
            None
        };
        let tensor = match shape.as_slice() {
            // Block-quantized matrices stay in their blocks; q/k rows move as whole rows.
            [rows, cols] if kept_quantized(info) => {
                let mut q = QuantData::new(info.ggml_type, *rows, *cols, bytes).map_err(|e| {
                    Error::invalid_model(e.message()).context(format!("tensor \"{}\"", info.name))
                })?;
                if let Some(n_head) = heads {
                    let src = unpermute_rows(*rows, n_head).map_err(name_err)?;
                    q = q.permute_rows(|r| src[r]).map_err(name_err)?;
                }
                HostTensor::quantized(q)
            }
            _ => {
                let mut data = dequantize(info.ggml_type, &bytes, n).map_err(name_err)?;
                drop(bytes);
                if let (Some(n_head), [rows, cols]) = (heads, shape.as_slice()) {
                    data = unpermute_qk(&data, *rows, *cols, n_head).map_err(name_err)?;
                }
                HostTensor::f32(shape, data)
            }
        };
        tensors.insert(hf, tensor);
    }
    let tokenizer = tokenizer::build_tokenizer(g)?;
    Ok(ModelFiles {
        config,
        tensors,
        tokenizer,
    })
}

/// The model's config and, for every tensor the model uses, its HF name, HF shape and the ggml
/// type it is kept in (`None`: expanded to f32), read from the header of the GGUF file at `path`
/// alone (no tensor data; for the capacity planner). The same checks as [`load_gguf`] run on the
/// header, with the same errors.
pub fn read_layout(path: &Path) -> Result<(ModelConfig, Vec<TensorLayout>)> {
    let inner = || -> Result<_> {
        let g = GgufFile::open(path)?;
        let config = model_config(&g)?;
        let layouts = checked_tensors(&g, &config)?
            .into_iter()
            .map(|(info, hf)| TensorLayout {
                name: hf,
                shape: info.shape(),
                quant: kept_quantized(info).then_some(info.ggml_type),
            })
            .collect();
        Ok((config, layouts))
    };
    inner().map_err(|e| e.context(path.display()))
}

/// Whether the loader keeps a tensor in its ggml blocks: a 2-D matrix of a type the quantized
/// kernels compute on. Every other tensor is expanded to f32.
fn kept_quantized(info: &TensorInfo) -> bool {
    info.dims.len() == 2 && is_kernel_type(info.ggml_type)
}

/// Maps every tensor of `g` to its HF name and checks it against the model of `config` (used,
/// loadable, the expected shape; none missing) before any data is read.
fn checked_tensors<'g>(
    g: &'g GgufFile,
    config: &ModelConfig,
) -> Result<Vec<(&'g TensorInfo, String)>> {
    let arch = config.architecture.gguf_name();
    super::layout::check_layer_count(config, g.tensors.len(), &format!("{arch}.block_count"))?;
    // Map and check every tensor before reading any data.
    let mut plan = Vec::with_capacity(g.tensors.len());
    for info in &g.tensors {
        if info.name == ROPE_FREQS {
            // Read by model_config into the config's RoPE scaling.
            continue;
        }
        let hf = hf_name(&info.name).ok_or_else(|| {
            // Same rule and code as model::layout::account_tensors: an unused tensor is
            // INVALID_MODEL naming it.
            Error::invalid_model(format!(
                "tensor \"{}\" not used by a {} model (loraplex refuses a checkpoint it would apply only in part: extra tensors are not supported)",
                info.name, config.architecture
            ))
        })?;
        if !loadable(info) {
            return Err(Error::unsupported(format!(
                "tensor \"{}\" has type {} which is not supported ({} are)",
                info.name,
                info.ggml_type,
                crate::quant::dequant::supported_names()
            )));
        }
        plan.push((info, hf));
    }
    let mut expected: std::collections::HashMap<String, Vec<usize>> =
        super::layout::expected_tensors(config)
            .into_iter()
            .collect();
    for (info, hf) in &plan {
        let Some(shape) = expected.remove(hf) else {
            return Err(Error::invalid_model(format!(
                "tensor \"{}\" ({hf}) is not used by a {}-layer {} model",
                info.name, config.num_layers, config.architecture
            )));
        };
        if info.shape() != shape {
            return Err(Error::invalid_model(format!(
                "tensor \"{}\" ({hf}) has shape {:?}, expected {shape:?} for this config",
                info.name,
                info.shape()
            )));
        }
    }
    if let Some(hf) = expected.keys().min() {
        return Err(Error::invalid_model(format!(
            "missing tensor \"{}\" ({hf})",
            gguf_name(hf)
        )));
    }
    Ok(plan)
}

/// Whether a tensor can be loaded: dense types always; a 2-D matrix of a type the quantized
/// kernels compute on (kept in its blocks); any other tensor of a type [`dequantize`] expands.
fn loadable(info: &TensorInfo) -> bool {
    let ty = info.ggml_type;
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
        || (info.shape().len() == 2 && is_kernel_type(ty))
        || ty.is_dequantizable()
}

fn meta_usize(g: &GgufFile, key: &str) -> Result<Option<usize>> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| {
                Error::invalid_model(format!(
                    "metadata key \"{key}\" is {v:?}, expected a non-negative integer"
                ))
            }),
    }
}

fn meta_f32(g: &GgufFile, key: &str) -> Result<Option<f32>> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v.as_f64().map(|x| Some(x as f32)).ok_or_else(|| {
            Error::invalid_model(format!(
                "metadata key \"{key}\" is {v:?}, expected a number"
            ))
        }),
    }
}

fn required<T>(v: Option<T>, key: &str) -> Result<T> {
    v.ok_or_else(|| Error::invalid_model(format!("missing metadata key \"{key}\"")))
}

/// The llama3 RoPE frequency factors tensor llama.cpp's converter writes (`[head_dim / 2]`).
pub const ROPE_FREQS: &str = "rope_freqs.weight";

/// Reads [`ModelConfig`] from `{arch}.*` and `tokenizer.ggml.*` metadata (and the small
/// `rope_freqs.weight` tensor). Errors: UNSUPPORTED for an architecture other than llama, qwen2,
/// qwen3 (naming it), an unsupported RoPE scaling, or a sliding window on a qwen file (Qwen's
/// windows are per layer, which GGUF does not say); INVALID_MODEL for missing or ill-typed keys,
/// bad `rope_freqs` values and an inconsistent config.
pub fn model_config(g: &GgufFile) -> Result<ModelConfig> {
    let arch = match g.get("general.architecture") {
        None => {
            return Err(Error::invalid_model(
                "missing metadata key \"general.architecture\"",
            ))
        }
        Some(v) => v.as_str().ok_or_else(|| {
            Error::invalid_model("metadata key \"general.architecture\" is not a string")
        })?,
    };
    let architecture = Architecture::from_gguf(arch)?;
    let key = |k: &str| format!("{arch}.{k}");
    let u = |k: &str| meta_usize(g, &key(k));
    let f = |k: &str| meta_f32(g, &key(k));
    let hidden_size = required(u("embedding_length")?, &key("embedding_length"))?;
    let num_heads = required(u("attention.head_count")?, &key("attention.head_count"))?;
    let head_dim = match u("attention.key_length")? {
        Some(k) => k,
        None if num_heads > 0 => hidden_size / num_heads,
        None => 0,
    };
    if let Some(vl) = u("attention.value_length")? {
        if vl != head_dim {
            return Err(Error::unsupported(format!(
                "{arch}.attention.value_length ({vl}) differs from the key length ({head_dim})"
            )));
        }
    }
    let rope_scaling = match rope_freq_factors(g, head_dim)? {
        None => rope_scaling(g, arch)?,
        Some(factors) => match rope_scaling(g, arch)? {
            RopeScaling::None => RopeScaling::FreqFactors(factors),
            other => {
                return Err(Error::invalid_model(format!(
                    "tensor \"{ROPE_FREQS}\" and {arch}.rope.scaling.type ({other:?}) both scale \
                     RoPE; a file must use one"
                )))
            }
        },
    };
    // llama.cpp writes 0 for "no window".
    let sliding_window = u("attention.sliding_window")?.filter(|&w| w > 0);
    if sliding_window.is_some() && architecture != Architecture::Llama {
        return Err(Error::unsupported(format!(
            "{arch}.attention.sliding_window: {architecture} applies its window only on some \
             layers (layer_types), which a GGUF file does not record; load the HuggingFace \
             directory instead"
        )));
    }
    let vocab_size = match g.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array(a)) => a.len(),
        Some(_) => {
            return Err(Error::invalid_model(
                "metadata key \"tokenizer.ggml.tokens\" is not an array",
            ))
        }
        None => required(u("vocab_size")?, "tokenizer.ggml.tokens")?,
    };
    let id = |k: &str| -> Result<Option<u32>> {
        Ok(meta_usize(g, k)?.and_then(|x| u32::try_from(x).ok()))
    };
    let mut eos_token_ids = eos_ids(g)?;
    if let Some(eot) = id("tokenizer.ggml.eot_token_id")? {
        if !eos_token_ids.contains(&eot) {
            eos_token_ids.push(eot);
        }
    }
    let cfg = ModelConfig {
        architecture,
        hidden_size,
        intermediate_size: required(u("feed_forward_length")?, &key("feed_forward_length"))?,
        num_layers: required(u("block_count")?, &key("block_count"))?,
        num_heads,
        num_kv_heads: u("attention.head_count_kv")?.unwrap_or(num_heads),
        head_dim,
        vocab_size,
        rms_norm_eps: required(
            f("attention.layer_norm_rms_epsilon")?,
            &key("attention.layer_norm_rms_epsilon"),
        )?,
        rope_theta: f("rope.freq_base")?.unwrap_or(10000.0),
        rope_scaling,
        max_position_embeddings: required(u("context_length")?, &key("context_length"))?,
        sliding_window,
        sliding_layers: None,
        tie_word_embeddings: g.tensor("output.weight").is_none(),
        bos_token_id: id("tokenizer.ggml.bos_token_id")?,
        eos_token_ids,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// `tokenizer.ggml.eos_token_id`: absent, one id, or an array of ids (each one stops
/// generation). Errors name the key (and the element) that is not a token id.
fn eos_ids(g: &GgufFile) -> Result<Vec<u32>> {
    const KEY: &str = "tokenizer.ggml.eos_token_id";
    let as_id = |v: &MetaValue| v.as_u64().and_then(|x| u32::try_from(x).ok());
    match g.get(KEY) {
        None => Ok(Vec::new()),
        Some(MetaValue::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                as_id(v).ok_or_else(|| {
                    Error::invalid_model(format!(
                        "metadata key \"{KEY}\"[{i}] is {v:?}, expected a token id"
                    ))
                })
            })
            .collect(),
        Some(v) => as_id(v).map(|x| vec![x]).ok_or_else(|| {
            Error::invalid_model(format!(
                "metadata key \"{KEY}\" is {v:?}, expected a token id or an array of them"
            ))
        }),
    }
}

/// The `rope_freqs.weight` tensor's values, if the file has one: `head_dim / 2` positive finite
/// divisors of the RoPE frequencies (any float type). Errors (INVALID_MODEL) name the tensor.
fn rope_freq_factors(g: &GgufFile, head_dim: usize) -> Result<Option<Vec<f32>>> {
    let Some(info) = g.tensor(ROPE_FREQS) else {
        return Ok(None);
    };
    let ctx = |e: Error| e.context(format!("tensor \"{ROPE_FREQS}\""));
    if info.shape() != [head_dim / 2] || !info.ggml_type.is_dequantizable() {
        return Err(Error::invalid_model(format!(
            "tensor \"{ROPE_FREQS}\" must be a float vector of head_dim / 2 = {} values, got \
             shape {:?} type {}",
            head_dim / 2,
            info.shape(),
            info.ggml_type
        )));
    }
    let bytes = g.read_tensor_bytes(info).map_err(ctx)?;
    let factors = dequantize(info.ggml_type, &bytes, head_dim / 2).map_err(ctx)?;
    if let Some(bad) = factors.iter().find(|f| !f.is_finite() || **f <= 0.0) {
        return Err(Error::invalid_model(format!(
            "tensor \"{ROPE_FREQS}\" holds {bad}; RoPE frequency factors must be positive and \
             finite"
        )));
    }
    Ok(Some(factors))
}

fn rope_scaling(g: &GgufFile, arch: &str) -> Result<RopeScaling> {
    let type_key = format!("{arch}.rope.scaling.type");
    let kind = match g.get(&type_key) {
        None => None,
        Some(v) => Some(v.as_str().ok_or_else(|| {
            Error::invalid_model(format!("metadata key \"{type_key}\" is not a string"))
        })?),
    };
    let factor = meta_f32(g, &format!("{arch}.rope.scaling.factor"))?;
    let legacy = meta_f32(g, &format!("{arch}.rope.scale_linear"))?;
    match kind {
        None => match legacy {
            Some(l) if l != 1.0 => Ok(RopeScaling::Linear { factor: l }),
            _ => Ok(RopeScaling::None),
        },
        Some("none") => Ok(RopeScaling::None),
        Some("linear") => match factor {
            Some(1.0) => Ok(RopeScaling::None),
            Some(f) if f > 0.0 => Ok(RopeScaling::Linear { factor: f }),
            _ => Err(Error::invalid_model(format!(
                "{type_key} = \"linear\" needs a positive {arch}.rope.scaling.factor"
            ))),
        },
        Some(other) => Err(Error::unsupported(format!(
            "{type_key} = \"{other}\" is not supported (none, linear)"
        ))),
    }
}

/// The HF tensor name for a GGUF Llama tensor name, or `None` if it has no HF counterpart here.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = tail.rsplit_once('.')?;
    if kind != "weight" && !(kind == "bias" && BIASED.contains(&module)) {
        return None;
    }
    let hf = LAYER_NAMES.iter().find(|(g, _)| *g == module)?.1;
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// The GGUF name for an HF name produced by [`hf_name`] (for messages).
fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let parsed = hf
        .strip_prefix("model.layers.")
        .and_then(|r| r.split_once('.'))
        .and_then(|(l, t)| Some((l, t.rsplit_once('.')?)))
        .and_then(|(l, (t, kind))| Some((l, LAYER_NAMES.iter().find(|(_, h)| *h == t)?.0, kind)));
    match parsed {
        Some((l, g, kind)) => format!("blk.{l}.{g}.{kind}"),
        None => hf.to_string(),
    }
}

/// (GGUF per-layer module, HF per-layer module).
const LAYER_NAMES: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
];

/// GGUF per-layer modules that may carry a `.bias` (Qwen2's q/k/v).
const BIASED: &[&str] = &["attn_q", "attn_k", "attn_v"];
