//! Mixed-batch LoRA (`lora_apply`, DESIGN.md 1.4) in SGMV style (Punica / S-LoRA).
//!
//! Storage: [`CpuLoraArena`] keeps each module's `A` as `[r, in]` and `B` transposed, `Bᵀ
//! [r, out]`, so the expand vectorizes over output columns without horizontal sums, in the
//! geometry's precision (f32, or bf16 widened exactly to f32 as it is loaded: the arithmetic is
//! the same f32 arithmetic on the stored values, with half the bytes to stream).
//!
//! The step's rows that use an adapter module are sorted by slot into segments. For each active
//! row the shrink `h = A · x` (`[r]`) is computed into a scratch `H` (one row per active row,
//! zero-padded to a multiple of 8); then the expand `y += scale · B · h` runs per segment over
//! column ranges of the output, so each slot's `Bᵀ` columns are read once per segment and stay
//! in L1 while every row of the segment uses them.
//!
//! Mixtures: each lane of the [`crate::backend::LoraBatch`] (every row's first adapter, then the
//! further adapters of mixing rows) is one such pass, in order; a row's mixture scale folds into
//! its module scale, and segments split where the slot or that scale changes.
//!
//! Parallelism (on the backend's pool), for calls whose work (arithmetic plus the adapter
//! weights streamed, see [`work`]) is large: with many segments (distinct adapters), one task
//! per run of segments shrinks and expands each segment's rows, asking for the next segment's
//! weights while one computes; with few, the shrink over active rows and then the expand over
//! (segment, column range) tasks. Small calls run serially.
//!
//! Batch invariance: every `h[k]` is computed by one fixed instruction sequence that depends only
//! on the module's dims and rank (8-lane accumulators over aligned 8-chunks, a masked final
//! chunk, then a fixed reduction tree), and every output element by the fused chain
//! `acc = fma(h[k], Bᵀ[k, o], acc)` for `k = 0..r` then `y = fma(scale, acc, y)` (vector lanes
//! and the scalar column tail use the same fused operations), so neither the other rows, their
//! slots, the column ranges nor the thread count change a row's result.

use rayon::prelude::*;

use super::side_stream::{self, SideStream};
use super::CpuBackend;
use crate::backend::lora::{lane_scale, LoraSlotData, LoraStackGeometry, LoraWeights};
use crate::backend::lora_arena::{ArenaModule, ArenaWeights, HostLoraArena};
use crate::backend::{LoraArgs, LoraNext, View, ViewMut};
use crate::error::Result;

/// The CPU backend's adapter arena: a [`HostLoraArena`] whose modules hold `A [r, in]` and
/// `Bᵀ [r, out]` (B transposed at load time). Owned by the engine's worker; not shared.
#[derive(Debug)]
pub struct CpuLoraArena {
    inner: HostLoraArena,
}

impl CpuLoraArena {
    /// Reserves every slot at `max_rank` (see [`HostLoraArena::new`] for the errors).
    pub(crate) fn new(geom: LoraStackGeometry) -> Result<Self> {
        Ok(Self {
            inner: HostLoraArena::new(geom)?,
        })
    }

