//! The compute backend: a narrow trait with the dozen ops a Llama forward pass needs.
//!
//! A backend owns its buffers ([`Backend::Buf`] for f32 activations, [`Backend::Weight`] for
//! packed weight matrices, [`Backend::KvCache`] for the paged KV cache). Every op's doc comment
//! states its semantics as a loop; [`reference`](mod@reference) implements exactly that loop in scalar code and
//! tests compare every fast implementation against it. All buffers are row-major; ops that read
//! or write column ranges of rows take strided [`View`]s, and ops with more than a few
//! parameters take an argument struct ([`op_args`]).
//!
//! The engine chooses its backend in one place, [`select()`], from the configured device.
//!
//! Threading: a backend is used by one thread at a time (the engine's worker); it may use a thread
//! pool internally. Backends know nothing of requests or adapter names.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod kv_store;
pub mod lora;
pub mod lora_arena;
pub mod op_args;
pub mod quant_stack;
pub mod reference;
pub mod select;
pub mod view;

pub use kv_store::KvStore;
pub use lora::{
    lane_scale, LoraBatch, LoraLane, LoraPrecision, LoraSlotData, LoraStackGeometry, LoraTarget,
    LoraWeights, MAX_MIX,
};
pub use op_args::{AttentionArgs, KvWriteArgs, LoraArgs, LoraNext, RopeArgs};
pub use select::{select, DeviceBackend};
pub use view::{View, ViewMut};

use crate::error::Result;
use crate::tensor::HostTensor;

/// How weight matrices are stored by the backend (activations are always f32, accumulation f32).
///
/// The quantized formats apply to the weights of a dense checkpoint (safetensors, or an
/// F32/F16/BF16 GGUF): the model loader quantizes those at load time (see
/// [`crate::model::weight_quant`] for which ggml type each matrix gets); the tensors of an
/// already-quantized checkpoint are kept in the types the file stores. A backend therefore only
/// ever receives quantized host tensors with a quantized format, and answers INVALID_ARGUMENT
/// when handed a dense tensor with one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// 32-bit floats.
    #[default]
    F32,
    /// bfloat16 (half the bytes; converted to f32 inside the kernels).
    BF16,
    /// ggml Q8_0 blocks (8.5 bits per weight).
    Q8_0,
    /// ggml Q4_K blocks (4.5 bits per weight; llama.cpp's Q4_K_M mix, see
    /// [`crate::model::weight_quant`]).
    Q4K,
}

impl WeightFormat {
    /// Every format, in `lpx_weight_dtype` order.
    pub const ALL: [WeightFormat; 4] = [
        WeightFormat::F32,
        WeightFormat::BF16,
        WeightFormat::Q8_0,
        WeightFormat::Q4K,
    ];
    /// The configuration name: "f32", "bf16", "q8_0", "q4_k" (`LPX_WEIGHT_DTYPE`, stats JSON).
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::BF16 => "bf16",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q4K => "q4_k",
        }
    }
    /// The format named `s` (case-insensitive; also "float32", "bfloat16"), or `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "float32" => Some(WeightFormat::F32),
            "bfloat16" => Some(WeightFormat::BF16),
            l => Self::ALL.into_iter().find(|f| f.name() == l),
        }
    }
    /// Whether weights are kept in ggml quantized blocks.
    pub fn is_quantized(self) -> bool {
        matches!(self, WeightFormat::Q8_0 | WeightFormat::Q4K)
    }
}

/// Geometry of the paged KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvGeometry {
    /// Decoder layers.
    pub num_layers: usize,
    /// Physical blocks (shared by all sequences).
    pub num_blocks: usize,
    /// Token positions per block.
    pub block_size: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
}

