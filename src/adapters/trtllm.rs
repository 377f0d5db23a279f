//! TensorRT-LLM LoRA directories: `model.lora_config.{npy,bin}` + `model.lora_weights.{npy,bin}`
//! (docs/adapter-formats.md section 4).
//!
//! Config rows are `[module_id, layer, rank]` with an optional 4th column `is_dora` (0/1; 1 is
//! refused). Weight row `k` holds `A` (`[rank, in]`, row-major), then the pre-scaled `B'`
//! (`[out, rank]`, row-major), then zero padding up to the row length `W`. Because `B'` already
//! carries the scale, every module is read with `scale = 1`.
//!
//! Module ids (TensorRT-LLM `LoraModule::ModuleType`): 0 `attn_qkv` (fused, split into q/k/v
//! sharing one `A`; `B'` rows are `[Q (nh·d); K (nkv·d); V (nkv·d)]`), 1 `attn_q`, 2 `attn_k`,
//! 3 `attn_v`, 4 `attn_dense` (o_proj), 5 `mlp_h_to_4h` (**gate_proj**), 6 `mlp_4h_to_h`
//! (down_proj), 7 `mlp_gate` (**up_proj**). Ids 8–18 (cross-attention, MoE, routers, fused
//! `mlp_gate_up`) are known but refused as unsupported; anything else is an unknown id.
//!
//! Headerless `.bin` files (choices made here, the spec leaves them open):
//! * config: little-endian int32. The column count is inferred: if the byte count divides by
//!   only one of 12 (3 columns) and 16 (4 columns), that one; if by both, 3 columns unless the
//!   3-column reading has an invalid row and the 4-column reading has none.
//! * weights: elements in `ModelShape::dtype` (the base model's dtype, as TensorRT-LLM requires);
//!   row length `W = bytes / (rows · element size)`, which must divide exactly. Because nothing
//!   in the file confirms the dtype, the zero padding after each row's data is checked: non-zero
//!   padding is refused (it is what reading f32 data as f16/bf16 produces). `.npy` weights are
//!   typed and their padding is not checked.
//!
//! `.npy` files may have shape `[1, N, C]` / `[1, N, W]` (what TensorRT-LLM writes) or
//! `[N, C]` / `[N, W]`; weights may be f32, f16 or bf16 (`|V2`) whatever the base dtype.

use std::path::Path;

use crate::adapters::normalize::{AdapterFormat, LoraModule, ModelShape, NormalizedAdapter};
use crate::adapters::npy::{parse_npy, NpyData};
use crate::error::{Error, Result};
use crate::lora_target::LoraTarget;
use crate::tensor::decode::{decode_le_f32, decode_le_ints, IntType};
use crate::tensor::DType;

/// File stem of the config array.
pub const CONFIG_STEM: &str = "model.lora_config";
/// File stem of the weights array.
pub const WEIGHTS_STEM: &str = "model.lora_weights";

/// What a TensorRT-LLM module id means for a Llama model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrtModule {
    /// `attn_qkv`: fused `[Q; K; V]`.
    Qkv,
    /// One of the seven targets.
    Single(LoraTarget),
}

/// The TensorRT-LLM module name of an id (for messages), or `None` for an unknown id.
pub fn module_name(id: i64) -> Option<&'static str> {
    const NAMES: [&str; 19] = [
        "attn_qkv",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_dense",
        "mlp_h_to_4h",
        "mlp_4h_to_h",
        "mlp_gate",
        "cross_attn_qkv",
        "cross_attn_q",
        "cross_attn_k",
        "cross_attn_v",
        "cross_attn_dense",
        "moe_h_to_4h",
        "moe_4h_to_h",
        "moe_gate",
        "moe_router",
        "mlp_router",
        "mlp_gate_up",
    ];
    usize::try_from(id).ok().and_then(|i| NAMES.get(i).copied())
}

