//! bf16 × bf16 matmul on AMX tiles (`tdpbf16ps`) for bf16 weights, on x86_64 CPUs with
//! AMX-TILE and AMX-BF16 whose OS grants the process the tile state (Linux
//! `arch_prctl(ARCH_REQ_XCOMP_PERM)`; [`available`] asks once and is false when refused).
//!
//! The activations are the A operand: bf16 bits (rounded as for every bf16 weight) in their
//! own row-major `[rows, kp]` layout, rows padded with zeros to a multiple of 16, each A tile
//! (16 activation rows × 32 columns) loaded in place with the rows' stride. The weight is the
//! B operand: its [`Layout::AmxTiles`](super::weight::Layout) storage is a sequence of 1 KiB
//! tiles in the pair-interleaved ("VNNI") form, one per 16 weight rows and 32-column chunk, row
//! `p` holding, for each of the 16 weight rows, columns `2p` and `2p + 1`; loaded as they lie.
//! A C tile then holds `[16 activation rows, 16 weight rows]`, a block of the output `y`
//! (`[rows, out]`): a whole tile is stored straight into `y`'s rows, a partial one (at the
//! edges) through L1. Threads split the weight rows and write their own columns.
//!
//! Each output element is `tdpbf16ps` applied to its weight row and activation row, one
//! instruction per 32-column chunk in increasing `k`, from a zeroed accumulator; products of two
//! bf16 values are exact, and the instruction's internal summation (not documented bit for bit;
//! it flushes denormal inputs and outputs to zero) depends only on the two rows. So a row's
//! result is the same whatever else is in the call, whichever tile slot it lands in, and on
//! every thread; it differs from the other bf16 paths' sums in the last bits (tested against
//! the reference within its tolerance).
//!
//! Register use: C tiles `tmm0..tmm3` (activation-tile pair × weight-tile pair), A tiles
//! `tmm4`, `tmm5`, B tiles `tmm6`, `tmm7`; every tile is 16 rows × 64 bytes.

use std::arch::asm;
use std::sync::OnceLock;

/// Rows of every tile.
const TR: usize = 16;
/// bf16 columns of a chunk (one 64-byte tile row of the weight).
pub(crate) const TK: usize = 32;
/// bf16 values per tile (1 KiB).
const TILE: usize = TR * TK;
/// Bytes between tile rows, as the loads and stores use them.
const STRIDE: usize = 64;

/// Whether the AMX kernels can run: the CPU has AMX-TILE and AMX-BF16 (CPUID leaf 7) and the
/// OS granted this process the tile data state. Asked once per process; the grant, once given,
/// holds for every thread.
pub(crate) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| cpu_has_amx_bf16() && request_tile_state())
}

/// Whether the AMX int8 kernel (`quant/amx_int8.rs`) can run: the CPU has AMX-TILE and
/// AMX-INT8 and the OS granted the tile data state (asked once, as for [`available`]).
pub(crate) fn available_int8() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| cpu_has(1 << 25) && request_tile_state())
}

/// CPUID leaf 7, sub-leaf 0: EDX bit 22 (AMX-BF16) and bit 24 (AMX-TILE).
fn cpu_has_amx_bf16() -> bool {
    cpu_has(1 << 22)
}

/// Whether CPUID leaf 7, sub-leaf 0 reports AMX-TILE (EDX bit 24) and the EDX bits of `bits`.
fn cpu_has(bits: u32) -> bool {
    if std::arch::x86_64::__cpuid(0).eax < 7 {
        return false;
    }
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    let want = bits | (1 << 24);
    edx & want == want
}

/// Asks Linux for the AMX tile data state (`XFEATURE_XTILEDATA`, 18) for this process; without
/// the grant the first tile instruction faults.
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM takes two integers and touches no memory of
    // ours; it returns 0 or -1 (EINVAL/ENOMEM/EPERM when the kernel or CPU refuses).
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    r == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// Values of the activations of a call of `rows` rows `ldx` apart: the rows padded with zeros to
/// a multiple of 16 (whole A tiles).
pub(crate) fn padded_acts_len(rows: usize, ldx: usize) -> usize {
    rows.div_ceil(TR) * TR * ldx
}

