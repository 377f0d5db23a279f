//! Mixed-batch LoRA (`lora_apply`, DESIGN.md 1.4) in SGMV style (Punica / S-LoRA).
//!
//! The step's rows that use an adapter module are sorted by slot into segments. For each active
//! row the shrink `h = A · x` (`[r]`) is computed into a scratch `H` (one row per active row,
//! zero-padded to a multiple of 8); then the expand `y += scale · B · h` runs per segment over
//! column ranges of the output, so each slot's `B` block is read once per segment and stays in L1
//! while every row of the segment uses it.
//!
//! Parallelism (on the backend's pool): shrink over active rows, expand over (segment, column
//! range) tasks; small calls run serially.
//!
//! Batch invariance: every `h[k]` and every output element is computed by one fixed instruction
//! sequence that depends only on the module's dims and rank (8-lane accumulators over aligned
//! 8-chunks, a masked final chunk, then the fixed reduction tree of [`reduce8`]); column ranges
//! start at multiples of 8, so neither the other rows, their slots, nor the thread count change a
//! row's result.

use rayon::prelude::*;

use super::CpuBackend;
use crate::backend::lora::{LoraBatch, LoraTarget};
use crate::backend::lora_arena::{ArenaModule, HostLoraArena};

/// Output columns per parallel expand task at least (a multiple of 8).
const MIN_COLS: usize = 64;
/// Below this many multiply-adds a call runs on the calling thread.
const PAR_MIN_FMAS: usize = 1 << 19;

/// One active row: its position in the call and its module.
struct Active<'a> {
    t: usize,
    slot: i32,
    m: ArenaModule<'a>,
}

/// See [`crate::backend::Backend::lora_apply`]. Rows whose x or y range falls outside the buffers
/// are skipped (as in the reference); when `y_col + out > y_stride` (rows would overlap) nothing
/// is written.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lora_apply(
    be: &CpuBackend,
    x: &[f32],
    x_stride: usize,
    x_col: usize,
    y: &mut [f32],
    y_stride: usize,
    y_col: usize,
    rows: usize,
    batch: &LoraBatch,
    stack: &HostLoraArena,
    layer: usize,
    target: LoraTarget,
) {
    let (inp, out) = stack.geometry().dims[target.index()];
    if inp == 0 || out == 0 || !matches!(y_col.checked_add(out), Some(e) if e <= y_stride) {
        return;
    }
    let in_bounds = |t: usize| -> bool {
        let xs = t.checked_mul(x_stride).and_then(|v| v.checked_add(x_col));
        let ys = t.checked_mul(y_stride).and_then(|v| v.checked_add(y_col));
        matches!(xs.and_then(|v| v.checked_add(inp)), Some(e) if e <= x.len())
            && matches!(ys.and_then(|v| v.checked_add(out)), Some(e) if e <= y.len())
    };
    let mut active: Vec<Active<'_>> = Vec::new();
    for (t, &s) in batch.token_slot.iter().enumerate().take(rows) {
        if s < 0 || !in_bounds(t) {
            continue;
        }
        if let Some(m) = stack.module(s as usize, layer, target) {
            active.push(Active { t, slot: s, m });
        }
    }
    if active.is_empty() {
        return;
    }
    // Segments: rows of one slot are contiguous (stable, so rows stay in order within a slot).
    active.sort_by_key(|a| a.slot);
    let rmax = active.iter().map(|a| a.m.rank).max().unwrap_or(0);
    let hs = rmax.div_ceil(8) * 8;
    if hs == 0 {
        return;
    }
    let fmas: usize = active.iter().map(|a| a.m.rank * (inp + out)).sum();
    let threads = be.pool.current_num_threads();
    let parallel = threads > 1 && fmas >= PAR_MIN_FMAS;

    // Shrink: H[a, k] = A[k] · x[t_a] for k < r_a; zero for r_a <= k < hs.
    let mut hbuf = vec![0f32; active.len() * hs];
    let shrink_one = |(a, h): (&Active<'_>, &mut [f32])| {
        let xs = a.t * x_stride + x_col;
        shrink(be.simd, &x[xs..xs + inp], a.m.a, a.m.rank, h);
    };
    if parallel {
        let min_len = active.len().div_ceil(threads * 4).max(1);
        be.pool.install(|| {
            active
                .par_iter()
                .zip(hbuf.par_chunks_mut(hs))
                .with_min_len(min_len)
                .for_each(shrink_one);
        });
    } else {
        active.iter().zip(hbuf.chunks_mut(hs)).for_each(shrink_one);
    }

    // Expand tasks: (segment, column range) with the matching slices of y.
    let mut seg_bounds = Vec::new();
    let mut start = 0;
    for i in 1..=active.len() {
        if i == active.len() || active[i].slot != active[start].slot {
            seg_bounds.push((start, i));
            start = i;
        }
    }
    let cw = if parallel {
        let parts = (threads * 4).div_ceil(seg_bounds.len()).max(1);
        (out.div_ceil(parts).div_ceil(8) * 8).max(MIN_COLS)
    } else {
        out.div_ceil(8) * 8
    };
    let nchunks = out.div_ceil(cw);
    // Row slices of y (only active rows are taken).
    let mut yrows: Vec<Option<&mut [f32]>> = y
        .chunks_mut(y_stride)
        .take(rows)
        .map(|r| r.get_mut(y_col..y_col + out))
        .collect();
    struct Task<'y, 'h, 'a> {
        m: ArenaModule<'a>,
        col0: usize,
        hs: Vec<&'h [f32]>,
        ys: Vec<&'y mut [f32]>,
    }
    let mut tasks: Vec<Task<'_, '_, '_>> = Vec::with_capacity(seg_bounds.len() * nchunks);
    for &(s0, s1) in &seg_bounds {
        let first = tasks.len();
        for c in 0..nchunks {
            tasks.push(Task {
                m: active[s0].m,
                col0: c * cw,
                hs: Vec::with_capacity(s1 - s0),
                ys: Vec::with_capacity(s1 - s0),
            });
        }
        for a in s0..s1 {
            let h = &hbuf[a * hs..(a + 1) * hs];
            let Some(yr) = yrows.get_mut(active[a].t).and_then(|r| r.take()) else {
                continue;
            };
            for (c, piece) in yr.chunks_mut(cw).enumerate() {
                if let Some(task) = tasks.get_mut(first + c) {
                    task.hs.push(h);
                    task.ys.push(piece);
                }
            }
        }
    }
    let run = |task: &mut Task<'_, '_, '_>| {
        expand(be.simd, &task.m, task.col0, &task.hs, &mut task.ys);
    };
    if parallel {
        be.pool.install(|| tasks.par_iter_mut().for_each(run));
    } else {
        tasks.iter_mut().for_each(run);
    }
}

