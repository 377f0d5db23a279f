//! The CUDA backend (feature `cuda`): the [`Backend`] ops as the kernels of `kernels/`
//! (kernels/README.md is their contract: signatures, launch geometry, reduction orders), through
//! cudarc's driver API with the driver library loaded at run time, so that the crate builds and
//! links without CUDA and a machine without a driver gets a DEVICE error from
//! [`CudaBackend::open`].
//!
//! Buffers, weights (bf16 or f32), the KV cache (bf16) and the adapter arena (bf16) live in
//! device memory. Every op validates its shapes on the host exactly like the CPU backend (NaN
//! output via `lpx_fill_f32`, or nothing written) and then queues its kernels on the compute
//! stream; nothing waits for the device except [`Backend::download`] (and an adapter upload
//! reusing its staging memory). Ops cannot return errors: the first failed launch or driver
//! call is recorded (sticky) and returned, naming the op, by the next `alloc`, `upload` or
//! `download`, which the engine does every step.
//!
//! Threading: the backend is used by one thread at a time (the engine's worker); its scratch
//! state sits behind a mutex only because ops take `&self`.

mod attention;
mod buffer;
mod device;
mod elementwise;
mod kv_cache;
mod launch;
mod lora;
mod lora_arena;
mod matmul;
mod sgmv;
mod step_meta;
mod weight;

use cudarc::driver::{CudaSlice, DriverError, LaunchArgs, LaunchConfig};
use parking_lot::Mutex;

pub use buffer::CudaBuf;
pub use kv_cache::{CudaKvCache, KV_ELEM_BYTES};
pub use lora_arena::{CudaLoraArena, LORA_ELEM_BYTES};
pub(crate) use weight::packed_bytes;
pub use weight::CudaWeight;

use super::{
    AttentionArgs, Backend, KvGeometry, KvWriteArgs, LoraArgs, LoraSlotData, LoraStackGeometry,
    RopeArgs, View, ViewMut, WeightFormat,
};
use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use device::{driver_err, Device};
use step_meta::MetaUploads;

/// Scratch state reused across ops: the step metadata on the device and the LoRA shrink
/// output `h`.
#[derive(Debug, Default)]
struct Scratch {
    meta: MetaUploads,
    lora_h: Option<CudaSlice<f32>>,
}

/// The CUDA backend on one device (see the module docs).
#[derive(Debug)]
pub struct CudaBackend {
    dev: Device,
    /// `"cuda:N"`.
    label: String,
    scratch: Mutex<Box<Scratch>>,
    /// The first failed launch or driver call of an op (sticky).
    fault: Mutex<Option<Error>>,
}

impl CudaBackend {
    /// Opens CUDA device `ordinal`: loads the driver library, the device's context, two
    /// streams and every kernel. Errors: DEVICE naming what was not found (libcuda.so, device
    /// N of M, a driver too old for the embedded CUDA 13.0 PTX, compute capability below 8.0).
    pub fn open(ordinal: u32) -> Result<Self> {
        let dev = Device::open(ordinal)?;
        Ok(Self {
            label: format!("cuda:{ordinal}"),
            dev,
            scratch: Mutex::new(Box::default()),
            fault: Mutex::new(None),
        })
    }