/// The activations' row stride (values) for `kp` columns: one cache line more than `kp`, so
/// that the 16 rows of an A tile do not fall in a few L1 sets when a row is a multiple of 1 or
/// 4 KiB (measured: with 2048-column rows 4 KiB apart, the 1B-shape bf16 prefill of 512 tokens
/// ran about 20 % slower).
pub(crate) fn act_stride(kp: usize) -> usize {
    kp + TK
}

/// One call: `y[t][o0 + j] = dot(x[t], w[o0 + j])` for `j < n`, `t < rows`, with `x` the
/// activations' bf16 bits (row `t` at `x[t * act_stride(kp)..][..kp]`, rows padded to
/// [`padded_acts_len`]) and `w` the weight in the AMX tile layout (`kp` columns).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AmxCall<'a> {
    pub x: &'a [u16],
    pub rows: usize,
    pub kp: usize,
    pub w: &'a [u16],
    /// First weight row (a multiple of 16).
    pub o0: usize,
    pub n: usize,
}

impl AmxCall<'_> {
    /// Whether the call's reads stay inside `x` and `w`.
    fn reads_fit(&self) -> bool {
        let tiles_w = (self.o0 + self.n).div_ceil(TR);
        self.kp.is_multiple_of(TK)
            && self.o0.is_multiple_of(TR)
            && tiles_w
                .checked_mul(TR * self.kp)
                .is_some_and(|l| l <= self.w.len())
            && padded_acts_len(self.rows, act_stride(self.kp)) <= self.x.len()
    }
}

/// A tile configuration (`ldtilecfg`'s 64 bytes): palette 1 and each tile's shape. Shared by
/// the bf16 kernel here and the int8 kernel of the quantized matmul.
#[repr(C, align(64))]
pub(crate) struct TileConfig([u8; 64]);

