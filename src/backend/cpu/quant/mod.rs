//! The quantized matmul of the CPU backend: `y = x · Wᵀ` with `W` kept in ggml blocks
//! ([`QuantStack`]), computed exactly as the scalar twin
//! [`crate::backend::reference::quant_dot`] defines it (activations quantized to `i8` per
//! 32-element block, exact integer block dots, a fixed float combine), so every kernel path is
//! bitwise equal to it and batch-invariant.
//!
//! Kernel paths ([`QuantKernel`]): portable scalar, AVX2 (`vpmaddubsw`/`vpmaddwd`), AVX-VNNI
//! (VEX `vpdpbusd`) and AVX-512 VNNI (EVEX `vpdpbusd`), chosen at runtime (or forced, for
//! tests). The portable path runs the twin's loop on the twin's decoded rows; the vector paths
//! (`lanes.rs`, `dot_x86.rs`) unpack 8 blocks at a time straight from the ggml bytes into
//! registers (`superblock.rs`; types without an unpacker there are read from the twin's
//! decoded row), one 32-bit lane per block, and run the twin's float combine and 8-lane
//! accumulation lane-wise (the same IEEE operations in the same order). The integer dot
//! products, exact on every path, are the only thing the paths compute differently.
//!
//! Work split: weight rows are cut into tasks across the pool (distinct rows per task); a task
//! unpacks each super-block of its weight rows (two rows of a type at a time) once per block of
//! activation rows (sized to stay in L2) and dots it against every activation row of the
//! block, writing `yt` (`[out, rows]`), transposed into `y` at the end.

mod dot;
#[cfg(target_arch = "x86_64")]
mod dot_x86;
#[cfg(target_arch = "x86_64")]
mod lanes;
#[cfg(target_arch = "x86_64")]
mod superblock;

use rayon::prelude::*;

use super::CpuBackend;
use crate::backend::quant_stack::QuantStack;
use crate::backend::reference::quant_block::{BlockParams, QBLOCK};
use crate::backend::reference::quant_dot::QActs;
use crate::backend::reference::{fill_nan, matmul_shapes_ok};

/// How the integer dot products of the quantized matmul are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantKernel {
    /// Scalar code (any CPU).
    Portable,
    /// AVX2: `vpmaddubsw` + `vpmaddwd` (x86_64 with AVX2 and F16C).
    Avx2,
    /// AVX-VNNI: VEX `vpdpbusd` (x86_64 with AVX2, F16C and AVX-VNNI).
    AvxVnni,
    /// AVX-512 VNNI: EVEX `vpdpbusd` on 256-bit vectors (x86_64 with AVX2, F16C, AVX-512F/VL/VNNI).
    Avx512Vnni,
}

impl QuantKernel {
    /// Every path, slowest first.
    pub const ALL: [QuantKernel; 4] = [Self::Portable, Self::Avx2, Self::AvxVnni, Self::Avx512Vnni];

    /// The fastest path this CPU runs.
    pub fn detect() -> Self {
        *Self::ALL
            .iter()
            .rev()
            .find(|k| k.available())
            .unwrap_or(&Self::Portable)
    }

    /// Whether this CPU has the instructions of the path (detected at runtime).
    pub fn available(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Self::AvxVnni => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("f16c")
                    && std::arch::is_x86_feature_detected!("avxvnni")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("f16c")
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Short name ("portable", "avx2", "avx-vnni", "avx512-vnni").
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::AvxVnni => "avx-vnni",
            Self::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// One task: weight rows `o0 .. o0 + yt.len() / rows` of `w` against all rows of `a`.
pub(super) struct Task<'a> {
    pub w: &'a QuantStack,
    pub a: &'a QActs,
    /// `a.q` in the transposed super-block layout ([`transpose_acts`]) for the vector paths;
    /// empty for the portable path.
    pub xt: &'a [i8],
    pub rows: usize,
    pub o0: usize,
    /// Activation rows per block (decoded weight rows are reused across a block).
    pub rb: usize,
}

impl Task<'_> {
    /// Whether the activations, the decode buffers `dec` and the weight agree on the shapes
    /// the task reads (`rows` activation rows of `cols` values in `nb` blocks); a task that
    /// does not fit fills its output with NaN instead of reading out of range.
    pub(super) fn fits(&self, dec: &Decoded) -> bool {
        let (cols, nb) = (self.a.cols, self.a.nb);
        self.a.q.len() >= self.rows * cols
            && self.a.d.len() >= self.rows * nb
            && self.a.s0.len() >= self.rows * nb
            && self.a.s1.len() >= self.rows * nb
            && dec.q.len() >= cols
            && dec.p.len() >= nb
            && self.w.cols() == cols
            && self.rb > 0
            && (self.xt.is_empty() || self.xt.len() >= self.rows * nb.div_ceil(8) * 256)
    }
}

/// Per-task decode buffers: one weight row decoded by the twin's decoder (the portable path,
/// and the vector paths for types they do not unpack themselves).
pub(super) struct Decoded {
    pub q: Vec<i8>,
    pub p: Vec<BlockParams>,
}

impl Decoded {
    fn new(cols: usize) -> Self {
        Self {
            q: vec![0; cols],
            p: vec![BlockParams::default(); cols / QBLOCK],
        }
    }
}

