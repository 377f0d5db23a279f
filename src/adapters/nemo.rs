//! NeMo `.nemo` LoRA adapters (docs/adapter-formats.md section 3).
//!
//! A NeMo adapter directory holds exactly one `*.nemo` file: a plain or gzip tar (see
//! [`crate::adapters::archive`]) with `model_config.yaml` and `model_weights.ckpt` (a torch zip
//! pickle, read with [`crate::adapters::torch_pickle::read_torch_zip`]).
//!
//! * Scale: `alpha / adapter_dim` from `peft.lora_tuning` (`alpha` defaults to `adapter_dim`).
//!   Every tensor rank must equal `adapter_dim`.
//! * Fused QKV `linear_out` (`[(nh + 2·nkv)·d, r]`) is de-interleaved per KV group (spec 3.5)
//!   into q/k/v modules that share one `A` (`linear_in`); fused fc1 `linear_out` is `[gate; up]`
//!   (spec 3.6), split in two sharing `A`. Dense → o_proj, fc2 → down_proj.
//! * Canonical variant: separate q/k/v/gate/up adapters are read as they are.
//! * Base-shape fields present in the YAML are checked against the served model.
//! * Tensor- or pipeline-parallel archives (more than one `model_weights.ckpt`, or
//!   `tensor_model_parallel_size` / `pipeline_model_parallel_size` > 1) are **refused** with a
//!   message asking for a TP=1/PP=1 export; a single `mp_rank_00/` or `tp_rank_00_pp_rank_000/`
//!   shard of a TP=PP=1 model is accepted.

use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml::Value;

use crate::adapters::archive::{read_tar_bytes, ArchiveLimits};
use crate::adapters::nemo_keys::{adapter_suffix, parse_key, KeyLayout, NemoAdapter};
use crate::adapters::normalize::{AdapterFormat, LoraModule, ModelShape, NormalizedAdapter};
use crate::error::{Error, Result};
use crate::lora_target::LoraTarget;

/// The `peft.lora_tuning` settings of a `.nemo` adapter that matter for inference.
#[derive(Debug, Clone, PartialEq)]
pub struct NemoLoraConfig {
    /// Rank (`adapter_dim`).
    pub adapter_dim: usize,
    /// `alpha` (defaults to `adapter_dim`).
    pub alpha: f64,
    /// `variant`: `"nemo"` (fused) or `"canonical"`.
    pub variant: String,
    /// Expanded target groups among `attention_qkv`, `attention_dense`, `mlp_fc1`, `mlp_fc2`.
    pub targets: Vec<String>,
}

/// A YAML value as it would be written (for messages).
fn show(v: &Value) -> String {
    serde_yaml::to_string(v)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("{v:?}"))
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .filter(|v| !v.is_null())
}

fn get_usize(v: &Value, path: &[&str], what: &str) -> Result<Option<usize>> {
    match get(v, path) {
        None => Ok(None),
        Some(x) => x
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                Error::invalid_adapter(format!(
                    "{what}: {} must be a non-negative integer, found {}",
                    path.join("."),
                    show(x)
                ))
            }),
    }
}

