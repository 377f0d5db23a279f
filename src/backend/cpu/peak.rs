//! The machine's peak multiply-add rate on a dense kernel path, measured by a calibration loop
//! (for `make bench`, which reports the matmuls' achieved GFLOP/s against it).
//!
//! Each thread of the pool runs a loop of independent multiply-add instructions on registers
//! (12 accumulators, enough to hide the instruction latency) with no memory traffic: the rate
//! the cores sustain for that instruction, an upper bound no matmul exceeds. One path,
//! [`PeakPath::AmxBf16Step`], times a kernel's inner step instead (tile loads from L1 included):
//! the ceiling of that loop where loading its operands costs more than the products.

use rayon::ThreadPool;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// A dense kernel path whose peak [`peak_gflops`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeakPath {
    /// 256-bit f32 FMA (`vfmadd231ps ymm`: 8 multiply-adds), the f32 and AVX2 bf16 kernels.
    F32Fma,
    /// 512-bit `vdpbf16ps` (32 bf16 multiply-adds), the AVX-512 BF16 kernels.
    Bf16Dot,
    /// AMX `tdpbf16ps` (16 × 16 × 32 bf16 multiply-adds on tiles), the AMX kernels.
    AmxBf16,
    /// The AMX kernel's 2 × 2 step (`amx.rs`): four operand tiles loaded with `tileloadd` from
    /// L1-resident memory, then their four `tdpbf16ps`. The ceiling of that kernel's loop on
    /// this machine (its operands cannot stay in tile registers), below [`PeakPath::AmxBf16`]
    /// where tile loads are slower than the products.
    AmxBf16Step,
}

impl PeakPath {
    /// Multiply-adds per instruction.
    fn macs(self) -> u64 {
        match self {
            Self::F32Fma => 8,
            Self::Bf16Dot => 32,
            Self::AmxBf16 | Self::AmxBf16Step => 16 * 16 * 32,
        }
    }

    /// Loop iterations per timed run (12 instructions each): a run takes about 10-50 ms.
    fn iters(self) -> u64 {
        match self {
            Self::F32Fma | Self::Bf16Dot => ITERS,
            // An AMX instruction does 256 times the work of a `vdpbf16ps` in about 16 cycles.
            Self::AmxBf16 | Self::AmxBf16Step => ITERS >> 4,
        }
    }

    /// Whether this CPU has the path's instructions (detected at runtime, as the backend's
    /// kernel selection does).
    pub fn available(self) -> bool {
        match self {
            Self::F32Fma => super::detect_simd(),
            Self::Bf16Dot => super::detect_bf16dot(),
            Self::AmxBf16 | Self::AmxBf16Step => super::Bf16Kernel::Amx.available(),
        }
    }
}

/// Loop iterations per timed run of the vector paths (12 instructions each).
const ITERS: u64 = 1 << 21;

/// Runs `ITERS` x 12 FMAs; returns a value that depends on every accumulator.
///
/// # Safety
/// AVX2 and FMA must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop(seed: f32) -> f32 {
    let m = _mm256_set1_ps(std::hint::black_box(0.999_999));
    let a = _mm256_set1_ps(std::hint::black_box(1e-7));
    let mut acc = [_mm256_set1_ps(seed); 12];
    for _ in 0..ITERS {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, m, a);
        }
    }
    let mut s = _mm256_setzero_ps();
    for v in acc {
        s = _mm256_add_ps(s, v);
    }
    _mm256_cvtss_f32(s)
}

/// Runs `ITERS` x 12 `vdpbf16ps`; returns a value that depends on every accumulator.
///
/// # Safety
/// AVX-512F and AVX-512 BF16 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dpbf16_loop(seed: f32) -> f32 {
    let x = _mm512_cvtne2ps_pbh(
        _mm512_set1_ps(1e-3),
        _mm512_set1_ps(std::hint::black_box(1e-3)),
    );
    let mut acc = [_mm512_set1_ps(seed); 12];
    for _ in 0..ITERS {
        for v in acc.iter_mut() {
            *v = _mm512_dpbf16_ps(*v, x, x);
        }
    }
    let mut s = _mm512_setzero_ps();
    for v in acc {
        s = _mm512_add_ps(s, v);
    }
    _mm512_reduce_add_ps(s)
}

/// One thread's run of the path's loop; `None` when the CPU lacks it.
fn one_run(path: PeakPath, seed: f32) -> Option<f32> {
    if !path.available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the path's instructions were detected at runtime just above.
        Some(unsafe {
            match path {
                PeakPath::F32Fma => fma_loop(seed),
                PeakPath::Bf16Dot => dpbf16_loop(seed),
                PeakPath::AmxBf16 => super::amx::peak_loop(path.iters(), false) + seed,
                PeakPath::AmxBf16Step => super::amx::peak_loop(path.iters(), true) + seed,
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = seed;
        None
    }
}

/// Peak GFLOP/s (2 per multiply-add) of `path` over every thread of `pool` at once: the best of
/// `runs` timed runs (each about 10-50 ms), so a busy moment of a shared machine is not taken as
/// the peak. `None` when the CPU lacks the path. Blocks the pool's threads while it runs.
pub fn peak_gflops(pool: &ThreadPool, path: PeakPath, runs: usize) -> Option<f64> {
    if !path.available() {
        return None;
    }
    let threads = pool.current_num_threads() as u64;
    let flops = (threads * path.iters() * 12 * path.macs() * 2) as f64;
    let mut best = 0f64;
    for r in 0..runs.max(1) {
        let start = std::time::Instant::now();
        let out = pool.broadcast(|c| one_run(path, 1.0 + (r + c.index()) as f32 * 1e-3));
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(out);
        if secs > 0.0 {
            best = best.max(flops / secs / 1e9);
        }
    }
    Some(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loops run and give a positive, finite rate on every path this CPU has, and none on a
    /// path it lacks.
    #[test]
    fn peaks_are_measured_on_available_paths() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for path in [
            PeakPath::F32Fma,
            PeakPath::Bf16Dot,
            PeakPath::AmxBf16,
            PeakPath::AmxBf16Step,
        ] {
            let p = peak_gflops(&pool, path, 1);
            assert_eq!(p.is_some(), path.available(), "{path:?}");
            if let Some(g) = p {
                assert!(g.is_finite() && g > 0.0, "{path:?}: {g}");
            }
        }
    }
}
