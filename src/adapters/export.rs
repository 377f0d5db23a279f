//! Writes a [`NormalizedAdapter`] as an adapter directory in any supported on-disk format.
//!
//! Used by `examples/gen_sample_adapters.rs` and by tests to produce NeMo / TensorRT-LLM / HF
//! files carrying the same weights. Layouts follow docs/adapter-formats.md:
//!
//! * HF PEFT: `adapter_config.json` + `adapter_model.safetensors` (f32) or `adapter_model.bin`
//!   (torch zip pickle, f32). `r` / `lora_alpha` are the most common (rank, scale·rank) pair;
//!   modules that differ get `rank_pattern` / `alpha_pattern` entries keyed by their full module
//!   path (`model.layers.N.self_attn.q_proj`), so PEFT's per-module scale equals each module's
//!   scale. (vLLM ignores the patterns; the adapters this crate generates are uniform.)
//! * NeMo: `<dir>/adapter.nemo`, an uncompressed tar of `./model_config.yaml` and
//!   `./model_weights.ckpt` (mcore keys `model.decoder.layers.N.…`). NeMo has one
//!   `adapter_dim`/`alpha`, so every module must share one rank and one scale. The fused variant
//!   interleaves q/k/v per KV group into `lora_kqv_adapter` and stacks `[gate; up]` into
//!   `lora_hto4h_adapter`; that requires q/k/v (and gate/up) of a layer to be all present and
//!   share one `A`, otherwise it errors (use the canonical variant).
//! * TensorRT-LLM: `model.lora_config` rows `[module_id, layer, rank]` (int32) and
//!   `model.lora_weights` rows `[A, scale·B, zero padding]` in the base model dtype
//!   (`ModelShape::dtype`; bf16 `.npy` is written as `|V2`). `TrtNpy { shuffle_rows: true }`
//!   permutes the rows with a fixed seed (readers must look rows up by `(module, layer)`).

use std::collections::BTreeMap;
use std::path::Path;

use half::{bf16, f16};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::adapters::nemo::interleave_qkv;
use crate::adapters::nemo_keys::{adapter_suffix, mcore_prefix, NemoAdapter};
use crate::adapters::normalize::{LoraModule, ModelShape, NormalizedAdapter};
use crate::adapters::npy::{encode_npy, NpyDType};
use crate::adapters::trtllm::module_id;
use crate::error::{Error, Result};
use crate::lora_target::LoraTarget;
use crate::tensor::DType;

mod torch_zip;

pub use torch_zip::{write_torch_zip, TorchTensor};

/// The on-disk format [`export`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// HF PEFT with `adapter_model.safetensors`.
    HfSafetensors,
    /// HF PEFT with `adapter_model.bin` (torch zip pickle).
    HfBin,
    /// NeMo `.nemo`, `variant: nemo` (fused QKV and fc1).
    NemoFused,
    /// NeMo `.nemo`, `variant: canonical` (separate q/k/v/gate/up adapters).
    NemoCanonical,
    /// TensorRT-LLM `.npy` pair; `shuffle_rows` permutes the rows deterministically.
    TrtNpy {
        /// Write the rows in a seeded random order instead of (layer, module) order.
        shuffle_rows: bool,
    },
    /// TensorRT-LLM headerless `.bin` pair (config int32 rows of 3, weights in the model dtype).
    TrtBin,
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::io(path, e)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| io(path, e))
}

/// The HF module path of a target in layer `l` (`model.layers.l.self_attn.q_proj`).
pub fn hf_module_path(l: usize, t: LoraTarget) -> String {
    let part = match t {
        LoraTarget::Gate | LoraTarget::Up | LoraTarget::Down => "mlp",
        _ => "self_attn",
    };
    format!("model.layers.{l}.{part}.{}", t.hf_name())
}

/// Checks every module against the model shape (dimensions and buffer lengths).
fn check(adapter: &NormalizedAdapter, shape: &ModelShape) -> Result<()> {
    if adapter.layers.len() != shape.num_layers {
        return Err(Error::invalid_argument(format!(
            "export: adapter '{}' has {} layers, model shape has {}",
            adapter.name,
            adapter.layers.len(),
            shape.num_layers
        )));
    }
    if adapter.modules().next().is_none() {
        return Err(Error::invalid_argument(format!(
            "export: adapter '{}' has no modules",
            adapter.name
        )));
    }
    for (l, t, m) in adapter.modules() {
        let (i, o) = shape.module_dims(t);
        if m.rank == 0
            || (m.in_dim, m.out_dim) != (i, o)
            || m.a.len() != m.rank * i
            || m.b.len() != o * m.rank
            || !m.scale.is_finite()
        {
            return Err(Error::invalid_argument(format!(
                "export: layer {l} {}: rank {}, dims {}x{}, |A| {}, |B| {}, scale {} do not fit \
                 the model ({i} -> {o})",
                t.hf_name(),
                m.rank,
                m.in_dim,
                m.out_dim,
                m.a.len(),
                m.b.len(),
                m.scale
            )));
        }
    }
    Ok(())
}