/// Parses `model_config.yaml` and checks it against the base model shape.
///
/// Errors: invalid YAML, not a LoRA PEFT config, bad `adapter_dim`/`alpha`/`variant`/
/// `target_modules`, `weight_tying`, TP/PP > 1, a base-shape field that differs from `shape`.
pub fn parse_model_config(bytes: &[u8], what: &str, shape: &ModelShape) -> Result<NemoLoraConfig> {
    let root: Value = serde_yaml::from_slice(bytes)
        .map_err(|e| Error::invalid_adapter(format!("{what}: invalid YAML: {e}")))?;
    if !root.is_mapping() {
        return Err(Error::invalid_adapter(format!(
            "{what}: root is not a mapping"
        )));
    }
    if let Some(s) = get(&root, &["peft", "peft_scheme"]) {
        if s.as_str().map(|s| s.to_ascii_lowercase()) != Some("lora".into()) {
            return Err(Error::unsupported(format!(
                "{what}: peft.peft_scheme is {}; only \"lora\" adapters are supported",
                show(s)
            )));
        }
    }
    let lt = get(&root, &["peft", "lora_tuning"]).ok_or_else(|| {
        Error::invalid_adapter(format!(
            "{what}: no peft.lora_tuning section (not a NeMo LoRA adapter)"
        ))
    })?;
    let adapter_dim = get_usize(lt, &["adapter_dim"], what)?
        .filter(|&r| r > 0)
        .ok_or_else(|| {
            Error::invalid_adapter(format!(
                "{what}: peft.lora_tuning.adapter_dim must be a positive integer"
            ))
        })?;
    let alpha = match get(lt, &["alpha"]) {
        None => adapter_dim as f64,
        Some(a) => a.as_f64().filter(|a| a.is_finite()).ok_or_else(|| {
            Error::invalid_adapter(format!(
                "{what}: peft.lora_tuning.alpha {} is not a number",
                show(a)
            ))
        })?,
    };
    let variant = match get(lt, &["variant"]) {
        None => "nemo".to_string(),
        Some(v) => match v.as_str() {
            Some(s @ ("nemo" | "canonical")) => s.to_string(),
            _ => {
                return Err(Error::invalid_adapter(format!(
                    "{what}: peft.lora_tuning.variant {} must be \"nemo\" or \"canonical\"",
                    show(v)
                )))
            }
        },
    };
    if get(lt, &["weight_tying"]).and_then(Value::as_bool) == Some(true) {
        return Err(Error::unsupported(format!(
            "{what}: peft.lora_tuning.weight_tying (shared adapter weights) is not supported"
        )));
    }
    let mut targets = Vec::new();
    let tm: Vec<String> = match get(lt, &["target_modules"]) {
        None => vec!["attention_qkv".into()],
        Some(Value::Sequence(s)) => s
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    Error::invalid_adapter(format!(
                        "{what}: peft.lora_tuning.target_modules entry {} is not a string",
                        show(x)
                    ))
                })
            })
            .collect::<Result<_>>()?,
        Some(x) => {
            return Err(Error::invalid_adapter(format!(
                "{what}: peft.lora_tuning.target_modules {} is not a list",
                show(x)
            )))
        }
    };
    for t in &tm {
        let add: &[&str] = match t.as_str() {
            "attention_qkv" => &["attention_qkv"],
            "attention_dense" => &["attention_dense"],
            "mlp_fc1" => &["mlp_fc1"],
            "mlp_fc2" => &["mlp_fc2"],
            "attention" => &["attention_qkv", "attention_dense"],
            "mlp" => &["mlp_fc1", "mlp_fc2"],
            "all" => &["attention_qkv", "attention_dense", "mlp_fc1", "mlp_fc2"],
            other => {
                return Err(Error::unsupported(format!(
                    "{what}: target module '{other}' is not supported (attention_qkv, \
                     attention_dense, mlp_fc1, mlp_fc2, attention, mlp, all)"
                )))
            }
        };
        for a in add {
            if !targets.iter().any(|x| x == a) {
                targets.push(a.to_string());
            }
        }
    }
    for key in ["tensor_model_parallel_size", "pipeline_model_parallel_size"] {
        if let Some(n) = get_usize(&root, &[key], what)? {
            if n > 1 {
                return Err(Error::unsupported(format!(
                    "{what}: {key} is {n}; tensor/pipeline-parallel .nemo adapters are not \
                     supported, export the adapter with TP=1 and PP=1"
                )));
            }
        }
    }
    let heads = get_usize(&root, &["num_attention_heads"], what)?;
    let checks = [
        (
            "num_layers",
            get_usize(&root, &["num_layers"], what)?,
            shape.num_layers,
        ),
        (
            "hidden_size",
            get_usize(&root, &["hidden_size"], what)?,
            shape.hidden_size,
        ),
        (
            "ffn_hidden_size",
            get_usize(&root, &["ffn_hidden_size"], what)?,
            shape.intermediate_size,
        ),
        ("num_attention_heads", heads, shape.num_heads),
        (
            "num_query_groups",
            get_usize(&root, &["num_query_groups"], what)?.or(heads),
            shape.num_kv_heads,
        ),
        (
            "kv_channels",
            get_usize(&root, &["kv_channels"], what)?,
            shape.head_dim,
        ),
    ];
    for (field, got, want) in checks {
        if let Some(got) = got {
            if got != want {
                return Err(Error::invalid_adapter(format!(
                    "{what}: {field} is {got} but the base model has {want}"
                )));
            }
        }
    }
    if targets.iter().any(|t| t == "mlp_fc1") {
        if let Some(act) = get(&root, &["activation"]).and_then(Value::as_str) {
            if !act.contains("glu") {
                return Err(Error::invalid_adapter(format!(
                    "{what}: activation '{act}' is not gated; a Llama model needs a gated \
                     (swiglu) fc1 to split into gate/up"
                )));
            }
        }
    }
    Ok(NemoLoraConfig {
        adapter_dim,
        alpha,
        variant,
        targets,
    })
}

