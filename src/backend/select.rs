//! The backend choice point (DESIGN.md 4 and 7): the engine turns its `device` string into a
//! backend here and nowhere else.
//!
//! [`select`] parses the device and builds a [`DeviceBackend`], an enum with one variant per
//! backend compiled into this build, which implements [`Backend`] by dispatching every op to
//! the chosen backend. Its buffers, weights, KV cache and adapter arena are enums of the same
//! shape, so the engine, the worker and the model are written once against `DeviceBackend`
//! whatever the device. Today the only variant is the CPU backend. The CUDA backend
//! (`backend/cuda/`, feature `cuda`, DESIGN.md 4) adds a variant to each enum and an arm to each
//! `match` below; a value of one backend handed to an op of another is a programming error that
//! the ops must then answer like a shape mismatch (NaN output, nothing written), never a panic.

use std::sync::Arc;

use super::cpu::{CpuBackend, CpuLoraArena, CpuWeight};
use super::{
    AttentionArgs, Backend, KvGeometry, KvStore, KvWriteArgs, LoraArgs, LoraSlotData,
    LoraStackGeometry, RopeArgs, View, ViewMut, WeightFormat,
};
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
/// threads (0 = one per available core); `"cuda:N"` is UNSUPPORTED in this build (no CUDA
/// backend compiled in); any other string is INVALID_ARGUMENT. Every error names the device.
/// The returned backend owns its pool; the engine's worker owns the backend.
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
/// (naming the part); UNSUPPORTED for `cuda:N` in this build and for a quantized type without
/// kernels.
pub fn packed_weight_bytes(
    device: &str,
    parts: &[WeightPartLayout],
    format: WeightFormat,
) -> Result<usize> {
    match Device::parse(device)? {
        Device::Cpu => super::cpu::packed_bytes(parts, format),
        Device::Cuda(_) => Err(no_cuda(device)),
    }
}

/// The error for a `cuda:N` device in a build without CUDA.
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
}

impl DeviceBackend {
    /// The [`Driver`] for the thread that runs this backend's steps.
    pub fn driver(&self) -> Driver {
        match self {
            DeviceBackend::Cpu(b) => Driver {
                pool: Some(b.pool().clone()),
            },
        }
    }
}

/// An activation buffer of a [`DeviceBackend`].
#[derive(Debug)]
pub enum DeviceBuf {
    /// A CPU buffer.
    Cpu(Vec<f32>),
}

/// A packed weight of a [`DeviceBackend`].
#[derive(Debug)]
pub enum DeviceWeight {
    /// A CPU weight.
    Cpu(CpuWeight),
}

/// The paged KV cache of a [`DeviceBackend`].
#[derive(Debug)]
pub enum DeviceKvCache {
    /// The CPU (host) KV store.
    Cpu(KvStore),
}

/// The adapter arena of a [`DeviceBackend`].
#[derive(Debug)]
pub enum DeviceLoraStack {
    /// The CPU adapter arena.
    Cpu(CpuLoraArena),
}

/// The CPU vector of a buffer.
fn cpu_buf(b: &DeviceBuf) -> &Vec<f32> {
    match b {
        DeviceBuf::Cpu(v) => v,
    }
}