    /// Stores an adapter in `slot` (B given `[out, r]`, stored transposed); validated
    /// completely by [`HostLoraArena::load_slot`] before anything is written, so a failed load
    /// leaves the slot's previous content intact.
    pub(crate) fn load_slot(&mut self, slot: usize, layers: &LoraSlotData<'_>) -> Result<()> {
        let dims = self.inner.geometry().dims;
        let bt: Vec<[Vec<f32>; 7]> = layers
            .iter()
            .map(|mods| {
                std::array::from_fn(|ti| match &mods[ti] {
                    Some(m) if m.rank > 0 && m.b.len() == dims[ti].1 * m.rank => {
                        let (r, out) = (m.rank, dims[ti].1);
                        let mut t = vec![0f32; r * out];
                        for (o, row) in m.b.chunks_exact(r).enumerate() {
                            for (k, &v) in row.iter().enumerate() {
                                t[k * out + o] = v;
                            }
                        }
                        t
                    }
                    _ => Vec::new(),
                })
            })
            .collect();
        let view: Vec<[Option<LoraWeights<'_>>; 7]> = layers
            .iter()
            .zip(&bt)
            .map(|(mods, bts)| {
                std::array::from_fn(|ti| {
                    mods[ti].map(|m| LoraWeights {
                        // Invalid B lengths keep the caller's slice so validation reports them.
                        b: if bts[ti].is_empty() { m.b } else { &bts[ti] },
                        ..m
                    })
                })
            })
            .collect();
        self.inner.load_slot(slot, &view)
    }

    /// Empties `slot` (out-of-range slots are ignored).
    pub(crate) fn clear_slot(&mut self, slot: usize) {
        self.inner.clear_slot(slot)
    }

    /// Bytes reserved.
    pub(crate) fn bytes(&self) -> usize {
        self.inner.bytes()
    }
}

/// Adapter bytes per thread up to which [`side_stream`] asks for them during the base matmul:
/// they go to the asking core's L2 and must still be there (next to the matmul's own working
/// set) when `lora_apply` reads them, so at most a quarter of the L2 (512 KiB on Zen 3, 1 MiB on
/// Zen 4, 2 MiB on Sapphire Rapids), and at most this. 8 distinct rank-8 adapters on SmolLM2's
/// gate/up take 270 KiB per thread on two threads; 32 distinct (1–2 MiB) are streamed by
/// `lora_apply` as before (measured: asking for them under the AMX matmul of a batch of 32 made
/// the step slower).
const SIDE_BYTES_PER_THREAD: usize = 384 << 10;

/// The adapter weights that the `lora_apply` calls described by `next` read for a call of
/// `rows` rows: each module of `next.targets` of each distinct slot of every lane, `A` then
/// `Bᵀ`, in slot order (what [`crate::backend::Backend::matmul_before_lora`] lets the base
/// matmul stream under its arithmetic); empty when they exceed [`SIDE_BYTES_PER_THREAD`] (or a
/// quarter of the L2) per thread of `threads`.
pub(crate) fn side_stream<'a>(
    rows: usize,
    next: LoraNext<'a, CpuLoraArena>,
    threads: usize,
) -> SideStream<'a> {
    let stack = &next.stack.inner;
    let mut slots: Vec<usize> = next
        .batch
        .lanes()
        .flat_map(|(s, _)| s.iter().take(rows))
        .filter_map(|&s| usize::try_from(s).ok())
        .collect();
    slots.sort_unstable();
    slots.dedup();
    let parts = slots
        .iter()
        .flat_map(|&s| {
            next.targets
                .iter()
                .filter_map(move |&t| stack.module(s, next.layer, t))
        })
        .flat_map(|m| [bytes(m.a), bytes(m.b)])
        .collect();
    let side = SideStream::new(parts);
    let per_thread = SIDE_BYTES_PER_THREAD.min(side_stream::l2_bytes() / 4);
    if side.bytes() > per_thread.saturating_mul(threads.max(1)) {
        return SideStream::default();
    }
    side
}

/// Output columns per parallel expand task at least (a multiple of 8).
const MIN_COLS: usize = 64;
/// Below this much work (see [`work`]) a call runs on the calling thread.
const PAR_MIN_WORK: usize = 1 << 18;
/// What reading one adapter weight (4 bytes, streamed from memory) costs, in multiply-adds:
/// about 15 GB/s per core against about 20 multiply-adds per ns.
const WEIGHT_READ_FMAS: usize = 4;