impl TileConfig {
    /// Tile `t` (`tmm{t}`) shaped `shapes[t]` = (rows, bytes per row); (0, 0) leaves it
    /// unconfigured.
    pub(crate) fn new(shapes: [(u8, u8); 8]) -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for (t, (rows, colsb)) in shapes.into_iter().enumerate() {
            c[16 + 2 * t] = colsb;
            c[48 + t] = rows;
        }
        Self(c)
    }

    /// The bf16 kernel's configuration: the 8 tiles of 16 rows × 64 bytes.
    fn all_16x64() -> Self {
        Self::new([(TR as u8, STRIDE as u8); 8])
    }

    /// Loads the configuration into this thread's tile state.
    ///
    /// # Safety
    /// AMX-TILE available with the OS's grant of the tile state ([`available`] or
    /// [`available_int8`] returned true).
    pub(crate) unsafe fn load(&self) {
        // SAFETY: the caller's contract; the configuration is 64 readable bytes.
        unsafe { asm!("ldtilecfg [{}]", in(reg) self.0.as_ptr(), options(nostack, readonly)) };
    }

    /// Releases this thread's tile state (`tilerelease`).
    ///
    /// # Safety
    /// As [`TileConfig::load`].
    pub(crate) unsafe fn release() {
        // SAFETY: the caller's contract; registers only.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// A C tile as stored: `[16 weight rows][16 activation rows]`.
#[repr(C, align(64))]
struct CTile([[f32; TR]; TR]);

/// Runs `call` into the rows of `y` (`y[t * ldo + o0 + j]` for `t < rows`, `j < n`; the other
/// columns of each row are left alone). Fills `y` with NaN when the call does not fit its slices
/// or `o0 + n > ldo`.
///
/// # Safety
/// As [`block_rows`].
pub(crate) unsafe fn block_rows(call: &AmxCall<'_>, y: &mut [f32], ldo: usize) {
    let rows_out = RowsOut {
        ptr: y.as_mut_ptr(),
        len: y.len(),
        ldo,
    };
    if !rows_out.fits(call) {
        return y.iter_mut().for_each(|v| *v = f32::NAN);
    }
    // SAFETY: the caller's contract; `rows_out` is `y`, borrowed exclusively for this call.
    unsafe { tiles_into(call, rows_out) };
}

/// [`block_rows`] for every weight row of `w` (`out` rows), split across `pool` into ranges of
/// `cw` rows (a multiple of 32: whole weight tile pairs) that each task writes straight into its
/// columns of `y` (`[rows, out]`), so that the threads stream distinct weights. Fills `y` with
/// NaN when the call does not fit its slices.
///
/// # Safety
/// As [`block_rows`].
pub(crate) unsafe fn par_block_rows(
    pool: &rayon::ThreadPool,
    call: &AmxCall<'_>,
    cw: usize,
    y: &mut [f32],
) {
    use rayon::prelude::*;
    let out = call.n;
    let rows_out = RowsOut {
        ptr: y.as_mut_ptr(),
        len: y.len(),
        ldo: out,
    };
    if call.o0 != 0 || !cw.is_multiple_of(2 * TR) || !rows_out.fits(call) {
        return y.iter_mut().for_each(|v| *v = f32::NAN);
    }
    pool.install(|| {
        (0..out.div_ceil(cw.max(1))).into_par_iter().for_each(|i| {
            let o0 = i * cw;
            let part = AmxCall {
                o0,
                n: cw.min(out - o0),
                ..*call
            };
            // SAFETY: the caller's contract; `rows_out` is `y`, borrowed exclusively for this
            // call, and each task writes only its own columns `o0 .. o0 + n` (disjoint ranges)
            // of each row; `part` lies inside `call` (whose `o0` is 0), which fits.
            unsafe { tiles_into(&part, rows_out) };
        });
    });
}

/// A `[rows, ldo]` f32 output seen through its pointer, so that the tasks of one call can each
/// write their own columns of every row at once (never the same element).
#[derive(Debug, Clone, Copy)]
struct RowsOut {
    ptr: *mut f32,
    len: usize,
    ldo: usize,
}

// SAFETY: a `RowsOut` is made from a `&mut [f32]` that outlives every task given it, and the
// tasks sharing one write disjoint columns ([`par_block_rows`]).
unsafe impl Send for RowsOut {}
// SAFETY: as `Send`; the tasks only write through the pointer, each its own elements.
unsafe impl Sync for RowsOut {}

impl RowsOut {
    /// Whether `call`'s reads fit its slices and its results (rows `< rows`, columns
    /// `o0 .. o0 + n`) lie inside the output.
    fn fits(&self, call: &AmxCall<'_>) -> bool {
        call.reads_fit()
            && call.o0 + call.n <= self.ldo
            && call
                .rows
                .checked_mul(self.ldo)
                .is_some_and(|l| l <= self.len)
    }
}

/// The tile loop of a call: every C tile (activation rows `t0 ..`, weight rows `o0 + j0 ..`)
/// computed and written into `y`'s rows.
///
/// # Safety
/// As [`block_rows`]; `y.fits(call)`, `y` valid for writes and no other thread touching the
/// elements of `call`'s columns.
unsafe fn tiles_into(call: &AmxCall<'_>, y: RowsOut) {
    let chunks = call.kp / TK;
    let (wt, xt) = (call.n.div_ceil(TR), call.rows.div_ceil(TR));
    // Bytes between an A tile's rows: one activation row.
    let ldx = act_stride(call.kp);
    let sx = ldx * 2;
    // SAFETY: AMX is available (the caller's contract).
    unsafe { TileConfig::all_16x64().load() };
    let w_tile = |t: usize, c: usize| (call.o0 / TR + t) * call.kp * TR + c * TILE;
    let x_tile = |m: usize, c: usize| m * TR * ldx + c * TK;
    let mut ct = CTile([[0.0; TR]; TR]);
    for a in (0..wt).step_by(2) {
        let two_w = a + 1 < wt;
        for b in (0..xt).step_by(2) {
            let two_x = b + 1 < xt;
            // SAFETY: AMX configured above; registers only.
            unsafe {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                )
            };
            for c in 0..chunks {
                // Tile starts: `reads_fit` bounds every weight tile of rows `< o0 + n` rounded
                // up to 16 (TILE values each) and every activation row `< rows` rounded up to
                // 16 (`ldx` values each; an A tile reads 32 of the first kp from 16 rows).
                let a0 = call.x[x_tile(b, c)..].as_ptr();
                let b0 = call.w[w_tile(a, c)..].as_ptr();
                let a1 = if two_x {
                    call.x[x_tile(b + 1, c)..].as_ptr()
                } else {
                    a0
                };
                let b1 = if two_w {
                    call.w[w_tile(a + 1, c)..].as_ptr()
                } else {
                    b0
                };
                // The tiles of a later chunk into L1: the activations are re-read for every
                // weight pair and the weight pair's tiles do not stay in L1 between activation
                // pairs, so both come from L2, and a tile load waits for all its lines.
                if c + PREFETCH < chunks {
                    prefetch_tile(call.x[x_tile(b, c + PREFETCH)..].as_ptr(), sx);
                    prefetch_tile(call.w[w_tile(a, c + PREFETCH)..].as_ptr(), STRIDE);
                    if two_x {
                        prefetch_tile(call.x[x_tile(b + 1, c + PREFETCH)..].as_ptr(), sx);
                    }
                    if two_w {
                        prefetch_tile(call.w[w_tile(a + 1, c + PREFETCH)..].as_ptr(), STRIDE);
                    }
                }
                // SAFETY: the A pointers start 16 rows of 64 bytes `sx` apart inside `x`, the
                // B pointers whole 1 KiB tiles inside `w` (above); the C tiles stay in
                // registers.
                unsafe { step(a0, a1, b0, b1, two_x, two_w, sx) };
            }
            // C tile `tmm{2 * i + j}`: activation tile `b + i`, weight tile `a + j`.
            for i in 0..1 + two_x as usize {
                for j in 0..1 + two_w as usize {
                    let (t0, j0) = ((b + i) * TR, (a + j) * TR);
                    let (tn, jn) = (TR.min(call.rows - t0), TR.min(call.n - j0));
                    let at = t0 * y.ldo + call.o0 + j0;
                    if tn == TR && jn == TR {
                        // SAFETY: the tile's 16 rows of 16 values, `ldo` apart from `at`, lie
                        // inside `y` (`y.fits(call)`: `t0 + 16 <= rows`, `o0 + j0 + 16 <= o0 +
                        // n <= ldo`) and are this call's alone; AMX configured above.
                        unsafe { store(2 * i + j, y.ptr.add(at), y.ldo * 4) };
                        continue;
                    }
                    // SAFETY: AMX configured above; `ct` is 16 rows of STRIDE bytes.
                    unsafe { store(2 * i + j, ct.0.as_mut_ptr().cast(), STRIDE) };
                    for (t, row) in ct.0.iter().enumerate().take(tn) {
                        // SAFETY: as above, for the `tn` rows and `jn` columns that exist.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                row.as_ptr(),
                                y.ptr.add(at + t * y.ldo),
                                jn,
                            )
                        };
                    }
                }
            }
        }
    }
    // SAFETY: releases the tile state configured above.
    unsafe { TileConfig::release() };
}

