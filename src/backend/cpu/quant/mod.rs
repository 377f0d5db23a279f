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
//! registers (`superblock.rs`: every type a GGUF may hold here has an unpacker; a type without
//! one would be read from the twin's decoded row), one 32-bit lane per block, and run the
//! twin's float combine and 8-lane accumulation lane-wise (the same IEEE operations in the same
//! order). The integer dot products, exact on every path, are the only thing the paths compute
//! differently.
//!
//! On the AVX2 path, Q4_K, Q5_K, Q6_K, IQ4_XS, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL and Q8_0 weights
//! are kept in a step order (`step_order`: the same bytes, rearranged within super-blocks at
//! load) from which the unpackers give the transposed super-block directly; every path reads
//! either order.
//!
//! Work split: weight rows are cut into tasks across the pool (distinct rows per task); a task
//! unpacks each super-block of its weight rows (two rows of a type at a time) once per block of
//! activation rows (sized to stay in L2) and dots it against every activation row of the
//! block, writing `yt` (`[out, rows]`), transposed into `y` at the end.

#[cfg(target_arch = "x86_64")]
mod acts_x86;
#[cfg(target_arch = "x86_64")]
mod amx_int8;
mod dot;
#[cfg(target_arch = "x86_64")]
mod dot_x86;
#[cfg(target_arch = "x86_64")]
mod lanes;
pub(super) mod step_order;
#[cfg(target_arch = "x86_64")]
mod superblock;

use rayon::prelude::*;

use super::side_stream::SideStream;
use super::CpuBackend;
use crate::backend::quant_stack::QuantStack;
use crate::backend::reference::quant_block::{BlockParams, QBLOCK};
use crate::backend::reference::quant_dot::QActs;
use crate::backend::reference::{fill_nan, matmul_shapes_ok};
#[cfg(target_arch = "x86_64")]
pub(super) use amx_int8::TileActs;

/// Stand-in for the tile form where there is no AMX.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Debug, Default)]
pub(super) struct TileActs;

/// How the integer dot products of the quantized matmul are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantKernel {
    /// Scalar code (any CPU).
    Portable,
    /// AVX2: `vpmaddubsw` + `vpmaddwd` (x86_64 with AVX2 and F16C).
    Avx2,
    /// AVX-VNNI: VEX `vpdpbusd` (x86_64 with AVX2, F16C and AVX-VNNI).
    AvxVnni,
    /// AVX-512 VNNI: EVEX `vpdpbusd` on 256-bit vectors, mask registers in some unpackers (x86_64
    /// with AVX2, F16C, AVX-512F/VL/BW/VNNI).
    Avx512Vnni,
    /// AMX int8: `tdpbusd` on tiles for panels of 16 weight rows when a call has at least
    /// [`AMX_MIN_ROWS`] activation rows, the AVX-512 VNNI kernels otherwise (x86_64 with the
    /// AVX-512 VNNI path's features, AMX-TILE and AMX-INT8, and the OS's grant of the tile
    /// state).
    AmxInt8,
}

/// Activation rows from which the AMX int8 path uses tiles (below, the AVX-512 VNNI kernels:
/// the same bits either way).
pub const AMX_MIN_ROWS: usize = 24;

