//! The CPU backend: AVX2/FMA kernels (portable fallback) running on an engine-owned rayon pool;
//! weights kept in ggml blocks go through [`quant`] (portable, AVX2 or AVX-512 VNNI kernels,
//! bitwise equal to the reference twin).
//!
//! Threading: the backend never creates threads; all parallel work runs inside
//! `pool.install` on the pool passed to [`CpuBackend::new`]. Results are bitwise independent of
//! the pool's size and of which other rows share a call (see `matmul.rs`, `attention.rs`).
//!
//! Ops cannot return errors; on inconsistent sizes they fill the output with NaN (or skip
//! `kv_write` rows whose slot is outside the cache) instead of panicking, exactly like
//! [`crate::backend::reference`].

#[cfg(target_arch = "x86_64")]
mod amx;
mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_x86;
mod bf16act;
#[cfg(target_arch = "x86_64")]
mod bf16dot;
mod elementwise;
mod lora;
mod matmul;
pub mod peak;
mod qkv;
pub mod quant;
#[cfg(target_arch = "x86_64")]
mod side_stream;
mod simd;
mod weight;

use std::sync::Arc;

use parking_lot::Mutex;
use rayon::ThreadPool;

pub use lora::CpuLoraArena;
pub use quant::QuantKernel;
pub use weight::CpuWeight;

use super::{
    AttentionArgs, Backend, KvGeometry, KvStore, KvWriteArgs, LoraArgs, LoraNext, RopeArgs, View,
    ViewMut, WeightFormat,
};
use crate::error::{Error, Result};
use crate::tensor::HostTensor;

/// The CPU backend's KV cache: the host backends' shared [`KvStore`].
pub type CpuKvCache = KvStore;

/// Reusable scratch memory for matmul (padded activations, transposed output, quantized
/// activations).
#[derive(Debug, Default)]
struct Scratch {
    xpad: Vec<f32>,
    yt: Vec<f32>,
    qacts: crate::backend::reference::quant_dot::QActs,
    /// The quantized activations in the transposed super-block layout (`quant::xt`).
    qxt: Vec<i8>,
    /// The quantized activations in the AMX int8 tile form.
    qtiles: quant::TileActs,
    /// Activations as bf16 bits for the `vdpbf16ps` kernels of bf16 weights.
    xbits: Vec<u16>,
    /// RoPE's cos/sin for the step's positions (shared by its layers).
    rope: elementwise::RopeTable,
}

/// The CPU backend. Cheap to construct; holds the engine's thread pool and scratch buffers.
pub struct CpuBackend {
    pool: Arc<ThreadPool>,
    simd: bool,
    /// The AVX-512F/VL variants of the AVX2 kernels (f32 matmul tiles of 32 registers,
    /// attention's element-wise loops on 16 lanes); requires `simd`.
    wide: bool,
    bf16: Bf16Kernel,
    qkernel: QuantKernel,
    /// Boxed: the buffers' vectors would make the backend (and `DeviceBackend`) large.
    scratch: Mutex<Box<Scratch>>,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend")
            .field("threads", &self.pool.current_num_threads())
            .field("simd", &self.simd)
            .field("wide", &self.wide)
            .field("bf16", &self.bf16)
            .field("quant_kernel", &self.qkernel)
            .finish()
    }
}

/// How bf16 weights' matmuls are computed. Every path multiplies bf16-rounded activations by the
/// bf16 weights (each product exact in f32) and accumulates in f32; they differ in summation
/// order only, and each keeps a row's result independent of the rest of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// The f32 kernels (AVX2/FMA, or portable without them) on bf16-rounded activations.
    F32,
    /// AVX-512 BF16 `vdpbf16ps` kernels (`bf16dot.rs`).
    Avx512Bf16,
    /// AMX tiles (`tdpbf16ps`, `amx.rs`), where the CPU has AMX-BF16 and the OS grants the tile
    /// state; its weights are stored in 16 × 32 tiles instead of the 4-row panels.
    Amx,
}

impl Bf16Kernel {
    /// Every path, slowest first.
    pub const ALL: [Bf16Kernel; 3] = [Self::F32, Self::Avx512Bf16, Self::Amx];