/// The TensorRT-LLM module id of a single target (`gate_proj` → 5 `mlp_h_to_4h`, `up_proj` → 7
/// `mlp_gate`).
pub fn module_id(t: LoraTarget) -> i64 {
    match t {
        LoraTarget::Q => 1,
        LoraTarget::K => 2,
        LoraTarget::V => 3,
        LoraTarget::O => 4,
        LoraTarget::Gate => 5,
        LoraTarget::Down => 6,
        LoraTarget::Up => 7,
    }
}

fn decode_module(id: i64, what: &str, row: usize) -> Result<TrtModule> {
    Ok(match id {
        0 => TrtModule::Qkv,
        1 => TrtModule::Single(LoraTarget::Q),
        2 => TrtModule::Single(LoraTarget::K),
        3 => TrtModule::Single(LoraTarget::V),
        4 => TrtModule::Single(LoraTarget::O),
        5 => TrtModule::Single(LoraTarget::Gate),
        6 => TrtModule::Single(LoraTarget::Down),
        7 => TrtModule::Single(LoraTarget::Up),
        8..=18 => {
            return Err(Error::invalid_adapter(format!(
                "{what}: row {row}: module id {id} ({}) is not supported for a Llama decoder",
                module_name(id).unwrap_or("?")
            )))
        }
        _ => {
            return Err(Error::invalid_adapter(format!(
                "{what}: row {row}: unknown module id {id} (valid ids are 0..=18)"
            )))
        }
    })
}

/// One parsed config row.
#[derive(Debug, Clone, Copy)]
struct Row {
    module: TrtModule,
    module_id: i64,
    layer: usize,
    rank: usize,
}

fn parse_rows(ints: &[i64], cols: usize, shape: &ModelShape, what: &str) -> Result<Vec<Row>> {
    ints.chunks_exact(cols)
        .enumerate()
        .map(|(k, r)| {
            let (id, layer, rank) = (r[0], r[1], r[2]);
            if let Some(&dora) = r.get(3) {
                match dora {
                    0 => {}
                    1 => {
                        return Err(Error::invalid_adapter(format!(
                            "{what}: row {k}: DoRA (is_dora = 1) is not supported"
                        )))
                    }
                    v => {
                        return Err(Error::invalid_adapter(format!(
                            "{what}: row {k}: is_dora column is {v}, expected 0 or 1"
                        )))
                    }
                }
            }
            let module = decode_module(id, what, k)?;
            let layer = usize::try_from(layer)
                .ok()
                .filter(|&l| l < shape.num_layers)
                .ok_or_else(|| {
                    Error::invalid_adapter(format!(
                        "{what}: row {k}: layer {layer} out of range (model has {} layers)",
                        shape.num_layers
                    ))
                })?;
            let rank = usize::try_from(rank)
                .ok()
                .filter(|&r| r > 0)
                .ok_or_else(|| {
                    Error::invalid_adapter(format!(
                        "{what}: row {k}: rank (adapter_size) {rank} must be positive"
                    ))
                })?;
            Ok(Row {
                module,
                module_id: id,
                layer,
                rank,
            })
        })
        .collect()
}

/// Rows count and row length of a 2-D or leading-1 3-D array.
fn rows_cols(shape: &[usize], what: &str) -> Result<(usize, usize)> {
    match shape {
        [1, n, c] | [n, c] => Ok((*n, *c)),
        s => Err(Error::invalid_adapter(format!(
            "{what}: shape {s:?} must be [1, N, C] or [N, C]"
        ))),
    }
}