/// The work of one lane's call, in multiply-adds: each active row's shrink and expand, plus
/// streaming each distinct module's `A` and `Bᵀ` once (`active` is sorted by slot). With many
/// distinct adapters the call is bound by that stream, not by its arithmetic.
fn work(active: &[Active<'_>], inp: usize, out: usize) -> usize {
    let fmas: usize = active.iter().map(|a| a.m.rank * (inp + out)).sum();
    let weights: usize = active
        .iter()
        .enumerate()
        .filter(|(i, a)| *i == 0 || active[i - 1].slot != a.slot)
        .map(|(_, a)| a.m.rank * (inp + out))
        .sum();
    fmas.saturating_add(weights.saturating_mul(WEIGHT_READ_FMAS))
}

/// One active row: its position in the call and its module (`b` holds `Bᵀ [r, out]`).
struct Active<'a> {
    t: usize,
    slot: i32,
    m: ArenaModule<'a>,
}

/// See [`crate::backend::Backend::lora_apply`]. Rows whose x or y range falls outside the buffers
/// are skipped (as in the reference); when `x.rows != y.rows` or a view's columns exceed its
/// stride (rows would overlap) nothing is written.
pub(crate) fn lora_apply(
    be: &CpuBackend,
    x: View<'_, [f32]>,
    y: ViewMut<'_, [f32]>,
    args: &LoraArgs<'_, CpuLoraArena>,
) {
    let (inp, out) = args.stack.inner.geometry().dims[args.target.index()];
    let within =
        |col: usize, w: usize, stride: usize| matches!(col.checked_add(w), Some(e) if e <= stride);
    if inp == 0
        || out == 0
        || x.rows != y.rows
        || !within(x.col, inp, x.stride)
        || !within(y.col, out, y.stride)
    {
        return;
    }
    let rows = x.rows;
    let xs = Rows {
        buf: x.buf,
        stride: x.stride,
        col: x.col,
    };
    let (y_stride, y_col, y) = (y.stride, y.col, y.buf);
    for (slots, scales) in args.batch.lanes() {
        apply_lane(
            be,
            args,
            &xs,
            RowsMut {
                buf: &mut *y,
                stride: y_stride,
                col: y_col,
            },
            rows,
            (slots, scales),
        );
    }
}

/// Row-major rows of a buffer: row `t` starts at `t * stride + col`.
struct Rows<'a> {
    buf: &'a [f32],
    stride: usize,
    col: usize,
}

/// [`Rows`], writable.
struct RowsMut<'a> {
    buf: &'a mut [f32],
    stride: usize,
    col: usize,
}

