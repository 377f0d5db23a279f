//! The Llama-family transformer (Llama, Mistral, Qwen2, Qwen3) on a [`Backend`]: weights packed
//! once, one `forward` per engine step.
//!
//! A step is a flat list of token rows from any number of sequences (prefill chunks and decode
//! rows mixed). Each row carries its sequence and position ([`AttnMeta`]); K/V are written to the
//! paged cache before attention reads it, so a prefill chunk attends to itself causally.

use parking_lot::Mutex;

use super::layout::account_tensors;
use super::packed_weights::{PackedWeights, WeightPart};
use super::qkv_extras::QkvExtras;
use super::weight_quant;
use super::{ModelConfig, TensorMap};
use crate::backend::{
    AttentionArgs, AttnMeta, Backend, KvWriteArgs, LoraArgs, LoraBatch, LoraNext, LoraTarget,
    RopeArgs, View, ViewMut, WeightFormat,
};
use crate::error::{Error, Result};
use crate::tensor::HostTensor;

/// The adapter targets that add to the fused QKV projection's output.
const QKV: [LoraTarget; 3] = [LoraTarget::Q, LoraTarget::K, LoraTarget::V];
/// The adapter targets that add to the fused gate/up projection's output.
const GATE_UP: [LoraTarget; 2] = [LoraTarget::Gate, LoraTarget::Up];

struct Layer<B: Backend> {
    attn_norm: B::Buf,
    qkv: B::Weight,
    o: B::Weight,
    mlp_norm: B::Buf,
    gate_up: B::Weight,
    down: B::Weight,
    /// Architecture-specific QKV bias / q-k norms.
    extras: QkvExtras<B>,
}

/// Activation buffers reused across steps (grown when a step has more rows than any before).
/// Ops only touch the first `rows * dim` values of a buffer, so stale values past that are
/// never read.
struct Scratch<B: Backend> {
    /// Rows the step buffers hold.
    rows: usize,
    x: B::Buf,
    normed: B::Buf,
    qkv: B::Buf,
    attn: B::Buf,
    proj: B::Buf,
    gu: B::Buf,
    act: B::Buf,
    /// Logit rows the head buffers hold.
    logit_rows: usize,
    last: B::Buf,
    last_normed: B::Buf,
    logits: B::Buf,
}

/// A loaded Llama model. Owned by the engine's worker; not shared between threads (the
/// activation scratch is behind a mutex only so that `forward` can take `&self`).
pub struct Llama<B: Backend> {
    cfg: ModelConfig,
    embed: B::Weight,
    lm_head: Option<B::Weight>,
    norm: B::Buf,
    layers: Vec<Layer<B>>,
    inv_freq: Vec<f32>,
    weight_bytes: usize,
    scratch: Mutex<Option<Scratch<B>>>,
}

/// One step's input.
pub struct StepInput<'a> {
    /// Token id of every row.
    pub tokens: &'a [u32],
    /// Sequence, position and KV slot of every row.
    pub meta: AttnMeta<'a>,
    /// Rows whose logits are wanted (e.g. the last row of each sequence that samples).
    pub logit_rows: &'a [u32],
    /// Adapter slot of every row (empty = all base).
    pub lora: &'a LoraBatch,
}

/// Removes `name` from a map that [`account_tensors`] has checked (shape included).
fn take(tensors: &mut TensorMap, name: &str) -> Result<HostTensor> {
    tensors
        .remove(name)
        .ok_or_else(|| Error::invalid_model(format!("missing tensor \"{name}\"")))
}