/// Chunks ahead of the one being multiplied whose tiles [`tiles_into`] asks L1 for (measured: 2
/// to 20 % more throughput at 32 to 512 rows, kernel_bench and the bench's prefill).
const PREFETCH: usize = 2;

/// Asks L1 for the 16 rows (cache lines) of the tile at `p`, `stride` bytes apart. A hint: it
/// reads nothing and cannot fault.
#[inline(always)]
fn prefetch_tile(p: *const u16, stride: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for r in 0..TR {
        // SAFETY: `prefetcht0` never faults and reads no memory architecturally; SSE is part
        // of x86_64's baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((p as *const i8).wrapping_add(r * stride)) };
    }
}

/// One chunk of the 2 × 2 tile block (fewer when `two_a` / `two_b` are false: the missing
/// operand's loads and products are skipped): A tiles at `a0`, `a1` (16 rows of 64 bytes, `sa`
/// bytes apart), B tiles at `b0`, `b1` (1 KiB each), `tmm{2i + j}` += A `i` × B `j`.
///
/// The loads interleave with the products: tile registers are not renamed, so a load waits for
/// every product still reading its register, and loading an operand just before its first
/// product lets the next chunk's loads run under this chunk's last products (the calibration
/// loop with loads: ~1.14× the throughput of four loads then four products). Each C tile sees
/// the same products in the same order either way.
///
/// # Safety
/// AMX configured ([`TileConfig::all_16x64`]); each pointer starts 16 readable rows of 64
/// bytes, `sa` (A) or 64 (B) bytes apart.
#[inline(always)]
unsafe fn step(
    a0: *const u16,
    a1: *const u16,
    b0: *const u16,
    b1: *const u16,
    two_a: bool,
    two_b: bool,
    sa: usize,
) {
    // SAFETY: the caller's contract; each load reads 16 rows of 64 bytes from its pointer.
    unsafe {
        match (two_a, two_b) {
            (true, true) => asm!(
                "tileloadd tmm4, [{a0} + {sa}]",
                "tileloadd tmm6, [{b0} + {s}]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {s}]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {sa}]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                sa = in(reg) sa, s = in(reg) STRIDE,
                options(nostack, readonly)
            ),
            (true, false) => asm!(
                "tileloadd tmm4, [{a0} + {sa}]",
                "tileloadd tmm6, [{b0} + {s}]",
                "tileloadd tmm5, [{a1} + {sa}]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm2, tmm5, tmm6",
                a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0,
                sa = in(reg) sa, s = in(reg) STRIDE,
                options(nostack, readonly)
            ),
            (false, true) => asm!(
                "tileloadd tmm4, [{a0} + {sa}]",
                "tileloadd tmm6, [{b0} + {s}]",
                "tileloadd tmm7, [{b1} + {s}]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                a0 = in(reg) a0, b0 = in(reg) b0, b1 = in(reg) b1,
                sa = in(reg) sa, s = in(reg) STRIDE,
                options(nostack, readonly)
            ),
            (false, false) => asm!(
                "tileloadd tmm4, [{a0} + {sa}]",
                "tileloadd tmm6, [{b0} + {s}]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                a0 = in(reg) a0, b0 = in(reg) b0,
                sa = in(reg) sa, s = in(reg) STRIDE,
                options(nostack, readonly)
            ),
        }
    }
}