/// One lane of [`lora_apply`]: `y[t] += (scale · m[t]) · B·(A·x[t])` for the rows whose lane
/// slot has a module.
fn apply_lane(
    be: &CpuBackend,
    args: &LoraArgs<'_, CpuLoraArena>,
    x: &Rows<'_>,
    y: RowsMut<'_>,
    rows: usize,
    (slots, scales): (&[i32], &[f32]),
) {
    let stack = &args.stack.inner;
    let (layer, target) = (args.layer, args.target);
    let (inp, out) = stack.geometry().dims[target.index()];
    let (x_stride, x_col) = (x.stride, x.col);
    let (y_stride, y_col) = (y.stride, y.col);
    let (x, y) = (x.buf, y.buf);
    let in_bounds = |t: usize| -> bool {
        let xs = t.checked_mul(x_stride).and_then(|v| v.checked_add(x_col));
        let ys = t.checked_mul(y_stride).and_then(|v| v.checked_add(y_col));
        matches!(xs.and_then(|v| v.checked_add(inp)), Some(e) if e <= x.len())
            && matches!(ys.and_then(|v| v.checked_add(out)), Some(e) if e <= y.len())
    };
    let mut active: Vec<Active<'_>> = Vec::new();
    for (t, &s) in slots.iter().enumerate().take(rows) {
        if s < 0 || !in_bounds(t) {
            continue;
        }
        if let Some(m) = stack.module(s as usize, layer, target) {
            // The mixture scale folds into the module's: one fused multiply-add per output, as
            // for an unmixed row (a mixture scale of 1 leaves the product, and the row, as is).
            let scale = m.scale * lane_scale(scales, t);
            active.push(Active {
                t,
                slot: s,
                m: ArenaModule { scale, ..m },
            });
        }
    }
    if active.is_empty() {
        return;
    }
    // Segments: rows of one slot and scale are contiguous (stable, so rows stay in order).
    active.sort_by_key(|a| (a.slot, a.m.scale.to_bits()));
    let rmax = active.iter().map(|a| a.m.rank).max().unwrap_or(0);
    let hs = rmax.div_ceil(8) * 8;
    if hs == 0 {
        return;
    }
    let threads = be.pool.current_num_threads();
    let parallel = threads > 1 && work(&active, inp, out) >= PAR_MIN_WORK;

    // Segments: runs of rows with one slot and scale (`active` is sorted).
    let mut seg_bounds = Vec::new();
    let mut start = 0;
    let same = |a: &Active<'_>, b: &Active<'_>| {
        a.slot == b.slot && a.m.scale.to_bits() == b.m.scale.to_bits()
    };
    for i in 1..=active.len() {
        if i == active.len() || !same(&active[i], &active[start]) {
            seg_bounds.push((start, i));
            start = i;
        }
    }
    // Row slices of y (only active rows are taken).
    let mut yrows: Vec<Option<&mut [f32]>> = y
        .chunks_mut(y_stride)
        .take(rows)
        .map(|r| r.get_mut(y_col..y_col + out))
        .collect();
    let mut hbuf = vec![0f32; active.len() * hs];
    // H[a, k] = A[k] · x[t_a] for k < r_a; zero for r_a <= k < hs.
    let shrink_one = |(a, h): (&Active<'_>, &mut [f32])| {
        let xs = a.t * x_stride + x_col;
        shrink(be.simd, &x[xs..xs + inp], a.m.a, a.m.rank, h);
    };

    if parallel && seg_bounds.len() >= 2 * threads {
        // Many segments (distinct adapters): one task per segment shrinks and expands its own
        // rows over all columns, so each adapter's A and Bᵀ are streamed by one thread in one
        // parallel region (two regions per call cost more in waiting than they split).
        struct Seg<'y, 'h, 'a> {
            rows: &'a [Active<'a>],
            h: &'h mut [f32],
            ys: Vec<Option<&'y mut [f32]>>,
        }
        let mut segs: Vec<Seg<'_, '_, '_>> = Vec::with_capacity(seg_bounds.len());
        let mut rest = &mut hbuf[..];
        for &(s0, s1) in &seg_bounds {
            let (h, tail) = rest.split_at_mut((s1 - s0) * hs);
            rest = tail;
            let ys = active[s0..s1]
                .iter()
                .map(|a| yrows.get_mut(a.t).and_then(|r| r.take()))
                .collect();
            segs.push(Seg {
                rows: &active[s0..s1],
                h,
                ys,
            });
        }
        let fetch = |seg: &Seg<'_, '_, '_>| {
            if let Some(a) = seg.rows.first() {
                prefetch(a.m.a);
                prefetch(a.m.b);
            }
        };
        let run = |seg: &mut Seg<'_, '_, '_>| {
            seg.rows
                .iter()
                .zip(seg.h.chunks_mut(hs))
                .for_each(shrink_one);
            let (mut hs_in, mut ys_in) = (Vec::new(), Vec::new());
            for (h, y) in seg.h.chunks(hs).zip(seg.ys.iter_mut()) {
                if let Some(y) = y.as_deref_mut() {
                    hs_in.push(h);
                    ys_in.push(y);
                }
            }
            if let Some(a) = seg.rows.first() {
                expand(be.simd, &a.m, out, 0, &hs_in, &mut ys_in);
            }
        };
        // Runs of segments per task, about two tasks per thread: each segment's weights are
        // asked for while the one before it computes, which a run of one segment cannot do
        // (four tasks per thread gave 8 adapters on 2 threads runs of one); the second task
        // per thread leaves some room for balance.
        let per_task = segs.len().div_ceil(threads * 2).max(1);
        be.pool.install(|| {
            segs.par_chunks_mut(per_task).for_each(|run_of| {
                if let Some(first) = run_of.first() {
                    fetch(first);
                }
                for i in 0..run_of.len() {
                    if let Some(next) = run_of.get(i + 1) {
                        fetch(next);
                    }
                    run(&mut run_of[i]);
                }
            })
        });
        return;
    }

    // Few segments: the shrink over active rows, then the expand over (segment, column range)
    // tasks, each its own parallel region when the call is large.
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
    let cw = if parallel {
        let parts = (threads * 4).div_ceil(seg_bounds.len()).max(1);
        (out.div_ceil(parts).div_ceil(8) * 8).max(MIN_COLS)
    } else {
        out.div_ceil(8) * 8
    };
    let nchunks = out.div_ceil(cw);
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
        expand(be.simd, &task.m, out, task.col0, &task.hs, &mut task.ys);
    };
    if parallel {
        be.pool.install(|| tasks.par_iter_mut().for_each(run));
    } else {
        tasks.iter_mut().for_each(run);
    }
}