/// `h[k] = A[k] · x` for `k < rank`; `h[rank..]` is zeroed. `x.len()` is the module's `in`.
fn shrink(simd: bool, x: &[f32], a: &[f32], rank: usize, h: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when AVX2 and FMA were detected at runtime
        // (`CpuBackend::new`); the kernel bounds-checks its slices.
        unsafe { kernels::shrink(x, a, rank, h) };
        return;
    }
    let _ = simd;
    let inp = x.len();
    h.iter_mut().for_each(|v| *v = 0.0);
    for (k, hk) in h.iter_mut().enumerate().take(rank) {
        let Some(row) = a.get(k * inp..(k + 1) * inp) else {
            return;
        };
        *hk = row.iter().zip(x).fold(0f32, |s, (w, v)| s + w * v);
    }
}

/// `ys[i][j] += scale * B[col0 + j] · hs[i]` for every row `i` of a segment.
fn expand(simd: bool, m: &ArenaModule<'_>, col0: usize, hs: &[&[f32]], ys: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: as in `shrink`; the kernel bounds-checks its slices.
        unsafe { kernels::expand(m.b, m.rank, m.scale, col0, hs, ys) };
        return;
    }
    let _ = simd;
    let r = m.rank;
    for (h, y) in hs.iter().zip(ys.iter_mut()) {
        for (j, yv) in y.iter_mut().enumerate() {
            let o = col0 + j;
            let Some(brow) = m.b.get(o * r..(o + 1) * r) else {
                return;
            };
            let d = brow.iter().zip(h.iter()).fold(0f32, |s, (b, v)| s + b * v);
            *yv += m.scale * d;
        }
    }
}

