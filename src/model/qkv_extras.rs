//! What some architectures add to the fused QKV row between the projection (with its LoRA
//! deltas) and RoPE: Qwen2's q/k/v biases and Qwen3's per-head RMSNorm of q and k
//! ([`super::Architecture`]). A Llama or Mistral layer has neither, and [`QkvExtras::apply`] then
//! does nothing.
//!
//! Owned by its layer of [`super::llama::Llama`]; used by the engine's worker thread only.

use super::{ModelConfig, TensorMap};
use crate::backend::{Backend, ViewMut};
use crate::error::{Error, Result};

/// One layer's QKV additions, packed in backend memory.
pub(crate) struct QkvExtras<B: Backend> {
    /// `[q_bias | k_bias | v_bias]`, the width of the fused QKV row (Qwen2).
    bias: Option<B::Buf>,
    /// `self_attn.q_norm.weight` and `k_norm.weight`, `[head_dim]` each (Qwen3).
    qk_norm: Option<(B::Buf, B::Buf)>,
}

/// Removes `name` from a map that `account_tensors` has checked (shape included).
fn take_f32(t: &mut TensorMap, name: &str) -> Result<Vec<f32>> {
    t.remove(name)
        .map(|x| x.into_f32_vec())
        .ok_or_else(|| Error::invalid_model(format!("missing tensor \"{name}\"")))
}

impl<B: Backend> QkvExtras<B> {
    /// Takes layer `layer`'s biases / q-k norms out of `t` (already accounted for, so present
    /// with their shapes when the architecture has them) and uploads them. Errors: a missing
    /// tensor (INVALID_MODEL naming it), a failed upload.
    pub(crate) fn load(
        backend: &B,
        cfg: &ModelConfig,
        t: &mut TensorMap,
        layer: usize,
    ) -> Result<Self> {
        let p = format!("model.layers.{layer}.self_attn");
        let bias = if cfg.architecture.qkv_bias() {
            let mut b = take_f32(t, &format!("{p}.q_proj.bias"))?;
            b.extend(take_f32(t, &format!("{p}.k_proj.bias"))?);
            b.extend(take_f32(t, &format!("{p}.v_proj.bias"))?);
            Some(backend.upload(&b)?)
        } else {
            None
        };
        let qk_norm = if cfg.architecture.qk_norm() {
            let q = backend.upload(&take_f32(t, &format!("{p}.q_norm.weight"))?)?;
            let k = backend.upload(&take_f32(t, &format!("{p}.k_norm.weight"))?)?;
            Some((q, k))
        } else {
            None
        };
        Ok(Self { bias, qk_norm })
    }

    /// Applies the additions to the first `rows` rows of `qkv` (`[rows, q_dim + 2 * kv_dim]`):
    /// the bias over the whole row, then RMSNorm of each q head and each k head.
    pub(crate) fn apply(&self, backend: &B, qkv: &mut B::Buf, rows: usize, cfg: &ModelConfig) {
        let width = cfg.q_dim() + 2 * cfg.kv_dim();
        if let Some(b) = &self.bias {
            backend.add_bias(ViewMut::new(qkv, rows, width, 0), b, width);
        }
        if let Some((qn, kn)) = &self.qk_norm {
            let (hd, eps) = (cfg.head_dim, cfg.rms_norm_eps);
            backend.head_rms_norm(
                ViewMut::new(qkv, rows, width, 0),
                qn,
                cfg.num_heads,
                hd,
                eps,
            );
            let k = ViewMut::new(qkv, rows, width, cfg.q_dim());
            backend.head_rms_norm(k, kn, cfg.num_kv_heads, hd, eps);
        }
    }
}
