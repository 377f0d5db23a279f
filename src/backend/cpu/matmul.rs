//! `y = x · Wᵀ`: the driver that splits the output dimension across the pool, plus the portable
//! kernel used when AVX2/FMA are absent.
//!
//! The result is computed into a scratch `yt` laid out `[out, rows]` (so each thread owns a
//! contiguous range of weight rows and reads each weight exactly once per call) and transposed
//! into `y`; the AMX kernel instead writes its tiles straight into each thread's columns of `y`
//! (`amx.rs`). Batch invariance: every kernel computes each output element with a fixed
//! instruction sequence (see `simd.rs`), so row `t` of `y` is bitwise the same whatever the
//! number of rows, the tiling or the thread count.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::amx;
use super::bf16act;
#[cfg(target_arch = "x86_64")]
use super::bf16dot;
use super::side_stream::SideStream;
#[cfg(target_arch = "x86_64")]
use super::simd::{self, Panels};
use super::weight::{bf16_bits_to_f32, CpuWeight, Layout, WData, CHUNK};
use super::{Bf16Kernel, CpuBackend};
use crate::backend::reference::matmul_shapes_ok;

/// Activation-row block size: the block of `x` (`rb * kp` f32) should stay in L2 (~128 KiB).
fn row_block(kp: usize) -> usize {
    let rb = (128 * 1024 / 4) / kp.max(1);
    (rb / 3 * 3).max(3)
}

/// Weight rows per parallel task: ~4 tasks per thread (~8 with more than 16 activation rows, where
/// a task is long and the last one to finish leaves the other threads idle), fewer rows per task
/// when many activation rows are re-read against it (so the task's weights stay in L2), a
/// multiple of `panel` (the kernels work on whole packed panels).
fn task_rows(
    out: usize,
    rows: usize,
    kp: usize,
    wbytes: usize,
    threads: usize,
    panel: usize,
) -> usize {
    let mut cw = out.div_ceil(threads.max(1) * if rows > 16 { 8 } else { 4 });
    if rows > 16 {
        cw = cw.min((384 * 1024) / (kp * wbytes).max(1));
    }
    cw.div_ceil(panel).max(1) * panel
}

/// Portable 8-lane dot product of `x` with row `o` of a weight packed in `layout` (its 8-column
/// runs read in increasing `k`), with the same lane structure as the SIMD kernel (separate
/// multiply and add instead of FMA).
#[inline]
fn dot_portable<T: Copy>(
    x: &[f32],
    w: &[T],
    layout: Layout,
    o: usize,
    kp: usize,
    widen: impl Fn(T) -> f32,
) -> f32 {
    let mut acc = [0f32; 8];
    // Every layout's chunk is a whole number of runs (of 8 or 2 columns).
    let run = layout.run();
    for (c, xc) in x.chunks_exact(CHUNK).enumerate() {
        for (r, xr) in xc.chunks_exact(run).enumerate() {
            let start = layout.index(o, c * CHUNK + r * run, kp);
            let Some(wr) = w.get(start..start + run) else {
                return f32::NAN;
            };
            for (l, (&xv, &wv)) in xr.iter().zip(wr).enumerate() {
                acc[r * run + l] += xv * widen(wv);
            }
        }
    }
    let s4 = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    let s2 = [s4[0] + s4[2], s4[1] + s4[3]];
    s2[0] + s2[1]
}

/// Portable kernel: `yt[j * rows + t] = dot(x[t], w[o0 + j])` for `j < n`.
fn block_portable(x: &[f32], rows: usize, kp: usize, w: &CpuWeight, o0: usize, yt: &mut [f32]) {
    for (j, yrow) in yt.chunks_exact_mut(rows).enumerate() {
        for (t, y) in yrow.iter_mut().enumerate() {
            let xr = x.get(t * kp..(t + 1) * kp).unwrap_or(&[]);
            *y = match &w.data {
                WData::F32(d) => dot_portable(xr, d, w.layout, o0 + j, kp, |v| v),
                WData::BF16(d) => dot_portable(xr, d, w.layout, o0 + j, kp, bf16_bits_to_f32),
                WData::Quant(_) => f32::NAN,
            };
        }
    }
}