/// Asks the cache for every line of `w`: a module's weights about to be read once, from
/// memory when many adapters share the step, so that their misses overlap instead of arriving
/// one short stream at a time (A is read 8 rows at a time, rows of `in` values). A hint only.
fn prefetch(w: ArenaWeights<'_>) {
    side_stream::prefetch_all(bytes(w), false);
}

/// The stored bytes of `w`.
fn bytes(w: ArenaWeights<'_>) -> &[u8] {
    match w {
        ArenaWeights::F32(v) => bytemuck::cast_slice(v),
        ArenaWeights::Bf16(v) => bytemuck::cast_slice(v),
    }
}

/// A stored weight type the kernels read: f32, or bf16 (widened exactly).
trait Weight: Copy + Into<f32> {
    /// Lanes `0..n` (`1 <= n <= 8`) from `p`, the others zero.
    ///
    /// # Safety
    /// AVX2 must be available (inlined into the kernels, which check it); `p .. p + n` readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load(p: *const Self, n: usize) -> std::arch::x86_64::__m256;
}

impl Weight for f32 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load(p: *const f32, n: usize) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: AVX2 (the contract); 8 readable values when n == 8, else maskload touches
        // lanes `< n` only.
        unsafe {
            if n >= 8 {
                _mm256_loadu_ps(p)
            } else {
                _mm256_maskload_ps(p, kernels::mask(n))
            }
        }
    }
}

impl Weight for half::bf16 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load(p: *const half::bf16, n: usize) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: AVX2 (the contract); 16 readable bytes when n == 8, else the `n` readable
        // values are copied to a zeroed local first. bf16 is f32's upper half: zero-extend to
        // 32 bits and shift left 16.
        unsafe {
            let v = if n >= 8 {
                _mm_loadu_si128(p as *const __m128i)
            } else {
                let mut tail = [0u16; 8];
                std::ptr::copy_nonoverlapping(p as *const u16, tail.as_mut_ptr(), n.min(8));
                _mm_loadu_si128(tail.as_ptr() as *const __m128i)
            };
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
        }
    }
}

/// `$f` applied to the weights of `$w` ([`ArenaWeights`]) as a slice of their stored type.
macro_rules! with_weights {
    ($w:expr, |$v:ident| $f:expr) => {
        match $w {
            ArenaWeights::F32($v) => $f,
            ArenaWeights::Bf16($v) => $f,
        }
    };
}

/// `h[k] = A[k] · x` for `k < rank`; `h[rank..]` is zeroed. `x.len()` is the module's `in`.
fn shrink(simd: bool, x: &[f32], a: ArenaWeights<'_>, rank: usize, h: &mut [f32]) {
    with_weights!(a, |a| shrink_in(simd, x, a, rank, h))
}

/// [`shrink`] on weights of one stored type.
fn shrink_in<W: Weight>(simd: bool, x: &[f32], a: &[W], rank: usize, h: &mut [f32]) {
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
        *hk = row.iter().zip(x).fold(0f32, |s, (&w, v)| s + w.into() * v);
    }
}