/// Stores C tile `tmm{t}` (`t < 4`): 16 rows of 16 f32 from `p`, `stride` bytes apart.
///
/// # Safety
/// AMX configured; `t < 4`; the 16 rows of 64 bytes writable.
#[inline(always)]
unsafe fn store(t: usize, p: *mut f32, stride: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        match t {
            0 => {
                asm!("tilestored [{p} + {s}], tmm0", p = in(reg) p, s = in(reg) stride, options(nostack))
            }
            1 => {
                asm!("tilestored [{p} + {s}], tmm1", p = in(reg) p, s = in(reg) stride, options(nostack))
            }
            2 => {
                asm!("tilestored [{p} + {s}], tmm2", p = in(reg) p, s = in(reg) stride, options(nostack))
            }
            _ => {
                asm!("tilestored [{p} + {s}], tmm3", p = in(reg) p, s = in(reg) stride, options(nostack))
            }
        }
    }
}

/// The calibration loops of `peak.rs`: `iters` × 12 `tdpbf16ps` (four independent
/// accumulators, so the instruction's latency is hidden), each 16 × 16 × 32 multiply-adds; with
/// `loads`, as 3 × the kernel's 2 × 2 [`step`] (its four operand tiles loaded with `tileloadd`
/// before each four products, from 4 KiB that stay in L1), without, on operand tiles loaded
/// once. Returns the sum of one accumulator tile (depends on every step).
///
/// # Safety
/// [`available`] must have returned true.
pub(crate) unsafe fn peak_loop(iters: u64, loads: bool) -> f32 {
    let ones = vec![0x3f80u16; 4 * TILE];
    let p = ones.as_ptr();
    let mut ct = CTile([[0.0; TR]; TR]);
    // SAFETY: AMX available (the caller's contract); `ones` holds four 1 KiB tiles, each read as
    // 16 rows of STRIDE bytes; `ct` one tile written the same way.
    unsafe {
        TileConfig::all_16x64().load();
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "tileloadd tmm4, [{p} + {s}]",
            "tileloadd tmm6, [{p} + {s}]",
            p = in(reg) p, s = in(reg) STRIDE,
            options(nostack, readonly)
        );
        let (a0, a1, b0, b1) = (p, p.add(TILE), p.add(2 * TILE), p.add(3 * TILE));
        for _ in 0..iters {
            if loads {
                step(a0, a1, b0, b1, true, true, STRIDE);
                step(a0, a1, b0, b1, true, true, STRIDE);
                step(a0, a1, b0, b1, true, true, STRIDE);
                continue;
            }
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm6",
                "tdpbf16ps tmm2, tmm4, tmm6",
                "tdpbf16ps tmm3, tmm4, tmm6",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm6",
                "tdpbf16ps tmm2, tmm4, tmm6",
                "tdpbf16ps tmm3, tmm4, tmm6",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm6",
                "tdpbf16ps tmm2, tmm4, tmm6",
                "tdpbf16ps tmm3, tmm4, tmm6",
                options(nostack, nomem)
            );
        }
        store(0, ct.0.as_mut_ptr().cast(), STRIDE);
        TileConfig::release();
    }
    ct.0.iter().flatten().sum()
}