    /// The fastest path this CPU runs.
    pub fn detect() -> Self {
        *Self::ALL
            .iter()
            .rev()
            .find(|k| k.available())
            .unwrap_or(&Self::F32)
    }

    /// Whether this CPU (and OS, for AMX) runs the path (detected at runtime).
    pub fn available(self) -> bool {
        match self {
            Self::F32 => true,
            Self::Avx512Bf16 => detect_bf16dot(),
            #[cfg(target_arch = "x86_64")]
            Self::Amx => amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Self::Amx => false,
        }
    }

    /// The arrangement of bf16 weights the path reads.
    fn layout(self) -> weight::Layout {
        if self == Self::Amx {
            weight::Layout::AmxTiles
        } else {
            weight::Layout::Panels
        }
    }

    /// Short name ("f32", "avx512-bf16", "amx-bf16").
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Avx512Bf16 => "avx512-bf16",
            Self::Amx => "amx-bf16",
        }
    }
}

/// The bytes a weight of these parts takes on the backend [`CpuBackend::new`] builds (see
/// `weight::packed_bytes`; for the capacity planner).
pub(crate) fn packed_bytes(
    parts: &[super::select::WeightPartLayout],
    format: WeightFormat,
) -> Result<usize> {
    weight::packed_bytes(parts, format, Bf16Kernel::detect().layout())
}