/// AVX2/FMA kernels (x86_64 only; callers check the CPU features at runtime).
#[cfg(target_arch = "x86_64")]
mod kernels {
    use std::arch::x86_64::*;

    /// `-1` lanes followed by `0` lanes: loading 8 lanes at `8 - n` gives a mask of the first `n`.
    static MASK: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

    /// A mask selecting the first `n` (1..=8) lanes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn mask(n: usize) -> __m256i {
        let off = 8 - n.clamp(1, 8);
        // SAFETY: off <= 7, so MASK[off..off + 8] is in bounds; loadu is unaligned.
        unsafe { _mm256_loadu_si256(MASK.as_ptr().add(off) as *const __m256i) }
    }

    /// `v[j] = sum of the 8 lanes of a[j]`, in a fixed tree: pairwise `hadd` twice, then the
    /// two 128-bit halves added (`(l0+l1)+(l2+l3)` + `(l4+l5)+(l6+l7)`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn reduce8(a: &[__m256; 8]) -> __m256 {
        let t0 = _mm256_hadd_ps(a[0], a[1]);
        let t1 = _mm256_hadd_ps(a[2], a[3]);
        let t2 = _mm256_hadd_ps(a[4], a[5]);
        let t3 = _mm256_hadd_ps(a[6], a[7]);
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        let lo = _mm256_permute2f128_ps::<0x20>(u0, u1);
        let hi = _mm256_permute2f128_ps::<0x31>(u0, u1);
        _mm256_add_ps(lo, hi)
    }

    /// Accumulates `K` rows of A (`a` points at row 0 of the group, rows `inp` apart) against x.
    ///
    /// # Safety
    /// `x..x+inp` and `a + j*inp .. + inp` for `j < K` must be readable.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn shrink_group<const K: usize>(x: *const f32, a: *const f32, inp: usize) -> __m256 {
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i + 8 <= inp {
            // SAFETY: i + 8 <= inp; see the function's contract.
            let xv = unsafe { _mm256_loadu_ps(x.add(i)) };
            for (j, aj) in acc.iter_mut().enumerate().take(K) {
                // SAFETY: row j < K of the group has inp readable values, i + 8 <= inp.
                let av = unsafe { _mm256_loadu_ps(a.add(j * inp + i)) };
                *aj = _mm256_fmadd_ps(av, xv, *aj);
            }
            i += 8;
        }
        if i < inp {
            let m = mask(inp - i);
            // SAFETY: maskload only touches the lanes selected by `m`, all below inp.
            let xv = unsafe { _mm256_maskload_ps(x.add(i), m) };
            for (j, aj) in acc.iter_mut().enumerate().take(K) {
                // SAFETY: as above, for row j < K.
                let av = unsafe { _mm256_maskload_ps(a.add(j * inp + i), m) };
                *aj = _mm256_fmadd_ps(av, xv, *aj);
            }
        }
        reduce8(&acc)
    }

    /// `h[k] = A[k] · x` for `k < rank` (A `[rank, x.len()]`), `h[rank..]` zeroed.
    ///
    /// # Safety
    /// AVX2 and FMA must be available. Slice sizes are checked (nothing is written if
    /// `a.len() < rank * x.len()` or `h.len() < rank.div_ceil(8) * 8`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn shrink(x: &[f32], a: &[f32], rank: usize, h: &mut [f32]) {
        let inp = x.len();
        let groups = rank.div_ceil(8);
        if a.len() < rank * inp || h.len() < groups * 8 {
            return;
        }
        h.iter_mut().for_each(|v| *v = 0.0);
        for g in 0..groups {
            let k0 = g * 8;
            // SAFETY: rows k0 .. k0 + kk of A exist (k0 + kk <= rank); x has inp values.
            let (xp, ap) = (x.as_ptr(), unsafe { a.as_ptr().add(k0 * inp) });
            // SAFETY (all arms): as above.
            let v = unsafe {
                match rank - k0 {
                    1 => shrink_group::<1>(xp, ap, inp),
                    2 => shrink_group::<2>(xp, ap, inp),
                    3 => shrink_group::<3>(xp, ap, inp),
                    4 => shrink_group::<4>(xp, ap, inp),
                    5 => shrink_group::<5>(xp, ap, inp),
                    6 => shrink_group::<6>(xp, ap, inp),
                    7 => shrink_group::<7>(xp, ap, inp),
                    _ => shrink_group::<8>(xp, ap, inp),
                }
            };
            // SAFETY: k0 + 8 <= groups * 8 <= h.len().
            unsafe { _mm256_storeu_ps(h.as_mut_ptr().add(k0), v) };
        }
    }

    /// `B[o] · h` accumulated in 8 lanes over the rank (masked last chunk).
    ///
    /// # Safety
    /// `b..b+r` readable; `h..h + r.div_ceil(8)*8` readable.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn dot_lanes(b: *const f32, h: *const f32, r: usize) -> __m256 {
        let mut acc = _mm256_setzero_ps();
        let mut k = 0;
        while k + 8 <= r {
            // SAFETY: k + 8 <= r; see the contract.
            let (bv, hv) = unsafe { (_mm256_loadu_ps(b.add(k)), _mm256_loadu_ps(h.add(k))) };
            acc = _mm256_fmadd_ps(bv, hv, acc);
            k += 8;
        }
        if k < r {
            // SAFETY: maskload reads only lanes below r; h is padded to a multiple of 8.
            let (bv, hv) = unsafe {
                (
                    _mm256_maskload_ps(b.add(k), mask(r - k)),
                    _mm256_loadu_ps(h.add(k)),
                )
            };
            acc = _mm256_fmadd_ps(bv, hv, acc);
        }
        acc
    }

    /// `ys[i][j] += scale * (B[col0 + j] · hs[i])`, 8 output columns at a time (B `[out, r]`).
    ///
    /// # Safety
    /// AVX2 and FMA must be available. Slice sizes are checked: rows whose `h` is shorter than
    /// `r.div_ceil(8) * 8` or whose columns exceed B's rows are skipped.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn expand(
        b: &[f32],
        r: usize,
        scale: f32,
        col0: usize,
        hs: &[&[f32]],
        ys: &mut [&mut [f32]],
    ) {
        let hp = r.div_ceil(8) * 8;
        let sv = _mm256_set1_ps(scale);
        let ok = |h: &[f32], n: usize| {
            r > 0
                && h.len() >= hp
                && matches!(col0.checked_add(n).and_then(|e| e.checked_mul(r)), Some(e) if e <= b.len())
        };
        let ncols = ys.iter().map(|y| y.len()).max().unwrap_or(0);
        let mut j0 = 0;
        while j0 + 8 <= ncols {
            for (h, y) in hs.iter().zip(ys.iter_mut()) {
                if y.len() < j0 + 8 || !ok(h, y.len()) {
                    continue;
                }
                // SAFETY: rows col0 + j0 .. col0 + j0 + 8 <= col0 + y.len() of B exist (`ok`).
                let bp = unsafe { b.as_ptr().add((col0 + j0) * r) };
                let mut acc = [_mm256_setzero_ps(); 8];
                for (jj, a) in acc.iter_mut().enumerate() {
                    // SAFETY: row col0 + j0 + jj < col0 + y.len() is inside B (`ok`); h is
                    // padded to hp.
                    *a = unsafe { dot_lanes(bp.add(jj * r), h.as_ptr(), r) };
                }
                let v = reduce8(&acc);
                // SAFETY: j0 + 8 <= y.len().
                unsafe {
                    let yp = y.as_mut_ptr().add(j0);
                    _mm256_storeu_ps(yp, _mm256_fmadd_ps(sv, v, _mm256_loadu_ps(yp)));
                }
            }
            j0 += 8;
        }
        // Column tail (only at the end of the module's columns): same lanes, then the tree of
        // `reduce8` with the other seven inputs zero.
        for (h, y) in hs.iter().zip(ys.iter_mut()) {
            let n = y.len();
            if !ok(h, n) {
                continue;
            }
            let mut j = j0;
            while j < n {
                let mut acc = [_mm256_setzero_ps(); 8];
                // SAFETY: row col0 + j < col0 + y.len() is inside B (`ok`); h padded to hp.
                acc[0] = unsafe { dot_lanes(b.as_ptr().add((col0 + j) * r), h.as_ptr(), r) };
                let mut lanes = [0f32; 8];
                // SAFETY: lanes holds 8 f32.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), reduce8(&acc)) };
                y[j] = scale.mul_add(lanes[0], y[j]);
                j += 1;
            }
        }
    }
}