impl<B: Backend> Llama<B> {
    /// Packs the weights of `t` into `backend` memory in `format`. Every tensor of `t` is
    /// accounted for first ([`account_tensors`]): a missing, misshapen or unused tensor is an
    /// INVALID_MODEL error naming it, before anything is packed. Host tensors are then consumed
    /// layer by layer so peak memory stays near one copy of the weights; on success `t` is empty.
    ///
    /// Under a quantized `format` (q8_0, q4_k) the dense matrices are quantized here, one
    /// weight at a time, with the types and per-weight fallback of [`weight_quant`];
    /// already-quantized tensors are packed as the checkpoint stores them.
    pub fn load(
        backend: &B,
        cfg: &ModelConfig,
        t: &mut TensorMap,
        format: WeightFormat,
    ) -> Result<Self> {
        let cfg = cfg.clone();
        cfg.validate()?;
        account_tensors(&cfg, t)?;
        let mut weight_bytes = 0usize;
        // Takes the named tensors (each with its role in the quantization mix), quantizes them
        // when the format asks, packs them as one (fused) weight and counts its bytes.
        let n_layers = cfg.num_layers;
        let mut pack = |t: &mut TensorMap, names: &[WeightPart]| -> Result<B::Weight> {
            let parts = names
                .iter()
                .map(|p| take(t, &p.name).map(|h| (p.name.clone(), h, p.role)))
                .collect::<Result<Vec<_>>>()?;
            let (parts, fmt) = weight_quant::prepare(parts, n_layers, format)?;
            let w = match parts.as_slice() {
                [one] => backend.weight(one, fmt),
                many => backend.fused_weight(&many.iter().collect::<Vec<_>>(), fmt),
            }
            .map_err(|e| {
                let names: Vec<&str> = names.iter().map(|p| p.name.as_str()).collect();
                e.context(names.join(" + "))
            })?;
            weight_bytes += backend.weight_bytes(&w);
            Ok(w)
        };
        let spec = PackedWeights::of(&cfg);
        let embed = pack(t, &spec.embed)?;
        let lm_head = spec.lm_head.as_deref().map(|h| pack(t, h)).transpose()?;
        let norm = backend.upload(&take(t, "model.norm.weight")?.into_f32_vec())?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for (l, lw) in spec.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            let qkv = pack(t, &lw.qkv)?;
            let o = pack(t, &lw.o)?;
            let gate_up = pack(t, &lw.gate_up)?;
            let down = pack(t, &lw.down)?;
            let attn_norm =
                backend.upload(&take(t, &format!("{p}.input_layernorm.weight"))?.into_f32_vec())?;
            let mlp_norm = backend.upload(
                &take(t, &format!("{p}.post_attention_layernorm.weight"))?.into_f32_vec(),
            )?;
            layers.push(Layer {
                attn_norm,
                qkv,
                o,
                mlp_norm,
                gate_up,
                down,
                extras: QkvExtras::load(backend, &cfg, t, l)?,
            });
        }
        let inv_freq = cfg.rope_inv_freq();
        Ok(Self {
            cfg,
            embed,
            lm_head,
            norm,
            layers,
            inv_freq,
            weight_bytes,
            scratch: Mutex::new(None),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Bytes of all packed weight matrices (what one decode step streams from memory).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Runs one step; returns logits `[input.logit_rows.len(), vocab]`, row-major.
    /// `adapters` is the device adapter arena the step's [`LoraBatch`] refers to (None = base only).
    pub fn forward(
        &self,
        backend: &B,
        kv: &mut B::KvCache,
        adapters: Option<&B::LoraStack>,
        input: &StepInput<'_>,
    ) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let rows = input.tokens.len();
        if rows == 0 {
            return Ok(Vec::new());
        }
        let checks = [
            ("row_seq", input.meta.row_seq.len()),
            ("row_pos", input.meta.row_pos.len()),
            ("slot_mapping", input.meta.slot_mapping.len()),
        ];
        for (name, n) in checks {
            if n != rows {
                return Err(Error::internal(format!(
                    "step input: {name} has {n} entries for {rows} rows"
                )));
            }
        }
        let lora = match adapters {
            Some(stack) if !input.lora.is_empty() => Some(stack),
            None if !input.lora.is_empty() => {
                return Err(Error::internal(
                    "LoRA rows in a step without an adapter arena",
                ));
            }
            _ => None,
        };
        // `y[:, yc..] += LoRA(x)` for target `t` of layer `l`, x and y `rows` rows of width
        // `xs` / `ys`.
        let apply = |(x, xs): (&B::Buf, usize),
                     (y, ys, yc): (&mut B::Buf, usize, usize),
                     layer: usize,
                     target: LoraTarget| {
            if let Some(stack) = lora {
                let args = LoraArgs {
                    batch: input.lora,
                    stack,
                    layer,
                    target,
                };
                let (x, y) = (View::new(x, rows, xs, 0), ViewMut::new(y, rows, ys, yc));
                backend.lora_apply(x, y, &args);
            }
        };
        // The base matmul of a projection whose output the adapters of `targets` then add to.
        let base = |x: &B::Buf, w: &B::Weight, y: &mut B::Buf, layer: usize, targets| match lora {
            Some(stack) => {
                let next = LoraNext {
                    batch: input.lora,
                    stack,
                    layer,
                    targets,
                };
                backend.matmul_before_lora(x, rows, w, y, next)
            }
            None => backend.matmul(x, rows, w, y),
        };
        let (h, inter, q, kv_dim) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.q_dim(),
            cfg.kv_dim(),
        );
        let qkv_w = q + 2 * kv_dim;
        let n = input.logit_rows.len();
        if let Some(&bad) = input.logit_rows.iter().find(|&&r| r as usize >= rows) {
            return Err(Error::internal(format!(
                "logit row {bad} out of range for {rows} rows"
            )));
        }
        let mut guard = self.scratch.lock();
        let mut sc = match guard.take() {
            Some(sc) if sc.rows >= rows && sc.logit_rows >= n => sc,
            old => {
                // Grow to at least the largest step seen so far (drop the old buffers first).
                let (r0, n0) = old.map_or((0, 0), |o| (o.rows, o.logit_rows));
                let (r, nl) = (rows.max(r0), n.max(n0).max(1));
                Scratch {
                    rows: r,
                    x: backend.alloc(r * h)?,
                    normed: backend.alloc(r * h)?,
                    qkv: backend.alloc(r * qkv_w)?,
                    attn: backend.alloc(r * q)?,
                    proj: backend.alloc(r * h)?,
                    gu: backend.alloc(r * 2 * inter)?,
                    act: backend.alloc(r * inter)?,
                    logit_rows: nl,
                    last: backend.alloc(nl * h)?,
                    last_normed: backend.alloc(nl * h)?,
                    logits: backend.alloc(nl * cfg.vocab_size)?,
                }
            }
        };
        let Scratch {
            x,
            normed,
            qkv,
            attn,
            proj,
            gu,
            act,
            last,
            last_normed,
            logits,
            ..
        } = &mut sc;
        backend.embedding_gather(&self.embed, input.tokens, x);
        for (l, layer) in self.layers.iter().enumerate() {
            backend.rms_norm(x, &layer.attn_norm, rows, h, cfg.rms_norm_eps, normed);
            base(normed, &layer.qkv, qkv, l, &QKV);
            apply((normed, h), (qkv, qkv_w, 0), l, LoraTarget::Q);
            apply((normed, h), (qkv, qkv_w, q), l, LoraTarget::K);
            apply((normed, h), (qkv, qkv_w, q + kv_dim), l, LoraTarget::V);
            layer.extras.apply(backend, qkv, rows, cfg);
            // K's heads follow Q's in the fused row, so one call rotates both.
            let rope = RopeArgs {
                n_heads: cfg.num_heads + cfg.num_kv_heads,
                head_dim: cfg.head_dim,
                row_pos: input.meta.row_pos,
                inv_freq: &self.inv_freq,
            };
            backend.rope(ViewMut::new(qkv, rows, qkv_w, 0), &rope);
            let write = KvWriteArgs {
                layer: l,
                k: View::new(qkv, rows, qkv_w, q),
                v: View::new(qkv, rows, qkv_w, q + kv_dim),
                slot_mapping: input.meta.slot_mapping,
            };
            backend.kv_write(kv, write);
            let attention = AttentionArgs {
                q: View::new(qkv, rows, qkv_w, 0),
                n_heads: cfg.num_heads,
                cache: kv,
                layer: l,
                meta: input.meta,
                window: cfg.layer_window(l),
            };
            backend.attention_paged(attention, attn);
            base(attn, &layer.o, proj, l, &[LoraTarget::O]);
            apply((attn, q), (proj, h, 0), l, LoraTarget::O);
            backend.add(x, proj, rows * h);
            backend.rms_norm(x, &layer.mlp_norm, rows, h, cfg.rms_norm_eps, normed);
            base(normed, &layer.gate_up, gu, l, &GATE_UP);
            apply((normed, h), (gu, 2 * inter, 0), l, LoraTarget::Gate);
            apply((normed, h), (gu, 2 * inter, inter), l, LoraTarget::Up);
            backend.silu_mul(gu, rows, inter, act);
            base(act, &layer.down, proj, l, &[LoraTarget::Down]);
            apply((act, inter), (proj, h, 0), l, LoraTarget::Down);
            backend.add(x, proj, rows * h);
        }
        let mut out = vec![0f32; n * cfg.vocab_size];
        if n > 0 {
            backend.gather_rows(x, h, input.logit_rows, last);
            backend.rms_norm(last, &self.norm, n, h, cfg.rms_norm_eps, last_normed);
            let head = self.lm_head.as_ref().unwrap_or(&self.embed);
            backend.matmul(last_normed, n, head, logits);
        }
        let downloaded = if n > 0 {
            backend.download(logits, &mut out)
        } else {
            Ok(())
        };
        // The buffers go back for the next step even when the download failed.
        *guard = Some(sc);
        downloaded.map(|()| out)
    }
}