/// True when the AVX-512 BF16 kernels can run on this CPU (with the AVX2/FMA ones around them).
fn detect_bf16dot() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        detect_simd() && bf16dot::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// True when the AVX-512F/VL variants of the AVX2/FMA kernels can run on this CPU.
fn detect_wide() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        detect_simd() && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// True when the AVX2/FMA kernels can run on this CPU.
fn detect_simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl CpuBackend {
    /// The thread pool the backend's ops run their parallel work on.
    pub fn pool(&self) -> &Arc<ThreadPool> {
        &self.pool
    }

    /// A backend running its parallel work on `pool`, using AVX2/FMA kernels when the CPU has
    /// them (detected at runtime) and portable kernels otherwise.
    /// The quantized matmul uses the fastest [`QuantKernel`] the CPU has.
    pub fn new(pool: Arc<ThreadPool>) -> Self {
        Self {
            pool,
            simd: detect_simd(),
            wide: detect_wide(),
            bf16: Bf16Kernel::detect(),
            qkernel: QuantKernel::detect(),
            scratch: Mutex::new(Box::default()),
        }
    }

    /// A backend that always uses the portable (non-SIMD) kernels; for tests and comparisons.
    pub fn portable(pool: Arc<ThreadPool>) -> Self {
        Self {
            simd: false,
            wide: false,
            bf16: Bf16Kernel::F32,
            qkernel: QuantKernel::Portable,
            ..Self::new(pool)
        }
    }

    /// A backend running the kernels of a CPU with AVX2/FMA but no AVX-512 (f32 matmul on 256-bit
    /// tiles, attention on 8 lanes, bf16 weights on the f32 kernels, quantized weights on the
    /// AVX2 path), whatever this CPU has beyond; for tests and comparisons. Errors (UNSUPPORTED)
    /// without AVX2/FMA.
    pub fn avx2_only(pool: Arc<ThreadPool>) -> Result<Self> {
        if !detect_simd() {
            return Err(Error::unsupported(
                "the avx2 kernel set needs AVX2 and FMA, which this CPU lacks",
            ));
        }
        Ok(Self {
            wide: false,
            bf16: Bf16Kernel::F32,
            qkernel: if QuantKernel::Avx2.available() {
                QuantKernel::Avx2
            } else {
                QuantKernel::Portable
            },
            ..Self::new(pool)
        })
    }

    /// A backend whose bf16 weights use `kernel` (otherwise as [`CpuBackend::new`]); for tests
    /// and comparisons. Errors (UNSUPPORTED, naming the path) when this CPU lacks the path's
    /// instructions, or [`Bf16Kernel::F32`] is asked for without AVX2/FMA (use
    /// [`CpuBackend::portable`] then).
    pub fn with_bf16_kernel(pool: Arc<ThreadPool>, kernel: Bf16Kernel) -> Result<Self> {
        let ok = match kernel {
            Bf16Kernel::F32 => detect_simd(),
            k => k.available(),
        };
        if !ok {
            return Err(Error::unsupported(format!(
                "bf16 kernel path \"{}\" needs instructions this CPU (or OS) lacks",
                kernel.name()
            )));
        }
        Ok(Self {
            bf16: kernel,
            ..Self::new(pool)
        })
    }

    /// How bf16 weights' matmuls are computed.
    pub fn bf16_kernel(&self) -> Bf16Kernel {
        self.bf16
    }

    /// A backend whose quantized matmul uses `kernel` (dense kernels as [`CpuBackend::new`]);
    /// for tests and comparisons. Errors (UNSUPPORTED, naming the path) when this CPU lacks
    /// the path's instructions.
    pub fn with_quant_kernel(pool: Arc<ThreadPool>, kernel: QuantKernel) -> Result<Self> {
        if !kernel.available() {
            return Err(Error::unsupported(format!(
                "quantized kernel path \"{}\" needs instructions this CPU lacks",
                kernel.name()
            )));
        }
        Ok(Self {
            qkernel: kernel,
            ..Self::new(pool)
        })
    }

    /// The quantized matmul's kernel path.
    pub fn quant_kernel(&self) -> QuantKernel {
        self.qkernel
    }

    /// The kernel paths in use, e.g. `"dense=avx2-fma bf16=avx512-bf16 quant=avx512-vnni"` (for
    /// stats).
    pub fn kernel_path(&self) -> String {
        let dense = if self.simd { "avx2-fma" } else { "portable" };
        let bf16 = match self.bf16 {
            Bf16Kernel::F32 => dense,
            k => k.name(),
        };
        format!("dense={dense} bf16={bf16} quant={}", self.qkernel.name())
    }

    /// Whether the AVX2/FMA kernels are in use.
    pub fn simd_enabled(&self) -> bool {
        self.simd
    }

    /// Threads of the pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Weight = CpuWeight;
    type KvCache = CpuKvCache;
    type LoraStack = CpuLoraArena;

    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn kernel_path(&self) -> String {
        format!("cpu {}", CpuBackend::kernel_path(self))
    }

    /// Every pool thread other than the caller's runs a poller until `f` returns: it takes
    /// the ops' parallel work as soon as it is queued (`rayon::yield_now`) and otherwise yields
    /// the core to the OS, so no op waits for a sleeping thread to wake. The caller's own
    /// thread (when it belongs to the pool, as the engine's worker does) gets no poller: a
    /// poller it picked up while waiting inside an op would hold it until the step ends.
    fn run_step<R>(&self, f: impl FnOnce() -> R) -> R {
        use std::sync::atomic::{AtomicBool, Ordering};
        if self.pool.current_num_threads() < 2 {
            return f();
        }
        /// Stops the pollers when the step ends, unwinding included (the scope waits for them).
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let active = AtomicBool::new(true);
        let caller = self.pool.current_thread_index();
        self.pool.in_place_scope(|scope| {
            scope.spawn_broadcast(|_, ctx| {
                if Some(ctx.index()) == caller {
                    return;
                }
                while active.load(Ordering::Acquire) {
                    if !matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
                        std::thread::yield_now();
                    }
                }
            });
            let _stop = Stop(&active);
            f()
        })
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }

    fn download(&self, buf: &Vec<f32>, out: &mut [f32]) -> Result<()> {
        let src = buf.get(..out.len()).ok_or_else(|| {
            Error::invalid_argument(format!(
                "download of {} values from a buffer of {}",
                out.len(),
                buf.len()
            ))
        })?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn weight(&self, t: &HostTensor, format: WeightFormat) -> Result<CpuWeight> {
        self.fused_weight(&[t], format)
    }

    fn fused_weight(&self, parts: &[&HostTensor], format: WeightFormat) -> Result<CpuWeight> {
        let w = weight::pack(parts, format, self.bf16.layout())?;
        // The AVX2 path reads the 4- and 5-bit types fastest in the step order
        // (`quant::step_order`).
        Ok(if self.qkernel == QuantKernel::Avx2 {
            w.into_steps()
        } else {
            w
        })
    }

    fn weight_bytes(&self, w: &CpuWeight) -> usize {
        w.bytes()
    }

    fn weight_dims(&self, w: &CpuWeight) -> (usize, usize) {
        w.dims()
    }

    fn alloc_kv(&self, geom: KvGeometry) -> Result<CpuKvCache> {
        KvStore::new(geom)
    }

    fn matmul(&self, x: &Vec<f32>, rows: usize, w: &CpuWeight, y: &mut Vec<f32>) {
        matmul::matmul(self, x, rows, w, y);
    }

    fn matmul_before_lora(
        &self,
        x: &Vec<f32>,
        rows: usize,
        w: &CpuWeight,
        y: &mut Vec<f32>,
        next: LoraNext<'_, CpuLoraArena>,
    ) {
        let side = lora::side_stream(rows, next, self.pool.current_num_threads());
        matmul::matmul_with_side(self, x, rows, w, y, &side);
    }

    fn embedding_gather(&self, table: &CpuWeight, ids: &[u32], out: &mut Vec<f32>) {
        elementwise::embedding_gather(table, ids, out);
    }

    fn rms_norm(
        &self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut Vec<f32>,
    ) {
        elementwise::rms_norm(x, w, rows, dim, eps, out);
    }

    fn rope(&self, x: ViewMut<'_, Vec<f32>>, a: &RopeArgs<'_>) {
        elementwise::rope(x.slice(), a, &mut self.scratch.lock().rope);
    }

    fn silu_mul(&self, gate_up: &Vec<f32>, rows: usize, inter: usize, out: &mut Vec<f32>) {
        elementwise::silu_mul(self, gate_up, rows, inter, out);
    }

    fn add(&self, acc: &mut Vec<f32>, x: &Vec<f32>, len: usize) {
        elementwise::add(acc, x, len);
    }

    fn kv_write(&self, cache: &mut CpuKvCache, w: KvWriteArgs<'_, Vec<f32>>) {
        cache.write(w.slice());
    }

    fn attention_paged(&self, a: AttentionArgs<'_, Vec<f32>, CpuKvCache>, out: &mut Vec<f32>) {
        attention::attention_paged(self, a.slice(), out);
    }

    fn add_bias(&self, y: ViewMut<'_, Vec<f32>>, bias: &Vec<f32>, width: usize) {
        qkv::add_bias(y.slice(), bias, width);
    }

    fn head_rms_norm(
        &self,
        x: ViewMut<'_, Vec<f32>>,
        w: &Vec<f32>,
        n_heads: usize,
        head_dim: usize,
        eps: f32,
    ) {
        qkv::head_rms_norm(x.slice(), w, n_heads, head_dim, eps);
    }

    fn gather_rows(&self, x: &Vec<f32>, dim: usize, rows: &[u32], out: &mut Vec<f32>) {
        super::reference::gather_rows(x, dim, rows, out);
    }

    fn alloc_lora_stack(&self, geom: super::LoraStackGeometry) -> Result<Self::LoraStack> {
        CpuLoraArena::new(geom)
    }

    fn lora_load_slot(
        &self,
        stack: &mut Self::LoraStack,
        slot: usize,
        layers: &super::LoraSlotData<'_>,
    ) -> Result<()> {
        stack.load_slot(slot, layers)
    }

    fn lora_clear_slot(&self, stack: &mut Self::LoraStack, slot: usize) {
        stack.clear_slot(slot)
    }

    fn lora_stack_bytes(&self, stack: &Self::LoraStack) -> usize {
        stack.bytes()
    }

    fn lora_apply(
        &self,
        x: View<'_, Vec<f32>>,
        y: ViewMut<'_, Vec<f32>>,
        a: &LoraArgs<'_, Self::LoraStack>,
    ) {
        lora::lora_apply(self, x.slice(), y.slice(), a);
    }
}