impl KvGeometry {
    /// f32 elements per layer for K (or V): `num_blocks * block_size * num_kv_heads * head_dim`.
    pub fn layer_elems(&self) -> usize {
        self.num_blocks * self.block_size * self.num_kv_heads * self.head_dim
    }
    /// Total bytes of K and V for all layers (f32, as the host backends keep them).
    pub fn bytes(&self) -> usize {
        self.bytes_at(4)
    }
    /// Total bytes of K and V for all layers at `elem_bytes` per value (2 for the CUDA
    /// backend's bf16 cache).
    pub fn bytes_at(&self, elem_bytes: usize) -> usize {
        2 * self.num_layers * self.layer_elems() * elem_bytes
    }
}

/// Per-row attention metadata for one step. Row `t` of the step is a token of sequence
/// `row_seq[t]` at absolute position `row_pos[t]`; it attends to positions `0..=row_pos[t]` of
/// that sequence, whose K/V live at physical slots given by the sequence's block table:
/// position `p` is at slot `block_tables[seq][p / block_size] * block_size + p % block_size`.
#[derive(Debug, Clone, Copy)]
pub struct AttnMeta<'a> {
    /// For each row, the index of its sequence in `block_tables`.
    pub row_seq: &'a [u32],
    /// For each row, its absolute position.
    pub row_pos: &'a [u32],
    /// For each row, the physical slot its K/V is written to (see [`Backend::kv_write`]).
    pub slot_mapping: &'a [u32],
    /// Block table of each sequence in the step.
    pub block_tables: &'a [&'a [u32]],
}

/// A compute backend. See the module docs for conventions.
pub trait Backend: Send {
    /// An f32 activation buffer.
    type Buf: Send;
    /// A packed weight matrix `[out, in]`.
    type Weight: Send + Sync;
    /// The paged KV cache for all layers.
    type KvCache: Send;
    /// The device adapter arena (slots of LoRA weights; DESIGN.md 1.1 "device cache").
    type LoraStack: Send;