/// Computes weight rows `o0 .. o0 + yt.len() / rows` into `yt`.
fn run_block(be: &CpuBackend, x: Acts<'_>, rows: usize, w: &CpuWeight, o0: usize, yt: &mut [f32]) {
    let n = yt.len() / rows;
    let kp = w.kp;
    let x = match x {
        Acts::F32(x) => x,
        #[cfg(target_arch = "x86_64")]
        Acts::Bf16(x) => {
            let WData::BF16(d) = &w.data else {
                return yt.iter_mut().for_each(|v| *v = f32::NAN);
            };
            let p = bf16dot::Bf16Panels {
                x,
                rows,
                kp,
                w: d,
                o0,
                n,
                rb: row_block(kp / 2),
            };
            // SAFETY: activations are bf16 bits only when `be.bf16dot` is set, which requires
            // AVX-512F and AVX-512 BF16 detected at runtime (`CpuBackend`); `block` checks its
            // slice bounds itself.
            return unsafe { bf16dot::block(&p, yt) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        Acts::Bf16(_) => return yt.iter_mut().for_each(|v| *v = f32::NAN),
    };
    if w.layout != Layout::Panels {
        // A weight packed for another backend's path (the vector kernels read 4-row panels).
        return block_portable(x, rows, kp, w, o0, yt);
    }
    #[cfg(target_arch = "x86_64")]
    if be.simd {
        let rb = row_block(kp);
        macro_rules! panels {
            ($w:expr) => {
                Panels {
                    x,
                    rows,
                    kp,
                    w: $w,
                    o0,
                    n,
                    rb,
                }
            };
        }
        // SAFETY: `be.simd` is only true when AVX2 and FMA were detected at runtime
        // (`CpuBackend::new`), and `block_wide` runs only when `be.wide` (AVX-512F/VL detected);
        // the kernels check their slice bounds themselves.
        unsafe {
            match (&w.data, be.wide) {
                (WData::F32(d), true) => simd::f32w::block_wide(&panels!(d), yt),
                (WData::BF16(d), true) => simd::bf16w::block_wide(&panels!(d), yt),
                (WData::F32(d), false) => simd::f32w::block(&panels!(d), yt),
                (WData::BF16(d), false) => simd::bf16w::block(&panels!(d), yt),
                // Quantized weights never reach the dense kernels (see `matmul`).
                (WData::Quant(_), _) => yt.iter_mut().for_each(|v| *v = f32::NAN),
            }
        }
        return;
    }
    let _ = be;
    block_portable(x, rows, kp, w, o0, yt);
}

/// `y[t*out + o] = sum_i x[t*in + i] * w[o, i]`; fills `y` with NaN on inconsistent sizes.
pub(crate) fn matmul(be: &CpuBackend, x: &[f32], rows: usize, w: &CpuWeight, y: &mut [f32]) {
    matmul_with_side(be, x, rows, w, y, &SideStream::default())
}

/// [`matmul`], whose tasks ask the cache for `side`'s lines as they go where the kernel path
/// does (the quantized row-lane paths, see [`super::quant::matmul`]); the same `y`.
pub(crate) fn matmul_with_side(
    be: &CpuBackend,
    x: &[f32],
    rows: usize,
    w: &CpuWeight,
    y: &mut [f32],
    side: &SideStream<'_>,
) {
    if let WData::Quant(q) = &w.data {
        return super::quant::matmul(be, x, rows, q, w.steps, y, side);
    }
    let (out, inp, kp) = (w.out, w.inp, w.kp);
    if !matmul_shapes_ok(x.len(), y.len(), rows, out, inp) {
        y.iter_mut().for_each(|v| *v = f32::NAN);
        return;
    }
    if rows == 0 {
        return;
    }
    let mut scratch = be.scratch.lock();
    let scratch = &mut *scratch;
    let x = &x[..rows * inp];
    // Activations padded to kp columns (only when `in` is not a multiple of the layout's
    // chunk); for a bf16 weight rounded to bf16 (see `bf16act.rs`), as bits for the `vdpbf16ps`
    // kernels, or as bits in rows padded for the AMX kernel (which writes `y` itself).
    let xs: Acts<'_> = match &w.data {
        #[cfg(target_arch = "x86_64")]
        WData::BF16(d) if be.bf16 == Bf16Kernel::Amx && w.layout == Layout::AmxTiles => {
            // Rows `amx::act_stride` apart, then padded with zeros to whole A tiles.
            let ldx = amx::act_stride(kp);
            bf16act::to_bits(&be.pool, x, (rows, inp, ldx), &mut scratch.xbits);
            scratch.xbits.resize(amx::padded_acts_len(rows, ldx), 0);
            return amx_rows(be, &scratch.xbits, rows, w, d, &mut y[..rows * out]);
        }
        WData::BF16(_) if be.bf16 == Bf16Kernel::Avx512Bf16 && w.layout == Layout::Panels => {
            bf16act::to_bits(&be.pool, x, (rows, inp, kp), &mut scratch.xbits);
            Acts::Bf16(&scratch.xbits)
        }
        WData::BF16(_) => {
            bf16act::to_rounded_f32(&be.pool, x, (rows, inp, kp), &mut scratch.xpad);
            Acts::F32(&scratch.xpad)
        }
        _ if kp == inp => Acts::F32(x),
        _ => {
            scratch.xpad.clear();
            scratch.xpad.resize(rows * kp, 0.0);
            for (dst, src) in scratch.xpad.chunks_exact_mut(kp).zip(x.chunks_exact(inp)) {
                dst[..inp].copy_from_slice(src);
            }
            Acts::F32(&scratch.xpad)
        }
    };
    // With one row, [out, rows] is already y's layout.
    if rows == 1 {
        compute(be, xs, 1, w, &mut y[..out]);
        return;
    }
    scratch.yt.resize(rows * out, 0.0);
    let yt = &mut scratch.yt[..rows * out];
    compute(be, xs, rows, w, yt);
    transpose(be, yt, rows, out, y);
}

/// The AMX kernel writes `y`'s rows directly ([`amx::block_rows`]: no `[out, rows]` scratch
/// and no transpose), serially or split by weight rows across the pool as [`compute`] splits
/// them. `x` holds the activations' bf16 bits (rows `amx::act_stride`
/// apart, padded to a multiple of 16), `d` the weight's bf16 tiles.
#[cfg(target_arch = "x86_64")]
fn amx_rows(be: &CpuBackend, x: &[u16], rows: usize, w: &CpuWeight, d: &[u16], y: &mut [f32]) {
    let (out, kp) = (w.out, w.kp);
    let threads = be.pool.current_num_threads();
    let call = amx::AmxCall {
        x,
        rows,
        kp,
        w: d,
        o0: 0,
        n: out,
    };
    if serial(threads, rows.saturating_mul(out).saturating_mul(kp)) {
        // SAFETY: `matmul` calls this only when `be.bf16` is `Bf16Kernel::Amx`, which the backend
        // selects only when `amx::available()`; the kernel checks its slices.
        unsafe { amx::block_rows(&call, y, out) };
    } else {
        let cw = task_rows(out, rows, kp, 2, threads, 2 * w.layout.panel());
        // SAFETY: as above.
        unsafe { amx::par_block_rows(&be.pool, &call, cw, y) };
    }
}

/// Whether a matmul of `work` multiply-adds runs on the calling thread alone: one thread, or
/// too little work to pay for splitting it.
pub(super) fn serial(threads: usize, work: usize) -> bool {
    threads <= 1 || work < (1 << 18)
}

/// Rows per band of [`transpose`] (a multiple of 8).
const BAND: usize = 32;

/// `y[t * out + o] = yt[o * rows + t]`, in bands of [`BAND`] rows across the pool when the
/// output is large (the transpose would otherwise run on one thread while the others wait).
pub(super) fn transpose(be: &CpuBackend, yt: &[f32], rows: usize, out: usize, y: &mut [f32]) {
    let Some(y) = rows.checked_mul(out).and_then(|n| y.get_mut(..n)) else {
        return;
    };
    if be.pool.current_num_threads() > 1 && rows > BAND && y.len() >= 1 << 16 {
        be.pool.install(|| {
            y.par_chunks_mut(BAND * out)
                .enumerate()
                .for_each(|(b, yb)| transpose_band(be.simd, yt, rows, out, b * BAND, yb));
        });
    } else {
        transpose_band(be.simd, yt, rows, out, 0, y);
    }
}

/// Rows `t0 .. t0 + yb.len() / out` of `y = transpose(yt)` into `yb`: whole 8 x 8 blocks in
/// registers when `simd` (AVX2), the rest in 32 x 32 blocks to stay within L1.
fn transpose_band(simd: bool, yt: &[f32], rows: usize, out: usize, t0: usize, yb: &mut [f32]) {
    const B: usize = 32;
    let n = (yb.len() / out.max(1)).min(rows.saturating_sub(t0));
    // Band rows and columns below these were done by the vector blocks.
    let (mut rd, mut od) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only set when AVX2 and FMA were detected at runtime; the function
        // checks its slice lengths itself.
        unsafe { simd::transpose_blocks(yt, rows, out, t0, &mut yb[..n * out]) };
        (rd, od) = (n / 8 * 8, out / 8 * 8);
    }
    let _ = simd;
    for o0 in (0..out).step_by(B) {
        let o1 = (o0 + B).min(out);
        for t in 0..n {
            // Columns left to do on this row: all, or those past the vector blocks.
            let from = if t < rd { o0.max(od) } else { o0 };
            if from >= o1 {
                continue;
            }
            let dst = &mut yb[t * out + from..t * out + o1];
            for (k, d) in dst.iter_mut().enumerate() {
                *d = yt[(from + k) * rows + t0 + t];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The vector blocks and the scalar edges together are the plain transpose, for shapes with
    /// and without whole blocks.
    #[test]
    fn transpose_matches_the_definition() {
        for (rows, out) in [
            (1, 1),
            (8, 8),
            (9, 17),
            (16, 24),
            (33, 7),
            (7, 33),
            (64, 130),
            (70, 19),
            (41, 64),
        ] {
            let yt: Vec<f32> = (0..rows * out).map(|i| i as f32).collect();
            #[cfg(target_arch = "x86_64")]
            let paths = [false, std::arch::is_x86_feature_detected!("avx2")];
            #[cfg(not(target_arch = "x86_64"))]
            let paths = [false];
            for simd in paths {
                // The whole output at once, and in bands of 8 and 32 rows (the last shorter).
                for band in [rows, 8, super::BAND] {
                    let mut y = vec![f32::NAN; rows * out];
                    for (b, yb) in y.chunks_mut(band * out).enumerate() {
                        super::transpose_band(simd, &yt, rows, out, b * band, yb);
                    }
                    for t in 0..rows {
                        for o in 0..out {
                            let (got, want) = (y[t * out + o], yt[o * rows + t]);
                            assert_eq!(got, want, "{rows}x{out} simd {simd} band {band}");
                        }
                    }
                }
            }
        }
    }
}

/// Activations `[rows, kp]` for the `[out, rows]` kernels: f32, or bf16 bits for the
/// `vdpbf16ps` kernels (the AMX kernel takes its own form, see [`amx_rows`]).
#[derive(Debug, Clone, Copy)]
enum Acts<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

/// Fills `yt` (`[out, rows]`) serially or across the pool.
fn compute(be: &CpuBackend, xs: Acts<'_>, rows: usize, w: &CpuWeight, yt: &mut [f32]) {
    let (out, kp) = (w.out, w.kp);
    let wbytes = match w.data {
        WData::F32(_) => 4,
        WData::BF16(_) | WData::Quant(_) => 2,
    };
    let threads = be.pool.current_num_threads();
    let flops = rows.saturating_mul(out).saturating_mul(kp);
    let cw = task_rows(out, rows, kp, wbytes, threads, w.layout.panel());
    if serial(threads, flops) {
        // The same tasks one after the other: a task's weights stay in L2 while the row blocks
        // pass over them (the whole weight at once streamed it from memory once per row block:
        // 1.7-2.3x slower at 8192 x 2048 and 256 rows).
        for (c, chunk) in yt.chunks_mut(cw * rows).enumerate() {
            run_block(be, xs, rows, w, c * cw, chunk);
        }
    } else {
        be.pool.install(|| {
            yt.par_chunks_mut(cw * rows)
                .enumerate()
                .for_each(|(c, chunk)| run_block(be, xs, rows, w, c * cw, chunk));
        });
    }
}