/// `ys[i][j] += scale * sum_k hs[i][k] * Bᵀ[k, col0 + j]` for every row `i` of a segment
/// (`m.b` is `Bᵀ [r, out]`).
fn expand(
    simd: bool,
    m: &ArenaModule<'_>,
    out: usize,
    col0: usize,
    hs: &[&[f32]],
    ys: &mut [&mut [f32]],
) {
    with_weights!(m.b, |bt| expand_in(
        simd, bt, m.rank, m.scale, out, col0, hs, ys
    ))
}

/// [`expand`] on `Bᵀ` of one stored type.
#[allow(clippy::too_many_arguments)]
fn expand_in<W: Weight>(
    simd: bool,
    bt: &[W],
    r: usize,
    scale: f32,
    out: usize,
    col0: usize,
    hs: &[&[f32]],
    ys: &mut [&mut [f32]],
) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: as in `shrink_in`; the kernel bounds-checks its slices.
        unsafe { kernels::expand(bt, r, out, scale, col0, hs, ys) };
        return;
    }
    let _ = simd;
    for (h, y) in hs.iter().zip(ys.iter_mut()) {
        for (j, yv) in y.iter_mut().enumerate() {
            let o = col0 + j;
            let mut d = 0f32;
            for k in 0..r {
                let (Some(&hk), Some(&b)) = (h.get(k), bt.get(k * out + o)) else {
                    return;
                };
                d += hk * b.into();
            }
            *yv += scale * d;
        }
    }
}

/// AVX2/FMA kernels (x86_64 only; callers check the CPU features at runtime).
#[cfg(target_arch = "x86_64")]
mod kernels {
    use std::arch::x86_64::*;

    use super::Weight;

    /// `-1` lanes followed by `0` lanes: loading 8 lanes at `8 - n` gives a mask of the first `n`.
    static MASK: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