impl QuantKernel {
    /// Every path, slowest first.
    pub const ALL: [QuantKernel; 5] = [
        Self::Portable,
        Self::Avx2,
        Self::AvxVnni,
        Self::Avx512Vnni,
        Self::AmxInt8,
    ];

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
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Self::AmxInt8 => Self::Avx512Vnni.available() && super::amx::available_int8(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Short name ("portable", "avx2", "avx-vnni", "avx512-vnni", "amx-int8").
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::AvxVnni => "avx-vnni",
            Self::Avx512Vnni => "avx512-vnni",
            Self::AmxInt8 => "amx-int8",
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
    /// `w`'s rows of the types with a step order are in it ([`step_order`]).
    pub steps: bool,
    /// What the call's tasks ask the cache for as they go (their shares by weight rows).
    pub side: &'a SideStream<'a>,
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

/// Quantizes `rows` rows of `cols` values of `x` into `acts` (the twin's
/// [`QActs::quantize`]) and, for the vector paths, their transposed layout into `xt`
/// ([`transpose_acts`]); false when the sizes do not fit. On the AVX-512 VNNI path both are
/// written in one AVX-512 pass per row (`acts_x86`), rows split across the pool when there
/// are many: the same values.
fn prepare_acts(
    be: &CpuBackend,
    kernel: QuantKernel,
    acts: &mut QActs,
    xt: &mut Vec<i8>,
    x: &[f32],
    rows: usize,
    cols: usize,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if matches!(kernel, QuantKernel::Avx512Vnni | QuantKernel::AmxInt8) {
        let nb = cols / QBLOCK;
        let fits = cols > 0 && acts.resize_for(x.len(), rows, cols);
        let rows = if fits { rows } else { 0 };
        let xtl = nb.div_ceil(8) * 256;
        xt.clear();
        xt.resize(rows * xtl, 0);
        if !fits {
            return false;
        }
        let x = &x[..rows * cols];
        let threads = be.pool.current_num_threads();
        if threads <= 1 || rows * cols < PAR_MIN_QUANT {
            return quantize_rows(
                x,
                &mut acts.q,
                &mut acts.d,
                &mut acts.s0,
                &mut acts.s1,
                xt,
                cols,
            );
        }
        // Runs of rows across the pool, each quantized as above.
        let per = rows.div_ceil(2 * threads);
        return be.pool.install(|| {
            x.par_chunks(per * cols)
                .zip(acts.q.par_chunks_mut(per * cols))
                .zip(acts.d.par_chunks_mut(per * nb))
                .zip(acts.s0.par_chunks_mut(per * nb))
                .zip(acts.s1.par_chunks_mut(per * nb))
                .zip(xt.par_chunks_mut(per * xtl))
                .all(|(((((x, q), d), s0), s1), xt)| quantize_rows(x, q, d, s0, s1, xt, cols))
        });
    }
    let _ = be;
    if !quantize_acts(kernel, acts, x, rows, cols) {
        return false;
    }
    if kernel != QuantKernel::Portable {
        transpose_acts(acts, rows, xt);
    } else {
        xt.clear();
    }
    true
}

/// The AVX-512 pass over the rows of `x` (`cols` each) into the row-major buffers of the
/// plain and transposed layouts; false if a row does not fit its buffers.
#[cfg(target_arch = "x86_64")]
fn quantize_rows(
    x: &[f32],
    q: &mut [i8],
    d: &mut [f32],
    s0: &mut [i32],
    s1: &mut [i32],
    xt: &mut [i8],
    cols: usize,
) -> bool {
    let (nb, xtl) = (cols / QBLOCK, (cols / QBLOCK).div_ceil(8) * 256);
    let rows = x.len() / cols.max(1);
    if q.len() < rows * cols
        || d.len().min(s0.len()).min(s1.len()) < rows * nb
        || xt.len() < rows * xtl
    {
        return false;
    }
    (0..rows).all(|t| {
        let out = acts_x86::RowOut {
            q: &mut q[t * cols..(t + 1) * cols],
            d: &mut d[t * nb..(t + 1) * nb],
            s0: &mut s0[t * nb..(t + 1) * nb],
            s1: &mut s1[t * nb..(t + 1) * nb],
            xt: &mut xt[t * xtl..(t + 1) * xtl],
        };
        // SAFETY: the AVX-512 VNNI paths require AVX2, AVX-512F and AVX-512VL
        // (`QuantKernel::available`), and the backend only selects an available path.
        unsafe { acts_x86::quantize_row_avx512(&x[t * cols..(t + 1) * cols], out) }
    })
}

/// Values quantized per call from which the AVX-512 pass splits rows across the pool.
#[cfg(target_arch = "x86_64")]
const PAR_MIN_QUANT: usize = 1 << 15;

/// Activation rows per block: `rb * cols` bytes of `i8` in about 256 KiB of L2.
fn row_block(cols: usize) -> usize {
    ((256 * 1024) / cols.max(1)).max(4)
}

/// Runs one task on `kernel` (a path this CPU has; see [`QuantKernel::available`]); `tiles`
/// holds the activations in tile form when `kernel` is [`QuantKernel::AmxInt8`] and the call
/// uses tiles.
fn run_task(kernel: QuantKernel, t: &Task<'_>, tiles: Option<&TileActs>, yt: &mut [f32]) {
    let mut dec = Decoded::new(t.a.cols);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        QuantKernel::AmxInt8 => match tiles {
            // SAFETY: the backend only selects this path when `available()` detected the
            // AVX-512 VNNI path's features and AMX-INT8 with the OS's grant.
            Some(tiles) => unsafe { amx_int8::task_amx(t, tiles, &mut dec, yt) },
            // SAFETY: as above (the AVX-512 VNNI path's features).
            None => unsafe { dot_x86::task_avx512vnni(t, &mut dec, yt) },
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the backend only selects this path when `available()` detected AVX2.
        QuantKernel::Avx2 => unsafe { dot_x86::task_avx2(t, &mut dec, yt) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the backend only selects this path when `available()` detected AVX2 and
        // AVX-VNNI.
        QuantKernel::AvxVnni => unsafe { dot_x86::task_avxvnni(t, &mut dec, yt) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the backend only selects this path when `available()` detected AVX2 and
        // AVX-512F/VL/BW/VNNI.
        QuantKernel::Avx512Vnni => unsafe { dot_x86::task_avx512vnni(t, &mut dec, yt) },
        _ => {
            let _ = tiles;
            dot::task_portable(t, &mut dec, yt)
        }
    }
}

/// `y[t*out + o] = Σ_i x[t*in + i] * w[o, i]` as [`crate::backend::reference::quant_dot`]
/// defines it (`steps`: `w`'s rows of the types with a step order are in it, see
/// [`step_order`]); fills `y` with NaN on inconsistent sizes. The row-lane tasks (AVX2 and
/// VNNI paths) ask for `side`'s lines as they go (see [`SideStream`]); the others ignore it.
pub(crate) fn matmul(
    be: &CpuBackend,
    x: &[f32],
    rows: usize,
    w: &QuantStack,
    steps: bool,
    y: &mut [f32],
    side: &SideStream<'_>,
) {
    let (out, inp) = (w.rows(), w.cols());
    if !matmul_shapes_ok(x.len(), y.len(), rows, out, inp) {
        return fill_nan(y);
    }
    if rows == 0 {
        return;
    }
    let mut scratch = be.scratch.lock();
    let scratch = &mut *scratch;
    let kernel = be.qkernel;
    if !prepare_acts(
        be,
        kernel,
        &mut scratch.qacts,
        &mut scratch.qxt,
        x,
        rows,
        inp,
    ) {
        return fill_nan(y);
    }
    #[cfg(target_arch = "x86_64")]
    let tiles = (kernel == QuantKernel::AmxInt8 && rows >= AMX_MIN_ROWS).then(|| {
        scratch.qtiles.pack(&scratch.qacts, rows);
        &scratch.qtiles
    });
    #[cfg(not(target_arch = "x86_64"))]
    let tiles: Option<&TileActs> = None;
    let acts = &scratch.qacts;
    let xt = &scratch.qxt[..];
    let task = |o0: usize| Task {
        w,
        a: acts,
        xt,
        rows,
        o0,
        rb: row_block(inp),
        steps,
        side,
    };
    let threads = be.pool.current_num_threads();
    let work = rows.saturating_mul(out).saturating_mul(inp);
    let run = |yt: &mut [f32]| {
        if super::matmul::serial(threads, work) {
            run_task(kernel, &task(0), tiles, yt);
        } else {
            // ~4 tasks per thread over distinct weight rows (whole tile panels on AMX).
            let mut cw = out.div_ceil(threads * 4).max(1);
            if tiles.is_some() {
                cw = cw.div_ceil(16) * 16;
            }
            be.pool.install(|| {
                yt.par_chunks_mut(cw * rows)
                    .enumerate()
                    .for_each(|(c, chunk)| run_task(kernel, &task(c * cw), tiles, chunk));
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
    super::matmul::transpose(be, yt, rows, out, y);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Activations with every special case of the quantization in some block: zeros, a NaN,
    /// ±inf, denormals, exact ties (`amax = 127`, so `id = 1` and `k + 0.5` values), -0.0,
    /// large and tiny magnitudes; the rest pseudo-random.
    fn special_x(rows: usize, cols: usize) -> Vec<f32> {
        let mut s = 0x9e37_79b9_u32;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 4.0 - 2.0
        };
        let mut x: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
        for (b, blk) in x.chunks_exact_mut(QBLOCK).enumerate() {
            match b % 9 {
                0 => blk.fill(0.0),
                1 => blk[b % 32] = f32::NAN,
                2 => blk[(b * 7) % 32] = f32::INFINITY,
                3 => blk[(b * 5) % 32] = f32::NEG_INFINITY,
                4 => blk.iter_mut().for_each(|v| *v *= 1e-40),
                5 => {
                    for (i, v) in blk.iter_mut().enumerate() {
                        *v = (i as f32 - 16.0) * 4.0 + 0.5;
                    }
                    blk[31] = -127.0;
                }
                6 => blk.iter_mut().step_by(2).for_each(|v| *v = -0.0),
                7 => blk.iter_mut().for_each(|v| *v *= 3e30),
                _ => {}
            }
        }
        x
    }

    #[test]
    fn avx512_activation_pass_is_the_twins_quantization_and_layout() {
        for threads in [1, 2] {
            let pool = Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool"),
            );
            let be = match CpuBackend::with_quant_kernel(pool, QuantKernel::Avx512Vnni) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("SKIPPED avx512-vnni activation pass: {}", e.message());
                    return;
                }
            };
            for (rows, cols) in [(1, 32), (3, 96), (5, 288), (2, 576), (40, 1024), (33, 1536)] {
                let x = special_x(rows, cols);
                let mut want = QActs::default();
                assert!(want.quantize(&x, rows, cols));
                let mut want_xt = Vec::new();
                transpose_acts(&want, rows, &mut want_xt);
                let (mut got, mut got_xt) = (QActs::default(), Vec::new());
                assert!(prepare_acts(
                    &be,
                    QuantKernel::Avx512Vnni,
                    &mut got,
                    &mut got_xt,
                    &x,
                    rows,
                    cols
                ));
                let what = format!("rows={rows} cols={cols} threads={threads}");
                assert_eq!((got.cols, got.nb), (want.cols, want.nb), "{what}");
                assert_eq!(got.q, want.q, "{what}: q");
                assert_eq!(got.s0, want.s0, "{what}: s0");
                assert_eq!(got.s1, want.s1, "{what}: s1");
                assert_eq!(got_xt, want_xt, "{what}: transposed layout");
                let bits = |v: &[f32]| v.iter().map(|d| d.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got.d), bits(&want.d), "{what}: d");
                if rows * cols >= 9 * QBLOCK {
                    // The special blocks are there.
                    assert!(want.d.iter().any(|d| d.is_nan()) && want.d.contains(&0.0));
                }
            }
            // Sizes that do not fit: false, no rows.
            let (mut got, mut got_xt) = (QActs::default(), Vec::new());
            let x = vec![1.0f32; 64];
            for (rows, cols) in [(3, 32), (1, 48)] {
                let k = QuantKernel::Avx512Vnni;
                assert!(!prepare_acts(&be, k, &mut got, &mut got_xt, &x, rows, cols));
            }
            assert!(got.q.is_empty() && got_xt.is_empty());
        }
    }
}