/// Writes `adapter` into `dir` (created if needed) in `format`.
///
/// Errors: `INVALID_ARGUMENT` when the adapter does not fit `shape`, when a NeMo format needs one
/// rank/scale and the modules differ, or when `NemoFused` needs q/k/v (gate/up) of a layer to be
/// all present with one shared `A` and they are not; `IO` on write failures.
pub fn export(
    adapter: &NormalizedAdapter,
    shape: &ModelShape,
    format: ExportFormat,
    dir: &Path,
) -> Result<()> {
    check(adapter, shape)?;
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    match format {
        ExportFormat::HfSafetensors | ExportFormat::HfBin => export_hf(adapter, format, dir),
        ExportFormat::NemoFused => export_nemo(adapter, shape, true, dir),
        ExportFormat::NemoCanonical => export_nemo(adapter, shape, false, dir),
        ExportFormat::TrtNpy { shuffle_rows } => {
            export_trt(adapter, shape, true, shuffle_rows, dir)
        }
        ExportFormat::TrtBin => export_trt(adapter, shape, false, false, dir),
    }
}

fn export_hf(adapter: &NormalizedAdapter, format: ExportFormat, dir: &Path) -> Result<()> {
    // Most common (rank, alpha) pair becomes the global r / lora_alpha.
    let alpha_of = |m: &LoraModule| m.scale as f64 * m.rank as f64;
    let mut counts: BTreeMap<(usize, u64), usize> = BTreeMap::new();
    for (_, _, m) in adapter.modules() {
        *counts.entry((m.rank, alpha_of(m).to_bits())).or_default() += 1;
    }
    let (&(r0, alpha0_bits), _) = counts
        .iter()
        .max_by_key(|(k, n)| (**n, std::cmp::Reverse(**k)))
        .ok_or_else(|| Error::invalid_argument("export: no modules"))?;
    let alpha0 = f64::from_bits(alpha0_bits);
    let mut rank_pattern = serde_json::Map::new();
    let mut alpha_pattern = serde_json::Map::new();
    let mut targets: Vec<&str> = Vec::new();
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
    for (l, t, m) in adapter.modules() {
        let path = hf_module_path(l, t);
        if m.rank != r0 {
            rank_pattern.insert(path.clone(), m.rank.into());
        }
        if alpha_of(m) != alpha0 {
            alpha_pattern.insert(path.clone(), alpha_of(m).into());
        }
        if !targets.contains(&t.hf_name()) {
            targets.push(t.hf_name());
        }
        let key = format!("base_model.model.{path}");
        tensors.push((format!("{key}.lora_A.weight"), vec![m.rank, m.in_dim], &m.a));
        tensors.push((
            format!("{key}.lora_B.weight"),
            vec![m.out_dim, m.rank],
            &m.b,
        ));
    }
    targets.sort_unstable();
    let num = |x: f64| -> serde_json::Value {
        if x.fract() == 0.0 && x.abs() < 1e15 {
            (x as i64).into()
        } else {
            x.into()
        }
    };
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": null,
        "r": r0,
        "lora_alpha": num(alpha0),
        "use_rslora": false,
        "use_dora": false,
        "target_modules": targets,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "bias": "none",
        "lora_bias": false,
        "modules_to_save": null,
        "fan_in_fan_out": false,
        "lora_dropout": 0.0,
        "inference_mode": true,
        "layers_to_transform": null,
        "layers_pattern": null,
        "layer_replication": null,
        "init_lora_weights": true
    });
    let cfg_path = dir.join("adapter_config.json");
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::internal(format!("export: adapter_config.json: {e}")))?;
    write(&cfg_path, text.as_bytes())?;
    match format {
        ExportFormat::HfBin => {
            let tt: Vec<TorchTensor<'_>> = tensors
                .iter()
                .map(|(k, s, d)| TorchTensor {
                    key: k.clone(),
                    shape: s.clone(),
                    data: d,
                })
                .collect();
            write(
                &dir.join("adapter_model.bin"),
                &write_torch_zip(&tt, "adapter_model")?,
            )
        }
        _ => {
            let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
                .iter()
                .map(|(k, s, d)| {
                    (
                        k.clone(),
                        s.clone(),
                        d.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    )
                })
                .collect();
            let mut views = Vec::with_capacity(bytes.len());
            for (k, s, b) in &bytes {
                let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map_err(|e| Error::internal(format!("export: tensor {k}: {e:?}")))?;
                views.push((k.clone(), v));
            }
            let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
            let path = dir.join("adapter_model.safetensors");
            safetensors::tensor::serialize_to_file(views, Some(meta), &path)
                .map_err(|e| Error::internal(format!("{}: {e:?}", path.display())))
        }
    }
}