/// Splits a fused Megatron QKV `linear_out` (`[(nh + 2·nkv)·d, r]`, interleaved per KV group:
/// group j = `[q heads j·g..j·g+g; k head j; v head j]`, g = nh/nkv) into `(B_q, B_k, B_v)`.
///
/// The caller guarantees `b.len() == (nh + 2·nkv)·d·r` and `nh % nkv == 0`.
pub fn deinterleave_qkv(b: &[f32], r: usize, shape: &ModelShape) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (nh, nkv, d) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
    let g = nh / nkv.max(1);
    let hs = d * r;
    let (mut q, mut k, mut v) = (vec![0.0; nh * hs], vec![0.0; nkv * hs], vec![0.0; nkv * hs]);
    for (s, src) in b.chunks_exact(hs).enumerate().take(nh + 2 * nkv) {
        let (j, i) = (s / (g + 2), s % (g + 2));
        let (dst, h) = if i < g {
            (&mut q, j * g + i)
        } else if i == g {
            (&mut k, j)
        } else {
            (&mut v, j)
        };
        if let Some(d) = dst.get_mut(h * hs..(h + 1) * hs) {
            d.copy_from_slice(src);
        }
    }
    (q, k, v)
}

/// Inverse of [`deinterleave_qkv`]: builds the per-KV-group interleaved fused `linear_out`.
pub fn interleave_qkv(q: &[f32], k: &[f32], v: &[f32], r: usize, shape: &ModelShape) -> Vec<f32> {
    let (nh, nkv, d) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
    let g = nh / nkv.max(1);
    let hs = d * r;
    let mut out = Vec::with_capacity((nh + 2 * nkv) * hs);
    for j in 0..nkv {
        for i in 0..g {
            let h = j * g + i;
            out.extend_from_slice(q.get(h * hs..(h + 1) * hs).unwrap_or(&[]));
        }
        out.extend_from_slice(k.get(j * hs..(j + 1) * hs).unwrap_or(&[]));
        out.extend_from_slice(v.get(j * hs..(j + 1) * hs).unwrap_or(&[]));
    }
    out
}

/// Picks the weights member: `model_weights.ckpt`, or the single rank-0 shard of a TP=PP=1
/// model. Several shards → refused (TP/PP merging is not implemented).
fn weights_member(members: &BTreeMap<String, Vec<u8>>, what: &str) -> Result<String> {
    let cands: Vec<&String> = members
        .keys()
        .filter(|k| k.rsplit('/').next() == Some("model_weights.ckpt"))
        .collect();
    match cands.as_slice() {
        [] => Err(Error::invalid_adapter(format!(
            "{what}: missing model_weights.ckpt (a NeMo 2 distributed checkpoint is not an \
             adapter .nemo)"
        ))),
        [one] => {
            let ok = match one.split_once('/') {
                None => true,
                Some((dir, _)) => dir == "mp_rank_00" || dir == "tp_rank_00_pp_rank_000",
            };
            if ok {
                Ok((*one).clone())
            } else {
                Err(Error::invalid_adapter(format!(
                    "{what}: unexpected weights member '{one}'"
                )))
            }
        }
        many => {
            Err(Error::unsupported(format!(
            "{what}: tensor/pipeline-parallel shards ({}) are not supported; export the adapter \
             with TP=1 and PP=1",
            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )))
        }
    }
}