/// The CPU vector of a buffer, writable.
fn cpu_buf_mut(b: &mut DeviceBuf) -> &mut Vec<f32> {
    match b {
        DeviceBuf::Cpu(v) => v,
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
        }
    }

    fn kernel_path(&self) -> String {
        match self {
            Self::Cpu(b) => Backend::kernel_path(b),
        }
    }

    fn alloc(&self, len: usize) -> Result<DeviceBuf> {
        match self {
            Self::Cpu(b) => b.alloc(len).map(DeviceBuf::Cpu),
        }
    }

    fn upload(&self, data: &[f32]) -> Result<DeviceBuf> {
        match self {
            Self::Cpu(b) => b.upload(data).map(DeviceBuf::Cpu),
        }
    }

    fn download(&self, buf: &DeviceBuf, out: &mut [f32]) -> Result<()> {
        match (self, buf) {
            (Self::Cpu(b), DeviceBuf::Cpu(v)) => b.download(v, out),
        }
    }

    fn weight(&self, t: &HostTensor, format: WeightFormat) -> Result<DeviceWeight> {
        match self {
            Self::Cpu(b) => b.weight(t, format).map(DeviceWeight::Cpu),
        }
    }

    fn fused_weight(&self, parts: &[&HostTensor], format: WeightFormat) -> Result<DeviceWeight> {
        match self {
            Self::Cpu(b) => b.fused_weight(parts, format).map(DeviceWeight::Cpu),
        }
    }

    fn weight_bytes(&self, w: &DeviceWeight) -> usize {
        match (self, w) {
            (Self::Cpu(b), DeviceWeight::Cpu(w)) => b.weight_bytes(w),
        }
    }

    fn weight_dims(&self, w: &DeviceWeight) -> (usize, usize) {
        match (self, w) {
            (Self::Cpu(b), DeviceWeight::Cpu(w)) => b.weight_dims(w),
        }
    }

    fn alloc_kv(&self, geom: KvGeometry) -> Result<DeviceKvCache> {
        match self {
            Self::Cpu(b) => b.alloc_kv(geom).map(DeviceKvCache::Cpu),
        }
    }

    fn matmul(&self, x: &DeviceBuf, rows: usize, w: &DeviceWeight, y: &mut DeviceBuf) {
        match (self, x, w, y) {
            (Self::Cpu(b), DeviceBuf::Cpu(x), DeviceWeight::Cpu(w), DeviceBuf::Cpu(y)) => {
                b.matmul(x, rows, w, y)
            }
        }
    }

    fn embedding_gather(&self, table: &DeviceWeight, ids: &[u32], out: &mut DeviceBuf) {
        match (self, table, out) {
            (Self::Cpu(b), DeviceWeight::Cpu(t), DeviceBuf::Cpu(o)) => {
                b.embedding_gather(t, ids, o)
            }
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
        }
    }

    fn rope(&self, x: ViewMut<'_, DeviceBuf>, a: &RopeArgs<'_>) {
        match self {
            Self::Cpu(b) => b.rope(x.map(cpu_buf_mut), a),
        }
    }

    fn silu_mul(&self, gate_up: &DeviceBuf, rows: usize, inter: usize, out: &mut DeviceBuf) {
        match (self, gate_up, out) {
            (Self::Cpu(b), DeviceBuf::Cpu(g), DeviceBuf::Cpu(o)) => b.silu_mul(g, rows, inter, o),
        }
    }

    fn add(&self, acc: &mut DeviceBuf, x: &DeviceBuf, len: usize) {
        match (self, acc, x) {
            (Self::Cpu(b), DeviceBuf::Cpu(acc), DeviceBuf::Cpu(x)) => b.add(acc, x, len),
        }
    }

    fn kv_write(&self, cache: &mut DeviceKvCache, w: KvWriteArgs<'_, DeviceBuf>) {
        match (self, cache) {
            (Self::Cpu(b), DeviceKvCache::Cpu(c)) => b.kv_write(
                c,
                KvWriteArgs {
                    layer: w.layer,
                    k: w.k.map(cpu_buf),
                    v: w.v.map(cpu_buf),
                    slot_mapping: w.slot_mapping,
                },
            ),
        }
    }

    fn attention_paged(&self, a: AttentionArgs<'_, DeviceBuf, DeviceKvCache>, out: &mut DeviceBuf) {
        match (self, a.cache, out) {
            (Self::Cpu(b), DeviceKvCache::Cpu(cache), DeviceBuf::Cpu(o)) => b.attention_paged(
                AttentionArgs {
                    q: a.q.map(cpu_buf),
                    n_heads: a.n_heads,
                    cache,
                    layer: a.layer,
                    meta: a.meta,
                    window: a.window,
                },
                o,
            ),
        }
    }

    fn add_bias(&self, y: ViewMut<'_, DeviceBuf>, bias: &DeviceBuf, width: usize) {
        match (self, bias) {
            (Self::Cpu(b), DeviceBuf::Cpu(bias)) => b.add_bias(y.map(cpu_buf_mut), bias, width),
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
        match (self, w) {
            (Self::Cpu(b), DeviceBuf::Cpu(w)) => {
                b.head_rms_norm(x.map(cpu_buf_mut), w, n_heads, head_dim, eps)
            }
        }
    }

    fn gather_rows(&self, x: &DeviceBuf, dim: usize, rows: &[u32], out: &mut DeviceBuf) {
        match (self, x, out) {
            (Self::Cpu(b), DeviceBuf::Cpu(x), DeviceBuf::Cpu(o)) => b.gather_rows(x, dim, rows, o),
        }
    }

    fn alloc_lora_stack(&self, geom: LoraStackGeometry) -> Result<DeviceLoraStack> {
        match self {
            Self::Cpu(b) => b.alloc_lora_stack(geom).map(DeviceLoraStack::Cpu),
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
        }
    }

    fn lora_clear_slot(&self, stack: &mut DeviceLoraStack, slot: usize) {
        match (self, stack) {
            (Self::Cpu(b), DeviceLoraStack::Cpu(s)) => b.lora_clear_slot(s, slot),
        }
    }

    fn lora_stack_bytes(&self, stack: &DeviceLoraStack) -> usize {
        match (self, stack) {
            (Self::Cpu(b), DeviceLoraStack::Cpu(s)) => b.lora_stack_bytes(s),
        }
    }

    fn lora_apply(
        &self,
        x: View<'_, DeviceBuf>,
        y: ViewMut<'_, DeviceBuf>,
        a: &LoraArgs<'_, DeviceLoraStack>,
    ) {
        match (self, a.stack) {
            (Self::Cpu(b), DeviceLoraStack::Cpu(stack)) => b.lora_apply(
                x.map(cpu_buf),
                y.map(cpu_buf_mut),
                &LoraArgs {
                    batch: a.batch,
                    stack,
                    layer: a.layer,
                    target: a.target,
                },
            ),
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

    #[test]
    fn cuda_is_unsupported_in_this_build_naming_the_device() {
        let e = select("cuda:3", 1).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unsupported);
        assert!(e.message().contains("\"cuda:3\""), "{}", e.message());
    }

    #[test]
    fn cpu_gets_the_requested_threads() {
        let DeviceBackend::Cpu(b) = select("cpu", 3).unwrap();
        assert_eq!(b.threads(), 3);
        assert_eq!(select("cpu", 1).unwrap().name(), "cpu");
    }
}