    /// Short name ("cpu", "cuda:0").
    fn name(&self) -> String;
    /// The kernel paths the backend runs (for stats), e.g. `"cpu dense=avx2-fma
    /// quant=avx512-vnni"`; the name when a backend has only one.
    fn kernel_path(&self) -> String {
        self.name()
    }
    /// Runs `f`, one step's forward pass (its ops), on the calling thread, with the backend's
    /// compute resources ready for the ops it calls until `f` returns. The CPU backend keeps
    /// its other pool threads polling for work through the step (as llama.cpp's threads spin
    /// through a graph) instead of letting them fall asleep between ops; the default runs `f`.
    /// Results are the same either way.
    fn run_step<R>(&self, f: impl FnOnce() -> R) -> R
    where
        Self: Sized,
    {
        f()
    }
    /// A zeroed buffer of `len` f32.
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer holding a copy of `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    /// Copies `buf[..out.len()]` into `out`.
    fn download(&self, buf: &Self::Buf, out: &mut [f32]) -> Result<()>;
    /// Packs a 2-D host tensor `[out, in]` in the given format. A tensor kept in ggml blocks
    /// ([`HostTensor::quantized`]) stays in its blocks whatever `format`, and `matmul` on it
    /// follows [`reference::quant_dot`] (8-bit activations, exact integer block dots).
    fn weight(&self, t: &HostTensor, format: WeightFormat) -> Result<Self::Weight>;
    /// Stacks several `[out_i, in]` tensors into one `[sum out_i, in]` weight (fused QKV, gate/up).
    /// Quantized parts of different types are stacked as row segments; when dense and
    /// quantized parts are mixed, the quantized ones are dequantized (exactly) and the whole
    /// weight is dense.
    fn fused_weight(&self, parts: &[&HostTensor], format: WeightFormat) -> Result<Self::Weight>;
    /// Bytes the weight occupies.
    fn weight_bytes(&self, w: &Self::Weight) -> usize;
    /// `(out, in)` of a weight.
    fn weight_dims(&self, w: &Self::Weight) -> (usize, usize);
    /// A KV cache of the given geometry (zeroed).
    fn alloc_kv(&self, geom: KvGeometry) -> Result<Self::KvCache>;

    /// `for t in 0..rows, o in 0..out: y[t*out + o] = sum_i x[t*in + i] * w[o, i]` (f32 accumulate;
    /// for a weight kept in ggml blocks, exactly as [`reference::quant_dot`] defines it).
    fn matmul(&self, x: &Self::Buf, rows: usize, w: &Self::Weight, y: &mut Self::Buf);
    /// [`Self::matmul`], told that `lora_apply` for `next.targets` of `next.layer` follows it
    /// on this output: a backend may start reading those adapters' weights (the slots of
    /// `next.batch`) while the matmul computes. `y` is exactly what [`Self::matmul`] writes;
    /// the default is that call.
    fn matmul_before_lora(
        &self,
        x: &Self::Buf,
        rows: usize,
        w: &Self::Weight,
        y: &mut Self::Buf,
        next: LoraNext<'_, Self::LoraStack>,
    ) {
        let _ = next;
        self.matmul(x, rows, w, y)
    }
    /// `for t, j: out[t*hidden + j] = table[ids[t], j]` (a quantized table's rows dequantized
    /// exactly as ggml does).
    fn embedding_gather(&self, table: &Self::Weight, ids: &[u32], out: &mut Self::Buf);
    /// `for t: r = 1/sqrt(mean_j(x[t,j]^2) + eps); out[t,j] = x[t,j] * r * w[j]` over `dim` columns.
    fn rms_norm(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut Self::Buf,
    );
    /// Rotary embedding, HF "rotate_half" convention, in place on the view `x`: for each row
    /// `t < x.rows` and each head `h < a.n_heads` (columns `x.col + h*head_dim ..` of the row), for
    /// `i in 0..head_dim/2`, with `θ = row_pos[t] * inv_freq[i]` (f32 product):
    /// `(x1, x2) = (x[i], x[i + half])`; `x[i] = x1*cos θ - x2*sin θ`; `x[i+half] = x2*cos θ + x1*sin θ`.
    /// When the heads do not fit the view's stride or buffer, `row_pos`/`inv_freq` are short or
    /// `head_dim` is odd, the whole buffer becomes NaN.
    fn rope(&self, x: ViewMut<'_, Self::Buf>, a: &RopeArgs<'_>);
    /// `for t, j in 0..inter: out[t*inter + j] = silu(gu[t*2*inter + j]) * gu[t*2*inter + inter + j]`
    /// where `silu(g) = g / (1 + exp(-g))`.
    fn silu_mul(&self, gate_up: &Self::Buf, rows: usize, inter: usize, out: &mut Self::Buf);
    /// `acc[i] += x[i]` for `i in 0..len`.
    fn add(&self, acc: &mut Self::Buf, x: &Self::Buf, len: usize);
    /// Writes K and V of every row into the cache of `w.layer`: with `kv_dim` the cache's
    /// `num_kv_heads * head_dim`, for `t in 0..w.k.rows`:
    /// `k_cache[layer][slot_mapping[t]] = K[t, 0..kv_dim]` (row t of view `w.k`), same for V.
    /// Rows whose slot is outside the cache are skipped; nothing is written when `w.k` and `w.v`
    /// differ in rows or a view does not fit its buffer with `kv_dim` columns.
    fn kv_write(&self, cache: &mut Self::KvCache, w: KvWriteArgs<'_, Self::Buf>);
    /// Causal grouped-query attention over the paged cache of `a.layer`. Q of row t is the
    /// `n_heads*head_dim` columns of row t of view `a.q`; query head h uses KV head
    /// `h / (n_heads / n_kv_heads)`. For each row `t < a.q.rows` and head h, with
    /// `lo = 0` (`a.window` None) or `lo = max(0, row_pos[t] + 1 - w)` (`a.window = Some(w)`,
    /// transformers' sliding window: keys at positions `> row_pos[t] - w`; `w = 0` counts as 1):
    /// `s_p = (q_h · k_p) / sqrt(head_dim)` for `p in lo..=row_pos[t]` of sequence `row_seq[t]`
    /// (at the slots its block table gives, see [`AttnMeta`]), `w = softmax(s)`,
    /// `out[t, h*head_dim + d] = sum_p w_p * v_p[d]` (`out` is `[rows, n_heads*head_dim]`).
    /// Inconsistent shapes make all of `out` NaN; a row whose metadata points outside the cache
    /// gets a NaN row.
    fn attention_paged(&self, a: AttentionArgs<'_, Self::Buf, Self::KvCache>, out: &mut Self::Buf);
    /// Adds a bias to a column range of every row, in place (the q/k/v biases over the fused
    /// QKV row): `for t < y.rows, j < width: y[t, y.col + j] += bias[j]`. When the view does not
    /// fit its buffer with `width` columns or `bias` holds fewer than `width` values, the whole
    /// buffer becomes NaN.
    fn add_bias(&self, y: ViewMut<'_, Self::Buf>, bias: &Self::Buf, width: usize);
    /// RMSNorm of every head, in place (Qwen3's q/k norm): for each row `t < x.rows` and head
    /// `h < n_heads`, with `v` the `head_dim` columns `x.col + h*head_dim ..` of row t:
    /// `r = 1/sqrt(mean_j(v[j]^2) + eps); v[j] = v[j] * r * w[j]`. When the heads do not fit the
    /// view or `w` holds fewer than `head_dim` values, the whole buffer becomes NaN.
    fn head_rms_norm(
        &self,
        x: ViewMut<'_, Self::Buf>,
        w: &Self::Buf,
        n_heads: usize,
        head_dim: usize,
        eps: f32,
    );
    /// Copies rows: `for (k, &r) in rows.iter().enumerate(): out[k*dim..][..dim] = x[r*dim..][..dim]`.
    fn gather_rows(&self, x: &Self::Buf, dim: usize, rows: &[u32], out: &mut Self::Buf);

    /// An adapter arena of the given geometry, every slot empty. Memory for every slot at
    /// `max_rank` is reserved up front.
    fn alloc_lora_stack(&self, geom: LoraStackGeometry) -> Result<Self::LoraStack>;
    /// Stores an adapter in `slot` (replacing what was there). Errors (INVALID_ADAPTER / INTERNAL)
    /// when `slot` is out of range, `layers.len()` differs from the geometry, a rank is 0 or over
    /// `max_rank`, or an A/B length does not match `rank` and the target's dims.
    fn lora_load_slot(
        &self,
        stack: &mut Self::LoraStack,
        slot: usize,
        layers: &LoraSlotData<'_>,
    ) -> Result<()>;
    /// Empties `slot` (rows using it then get no LoRA contribution).
    fn lora_clear_slot(&self, stack: &mut Self::LoraStack, slot: usize);
    /// Bytes reserved by the arena.
    fn lora_stack_bytes(&self, stack: &Self::LoraStack) -> usize;
    /// Mixed-batch LoRA for one target of one layer (DESIGN.md 1.4). With `(in, out)` the dims
    /// of `a.target`, for each lane `(s, m)` of `a.batch.lanes()` in order (the first adapter of
    /// every row, then the further adapters of mixing rows):
    /// `for t in 0..x.rows { if s[t] < 0 or slot s[t] has no module for (a.layer, a.target)
    /// { continue } h[k] = sum_i A[s[t]][k, i] * x[t, i] for k < r;
    /// y[t, o] += (scale[s[t]] * m[t]) * sum_k B[s[t]][o, k] * h[k] }` (`m[t]` = 1 where the
    /// lane has no scales), where `x[t, i]` / `y[t, o]` are
    /// columns of row t of the views. Rows beyond a lane's length use no adapter in it; rows
    /// whose x or y columns fall outside the buffers are skipped; nothing is written when
    /// `x.rows != y.rows` or a view's columns exceed its stride (`col + in > stride`,
    /// `col + out > stride`: rows would overlap). A row's result must not depend on the other
    /// rows in the call.
    fn lora_apply(
        &self,
        x: View<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
        a: &LoraArgs<'_, Self::LoraStack>,
    );
}
