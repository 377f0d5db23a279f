//! Argument structs of the backend ops that take more than a buffer and a size (see the op docs
//! on [`super::Backend`]). They only borrow; an op call never keeps them.

use super::view::View;
use super::{AttnMeta, LoraBatch, LoraTarget};

/// Arguments of [`super::Backend::rope`] besides the rotated view.
#[derive(Debug, Clone, Copy)]
pub struct RopeArgs<'a> {
    /// Heads rotated in each row, `head_dim` columns each, from the view's column on.
    pub n_heads: usize,
    /// Per-head dimension (even).
    pub head_dim: usize,
    /// Absolute position of each row (at least the view's `rows` entries).
    pub row_pos: &'a [u32],
    /// Rotary frequency of each of the `head_dim / 2` pairs.
    pub inv_freq: &'a [f32],
}

/// Arguments of [`super::Backend::kv_write`]: K and V of each row as `kv_dim`-wide views
/// (`kv_dim = num_kv_heads * head_dim` of the cache), written to layer `layer`.
#[derive(Debug)]
pub struct KvWriteArgs<'a, B: ?Sized> {
    /// Decoder layer.
    pub layer: usize,
    /// K of each row.
    pub k: View<'a, B>,
    /// V of each row (the same row count as `k`).
    pub v: View<'a, B>,
    /// Physical cache slot of each row.
    pub slot_mapping: &'a [u32],
}

impl<B: ?Sized> Clone for KvWriteArgs<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: ?Sized> Copy for KvWriteArgs<'_, B> {}

impl<'a> KvWriteArgs<'a, Vec<f32>> {
    /// The same arguments over the vectors' slices.
    pub fn slice(self) -> KvWriteArgs<'a, [f32]> {
        KvWriteArgs {
            layer: self.layer,
            k: self.k.slice(),
            v: self.v.slice(),
            slot_mapping: self.slot_mapping,
        }
    }
}

/// Arguments of [`super::Backend::attention_paged`].
#[derive(Debug)]
pub struct AttentionArgs<'a, B: ?Sized, C> {
    /// Q of each row: `n_heads * head_dim` columns from the view's column on.
    pub q: View<'a, B>,
    /// Query heads (a multiple of the cache's KV heads).
    pub n_heads: usize,
    /// The paged KV cache.
    pub cache: &'a C,
    /// Decoder layer of the cache to read.
    pub layer: usize,
    /// Sequence, position and block table of each row.
    pub meta: AttnMeta<'a>,
    /// Sliding window: `Some(w)` limits a row at position `p` to keys at positions
    /// `p - w < k <= p`; None = every position `0..=p`.
    pub window: Option<usize>,
}

impl<B: ?Sized, C> Clone for AttentionArgs<'_, B, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: ?Sized, C> Copy for AttentionArgs<'_, B, C> {}

impl<'a, C> AttentionArgs<'a, Vec<f32>, C> {
    /// The same arguments over the Q vector's slice.
    pub fn slice(self) -> AttentionArgs<'a, [f32], C> {
        AttentionArgs {
            q: self.q.slice(),
            n_heads: self.n_heads,
            cache: self.cache,
            layer: self.layer,
            meta: self.meta,
            window: self.window,
        }
    }
}

/// Arguments of [`super::Backend::lora_apply`] besides the x and y views: which adapter slot each
/// row uses and which module of the arena applies.
#[derive(Debug)]
pub struct LoraArgs<'a, S> {
    /// Adapter slot of each row.
    pub batch: &'a LoraBatch,
    /// The device adapter arena.
    pub stack: &'a S,
    /// Decoder layer.
    pub layer: usize,
    /// Target module.
    pub target: LoraTarget,
}

impl<S> Clone for LoraArgs<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for LoraArgs<'_, S> {}

/// What [`super::Backend::matmul_before_lora`] is told of the `lora_apply` calls that follow it:
/// the targets of one layer, for the rows of one batch.
#[derive(Debug)]
pub struct LoraNext<'a, S> {
    /// Adapter slot of each row.
    pub batch: &'a LoraBatch,
    /// The device adapter arena.
    pub stack: &'a S,
    /// Decoder layer.
    pub layer: usize,
    /// The target modules whose `lora_apply` follows the matmul.
    pub targets: &'a [LoraTarget],
}

impl<S> Clone for LoraNext<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for LoraNext<'_, S> {}