fn read_config(bytes: &[u8], what: &str, is_npy: bool, shape: &ModelShape) -> Result<Vec<Row>> {
    let what = what.to_string();
    if is_npy {
        let a = parse_npy(bytes, &what)?;
        let (_, cols) = rows_cols(&a.shape, &what)?;
        let NpyData::Int(ints) = a.data else {
            return Err(Error::invalid_adapter(format!(
                "{what}: lora_config must be an integer array, found {}",
                a.dtype.descr()
            )));
        };
        if cols != 3 && cols != 4 {
            return Err(Error::invalid_adapter(format!(
                "{what}: lora_config rows have {cols} columns, expected 3 or 4"
            )));
        }
        return parse_rows(&ints, cols, shape, &what);
    }
    let fits3 = bytes.len().is_multiple_of(12);
    let fits4 = bytes.len().is_multiple_of(16);
    if !fits3 && !fits4 {
        return Err(Error::invalid_adapter(format!(
            "{what}: {} bytes is not a whole number of int32 config rows of 3 (12 bytes) or 4 \
             (16 bytes) columns",
            bytes.len()
        )));
    }
    let ints = decode_le_ints(IntType::I32, bytes)
        .map_err(|e| Error::invalid_adapter(format!("{what}: {e}")))?;
    if fits3 && !fits4 {
        parse_rows(&ints, 3, shape, &what)
    } else if fits4 && !fits3 {
        parse_rows(&ints, 4, shape, &what)
    } else {
        // Both fit (a multiple of 48 bytes): prefer 3 columns, fall back to 4 only if the
        // 3-column reading has an invalid row and the 4-column one has none.
        parse_rows(&ints, 3, shape, &what)
            .or_else(|e3| parse_rows(&ints, 4, shape, &what).map_err(|_| e3))
    }
}

/// Reads the weights as f32; returns `(data, row_len)`.
fn read_weights(
    bytes: &[u8],
    what: &str,
    is_npy: bool,
    rows: usize,
    dtype: DType,
) -> Result<(Vec<f32>, usize)> {
    let what = what.to_string();
    if is_npy {
        let a = parse_npy(bytes, &what)?;
        let (n, w) = rows_cols(&a.shape, &what)?;
        if n != rows {
            return Err(Error::invalid_adapter(format!(
                "{what}: {n} weight rows but lora_config has {rows} rows"
            )));
        }
        let descr = a.dtype.descr();
        let data = a.into_f32().ok_or_else(|| {
            Error::invalid_adapter(format!(
                "{what}: lora_weights must be f32, f16 or bf16, found {descr}"
            ))
        })?;
        return Ok((data, w));
    }
    let row_bytes_total = rows.saturating_mul(dtype.size());
    if row_bytes_total == 0 || !bytes.len().is_multiple_of(row_bytes_total) {
        return Err(Error::invalid_adapter(format!(
            "{what}: {} bytes cannot hold {rows} rows of {} (the base model dtype headerless \
             .bin weights are read in); config/weights row-count mismatch or wrong dtype",
            bytes.len(),
            dtype.name()
        )));
    }
    let w = bytes.len() / row_bytes_total;
    let data =
        decode_le_f32(dtype, bytes).map_err(|e| Error::invalid_adapter(format!("{what}: {e}")))?;
    Ok((data, w))
}

