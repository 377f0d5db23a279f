//! The device context of the CUDA backend: one CUDA device, its primary context, the compute
//! stream every op runs on, the copy stream adapter uploads run on, and every kernel of
//! `kernels/` loaded once from the PTX `build.rs` embedded (the `compute_90` PTX on devices of
//! compute capability 9.0 and newer, else the `compute_80` one, JIT-compiled by the driver).
//!
//! Opening never panics on a machine without CUDA: the driver library is probed first
//! (`is_culib_present`), and every failure is a DEVICE error naming what was missing (the
//! library, the device ordinal among those the driver sees, a driver too old for the PTX).
//!
//! Stream ordering: cudarc's per-buffer event tracking is turned off before anything is
//! allocated, so a kernel launch costs one driver call. Every buffer is allocated, written, read
//! and freed on the compute stream (one in-order queue); the only other stream is the adapter
//! arena's copy stream, which `lora_arena.rs` orders against the compute stream with explicit
//! events.

use std::sync::Arc;

use cudarc::driver::{
    result, sys, CudaContext, CudaFunction, CudaStream, DriverError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};

include!(concat!(env!("OUT_DIR"), "/kernels_ptx.rs"));

/// The oldest driver API version (`cuDriverGetVersion`) that JIT-compiles the embedded PTX
/// (CUDA 13.0, driver 580).
const MIN_DRIVER_VERSION: i32 = 13000;

macro_rules! kernels {
    ($($field:ident = $name:literal,)*) => {
        /// Every kernel of kernels/README.md, looked up once when the device is opened.
        #[derive(Debug)]
        pub(crate) struct Kernels {
            $(pub(crate) $field: CudaFunction,)*
        }

        /// The exported names of every kernel the backend launches.
        #[cfg(test)]
        pub(crate) const KERNEL_NAMES: &[&str] = &[$($name),*];

        impl Kernels {
            fn load(find: impl Fn(&str) -> Result<CudaFunction>) -> Result<Self> {
                Ok(Self { $($field: find($name)?,)* })
            }
        }
    };
}

kernels! {
    rms_norm = "lpx_rms_norm",
    head_rms_norm = "lpx_head_rms_norm",
    rope = "lpx_rope",
    silu_mul = "lpx_silu_mul",
    add = "lpx_add",
    add_bias = "lpx_add_bias",
    fill_f32 = "lpx_fill_f32",
    embedding_f32 = "lpx_embedding_f32",
    embedding_bf16 = "lpx_embedding_bf16",
    gather_rows = "lpx_gather_rows",
    gemm_bf16 = "lpx_gemm_bf16",
    gemv_bf16 = "lpx_gemv_bf16",
    gemm_f32 = "lpx_gemm_f32",
    kv_write = "lpx_kv_write",
    attention = "lpx_attention",
    lora_shrink = "lpx_lora_shrink",
    lora_expand = "lpx_lora_expand",
}

/// An open CUDA device (see the module docs). Owned by the backend; the context and streams
/// are reference-counted by cudarc and live as long as any buffer allocated on them.
#[derive(Debug)]
pub(crate) struct Device {
    /// The device ordinal (`cuda:N`).
    pub ordinal: u32,
    /// The device's marketing name ("NVIDIA H200").
    pub name: String,
    /// Compute capability `(major, minor)`.
    pub cc: (i32, i32),
    /// The primary context.
    pub ctx: Arc<CudaContext>,
    /// The stream every op runs on.
    pub stream: Arc<CudaStream>,
    /// The stream adapter uploads run on.
    pub copy_stream: Arc<CudaStream>,
    /// Every kernel (boxed: seventeen handles).
    pub kernels: Box<Kernels>,
}

/// A driver error as a DEVICE error naming the device and what was being done.
pub(crate) fn driver_err(device: &str, what: &str, e: DriverError) -> Error {
    Error::device(format!("device \"{device}\": {what}: {e}"))
}