/// A state-dict entry: key, shape, f32 elements.
type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Builds the NeMo state dict; `fused` selects the `variant: nemo` layout.
fn nemo_tensors(
    adapter: &NormalizedAdapter,
    shape: &ModelShape,
    fused: bool,
) -> Result<Vec<NamedTensor>> {
    let mut out = Vec::new();
    let mut push = |l: usize, a: NemoAdapter, m_a: &[f32], ashape: [usize; 2], b: Vec<f32>| {
        let key = format!("{}{}", mcore_prefix(l), adapter_suffix(a));
        out.push((
            format!("{key}linear_in.weight"),
            ashape.to_vec(),
            m_a.to_vec(),
        ));
        let bshape = vec![b.len() / ashape[0], ashape[0]];
        out.push((format!("{key}linear_out.weight"), bshape, b));
    };
    for (l, mods) in adapter.layers.iter().enumerate() {
        let get = |t: LoraTarget| mods[t.index()].as_ref();
        let mut groups: Vec<(NemoAdapter, &[LoraTarget])> = Vec::new();
        if fused {
            groups.push((
                NemoAdapter::FusedQkv,
                &[LoraTarget::Q, LoraTarget::K, LoraTarget::V],
            ));
            groups.push((NemoAdapter::FusedFc1, &[LoraTarget::Gate, LoraTarget::Up]));
            for t in [LoraTarget::O, LoraTarget::Down] {
                if let Some(m) = get(t) {
                    push(
                        l,
                        NemoAdapter::Single(t),
                        &m.a,
                        [m.rank, m.in_dim],
                        m.b.clone(),
                    );
                }
            }
        } else {
            for t in LoraTarget::ALL {
                if let Some(m) = get(t) {
                    push(
                        l,
                        NemoAdapter::Single(t),
                        &m.a,
                        [m.rank, m.in_dim],
                        m.b.clone(),
                    );
                }
            }
        }
        for (kind, members) in groups {
            let present: Vec<&LoraModule> = members.iter().filter_map(|&t| get(t)).collect();
            if present.is_empty() {
                continue;
            }
            let names: Vec<&str> = members.iter().map(|t| t.hf_name()).collect();
            if present.len() != members.len() {
                return Err(Error::invalid_argument(format!(
                    "export NemoFused: layer {l} adapts only some of {}; the fused variant needs \
                     all of {} (use NemoCanonical)",
                    names.join("/"),
                    if members.len() == 3 {
                        "q/k/v"
                    } else {
                        "gate/up"
                    }
                )));
            }
            if present.iter().any(|m| m.a != present[0].a) {
                return Err(Error::invalid_argument(format!(
                    "export NemoFused: layer {l}: {} must share one A for the fused variant \
                     (use NemoCanonical)",
                    names.join("/")
                )));
            }
            let m0 = present[0];
            let b = match kind {
                NemoAdapter::FusedQkv => {
                    interleave_qkv(&present[0].b, &present[1].b, &present[2].b, m0.rank, shape)
                }
                _ => [present[0].b.as_slice(), present[1].b.as_slice()].concat(),
            };
            push(l, kind, &m0.a, [m0.rank, m0.in_dim], b);
        }
    }
    Ok(out)
}

