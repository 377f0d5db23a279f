//! The backend choice point (DESIGN.md 4 and 7): the engine turns its `device` string into a
//! backend here and nowhere else.
//!
//! [`select`] parses the device and builds a [`DeviceBackend`], an enum with one variant per
//! backend compiled into this build, which implements [`Backend`] by dispatching every op to
//! the chosen backend. Its buffers, weights, KV cache and adapter arena are enums of the same
//! shape, so the engine, the worker and the model are written once against `DeviceBackend`
//! whatever the device. The CPU backend is always compiled in; the CUDA backend
//! (`backend/cuda/`, feature `cuda`, DESIGN.md 4) adds a variant to each enum and an arm to each
//! `match` below. A value of one backend handed to an op of another is a programming error that
//! the ops answer like a shape mismatch (NaN output where the op's backend can write it,
//! nothing written, an INTERNAL error from the ops that return one), never a panic.

use std::sync::Arc;

use super::cpu::{CpuBackend, CpuLoraArena, CpuWeight};
#[cfg(feature = "cuda")]
use super::cuda::{CudaBackend, CudaBuf, CudaKvCache, CudaLoraArena, CudaWeight};
use super::{
    AttentionArgs, Backend, KvGeometry, KvStore, KvWriteArgs, LoraArgs, LoraNext, LoraSlotData,
    LoraStackGeometry, RopeArgs, View, ViewMut, WeightFormat,
};
pub use crate::cache::plan::DeviceMemory;
use crate::error::{Error, Result};
use crate::quant::GgmlType;
use crate::tensor::HostTensor;

/// A parsed `device` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// `"cpu"`: the CPU backend on the engine's thread pool.
    Cpu,
    /// `"cuda:N"`: CUDA device N.
    Cuda(u32),
}

impl Device {
    /// Parses `"cpu"` or `"cuda:N"` (N a decimal device ordinal). Errors (INVALID_ARGUMENT)
    /// name the device string.
    pub fn parse(device: &str) -> Result<Self> {
        if device == "cpu" {
            return Ok(Device::Cpu);
        }
        let ordinal = device
            .strip_prefix("cuda:")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok());
        ordinal.map(Device::Cuda).ok_or_else(|| {
            Error::invalid_argument(format!(
                "device \"{device}\" is not \"cpu\" or \"cuda:N\" (N a device number)"
            ))
        })
    }
}

/// The backend for `device`: `"cpu"` gives the CPU backend on a new thread pool of `threads`
/// threads (0 = one per available core); `"cuda:N"` opens CUDA device N in a build with the
/// `cuda` feature (DEVICE error naming what is missing: the driver library, the device, a
/// driver too old for the kernels) and is UNSUPPORTED otherwise (no CUDA backend compiled in);
/// any other string is INVALID_ARGUMENT. Every error names the device. The returned backend
/// owns its pool or device context; the engine's worker owns the backend.
pub fn select(device: &str, threads: usize) -> Result<DeviceBackend> {
    match Device::parse(device)? {
        Device::Cpu => {
            let threads = if threads == 0 {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            } else {
                threads
            };
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("loraplex-compute-{i}"))
                .build()
                .map_err(|e| Error::internal(format!("device \"cpu\": thread pool: {e}")))?;
            Ok(DeviceBackend::Cpu(CpuBackend::new(Arc::new(pool))))
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => CudaBackend::open(n).map(DeviceBackend::Cuda),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(no_cuda(device)),
    }
}

/// The layout of one part of a (fused) weight matrix as the model loader hands it to the
/// backend: `[rows, cols]`, kept in ggml blocks of `quant` or dense (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightPartLayout {
    /// Rows (the part's `out`).
    pub rows: usize,
    /// Columns (`in`, shared by the parts of a fused weight).
    pub cols: usize,
    /// The ggml block type the part is kept in, or `None` for a dense part.
    pub quant: Option<GgmlType>,
}