impl Device {
    /// Opens CUDA device `ordinal` (see the module docs). Errors: DEVICE naming what was not
    /// found or failed (no libcuda.so, device N of M, a driver older than 580, a compute
    /// capability below 8.0, a kernel missing from the embedded PTX).
    pub(crate) fn open(ordinal: u32) -> Result<Self> {
        let dev = format!("cuda:{ordinal}");
        // SAFETY: is_culib_present only tries to dlopen the driver library's candidate names
        // (and closes what it opened); it calls no driver function.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::device(format!(
                "device \"{dev}\": the CUDA driver library (libcuda.so) was not found: install \
                 the NVIDIA driver (580 or newer) or add its directory to LD_LIBRARY_PATH"
            )));
        }
        // cudarc panics when a driver symbol it resolves lazily is missing; turn that into an
        // error (the library was found above, so this only happens with an unusual driver).
        std::panic::catch_unwind(|| Self::open_driver(ordinal, &dev)).unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(Error::device(format!(
                "device \"{dev}\": the CUDA driver library is unusable: {what}"
            )))
        })
    }

    fn open_driver(ordinal: u32, dev: &str) -> Result<Self> {
        let mut version = 0i32;
        // SAFETY: cuDriverGetVersion writes one int through a valid pointer; it needs no cuInit.
        unsafe { sys::cuDriverGetVersion(&mut version) }
            .result()
            .map_err(|e| driver_err(dev, "cuDriverGetVersion", e))?;
        if version < MIN_DRIVER_VERSION {
            return Err(Error::device(format!(
                "device \"{dev}\": the driver supports CUDA {}.{}, too old for the embedded PTX \
                 (CUDA 13.0): update the NVIDIA driver to 580 or newer",
                version / 1000,
                version % 1000 / 10
            )));
        }
        result::init().map_err(|e| {
            if e.0 == sys::cudaError_enum::CUDA_ERROR_NO_DEVICE {
                Error::device(format!(
                    "device \"{dev}\" not found: the driver sees no CUDA device"
                ))
            } else {
                driver_err(dev, "cuInit", e)
            }
        })?;
        let count =
            result::device::get_count().map_err(|e| driver_err(dev, "cuDeviceGetCount", e))?;
        if i64::from(ordinal) >= i64::from(count) {
            return Err(Error::device(format!(
                "device \"{dev}\" not found: the driver sees {count} CUDA device(s) (cuda:0..)"
            )));
        }
        let ctx = CudaContext::new(ordinal as usize).map_err(|e| driver_err(dev, "context", e))?;
        // SAFETY: called before any stream or buffer of this context exists; the backend orders
        // its two streams itself (see the module docs and lora_arena.rs).
        unsafe { ctx.disable_event_tracking() };
        let cc = ctx
            .compute_capability()
            .map_err(|e| driver_err(dev, "compute capability", e))?;
        if cc.0 < 8 {
            return Err(Error::device(format!(
                "device \"{dev}\" has compute capability {}.{}; the kernels need 8.0 (sm_80) or newer",
                cc.0, cc.1
            )));
        }
        let name = ctx.name().map_err(|e| driver_err(dev, "device name", e))?;
        let stream = ctx.new_stream().map_err(|e| driver_err(dev, "stream", e))?;
        let copy_stream = ctx
            .new_stream()
            .map_err(|e| driver_err(dev, "copy stream", e))?;
        let sm90 = cc.0 >= 9;
        let mut modules = Vec::with_capacity(KERNEL_MODULES.len());
        for &(stem, sm80_ptx, sm90_ptx) in KERNEL_MODULES {
            let ptx = if sm90 { sm90_ptx } else { sm80_ptx };
            let m = ctx.load_module(Ptx::from_src(ptx)).map_err(|e| {
                if e.0 == sys::cudaError_enum::CUDA_ERROR_UNSUPPORTED_PTX_VERSION {
                    Error::device(format!(
                        "device \"{dev}\": the driver is too old for the embedded PTX of \
                         kernels/{stem}.cu (CUDA 13.0): update the NVIDIA driver to 580 or newer"
                    ))
                } else {
                    driver_err(dev, &format!("loading the PTX of kernels/{stem}.cu"), e)
                }
            })?;
            modules.push(m);
        }
        let kernels = Kernels::load(|name| {
            modules
                .iter()
                .find_map(|m| m.load_function(name).ok())
                .ok_or_else(|| {
                    Error::device(format!(
                        "device \"{dev}\": kernel {name} is in none of the {} embedded PTX \
                         modules ({}): rebuild with every kernels/*.cu",
                        KERNEL_MODULES.len(),
                        KERNEL_MODULES
                            .iter()
                            .map(|m| m.0)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
        })?;
        let opened = Self {
            ordinal,
            name,
            cc,
            ctx,
            stream,
            copy_stream,
            kernels: Box::new(kernels),
        };
        opened.smoke_test(dev)?;
        Ok(opened)
    }

    /// Runs one kernel (`lpx_fill_f32` writing NaN into one value) and reads the value back:
    /// the JIT-compiled kernels run and every driver entry point the ops use (allocation,
    /// launch, copies, synchronization) resolves while opening is still guarded against a
    /// panic.
    fn smoke_test(&self, dev: &str) -> Result<()> {
        let err = |e| driver_err(dev, "kernel smoke test", e);
        let mut buf = self.stream.alloc_zeros::<f32>(1).map_err(err)?;
        let (n, v) = (1i64, f32::NAN);
        let mut b = self.stream.launch_builder(&self.kernels.fill_f32);
        b.arg(&mut buf).arg(&n).arg(&v);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: lpx_fill_f32(float* p, long long n, float v) with n = 1 over a 1-element
        // allocation; block 256, grid 1 (kernels/README.md).
        unsafe { b.launch(cfg) }.map_err(err)?;
        let mut out = [0f32];
        self.stream.memcpy_dtoh(&buf, &mut out).map_err(err)?;
        let ev = self.stream.record_event(None).map_err(err)?;
        self.copy_stream.wait(&ev).map_err(err)?;
        self.stream.synchronize().map_err(err)?;
        if !out[0].is_nan() {
            return Err(Error::device(format!(
                "device \"{dev}\": kernel smoke test: lpx_fill_f32 wrote {} instead of NaN",
                out[0]
            )));
        }
        Ok(())
    }

    /// `"sm_90"`: the architecture of the PTX loaded (sm_90 or sm_80), JIT-compiled for the
    /// device.
    pub(crate) fn ptx_arch(&self) -> &'static str {
        if self.cc.0 >= 9 {
            "sm_90"
        } else {
            "sm_80"
        }
    }

    /// Free and total device memory in bytes (`cuMemGetInfo`).
    pub(crate) fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(|e| driver_err(&format!("cuda:{}", self.ordinal), "cuMemGetInfo", e))
    }
}