fn export_nemo(
    adapter: &NormalizedAdapter,
    shape: &ModelShape,
    fused: bool,
    dir: &Path,
) -> Result<()> {
    let mut it = adapter.modules();
    let (_, _, first) = it
        .next()
        .ok_or_else(|| Error::invalid_argument("export: no modules"))?;
    let (r, scale) = (first.rank, first.scale);
    if let Some((l, t, m)) = adapter
        .modules()
        .find(|(_, _, m)| m.rank != r || m.scale != scale)
    {
        return Err(Error::invalid_argument(format!(
            "export NeMo: the format has one rank and one scale (adapter_dim, alpha) for all \
             modules; layer {l} {} has rank {} scale {}, others rank {r} scale {scale}",
            t.hf_name(),
            m.rank,
            m.scale
        )));
    }
    let tensors = nemo_tensors(adapter, shape, fused)?;
    let mut groups = Vec::new();
    for (g, ts) in [
        (
            "attention_qkv",
            &[LoraTarget::Q, LoraTarget::K, LoraTarget::V][..],
        ),
        ("attention_dense", &[LoraTarget::O]),
        ("mlp_fc1", &[LoraTarget::Gate, LoraTarget::Up]),
        ("mlp_fc2", &[LoraTarget::Down]),
    ] {
        if adapter.targets().iter().any(|t| ts.contains(t)) {
            groups.push(format!("    - {g}\n"));
        }
    }
    let alpha = scale as f64 * r as f64;
    let yaml = format!(
        "mcore_gpt: true\ntensor_model_parallel_size: 1\npipeline_model_parallel_size: 1\n\
         num_layers: {}\nhidden_size: {}\nffn_hidden_size: {}\nnum_attention_heads: {}\n\
         num_query_groups: {}\nkv_channels: {}\nactivation: fast-swiglu\nnormalization: rmsnorm\n\
         bias: false\nprecision: 32\npeft:\n  peft_scheme: lora\n  lora_tuning:\n    \
         target_modules:\n{}    adapter_dim: {r}\n    alpha: {alpha:?}\n    adapter_dropout: 0.0\n    \
         layer_selection: null\n    weight_tying: false\n    variant: {}\n",
        shape.num_layers,
        shape.hidden_size,
        shape.intermediate_size,
        shape.num_heads,
        shape.num_kv_heads,
        shape.head_dim,
        groups.concat(),
        if fused { "nemo" } else { "canonical" }
    );
    let tt: Vec<TorchTensor<'_>> = tensors
        .iter()
        .map(|(k, s, d)| TorchTensor {
            key: k.clone(),
            shape: s.clone(),
            data: d,
        })
        .collect();
    let ckpt = write_torch_zip(&tt, "model_weights")?;
    let path = dir.join("adapter.nemo");
    let file = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(file));
    // Member names exactly as NeMo writes them (tar with arcname "."): "./", "./<file>".
    // tar::Builder::append_data would strip the "./", so the name bytes are set directly.
    for (name, data, ty, mode) in [
        ("./", &b""[..], tar::EntryType::Directory, 0o755),
        (
            "./model_config.yaml",
            yaml.as_bytes(),
            tar::EntryType::Regular,
            0o644,
        ),
        (
            "./model_weights.ckpt",
            &ckpt,
            tar::EntryType::Regular,
            0o644,
        ),
    ] {
        let mut h = tar::Header::new_gnu();
        if let Some(gnu) = h.as_gnu_mut() {
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        }
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(ty);
        h.set_cksum();
        b.append(&h, data).map_err(|e| io(&path, e))?;
    }
    b.into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(|e| io(&path, e))
}

fn export_trt(
    adapter: &NormalizedAdapter,
    shape: &ModelShape,
    npy: bool,
    shuffle: bool,
    dir: &Path,
) -> Result<()> {
    let mut rows: Vec<(usize, LoraTarget, &LoraModule)> = adapter.modules().collect();
    if shuffle {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x7472_746c_6c6d);
        rows.shuffle(&mut rng);
    }
    let w = rows
        .iter()
        .map(|(_, _, m)| m.rank * (m.in_dim + m.out_dim))
        .max()
        .unwrap_or(0);
    let mut cfg: Vec<u8> = Vec::with_capacity(rows.len() * 12);
    let mut vals: Vec<f32> = vec![0.0; rows.len() * w];
    for (k, (l, t, m)) in rows.iter().enumerate() {
        for v in [module_id(*t), *l as i64, m.rank as i64] {
            cfg.extend_from_slice(&(v as i32).to_le_bytes());
        }
        let row = &mut vals[k * w..(k + 1) * w];
        row[..m.a.len()].copy_from_slice(&m.a);
        for (dst, b) in row[m.a.len()..m.a.len() + m.b.len()].iter_mut().zip(&m.b) {
            *dst = b * m.scale;
        }
    }
    let (wdtype, wbytes): (NpyDType, Vec<u8>) = match shape.dtype {
        DType::F32 => (
            NpyDType::F32,
            vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        DType::F16 => (
            NpyDType::F16,
            vals.iter()
                .flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes())
                .collect(),
        ),
        DType::BF16 => (
            NpyDType::BF16,
            vals.iter()
                .flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes())
                .collect(),
        ),
    };
    let n = rows.len();
    if npy {
        write(
            &dir.join("model.lora_config.npy"),
            &encode_npy(NpyDType::I32, &[1, n, 3], &cfg)?,
        )?;
        write(
            &dir.join("model.lora_weights.npy"),
            &encode_npy(wdtype, &[1, n, w], &wbytes)?,
        )
    } else {
        write(&dir.join("model.lora_config.bin"), &cfg)?;
        write(&dir.join("model.lora_weights.bin"), &wbytes)
    }
}