/// The bytes the backend for `device` reports ([`Backend::weight_bytes`]) for a weight packed
/// from parts with these layouts in `format`, computed from the layouts alone: what the engine
/// measures after loading, known before (the capacity planner). Pure; no backend is created.
///
/// Errors: INVALID_ARGUMENT for a bad device string and for parts the backend would refuse
/// (naming the part); UNSUPPORTED for `cuda:N` in a build without the `cuda` feature, for a
/// quantized type without kernels, and on `cuda:N` for any quantized part or format (the CUDA
/// backend keeps dense weights: 2 bytes per bf16 element, 4 per f32 element).
pub fn packed_weight_bytes(
    device: &str,
    parts: &[WeightPartLayout],
    format: WeightFormat,
) -> Result<usize> {
    match Device::parse(device)? {
        Device::Cpu => super::cpu::packed_bytes(parts, format),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => super::cuda::packed_bytes(parts, format),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(no_cuda(device)),
    }
}

/// The error for a `cuda:N` device in a build without CUDA.
#[cfg(not(feature = "cuda"))]
fn no_cuda(device: &str) -> Error {
    Error::unsupported(format!(
        "device \"{device}\": this build of loraplex has only the cpu backend (no CUDA backend is compiled in)"
    ))
}

/// Where the thread that drives a backend's steps runs (see [`DeviceBackend::driver`]).
/// Cloneable; owns a handle on the backend's thread pool, if it has one.
#[derive(Debug, Clone)]
pub struct Driver {
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Driver {
    /// Runs `f` (an engine worker loop) on the calling thread, inside the backend's thread pool
    /// when it has one: every op's parallel region then starts on that thread, which works in
    /// it with the other pool threads, instead of handing each op to the pool and sleeping
    /// until it ends (two thread wake-ups per op). `f` occupies one pool thread while it runs,
    /// including while it blocks waiting for work (nothing else computes then). A panic in `f`
    /// propagates to the caller.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}

/// The backend chosen by [`select`]; see the module docs. Used by one thread at a time (the
/// engine's worker); a backend may use its own thread pool inside an op.
#[derive(Debug)]
pub enum DeviceBackend {
    /// The CPU backend.
    Cpu(CpuBackend),
    /// The CUDA backend on one device.
    #[cfg(feature = "cuda")]
    Cuda(CudaBackend),
}

impl DeviceBackend {
    /// The [`Driver`] for the thread that runs this backend's steps.
    pub fn driver(&self) -> Driver {
        match self {
            DeviceBackend::Cpu(b) => Driver {
                pool: Some(b.pool().clone()),
            },
            #[cfg(feature = "cuda")]
            DeviceBackend::Cuda(_) => Driver { pool: None },
        }
    }

    /// What the memory plan needs to know of the device: the CPU keeps the KV cache and the
    /// adapter slots in f32 in host memory ([`DeviceMemory::HOST`]); a CUDA device keeps both
    /// in bf16 and reports its free memory (`cuMemGetInfo`, asked now: after the weights were loaded). Errors: DEVICE
    /// when the driver cannot tell.
    pub fn device_memory(&self) -> Result<DeviceMemory> {
        match self {
            DeviceBackend::Cpu(_) => Ok(DeviceMemory::HOST),
            #[cfg(feature = "cuda")]
            DeviceBackend::Cuda(b) => Ok(DeviceMemory {
                kv_elem_bytes: super::cuda::KV_ELEM_BYTES,
                lora_elem_bytes: super::cuda::LORA_ELEM_BYTES,
                free_bytes: Some(b.mem_info()?.0),
            }),
        }
    }
}

/// An activation buffer of a [`DeviceBackend`].
#[derive(Debug)]
pub enum DeviceBuf {
    /// A CPU buffer.
    Cpu(Vec<f32>),
    /// A CUDA device buffer.
    #[cfg(feature = "cuda")]
    Cuda(CudaBuf),
}

/// A packed weight of a [`DeviceBackend`].
#[derive(Debug)]
pub enum DeviceWeight {
    /// A CPU weight.
    Cpu(CpuWeight),
    /// A CUDA device weight.
    #[cfg(feature = "cuda")]
    Cuda(CudaWeight),
}

/// The paged KV cache of a [`DeviceBackend`].
#[derive(Debug)]
pub enum DeviceKvCache {
    /// The CPU (host) KV store.
    Cpu(KvStore),
    /// The CUDA device KV cache.
    #[cfg(feature = "cuda")]
    Cuda(CudaKvCache),
}

/// The adapter arena of a [`DeviceBackend`].
#[derive(Debug)]
pub enum DeviceLoraStack {
    /// The CPU adapter arena.
    Cpu(CpuLoraArena),
    /// The CUDA device adapter arena.
    #[cfg(feature = "cuda")]
    Cuda(CudaLoraArena),
}

/// A read view of a [`DeviceBuf`], unwrapped to its backend's buffer type.
enum AnyView<'a> {
    Cpu(View<'a, Vec<f32>>),
    #[cfg(feature = "cuda")]
    Cuda(View<'a, CudaBuf>),
}

/// A write view of a [`DeviceBuf`], unwrapped to its backend's buffer type.
enum AnyViewMut<'a> {
    Cpu(ViewMut<'a, Vec<f32>>),
    #[cfg(feature = "cuda")]
    Cuda(ViewMut<'a, CudaBuf>),
}

/// The view over the buffer's own type.
fn split(v: View<'_, DeviceBuf>) -> AnyView<'_> {
    match v.buf {
        DeviceBuf::Cpu(b) => AnyView::Cpu(View::new(b, v.rows, v.stride, v.col)),
        #[cfg(feature = "cuda")]
        DeviceBuf::Cuda(b) => AnyView::Cuda(View::new(b, v.rows, v.stride, v.col)),
    }
}

/// The view over the buffer's own type.
fn split_mut(v: ViewMut<'_, DeviceBuf>) -> AnyViewMut<'_> {
    let (rows, stride, col) = (v.rows, v.stride, v.col);
    match v.buf {
        DeviceBuf::Cpu(b) => AnyViewMut::Cpu(ViewMut::new(b, rows, stride, col)),
        #[cfg(feature = "cuda")]
        DeviceBuf::Cuda(b) => AnyViewMut::Cuda(ViewMut::new(b, rows, stride, col)),
    }
}

#[cfg(feature = "cuda")]
impl AnyViewMut<'_> {
    /// How a view op answers a buffer of another backend: the whole buffer becomes NaN when
    /// `backend` can write it.
    fn mixed_nan(self, backend: &DeviceBackend) {
        match self {
            AnyViewMut::Cpu(v) => super::reference::fill_nan(v.buf),
            AnyViewMut::Cuda(v) => {
                if let DeviceBackend::Cuda(b) = backend {
                    b.fill_nan(v.buf)
                }
            }
        }
    }
}

/// The error for buffers, weights, caches or arenas of another backend than the one the op
/// runs on (a programming error, answered like a shape mismatch).
#[cfg(feature = "cuda")]
fn mixed(op: &str) -> Error {
    Error::internal(format!(
        "{op}: a value of one backend was handed to another backend"
    ))
}

impl DeviceBackend {
    /// How an op answers a value of another backend: `out` becomes NaN (when this backend
    /// can write it), like a shape mismatch.
    #[cfg(feature = "cuda")]
    fn mixed_nan(&self, out: &mut DeviceBuf) {
        match (self, out) {
            (_, DeviceBuf::Cpu(v)) => super::reference::fill_nan(v),
            (Self::Cuda(b), DeviceBuf::Cuda(o)) => b.fill_nan(o),
            (Self::Cpu(_), DeviceBuf::Cuda(_)) => {}
        }
    }
}

impl Backend for DeviceBackend {
    type Buf = DeviceBuf;
    type Weight = DeviceWeight;
    type KvCache = DeviceKvCache;
    type LoraStack = DeviceLoraStack;

    fn name(&self) -> String {
        match self {
            Self::Cpu(b) => b.name(),
            #[cfg(feature = "cuda")]
            Self::Cuda(b) => b.name(),
        }
    }

    fn run_step<R>(&self, f: impl FnOnce() -> R) -> R {
        match self {
            Self::Cpu(b) => b.run_step(f),
            #[cfg(feature = "cuda")]
            Self::Cuda(b) => b.run_step(f),
        }
    }

    fn kernel_path(&self) -> String {
        match self {
            Self::Cpu(b) => Backend::kernel_path(b),
            #[cfg(feature = "cuda")]
            Self::Cuda(b) => Backend::kernel_path(b),
        }
    }

    fn alloc(&self, len: usize) -> Result<DeviceBuf> {
        match self {
            Self::Cpu(b) => b.alloc(len).map(DeviceBuf::Cpu),
            #[cfg(feature = "cuda")]
            Self::Cuda(b) => b.alloc(len).map(DeviceBuf::Cuda),
        }
    }

    fn upload(&self, data: &[f32]) -> Result<DeviceBuf> {
        match self {
            Self::Cpu(b) => b.upload(data).map(DeviceBuf::Cpu),
            #[cfg(feature = "cuda")]
            Self::Cuda(b) => b.upload(data).map(DeviceBuf::Cuda),
        }
    }

    fn download(&self, buf: &DeviceBuf, out: &mut [f32]) -> Result<()> {
        match (self, buf) {
            (Self::Cpu(b), DeviceBuf::Cpu(v)) => b.download(v, out),
            #[cfg(feature = "cuda")]
            (Self::Cuda(b), DeviceBuf::Cuda(v)) => b.download(v, out),
            #[cfg(feature = "cuda")]
            _ => Err(mixed("download")),
        }
    }

    fn weight(&self, t: &HostTensor, format: WeightFormat) -> Result<DeviceWeight> {
        match self {
            Self::Cpu(b) => b.weight(t, format).map(DeviceWeight::Cpu),
            #[cfg(feature = "cuda")]
            Self::Cuda(b) => b.weight(t, format).map(DeviceWeight::Cuda),
        }
    }

    fn fused_weight(&self, parts: &[&HostTensor], format: WeightFormat) -> Result<DeviceWeight> {
        match self {
            Self::Cpu(b) => b.fused_weight(parts, format).map(DeviceWeight::Cpu),
            #[cfg(feature = "cuda")]
            Self::Cuda(b) => b.fused_weight(parts, format).map(DeviceWeight::Cuda),
        }
    }

    fn weight_bytes(&self, w: &DeviceWeight) -> usize {
        match (self, w) {
            (Self::Cpu(b), DeviceWeight::Cpu(w)) => b.weight_bytes(w),
            #[cfg(feature = "cuda")]
            (Self::Cuda(b), DeviceWeight::Cuda(w)) => b.weight_bytes(w),
            #[cfg(feature = "cuda")]
            _ => 0,
        }
    }

    fn weight_dims(&self, w: &DeviceWeight) -> (usize, usize) {
        match (self, w) {
            (Self::Cpu(b), DeviceWeight::Cpu(w)) => b.weight_dims(w),
            #[cfg(feature = "cuda")]
            (Self::Cuda(b), DeviceWeight::Cuda(w)) => b.weight_dims(w),
            #[cfg(feature = "cuda")]
            _ => (0, 0),
        }
    }

    fn alloc_kv(&self, geom: KvGeometry) -> Result<DeviceKvCache> {
        match self {
            Self::Cpu(b) => b.alloc_kv(geom).map(DeviceKvCache::Cpu),
            #[cfg(feature = "cuda")]
            Self::Cuda(b) => b.alloc_kv(geom).map(DeviceKvCache::Cuda),
        }
    }

    fn matmul(&self, x: &DeviceBuf, rows: usize, w: &DeviceWeight, y: &mut DeviceBuf) {
        match (self, x, w, y) {
            (Self::Cpu(b), DeviceBuf::Cpu(x), DeviceWeight::Cpu(w), DeviceBuf::Cpu(y)) => {
                b.matmul(x, rows, w, y)
            }
            #[cfg(feature = "cuda")]
            (Self::Cuda(b), DeviceBuf::Cuda(x), DeviceWeight::Cuda(w), DeviceBuf::Cuda(y)) => {
                b.matmul(x, rows, w, y)
            }
            #[cfg(feature = "cuda")]
            (_, _, _, y) => self.mixed_nan(y),
        }
    }

    fn matmul_before_lora(
        &self,
        x: &DeviceBuf,
        rows: usize,
        w: &DeviceWeight,
        y: &mut DeviceBuf,
        next: LoraNext<'_, DeviceLoraStack>,
    ) {
        let LoraNext {
            batch,
            layer,
            targets,
            ..
        } = next;
        match (self, x, w, y, next.stack) {
            (
                Self::Cpu(b),
                DeviceBuf::Cpu(x),
                DeviceWeight::Cpu(w),
                DeviceBuf::Cpu(y),
                DeviceLoraStack::Cpu(stack),
            ) => b.matmul_before_lora(
                x,
                rows,
                w,
                y,
                LoraNext {
                    batch,
                    stack,
                    layer,
                    targets,
                },
            ),
            // Anything else: the plain matmul (which handles mixed values).
            #[cfg(feature = "cuda")]
            (_, x, w, y, _) => self.matmul(x, rows, w, y),
        }
    }

    fn embedding_gather(&self, table: &DeviceWeight, ids: &[u32], out: &mut DeviceBuf) {
        match (self, table, out) {
            (Self::Cpu(b), DeviceWeight::Cpu(t), DeviceBuf::Cpu(o)) => {
                b.embedding_gather(t, ids, o)
            }
            #[cfg(feature = "cuda")]
            (Self::Cuda(b), DeviceWeight::Cuda(t), DeviceBuf::Cuda(o)) => {
                b.embedding_gather(t, ids, o)
            }
            #[cfg(feature = "cuda")]
            (_, _, o) => self.mixed_nan(o),
        }
    }

    fn rms_norm(
        &self,
        x: &DeviceBuf,
        w: &DeviceBuf,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut DeviceBuf,
    ) {
        match (self, x, w, out) {
            (Self::Cpu(b), DeviceBuf::Cpu(x), DeviceBuf::Cpu(w), DeviceBuf::Cpu(o)) => {
                b.rms_norm(x, w, rows, dim, eps, o)
            }
            #[cfg(feature = "cuda")]
            (Self::Cuda(b), DeviceBuf::Cuda(x), DeviceBuf::Cuda(w), DeviceBuf::Cuda(o)) => {
                b.rms_norm(x, w, rows, dim, eps, o)
            }
            #[cfg(feature = "cuda")]
            (_, _, _, o) => self.mixed_nan(o),
        }
    }

    fn rope(&self, x: ViewMut<'_, DeviceBuf>, a: &RopeArgs<'_>) {
        match (self, split_mut(x)) {
            (Self::Cpu(b), AnyViewMut::Cpu(x)) => b.rope(x, a),
            #[cfg(feature = "cuda")]
            (Self::Cuda(b), AnyViewMut::Cuda(x)) => b.rope(x, a),
            #[cfg(feature = "cuda")]
            (_, x) => x.mixed_nan(self),
        }
    }

    fn silu_mul(&self, gate_up: &DeviceBuf, rows: usize, inter: usize, out: &mut DeviceBuf) {
        match (self, gate_up, out) {
            (Self::Cpu(b), DeviceBuf::Cpu(g), DeviceBuf::Cpu(o)) => b.silu_mul(g, rows, inter, o),
            #[cfg(feature = "cuda")]
            (Self::Cuda(b), DeviceBuf::Cuda(g), DeviceBuf::Cuda(o)) => {
                b.silu_mul(g, rows, inter, o)
            }
            #[cfg(feature = "cuda")]
            (_, _, o) => self.mixed_nan(o),
        }
    }

    fn add(&self, acc: &mut DeviceBuf, x: &DeviceBuf, len: usize) {
        match (self, acc, x) {
            (Self::Cpu(b), DeviceBuf::Cpu(acc), DeviceBuf::Cpu(x)) => b.add(acc, x, len),
            #[cfg(feature = "cuda")]
            (Self::Cuda(b), DeviceBuf::Cuda(acc), DeviceBuf::Cuda(x)) => b.add(acc, x, len),
            #[cfg(feature = "cuda")]
            (_, acc, _) => self.mixed_nan(acc),
        }
    }

    fn kv_write(&self, cache: &mut DeviceKvCache, w: KvWriteArgs<'_, DeviceBuf>) {
        let KvWriteArgs {
            layer,
            k,
            v,
            slot_mapping,
        } = w;
        match (self, cache, split(k), split(v)) {
            (Self::Cpu(b), DeviceKvCache::Cpu(c), AnyView::Cpu(k), AnyView::Cpu(v)) => b.kv_write(
                c,
                KvWriteArgs {
                    layer,
                    k,
                    v,
                    slot_mapping,
                },
            ),
            #[cfg(feature = "cuda")]
            (Self::Cuda(b), DeviceKvCache::Cuda(c), AnyView::Cuda(k), AnyView::Cuda(v)) => b
                .kv_write(
                    c,
                    KvWriteArgs {
                        layer,
                        k,
                        v,
                        slot_mapping,
                    },
                ),
            // Nothing is written for values of another backend.
            #[cfg(feature = "cuda")]
            _ => {}
        }
    }

    fn attention_paged(&self, a: AttentionArgs<'_, DeviceBuf, DeviceKvCache>, out: &mut DeviceBuf) {
        let AttentionArgs {
            q,
            n_heads,
            cache,
            layer,
            meta,
            window,
        } = a;
        match (self, cache, split(q), out) {
            (Self::Cpu(b), DeviceKvCache::Cpu(cache), AnyView::Cpu(q), DeviceBuf::Cpu(o)) => b
                .attention_paged(
                    AttentionArgs {
                        q,
                        n_heads,
                        cache,
                        layer,
                        meta,
                        window,
                    },
                    o,
                ),
            #[cfg(feature = "cuda")]
            (Self::Cuda(b), DeviceKvCache::Cuda(cache), AnyView::Cuda(q), DeviceBuf::Cuda(o)) => b
                .attention_paged(
                    AttentionArgs {
                        q,
                        n_heads,
                        cache,
                        layer,
                        meta,
                        window,
                    },
                    o,
                ),
            #[cfg(feature = "cuda")]
            (_, _, _, o) => self.mixed_nan(o),
        }
    }

    fn add_bias(&self, y: ViewMut<'_, DeviceBuf>, bias: &DeviceBuf, width: usize) {
        match (self, bias, split_mut(y)) {
            (Self::Cpu(b), DeviceBuf::Cpu(bias), AnyViewMut::Cpu(y)) => b.add_bias(y, bias, width),
            #[cfg(feature = "cuda")]
            (Self::Cuda(b), DeviceBuf::Cuda(bias), AnyViewMut::Cuda(y)) => {
                b.add_bias(y, bias, width)
            }
            #[cfg(feature = "cuda")]
            (_, _, y) => y.mixed_nan(self),
        }
    }

    fn head_rms_norm(
        &self,
        x: ViewMut<'_, DeviceBuf>,
        w: &DeviceBuf,
        n_heads: usize,
        head_dim: usize,
        eps: f32,
    ) {
        match (self, w, split_mut(x)) {
            (Self::Cpu(b), DeviceBuf::Cpu(w), AnyViewMut::Cpu(x)) => {
                b.head_rms_norm(x, w, n_heads, head_dim, eps)
            }
            #[cfg(feature = "cuda")]
            (Self::Cuda(b), DeviceBuf::Cuda(w), AnyViewMut::Cuda(x)) => {
                b.head_rms_norm(x, w, n_heads, head_dim, eps)
            }
            #[cfg(feature = "cuda")]
            (_, _, x) => x.mixed_nan(self),
        }
    }

    fn gather_rows(&self, x: &DeviceBuf, dim: usize, rows: &[u32], out: &mut DeviceBuf) {
        match (self, x, out) {
            (Self::Cpu(b), DeviceBuf::Cpu(x), DeviceBuf::Cpu(o)) => b.gather_rows(x, dim, rows, o),
            #[cfg(feature = "cuda")]
            (Self::Cuda(b), DeviceBuf::Cuda(x), DeviceBuf::Cuda(o)) => {
                b.gather_rows(x, dim, rows, o)
            }
            #[cfg(feature = "cuda")]
            (_, _, o) => self.mixed_nan(o),
        }
    }

    fn alloc_lora_stack(&self, geom: LoraStackGeometry) -> Result<DeviceLoraStack> {
        match self {
            Self::Cpu(b) => b.alloc_lora_stack(geom).map(DeviceLoraStack::Cpu),
            #[cfg(feature = "cuda")]
            Self::Cuda(b) => b.alloc_lora_stack(geom).map(DeviceLoraStack::Cuda),
        }
    }

    fn lora_load_slot(
        &self,
        stack: &mut DeviceLoraStack,
        slot: usize,
        layers: &LoraSlotData<'_>,
    ) -> Result<()> {
        match (self, stack) {
            (Self::Cpu(b), DeviceLoraStack::Cpu(s)) => b.lora_load_slot(s, slot, layers),
            #[cfg(feature = "cuda")]
            (Self::Cuda(b), DeviceLoraStack::Cuda(s)) => b.lora_load_slot(s, slot, layers),
            #[cfg(feature = "cuda")]
            _ => Err(mixed("lora_load_slot")),
        }
    }

    fn lora_clear_slot(&self, stack: &mut DeviceLoraStack, slot: usize) {
        match (self, stack) {
            (Self::Cpu(b), DeviceLoraStack::Cpu(s)) => b.lora_clear_slot(s, slot),
            #[cfg(feature = "cuda")]
            (Self::Cuda(b), DeviceLoraStack::Cuda(s)) => b.lora_clear_slot(s, slot),
            #[cfg(feature = "cuda")]
            _ => {}
        }
    }

    fn lora_stack_bytes(&self, stack: &DeviceLoraStack) -> usize {
        match (self, stack) {
            (Self::Cpu(b), DeviceLoraStack::Cpu(s)) => b.lora_stack_bytes(s),
            #[cfg(feature = "cuda")]
            (Self::Cuda(b), DeviceLoraStack::Cuda(s)) => b.lora_stack_bytes(s),
            #[cfg(feature = "cuda")]
            _ => 0,
        }
    }

    fn lora_apply(
        &self,
        x: View<'_, DeviceBuf>,
        y: ViewMut<'_, DeviceBuf>,
        a: &LoraArgs<'_, DeviceLoraStack>,
    ) {
        let (batch, layer, target) = (a.batch, a.layer, a.target);
        match (self, a.stack, split(x), split_mut(y)) {
            (Self::Cpu(b), DeviceLoraStack::Cpu(stack), AnyView::Cpu(x), AnyViewMut::Cpu(y)) => b
                .lora_apply(
                    x,
                    y,
                    &LoraArgs {
                        batch,
                        stack,
                        layer,
                        target,
                    },
                ),
            #[cfg(feature = "cuda")]
            (
                Self::Cuda(b),
                DeviceLoraStack::Cuda(stack),
                AnyView::Cuda(x),
                AnyViewMut::Cuda(y),
            ) => b.lora_apply(
                x,
                y,
                &LoraArgs {
                    batch,
                    stack,
                    layer,
                    target,
                },
            ),
            // Nothing is written for values of another backend.
            #[cfg(feature = "cuda")]
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn parses_cpu_and_cuda_ordinals() {
        assert_eq!(Device::parse("cpu").unwrap(), Device::Cpu);
        assert_eq!(Device::parse("cuda:0").unwrap(), Device::Cuda(0));
        assert_eq!(Device::parse("cuda:12").unwrap(), Device::Cuda(12));
    }

    #[test]
    fn anything_else_is_an_invalid_argument_naming_the_device() {
        for bad in [
            "", "CPU", "gpu", "cuda", "cuda:", "cuda:x", "cuda:-1", "cuda:+1", "cuda:0 ",
        ] {
            let e = select(bad, 1).unwrap_err();
            assert_eq!(
                e.code(),
                ErrorCode::InvalidArgument,
                "{bad:?}: {}",
                e.message()
            );
            assert!(
                e.message().contains(&format!("\"{bad}\"")),
                "{}",
                e.message()
            );
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_is_unsupported_in_this_build_naming_the_device() {
        let e = select("cuda:3", 1).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unsupported);
        assert!(e.message().contains("\"cuda:3\""), "{}", e.message());
    }

    #[test]
    fn cpu_gets_the_requested_threads() {
        match select("cpu", 3).unwrap() {
            DeviceBackend::Cpu(b) => assert_eq!(b.threads(), 3),
            #[cfg(feature = "cuda")]
            other => panic!("cpu gave {other:?}"),
        }
        assert_eq!(select("cpu", 1).unwrap().name(), "cpu");
    }

    /// With the `cuda` feature, `cuda:N` opens the device; on a machine without a driver (or
    /// without that device) it is a DEVICE error naming the device and what is missing, never
    /// a panic. Where the device opens, the backend is the CUDA one.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_without_a_driver_is_a_device_error_naming_the_device() {
        match select("cuda:0", 1) {
            Ok(b) => {
                assert!(matches!(b, DeviceBackend::Cuda(_)));
                assert_eq!(b.name(), "cuda:0");
                assert_eq!(b.device_memory().unwrap().kv_elem_bytes, 2);
                assert_eq!(b.device_memory().unwrap().lora_elem_bytes, 2);
            }
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::Device, "{}", e.message());
                assert!(e.message().contains("\"cuda:0\""), "{}", e.message());
            }
        }
        let parts = [WeightPartLayout {
            rows: 4,
            cols: 8,
            quant: None,
        }];
        assert_eq!(
            packed_weight_bytes("cuda:0", &parts, WeightFormat::BF16).unwrap(),
            64
        );
    }

    #[test]
    fn the_cpu_plans_its_kv_cache_in_host_f32() {
        let m = select("cpu", 1).unwrap().device_memory().unwrap();
        assert_eq!(m, DeviceMemory::HOST);
    }
}