/// Parses a TensorRT-LLM adapter (all scales 1) from the bytes of its config and weights files,
/// each given as `(file name, bytes)`: `model.lora_config.{npy,bin}` and
/// `model.lora_weights.{npy,bin}` as found by [`crate::adapters::load::detect_files`] and read
/// by [`crate::adapters::load::load_adapter`]. `dir` is the adapter's directory, for messages and
/// `source`; `generation` is left empty (the loader fills it).
///
/// Errors (`INVALID_ADAPTER`): malformed arrays, unknown or unsupported module id, layer out of
/// range, rank 0, DoRA rows, a weight row too short for its module, duplicate `(layer, module)`
/// (including `attn_qkv` together with `attn_q/k/v` of the same layer), and a config/weights
/// row-count mismatch.
pub fn parse_trtllm(
    dir: &Path,
    name: &str,
    shape: &ModelShape,
    cfg: (&str, &[u8]),
    weights: (&str, &[u8]),
) -> Result<NormalizedAdapter> {
    let (cfg_path, cfg_npy) = (dir.join(cfg.0), cfg.0.ends_with(".npy"));
    let (w_path, w_npy) = (dir.join(weights.0), weights.0.ends_with(".npy"));
    let rows = read_config(cfg.1, &cfg_path.display().to_string(), cfg_npy, shape)?;
    if rows.is_empty() {
        return Err(Error::invalid_adapter(format!(
            "{}: lora_config has no rows (no adapted modules)",
            cfg_path.display()
        )));
    }
    let (data, w) = read_weights(
        weights.1,
        &w_path.display().to_string(),
        w_npy,
        rows.len(),
        shape.dtype,
    )?;
    let what = w_path.display().to_string();
    let mut layers: Vec<[Option<LoraModule>; 7]> = vec![Default::default(); shape.num_layers];
    let mut origin: Vec<[usize; 7]> = vec![[usize::MAX; 7]; shape.num_layers];
    for (k, row) in rows.iter().enumerate() {
        let start = k.saturating_mul(w);
        let vals = data
            .get(start..start.saturating_add(w))
            .ok_or_else(|| Error::internal(format!("{what}: row {k} outside the weights array")))?;
        let (in_dim, out_dim, targets): (usize, usize, Vec<(LoraTarget, usize)>) = match row.module
        {
            TrtModule::Single(t) => {
                let (i, o) = shape.module_dims(t);
                (i, o, vec![(t, o)])
            }
            TrtModule::Qkv => {
                let (i, q) = shape.module_dims(LoraTarget::Q);
                let (_, kv) = shape.module_dims(LoraTarget::K);
                let parts = vec![(LoraTarget::Q, q), (LoraTarget::K, kv), (LoraTarget::V, kv)];
                (i, q + 2 * kv, parts)
            }
        };
        let mname = module_name(row.module_id).unwrap_or("?");
        let need = in_dim
            .checked_add(out_dim)
            .and_then(|s| s.checked_mul(row.rank))
            .filter(|&n| n <= w)
            .ok_or_else(|| {
                Error::invalid_adapter(format!(
                    "{what}: row {k} (layer {}, {mname}, rank {}) is too short: has {w} values, \
                     needs rank*(in+out) = {}*({in_dim}+{out_dim}){}",
                    row.layer,
                    row.rank,
                    row.rank,
                    if w_npy {
                        String::new()
                    } else {
                        format!(
                            " (headerless .bin weights are read as the base model dtype {})",
                            shape.dtype.name()
                        )
                    }
                ))
            })?;
        if !w_npy && vals[need..].iter().any(|&x| x != 0.0) {
            return Err(Error::invalid_adapter(format!(
                "{what}: row {k} (layer {}, {mname}) has non-zero values after its {need} \
                 values, where the padding must be zero: the headerless .bin is probably not \
                 in the base model dtype ({}) or its config rows have 4 columns",
                row.layer,
                shape.dtype.name()
            )));
        }
        let a_len = row.rank * in_dim;
        let a = &vals[..a_len];
        let b_all = &vals[a_len..need];
        let mut b_off = 0;
        for (t, rows_t) in targets {
            let slot = &mut layers[row.layer][t.index()];
            if slot.is_some() {
                return Err(Error::invalid_adapter(format!(
                    "{what}: row {k}: duplicate module {} for layer {} (already given by row {})",
                    t.hf_name(),
                    row.layer,
                    origin[row.layer][t.index()]
                )));
            }
            let b = b_all[b_off * row.rank..(b_off + rows_t) * row.rank].to_vec();
            b_off += rows_t;
            *slot = Some(LoraModule {
                rank: row.rank,
                in_dim,
                out_dim: rows_t,
                a: a.to_vec(),
                b,
                scale: 1.0,
            });
            origin[row.layer][t.index()] = k;
        }
    }
    Ok(NormalizedAdapter {
        name: name.to_string(),
        format: AdapterFormat::TrtLlm,
        source: dir.to_path_buf(),
        generation: String::new(),
        layers,
    })
}