    /// A mask selecting the first `n` (1..=8) lanes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) fn mask(n: usize) -> __m256i {
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
    unsafe fn shrink_group<const K: usize, W: Weight>(
        x: *const f32,
        a: *const W,
        inp: usize,
    ) -> __m256 {
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i + 8 <= inp {
            // SAFETY: i + 8 <= inp; see the function's contract.
            let xv = unsafe { _mm256_loadu_ps(x.add(i)) };
            for (j, aj) in acc.iter_mut().enumerate().take(K) {
                // SAFETY: row j < K of the group has inp readable values, i + 8 <= inp; AVX2.
                let av = unsafe { W::load(a.add(j * inp + i), 8) };
                *aj = _mm256_fmadd_ps(av, xv, *aj);
            }
            i += 8;
        }
        if i < inp {
            let n = inp - i;
            // SAFETY: maskload only touches the lanes selected by the mask, all below inp.
            let xv = unsafe { _mm256_maskload_ps(x.add(i), mask(n)) };
            for (j, aj) in acc.iter_mut().enumerate().take(K) {
                // SAFETY: as above, for row j < K: the `n` values left are readable.
                let av = unsafe { W::load(a.add(j * inp + i), n) };
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
    pub(super) unsafe fn shrink<W: Weight>(x: &[f32], a: &[W], rank: usize, h: &mut [f32]) {
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
            // SAFETY: every arm reads rows k0 .. k0 + K of A with K <= rank - k0 (the `_` arm
            // only for rank - k0 >= 8), all inside `a` (checked `a.len() >= rank * inp`), and
            // the inp values of x; AVX2/FMA are available (this function's contract).
            let v = unsafe {
                match rank - k0 {
                    1 => shrink_group::<1, W>(xp, ap, inp),
                    2 => shrink_group::<2, W>(xp, ap, inp),
                    3 => shrink_group::<3, W>(xp, ap, inp),
                    4 => shrink_group::<4, W>(xp, ap, inp),
                    5 => shrink_group::<5, W>(xp, ap, inp),
                    6 => shrink_group::<6, W>(xp, ap, inp),
                    7 => shrink_group::<7, W>(xp, ap, inp),
                    _ => shrink_group::<8, W>(xp, ap, inp),
                }
            };
            // SAFETY: k0 + 8 <= groups * 8 <= h.len().
            unsafe { _mm256_storeu_ps(h.as_mut_ptr().add(k0), v) };
        }
    }

    /// One row's `V` vectors of 8 columns: `acc = fma(h[k], Bᵀ[k, c..c+8], acc)` for
    /// `k < r`, then `y = fma(scale, acc, y)`.
    ///
    /// # Safety
    /// `bt + k*out + v*8 .. + 8` readable for `k < r`, `v < V`; `y .. y + 8V` writable;
    /// `h .. h + r` readable.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn expand_cols<const V: usize, W: Weight>(
        bt: *const W,
        out: usize,
        r: usize,
        h: *const f32,
        sv: __m256,
        y: *mut f32,
    ) {
        let mut acc = [_mm256_setzero_ps(); V];
        for k in 0..r {
            // SAFETY: k < r; see the contract.
            let hk = unsafe { _mm256_broadcast_ss(&*h.add(k)) };
            for (v, a) in acc.iter_mut().enumerate() {
                // SAFETY: see the contract.
                let b = unsafe { W::load(bt.add(k * out + v * 8), 8) };
                *a = _mm256_fmadd_ps(hk, b, *a);
            }
        }
        for (v, a) in acc.iter().enumerate() {
            // SAFETY: y .. y + 8V is writable.
            unsafe {
                let yp = y.add(v * 8);
                _mm256_storeu_ps(yp, _mm256_fmadd_ps(sv, *a, _mm256_loadu_ps(yp)));
            }
        }
    }

    /// `ys[i][j] += scale * sum_k hs[i][k] * Bᵀ[k, col0 + j]` (`bt` is `Bᵀ [r, out]`), 32 then
    /// 8 columns at a time, the last `< 8` columns with scalar fused multiply-adds (the same
    /// operations as one vector lane).
    ///
    /// # Safety
    /// AVX2 and FMA must be available. Slice sizes are checked: rows whose `h` is shorter than
    /// `r`, or whose columns exceed `out` or `bt`, are skipped.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn expand<W: Weight>(
        bt: &[W],
        r: usize,
        out: usize,
        scale: f32,
        col0: usize,
        hs: &[&[f32]],
        ys: &mut [&mut [f32]],
    ) {
        if !matches!(r.checked_mul(out), Some(n) if n <= bt.len()) {
            return;
        }
        let sv = _mm256_set1_ps(scale);
        let ncols = ys.iter().map(|y| y.len()).max().unwrap_or(0);
        if !matches!(col0.checked_add(ncols), Some(e) if e <= out) {
            return;
        }
        // SAFETY: col0 <= out, so the pointer stays inside (or one past) row 0 of Bᵀ.
        let bt0 = unsafe { bt.as_ptr().add(col0) };
        let mut j0 = 0;
        while j0 < ncols {
            let w = if j0 + 32 <= ncols {
                32
            } else if j0 + 8 <= ncols {
                8
            } else {
                ncols - j0
            };
            for (h, y) in hs.iter().zip(ys.iter_mut()) {
                if h.len() < r || y.len() < j0 + w {
                    continue;
                }
                // SAFETY: in every arm, columns col0 + j0 .. + w of Bᵀ row k < r are inside `bt`
                // (`r * out <= bt.len()` and `col0 + ncols <= out` checked above), y has j0 + w
                // values and h has r values (checked just above); AVX2/FMA are available.
                unsafe {
                    let (b, yp) = (bt0.add(j0), y.as_mut_ptr().add(j0));
                    match w {
                        32 => expand_cols::<4, W>(b, out, r, h.as_ptr(), sv, yp),
                        8 => expand_cols::<1, W>(b, out, r, h.as_ptr(), sv, yp),
                        _ => {
                            for c in 0..w {
                                let mut acc = 0f32;
                                for (k, &hk) in h.iter().enumerate().take(r) {
                                    acc = hk.mul_add((*b.add(k * out + c)).into(), acc);
                                }
                                *yp.add(c) = scale.mul_add(acc, *yp.add(c));
                            }
                        }
                    }
                }
            }
            j0 += w;
        }
    }
}