    /// Free and total device memory in bytes (`cuMemGetInfo`), for the memory plan.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.dev.mem_info()
    }

    /// The device's name ("NVIDIA H200").
    pub fn device_name(&self) -> &str {
        &self.dev.name
    }

    /// Compute capability `(major, minor)`.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.dev.cc
    }

    /// Blocks until every queued op finished; returns the first recorded fault. For tests and
    /// timing.
    pub fn synchronize(&self) -> Result<()> {
        self.check()?;
        let r = self.dev.stream.synchronize();
        self.note("synchronize", r);
        self.check()
    }

    /// The first recorded fault, if any (it stays recorded).
    fn check(&self) -> Result<()> {
        match &*self.fault.lock() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Records `e` as the fault of `op` unless one is already recorded.
    fn fail(&self, op: &str, e: Error) {
        let mut f = self.fault.lock();
        if f.is_none() {
            *f = Some(e.context(format!("cuda op {op}")));
        }
    }

    /// Records a driver error of `op`; returns the value on success.
    fn note<T>(&self, op: &str, r: std::result::Result<T, DriverError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(op, driver_err(&self.label, op, e));
                None
            }
        }
    }

    /// Launches `args` with `grid` (None: too large for the device, recorded as a fault) and
    /// `block`, no dynamic shared memory.
    ///
    /// # Safety
    /// `args` must be exactly the parameters of the kernel (types and order of
    /// kernels/README.md), every pointer a live device allocation of this context that the
    /// kernel's accesses for these sizes stay inside, and `grid`/`block` the geometry
    /// kernels/README.md gives for it.
    unsafe fn run(
        &self,
        op: &str,
        mut args: LaunchArgs<'_>,
        grid: Option<(u32, u32, u32)>,
        block: (u32, u32, u32),
    ) {
        let Some(grid_dim) = grid else {
            return self.fail(
                op,
                Error::device(format!(
                    "{}: launch grid over the device limits (more than 65535 rows in one step: lower max_batch_tokens)",
                    self.label
                )),
            );
        };
        let cfg = LaunchConfig {
            grid_dim,
            block_dim: block,
            shared_mem_bytes: 0,
        };
        // SAFETY: forwarded from this function's contract.
        let r = unsafe { args.launch(cfg) };
        self.note(op, r);
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Weight = CudaWeight;
    type KvCache = CudaKvCache;
    type LoraStack = CudaLoraArena;

    fn name(&self) -> String {
        self.label.clone()
    }

    fn kernel_path(&self) -> String {
        format!(
            "{} {} ({}) gemm=mma-bf16",
            self.label,
            self.dev.ptx_arch(),
            self.dev.name
        )
    }

    fn alloc(&self, len: usize) -> Result<CudaBuf> {
        self.check()?;
        let data = self
            .dev
            .stream
            .alloc_zeros::<f32>(len.max(1))
            .map_err(|e| driver_err(&self.label, &format!("alloc of {len} f32"), e))?;
        Ok(CudaBuf::new(data, len))
    }

    fn upload(&self, data: &[f32]) -> Result<CudaBuf> {
        let mut buf = self.alloc(data.len())?;
        if !data.is_empty() {
            let mut dst = buf.data.slice_mut(..data.len());
            self.dev
                .stream
                .memcpy_htod(data, &mut dst)
                .map_err(|e| driver_err(&self.label, "upload", e))?;
        }
        Ok(buf)
    }

    fn download(&self, buf: &CudaBuf, out: &mut [f32]) -> Result<()> {
        self.check()?;
        if out.len() > buf.len() {
            return Err(Error::invalid_argument(format!(
                "download of {} values from a buffer of {}",
                out.len(),
                buf.len()
            )));
        }
        if !out.is_empty() {
            let src = buf.data.slice(..out.len());
            self.dev
                .stream
                .memcpy_dtoh(&src, out)
                .map_err(|e| driver_err(&self.label, "download", e))?;
        }
        // The copy above is ordered after every queued op: a kernel fault surfaces here.
        self.dev
            .stream
            .synchronize()
            .map_err(|e| driver_err(&self.label, "download (synchronize)", e))?;
        self.check()
    }

    fn weight(&self, t: &HostTensor, format: WeightFormat) -> Result<CudaWeight> {
        weight::pack(&self.dev.stream, &self.label, &[t], format)
    }

    fn fused_weight(&self, parts: &[&HostTensor], format: WeightFormat) -> Result<CudaWeight> {
        weight::pack(&self.dev.stream, &self.label, parts, format)
    }

    fn weight_bytes(&self, w: &CudaWeight) -> usize {
        w.bytes()
    }

    fn weight_dims(&self, w: &CudaWeight) -> (usize, usize) {
        (w.out, w.inp)
    }

    fn alloc_kv(&self, geom: KvGeometry) -> Result<CudaKvCache> {
        self.check()?;
        CudaKvCache::new(&self.dev.stream, &self.label, geom)
    }

    fn matmul(&self, x: &CudaBuf, rows: usize, w: &CudaWeight, y: &mut CudaBuf) {
        self.op_matmul(x, rows, w, y);
    }

    fn embedding_gather(&self, table: &CudaWeight, ids: &[u32], out: &mut CudaBuf) {
        self.op_embedding(table, ids, out);
    }

    fn rms_norm(
        &self,
        x: &CudaBuf,
        w: &CudaBuf,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut CudaBuf,
    ) {
        self.op_rms_norm(x, w, rows, dim, eps, out);
    }

    fn rope(&self, x: ViewMut<'_, CudaBuf>, a: &RopeArgs<'_>) {
        self.op_rope(x, a);
    }

    fn silu_mul(&self, gate_up: &CudaBuf, rows: usize, inter: usize, out: &mut CudaBuf) {
        self.op_silu_mul(gate_up, rows, inter, out);
    }

    fn add(&self, acc: &mut CudaBuf, x: &CudaBuf, len: usize) {
        self.op_add(acc, x, len);
    }

    fn kv_write(&self, cache: &mut CudaKvCache, w: KvWriteArgs<'_, CudaBuf>) {
        self.op_kv_write(cache, w);
    }

    fn attention_paged(&self, a: AttentionArgs<'_, CudaBuf, CudaKvCache>, out: &mut CudaBuf) {
        self.op_attention(a, out);
    }

    fn add_bias(&self, y: ViewMut<'_, CudaBuf>, bias: &CudaBuf, width: usize) {
        self.op_add_bias(y, bias, width);
    }

    fn head_rms_norm(
        &self,
        x: ViewMut<'_, CudaBuf>,
        w: &CudaBuf,
        n_heads: usize,
        head_dim: usize,
        eps: f32,
    ) {
        self.op_head_rms_norm(x, w, n_heads, head_dim, eps);
    }

    fn gather_rows(&self, x: &CudaBuf, dim: usize, rows: &[u32], out: &mut CudaBuf) {
        self.op_gather_rows(x, dim, rows, out);
    }

    fn alloc_lora_stack(&self, geom: LoraStackGeometry) -> Result<CudaLoraArena> {
        self.check()?;
        CudaLoraArena::new(&self.dev.stream, &self.dev.copy_stream, &self.label, geom)
    }

    fn lora_load_slot(
        &self,
        stack: &mut CudaLoraArena,
        slot: usize,
        layers: &LoraSlotData<'_>,
    ) -> Result<()> {
        self.check()?;
        stack.load_slot(slot, layers)
    }

    fn lora_clear_slot(&self, stack: &mut CudaLoraArena, slot: usize) {
        stack.clear_slot(slot);
    }

    fn lora_stack_bytes(&self, stack: &CudaLoraArena) -> usize {
        stack.bytes()
    }

    fn lora_apply(
        &self,
        x: View<'_, CudaBuf>,
        y: ViewMut<'_, CudaBuf>,
        a: &LoraArgs<'_, CudaLoraArena>,
    ) {
        self.op_lora_apply(x, y, a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    /// Without a driver (or without device 0), opening is a DEVICE error naming what is
    /// missing, never a panic. On a machine where device 0 opens, the backend names itself.
    #[test]
    fn open_without_a_driver_is_a_device_error_naming_what_is_missing() {
        let opened = CudaBackend::open(0);
        if let Err(e) = &opened {
            eprintln!("cuda:0 does not open here: {}", e.message());
        }
        match opened {
            Ok(b) => assert_eq!(b.name(), "cuda:0"),
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::Device, "{}", e.message());
                let m = e.message();
                assert!(m.contains("\"cuda:0\""), "{m}");
                assert!(
                    m.contains("libcuda.so")
                        || m.contains("CUDA device(s)")
                        || m.contains("580")
                        || m.contains("kernel "),
                    "{m}"
                );
            }
        }
    }

    /// A device the driver does not have is named with the count the driver sees.
    #[test]
    fn a_missing_ordinal_is_a_device_error() {
        let e = CudaBackend::open(4096).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Device, "{}", e.message());
        assert!(e.message().contains("\"cuda:4096\""), "{}", e.message());
    }

    /// Every kernel the backend launches is an entry of the embedded PTX, for both
    /// architectures (checked on the host: no GPU needed).
    #[test]
    fn every_kernel_is_in_the_embedded_ptx() {
        for name in device::KERNEL_NAMES {
            let entry = format!(".entry {name}(");
            for (arch, pick) in [("sm80", 1), ("sm90", 2)] {
                let n = device::KERNEL_MODULES
                    .iter()
                    .filter(|m| if pick == 1 { m.1 } else { m.2 }.contains(&entry))
                    .count();
                assert_eq!(n, 1, "{name} in {n} {arch} PTX modules");
            }
        }
    }
}