/// Writes `a`'s quantized values in the transposed super-block layout: for row `t` and
/// super-block `g` (8 blocks of 32), 256 bytes at `(t * nsb + g) * 256` where step `i < 8`
/// holds, at 32-bit lane `j`, bytes `4i..4i+4` of block `8g + j` (zeros past the row's last
/// block).
fn transpose_acts(a: &QActs, rows: usize, xt: &mut Vec<i8>) {
    let (cols, nb) = (a.cols, a.nb);
    let nsb = nb.div_ceil(8);
    xt.clear();
    xt.resize(rows * nsb * 256, 0);
    for (t, xrow) in xt.chunks_exact_mut(nsb * 256).enumerate() {
        let src = &a.q[t * cols..(t + 1) * cols];
        for (b, blk) in src.chunks_exact(QBLOCK).enumerate() {
            let (g, j) = (b / 8, b % 8);
            for i in 0..8 {
                let at = g * 256 + i * 32 + j * 4;
                xrow[at..at + 4].copy_from_slice(&blk[4 * i..4 * i + 4]);
            }
        }
    }
}

/// The twin's activation quantization ([`QActs::quantize`]), compiled for AVX2 on the vector
/// paths (rounding with `vroundps` instead of a libm call per element; the same results).
fn quantize_acts(
    kernel: QuantKernel,
    acts: &mut QActs,
    x: &[f32],
    rows: usize,
    cols: usize,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if kernel != QuantKernel::Portable {
        /// # Safety
        /// The CPU must have AVX2.
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(acts: &mut QActs, x: &[f32], rows: usize, cols: usize) -> bool {
            acts.quantize(x, rows, cols)
        }
        // SAFETY: every vector path requires AVX2 (`QuantKernel::available`), and the backend
        // only selects an available path.
        return unsafe { avx2(acts, x, rows, cols) };
    }
    let _ = kernel;
    acts.quantize(x, rows, cols)
}

/// Activation rows per block: `rb * cols` bytes of `i8` in about 256 KiB of L2.
fn row_block(cols: usize) -> usize {
    ((256 * 1024) / cols.max(1)).max(4)
}

/// Runs one task on `kernel` (a path this CPU has; see [`QuantKernel::available`]).
fn run_task(kernel: QuantKernel, t: &Task<'_>, yt: &mut [f32]) {
    let mut dec = Decoded::new(t.a.cols);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the backend only selects this path when `available()` detected AVX2.
        QuantKernel::Avx2 => unsafe { dot_x86::task_avx2(t, &mut dec, yt) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the backend only selects this path when `available()` detected AVX2 and
        // AVX-VNNI.
        QuantKernel::AvxVnni => unsafe { dot_x86::task_avxvnni(t, &mut dec, yt) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the backend only selects this path when `available()` detected AVX2 and
        // AVX-512F/VL/VNNI.
        QuantKernel::Avx512Vnni => unsafe { dot_x86::task_avx512vnni(t, &mut dec, yt) },
        _ => dot::task_portable(t, &mut dec, yt),
    }
}

/// `y[t*out + o] = Σ_i x[t*in + i] * w[o, i]` as [`crate::backend::reference::quant_dot`]
/// defines it; fills `y` with NaN on inconsistent sizes.
pub(crate) fn matmul(be: &CpuBackend, x: &[f32], rows: usize, w: &QuantStack, y: &mut [f32]) {
    let (out, inp) = (w.rows(), w.cols());
    if !matmul_shapes_ok(x.len(), y.len(), rows, out, inp) {
        return fill_nan(y);
    }
    if rows == 0 {
        return;
    }
    let mut scratch = be.scratch.lock();
    let scratch = &mut *scratch;
    let acts = &mut scratch.qacts;
    let kernel = be.qkernel;
    if !quantize_acts(kernel, acts, x, rows, inp) {
        return fill_nan(y);
    }
    let acts = &*acts;
    if kernel != QuantKernel::Portable {
        transpose_acts(acts, rows, &mut scratch.qxt);
    } else {
        scratch.qxt.clear();
    }
    let xt = &scratch.qxt[..];
    let task = |o0: usize| Task {
        w,
        a: acts,
        xt,
        rows,
        o0,
        rb: row_block(inp),
    };
    let threads = be.pool.current_num_threads();
    let work = rows.saturating_mul(out).saturating_mul(inp);
    let run = |yt: &mut [f32]| {
        if threads <= 1 || work < (1 << 18) {
            run_task(kernel, &task(0), yt);
        } else {
            // ~4 tasks per thread over distinct weight rows.
            let cw = out.div_ceil(threads * 4).max(1);
            be.pool.install(|| {
                yt.par_chunks_mut(cw * rows)
                    .enumerate()
                    .for_each(|(c, chunk)| run_task(kernel, &task(c * cw), chunk));
            });
        }
    };
    if rows == 1 {
        run(&mut y[..out]);
        return;
    }
    scratch.yt.resize(rows * out, 0.0);
    let yt = &mut scratch.yt[..rows * out];
    run(yt);
    super::matmul::transpose(be.simd, yt, rows, out, y);
}