fn target_group(a: NemoAdapter) -> &'static str {
    match a {
        NemoAdapter::FusedQkv
        | NemoAdapter::Single(LoraTarget::Q | LoraTarget::K | LoraTarget::V) => "attention_qkv",
        NemoAdapter::Single(LoraTarget::O) => "attention_dense",
        NemoAdapter::FusedFc1 | NemoAdapter::Single(LoraTarget::Gate | LoraTarget::Up) => "mlp_fc1",
        NemoAdapter::Single(LoraTarget::Down) => "mlp_fc2",
    }
}

/// Parses the bytes of `.nemo` archive `file` (plain or gzip tar) of the adapter in `dir` into
/// the normalised form; the bytes were found by [`crate::adapters::load::detect_files`] and read
/// by [`crate::adapters::load::load_adapter`] (one `*.nemo` file per directory).
///
/// `generation` is left empty (the loader fills it). Errors name the archive and the member or
/// key at fault: unsafe archives (see [`crate::adapters::archive`]), missing or invalid
/// `model_config.yaml`, missing `model_weights.ckpt`, TP/PP shards, unknown keys, mixed key
/// layouts, missing `linear_in`/`linear_out` halves, shapes that do not fit the base model,
/// ranks that differ from `adapter_dim`, and two adapters for the same module.
pub fn parse_nemo(
    dir: &Path,
    file: &Path,
    bytes: &[u8],
    name: &str,
    shape: &ModelShape,
) -> Result<NormalizedAdapter> {
    let what = file.display().to_string();
    let members = read_tar_bytes(
        bytes,
        &what,
        ArchiveLimits::for_compressed(bytes.len() as u64),
    )?;
    let cfg_bytes = members.get("model_config.yaml").ok_or_else(|| {
        Error::invalid_adapter(format!("{what}: missing model_config.yaml in the archive"))
    })?;
    let cfg = parse_model_config(cfg_bytes, &format!("{what}: model_config.yaml"), shape)?;
    let wname = weights_member(&members, &what)?;
    let wwhat = format!("{what}: {wname}");
    let ckpt = members.get(&wname).map(Vec::as_slice).unwrap_or(&[]);
    let tensors = crate::adapters::torch_pickle::read_torch_zip(ckpt, &wwhat)?;
    if shape.num_kv_heads == 0 || !shape.num_heads.is_multiple_of(shape.num_kv_heads) {
        return Err(Error::invalid_argument(format!(
            "model shape: {} heads not divisible by {} KV heads",
            shape.num_heads, shape.num_kv_heads
        )));
    }
    // (layer, adapter) -> (A, B) with shapes.
    type Half = Option<(Vec<usize>, Vec<f32>)>;
    let mut pairs: BTreeMap<(usize, NemoAdapter), (Half, Half)> = BTreeMap::new();
    let mut layout: Option<KeyLayout> = None;
    for (key, t) in tensors {
        let k = parse_key(&key)
            .map_err(|why| Error::invalid_adapter(format!("{wwhat}: key '{key}': {why}")))?;
        match layout {
            None => layout = Some(k.layout),
            Some(l) if l != k.layout => {
                return Err(Error::invalid_adapter(format!(
                    "{wwhat}: key '{key}' mixes layer-prefix layouts ({l:?} and {:?})",
                    k.layout
                )))
            }
            _ => {}
        }
        if k.layer >= shape.num_layers {
            return Err(Error::invalid_adapter(format!(
                "{wwhat}: key '{key}': layer {} out of range (model has {} layers)",
                k.layer, shape.num_layers
            )));
        }
        let group = target_group(k.adapter);
        if !cfg.targets.iter().any(|t| t == group) {
            return Err(Error::invalid_adapter(format!(
                "{wwhat}: key '{key}' adapts {group}, which is not in target_modules {:?}",
                cfg.targets
            )));
        }
        let entry = pairs.entry((k.layer, k.adapter)).or_default();
        let slot = if k.is_in { &mut entry.0 } else { &mut entry.1 };
        if slot.is_some() {
            return Err(Error::invalid_adapter(format!(
                "{wwhat}: key '{key}' appears twice"
            )));
        }
        let tshape = t.shape.clone();
        *slot = Some((tshape, t.into_f32_vec()));
    }
    if pairs.is_empty() {
        return Err(Error::invalid_adapter(format!(
            "{wwhat}: no adapter tensors"
        )));
    }
    let r = cfg.adapter_dim;
    let scale = (cfg.alpha / r as f64) as f32;
    let mut layers: Vec<[Option<LoraModule>; 7]> = vec![Default::default(); shape.num_layers];
    for ((layer, adapter), (a, b)) in pairs {
        let label = format!(
            "{wwhat}: layer {layer} {}",
            adapter_suffix(adapter).trim_end_matches('.')
        );
        let (Some((ashape, a)), Some((bshape, b))) = (a, b) else {
            return Err(Error::invalid_adapter(format!(
                "{label}: needs both linear_in.weight and linear_out.weight"
            )));
        };
        let (in_dim, out_dim) = match adapter {
            NemoAdapter::Single(t) => shape.module_dims(t),
            NemoAdapter::FusedQkv => {
                let (i, q) = shape.module_dims(LoraTarget::Q);
                (i, q + 2 * shape.module_dims(LoraTarget::K).1)
            }
            NemoAdapter::FusedFc1 => (shape.hidden_size, 2 * shape.intermediate_size),
        };
        if ashape != [r, in_dim] || bshape != [out_dim, r] {
            return Err(Error::invalid_adapter(format!(
                "{label}: linear_in {ashape:?} / linear_out {bshape:?} do not match the \
                 expected [{r}, {in_dim}] / [{out_dim}, {r}] (adapter_dim {r})"
            )));
        }
        let parts: Vec<(LoraTarget, Vec<f32>)> = match adapter {
            NemoAdapter::Single(t) => vec![(t, b)],
            NemoAdapter::FusedQkv => {
                let (q, k, v) = deinterleave_qkv(&b, r, shape);
                vec![(LoraTarget::Q, q), (LoraTarget::K, k), (LoraTarget::V, v)]
            }
            NemoAdapter::FusedFc1 => {
                let (g, u) = b.split_at(shape.intermediate_size * r);
                vec![(LoraTarget::Gate, g.to_vec()), (LoraTarget::Up, u.to_vec())]
            }
        };
        for (t, bt) in parts {
            let slot = &mut layers[layer][t.index()];
            if slot.is_some() {
                return Err(Error::invalid_adapter(format!(
                    "{label}: layer {layer} {} is given by two adapters (fused and canonical)",
                    t.hf_name()
                )));
            }
            *slot = Some(LoraModule {
                rank: r,
                in_dim,
                out_dim: bt.len() / r,
                a: a.clone(),
                b: bt,
                scale,
            });
        }
    }
    Ok(NormalizedAdapter {
        name: name.to_string(),
        format: AdapterFormat::Nemo,
        source: dir.to_path_buf(),
        generation: String::new(),
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    #[test]
    fn qkv_interleave_roundtrip_and_order() {
        let shape = ModelShape {
            num_layers: 1,
            hidden_size: 8,
            intermediate_size: 8,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 1,
            dtype: DType::F32,
        };
        // r = 1, d = 1: fused rows are [q0 q1 k0 v0 q2 q3 k1 v1].
        let fused = [10.0, 11.0, 20.0, 30.0, 12.0, 13.0, 21.0, 31.0];
        let (q, k, v) = deinterleave_qkv(&fused, 1, &shape);
        assert_eq!(q, vec![10.0, 11.0, 12.0, 13.0]);
        assert_eq!(k, vec![20.0, 21.0]);
        assert_eq!(v, vec![30.0, 31.0]);
        assert_eq!(interleave_qkv(&q, &k, &v, 1, &shape), fused.to_vec());
    }
}
