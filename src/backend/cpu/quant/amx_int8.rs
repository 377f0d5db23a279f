//! The AMX int8 path of the quantized matmul: the exact integer half-block dot products of 16
//! weight rows × 16 activation rows at once on AMX tiles (`tdpbusd`), then the twin's float
//! combine and 8-lane accumulation in AVX-512, one 16-lane vector per weight row holding its
//! 16 activation rows. Each output element goes through the same IEEE operations in the same
//! order as the twin's (`reference::quant_dot`), so the results are bitwise the twin's, as on
//! every other path, and a row's result does not depend on the rows around it.
//!
//! Layout:
//! - weights: a panel of 16 consecutive weight rows of one type with a register unpacker
//!   (`superblock.rs`) is unpacked once per task into `A` tiles: block `b` is 16 rows × 32
//!   bytes (the unsigned form of the VNNI path, `q + 2^k` where the type is signed), whose two
//!   16-byte halves are the `A` operands of the block's two half products; its parameters
//!   are kept per row and block for the combine. Other rows (a panel that would straddle a
//!   type change, the last `< 16` rows, types decoded by the twin's decoder) go through the
//!   AVX-512 VNNI row kernels, which compute the same bits.
//! - activations ([`TileActs`], once per call): per group of 16 activation rows and block, 8
//!   rows of 64 bytes, row `i` holding bytes `4i..4i+4` of the block for each of the 16 rows:
//!   rows 0-3 are the `B` tile of the first half, rows 4-7 of the second. Scales and half sums
//!   per group and block as 16-lane vectors.
//!
//! Tiles, two configurations loaded per panel as its type needs:
//! - types whose halves share a scale (all but Q6_K): one product per block, `A` = the block's
//!   16 rows × 32 bytes (`tmm2`), `B` = its 8 rows × 64 bytes (`tmm4`), `C` in `tmm0` (even
//!   blocks) or `tmm1` (odd);
//! - Q6_K (a scale per half): two products per block, `A` = the halves' 16 rows × 16 bytes
//!   (`tmm2`, `tmm3`, read with a 32-byte stride), `B` = 4 rows × 64 bytes each (`tmm4`,
//!   `tmm5`), `C` in `tmm0`/`tmm1` (even blocks) or `tmm6`/`tmm7` (odd).
//!
//! The products of block `b + 1` are issued before block `b`'s combine, so the tile unit runs
//! while the vector units combine.
//!
//! Below 24 activation rows ([`super::AMX_MIN_ROWS`]) calls keep to the VNNI kernels: a group
//! of 16 rows costs the tile products and the 16-lane combine whatever number of its rows are
//! present (measured, 2048 × 2048 Q5_0 at 8 rows: 0.5× the VNNI kernels; at 32 rows 1.5–2×).
use std::arch::asm;
use std::arch::x86_64::*;

use super::super::amx::TileConfig;
use super::dot_x86::{prep_vnni, task_avx512vnni};
use super::lanes::{prescale, transpose8};
use super::superblock::*;
use super::{Decoded, Task};
use crate::backend::reference::quant_block::QBLOCK;
use crate::backend::reference::quant_dot::QActs;

/// Rows of a tile: weight rows per panel, activation rows per group.
pub(super) const TR: usize = 16;
/// Bytes of one block of one group in [`TileActs::x`] (8 rows of 64 bytes).
const XBLOCK: usize = 8 * 64;

/// A call's activations in the tile form (see the module docs); owned, reused across calls.
#[derive(Debug, Default)]
pub(in crate::backend::cpu) struct TileActs {
    /// Activation rows.
    rows: usize,
    /// Blocks per row.
    nb: usize,
    /// Group `G`, block `b`: `XBLOCK` bytes at `(G * nb + b) * XBLOCK` (zero past `rows`).
    x: Vec<i8>,
    /// Group `G`, block `b`, row `n`: at `(G * nb + b) * 16 + n` the activation block's scale
    /// and half sums (zero past `rows`).
    d: Vec<f32>,
    s0: Vec<i32>,
    s1: Vec<i32>,
}

impl TileActs {
    /// Rewrites the first `rows` rows of `a` (`rows <= a`'s rows, checked by the caller's
    /// `Task::fits`; rows past what `a` holds are left zero).
    pub(super) fn pack(&mut self, a: &QActs, rows: usize) {
        let (cols, nb) = (a.cols, a.nb);
        let groups = rows.div_ceil(TR);
        self.rows = rows;
        self.nb = nb;
        self.x.clear();
        self.x.resize(groups * nb * XBLOCK, 0);
        self.d.clear();
        self.d.resize(groups * nb * TR, 0.0);
        for v in [&mut self.s0, &mut self.s1] {
            v.clear();
            v.resize(groups * nb * TR, 0);
        }
        for t in 0..rows.min(a.q.len() / cols.max(1)) {
            let (g, n) = (t / TR, t % TR);
            let src = &a.q[t * cols..(t + 1) * cols];
            for (b, blk) in src.chunks_exact(QBLOCK).enumerate() {
                let base = (g * nb + b) * XBLOCK + 4 * n;
                for (i, word) in blk.chunks_exact(4).enumerate() {
                    self.x[base + 64 * i..][..4].copy_from_slice(word);
                }
                let at = (g * nb + b) * TR + n;
                self.d[at] = a.d[t * nb + b];
                self.s0[at] = a.s0[t * nb + b];
                self.s1[at] = a.s1[t * nb + b];
            }
        }
    }

    /// Whether the tile form holds `rows` rows of `nb` blocks.
    fn holds(&self, rows: usize, nb: usize) -> bool {
        let len = rows.div_ceil(TR) * nb;
        self.rows >= rows
            && self.nb == nb
            && self.x.len() >= len * XBLOCK
            && self.d.len() >= len * TR
            && self.s0.len() >= len * TR
            && self.s1.len() >= len * TR
    }
}

/// One panel of 16 weight rows unpacked (see the module docs): `a` block `b` at `b * 512`
/// (row `r` at `+ 32 r`); the parameters of row `r`, block `b` at `r * nbp + b`.
struct Panel {
    nbp: usize,
    a: Vec<u8>,
    d: Vec<f32>,
    dm: Vec<f32>,
    /// The integer scales and mins as f32 (exact: they are below 2^8), for the forms with a
    /// scale per half; equal-halves forms carry theirs in `d` and `dm` (`prescale`).
    isc: [Vec<f32>; 2],
    imin: [Vec<f32>; 2],
}

impl Panel {
    fn new(nb: usize) -> Self {
        let nbp = nb.div_ceil(SB_BLOCKS) * SB_BLOCKS;
        Self {
            nbp,
            a: vec![0; nbp * TR * QBLOCK],
            d: vec![0.0; TR * nbp],
            dm: vec![0.0; TR * nbp],
            isc: [vec![0.0; TR * nbp], vec![0.0; TR * nbp]],
            imin: [vec![0.0; TR * nbp], vec![0.0; TR * nbp]],
        }
    }
}

/// A tile configuration of the module docs: `halves` (types with a scale per 16-element
/// half) or whole blocks.
fn tile_config(halves: bool) -> TileConfig {
    // (rows, bytes per row) of tmm0..tmm7.
    TileConfig::new(if halves {
        [
            (16, 64),
            (16, 64),
            (16, 16),
            (16, 16),
            (4, 64),
            (4, 64),
            (16, 64),
            (16, 64),
        ]
    } else {
        [
            (16, 64),
            (16, 64),
            (16, 32),
            (0, 0),
            (8, 64),
            (0, 0),
            (0, 0),
            (0, 0),
        ]
    })
}

/// Two C tiles as stored: `[16 weight rows][16 activation rows]` each.
#[repr(C, align(64))]
struct CTiles([[[i32; TR]; TR]; 2]);

/// The AMX path of a task: `yt` (`[n, rows]`) for weight rows `o0 ..` (see the module docs);
/// NaN when the task does not fit its buffers.
///
/// # Safety
/// The CPU must have the AVX-512 VNNI path's features (AVX2, F16C, AVX-512F/VL/BW/VNNI) and
/// `amx::available_int8()` must have returned true.
#[target_feature(enable = "avx2,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) unsafe fn task_amx(t: &Task<'_>, acts: &TileActs, dec: &mut Decoded, yt: &mut [f32]) {
    let (w, rows, nb) = (t.w, t.rows, t.a.nb);
    let n = yt.len() / rows.max(1);
    if !t.fits(dec) || t.xt.is_empty() || !acts.holds(rows, nb) {
        yt.iter_mut().for_each(|v| *v = f32::NAN);
        return;
    }
    let (halves, whole) = (tile_config(true), tile_config(false));
    // The configuration loaded (none yet).
    let mut loaded: Option<bool> = None;
    let mut panel = Panel::new(nb);
    // Rows `pend .. j` wait for the VNNI row kernels.
    let (mut pend, mut j) = (0, 0);
    let vnni = |from: usize, to: usize, dec: &mut Decoded, yt: &mut [f32]| {
        if from < to {
            let sub = Task {
                o0: t.o0 + from,
                ..*t
            };
            // SAFETY: the caller's contract includes the VNNI path's features.
            unsafe { task_avx512vnni(&sub, dec, &mut yt[from * rows..to * rows]) };
        }
    };
    while j < n {
        let Some(code) = panel_code(t, j, n) else {
            j += 1;
            continue;
        };
        vnni(pend, j, dec, yt);
        let mut bytes: [&[u8]; TR] = [&[]; TR];
        for (r, b) in bytes.iter_mut().enumerate() {
            *b = w.row(t.o0 + j + r).map_or(&[][..], |(_, b)| b);
        }
        // SAFETY: this function's features; `panel_code` checked 16 whole rows of `code`'s
        // type (rows of `a.cols` elements: `fits` checked the stack's columns).
        let form =
            unsafe { by_code!(code, T_IQ4NL, |C| unpack_panel::<C>(&bytes, nb, &mut panel)) };
        let out = &mut yt[j * rows..(j + TR) * rows];
        let split = !form.equal_halves;
        if loaded != Some(split) {
            // SAFETY: AMX int8 is available (the caller's contract).
            unsafe {
                if split {
                    halves.load()
                } else {
                    whole.load()
                }
            };
            loaded = Some(split);
        }
        for g in 0..rows.div_ceil(TR) {
            // SAFETY: tiles configured above; `acts.holds` covers group `g`'s blocks, the
            // panel holds `nb` blocks of 16 rows; this function's features.
            unsafe {
                match (form.min, form.equal_halves) {
                    (false, true) => group::<false, true>(&panel, form, acts, g, out),
                    (true, true) => group::<true, true>(&panel, form, acts, g, out),
                    (false, false) => group::<false, false>(&panel, form, acts, g, out),
                    (true, false) => group::<true, false>(&panel, form, acts, g, out),
                }
            }
        }
        j += TR;
        pend = j;
    }
    vnni(pend, n, dec, yt);
    if loaded.is_some() {
        // SAFETY: releases the tile state configured above.
        unsafe { TileConfig::release() };
    }
}

/// The type code of weight rows `o0 + j .. o0 + j + 16` of the task when they form a panel:
/// 16 rows present, of one type with a register unpacker.
fn panel_code(t: &Task<'_>, j: usize, n: usize) -> Option<u8> {
    if j + TR > n {
        return None;
    }
    let (ty, _) = t.w.row(t.o0 + j)?;
    let code = row_code(ty, t.steps);
    let same = (1..TR).all(|r| matches!(t.w.row(t.o0 + j + r), Some((u, _)) if u == ty));
    (code != T_DECODED && same).then_some(code)
}

/// Unpacks 16 rows of type code `TY` (`nb` blocks each) into `p`; returns their form (as the
/// VNNI path holds it: unsigned).
///
/// # Safety
/// The features of [`task_amx`]; every row is a whole row of `nb` blocks of the type.
#[target_feature(enable = "avx2,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
#[inline(never)]
unsafe fn unpack_panel<const TY: u8>(rows: &[&[u8]; TR], nb: usize, p: &mut Panel) -> Form {
    let nbp = p.nbp;
    let mut form = FORM_SIGNED_UNIT;
    for (r, &bytes) in rows.iter().enumerate() {
        let row = RowRef {
            bytes,
            dq: &[],
            dp: &[],
            dform: FORM_SIGNED_UNIT,
        };
        for g in 0..nb.div_ceil(SB_BLOCKS) {
            let k = (nb - g * SB_BLOCKS).min(SB_BLOCKS);
            // SAFETY: this function's features; whole rows (the caller's contract); the
            // stores write 32 bytes at `a[(8g + jb) * 512 + 32 r..]` (`8g + jb < nbp`) and 8
            // values at `r * nbp + 8g` (`8g + 8 <= nbp`) of buffers sized by `Panel::new`.
            unsafe {
                let (mut s, f) = unpack::<TY, true>(row, g, k);
                if is_steps(TY) {
                    // The panel holds blocks (the transpose is its own inverse).
                    s.v = transpose8(s.v);
                }
                let (sb, f) = prep_vnni(s, f);
                // Equal-halves forms carry their integer scales in `d` and `dm` (see
                // `prescale`): `group` then skips the two multiplications.
                let sb = prescale(sb, f);
                form = f;
                for jb in 0..k {
                    let at = (g * SB_BLOCKS + jb) * TR * QBLOCK + r * QBLOCK;
                    _mm256_storeu_si256(p.a[at..at + 32].as_mut_ptr() as *mut __m256i, sb.v[jb]);
                }
                let at = r * nbp + g * SB_BLOCKS;
                _mm256_storeu_ps(p.d[at..at + 8].as_mut_ptr(), sb.d);
                _mm256_storeu_ps(p.dm[at..at + 8].as_mut_ptr(), sb.dm);
                // Only the scale-per-half forms read the integer scales (`group`).
                for h in (0..2).filter(|_| !f.equal_halves) {
                    let dst = p.isc[h][at..at + 8].as_mut_ptr();
                    _mm256_storeu_ps(dst, _mm256_cvtepi32_ps(sb.isc[h]));
                    let dst = p.imin[h][at..at + 8].as_mut_ptr();
                    _mm256_storeu_ps(dst, _mm256_cvtepi32_ps(sb.imin[h]));
                }
            }
        }
    }
    form
}

/// Activation group `g` (rows `16 g ..`) against the panel: writes `out[r * rows + 16 g + n]`
/// for the group's rows present (`out` is the panel's `[16, rows]` part of `yt`). `MIN` is
/// `form.min`; `EQ`: one scale per block (equal halves or unit scales), carried by the panel's
/// `d` and `dm` (see `prescale`).
///
/// # Safety
/// The features of [`task_amx`], tiles configured by it; `acts` holds group `g`, `p` the
/// panel's `acts.nb` blocks.
#[target_feature(enable = "avx2,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
#[inline(never)]
unsafe fn group<const MIN: bool, const EQ: bool>(
    p: &Panel,
    form: Form,
    acts: &TileActs,
    g: usize,
    out: &mut [f32],
) {
    let (rows, nb, nbp) = (acts.rows, acts.nb, p.nbp);
    let mut acc = [[_mm512_setzero_ps(); SB_BLOCKS]; TR];
    let mut c = CTiles([[[0; TR]; TR]; 2]);
    let shift = _mm_cvtsi32_si128(form.off_shift.unwrap_or(0));
    // The tile products of block `b` into C tiles `tmm0`/`tmm1` (even `b`) or `tmm6`/`tmm7`
    // (odd `b`): issued one block ahead, so that they run while the vector units combine the
    // block before.
    let issue = |b: usize| {
        // SAFETY: the caller's contract: `acts` holds `(g * nb + b)`'s XBLOCK bytes, the
        // panel block `b` (16 rows of 32 bytes at `b * 512`); registers otherwise.
        unsafe {
            let x = acts.x[(g * nb + b) * XBLOCK..][..XBLOCK].as_ptr();
            let a = p.a[b * TR * QBLOCK..][..TR * QBLOCK].as_ptr();
            macro_rules! products {
                ($c0:literal, $c1:literal) => {
                    asm!(
                        concat!("tilezero ", $c0),
                        concat!("tilezero ", $c1),
                        "tileloadd tmm2, [{a} + {s32}]",
                        "tileloadd tmm3, [{a16} + {s32}]",
                        "tileloadd tmm4, [{x} + {s64}]",
                        "tileloadd tmm5, [{x256} + {s64}]",
                        concat!("tdpbusd ", $c0, ", tmm2, tmm4"),
                        concat!("tdpbusd ", $c1, ", tmm3, tmm5"),
                        a = in(reg) a,
                        a16 = in(reg) a.add(16),
                        x = in(reg) x,
                        x256 = in(reg) x.add(256),
                        s32 = in(reg) 32usize,
                        s64 = in(reg) 64usize,
                        options(nostack, readonly)
                    )
                };
            }
            // Whole blocks: one product of 16 rows × 32 bytes by 8 rows × 64 bytes.
            macro_rules! whole {
                ($c:literal) => {
                    asm!(
                        concat!("tilezero ", $c),
                        "tileloadd tmm2, [{a} + {s32}]",
                        "tileloadd tmm4, [{x} + {s64}]",
                        concat!("tdpbusd ", $c, ", tmm2, tmm4"),
                        a = in(reg) a,
                        x = in(reg) x,
                        s32 = in(reg) 32usize,
                        s64 = in(reg) 64usize,
                        options(nostack, readonly)
                    )
                };
            }
            match (EQ, b.is_multiple_of(2)) {
                (false, true) => products!("tmm0", "tmm1"),
                (false, false) => products!("tmm6", "tmm7"),
                (true, true) => whole!("tmm0"),
                (true, false) => whole!("tmm1"),
            }
        }
    };
    if nb > 0 {
        issue(0);
    }
    for b in 0..nb {
        let at = (g * nb + b) * TR;
        // SAFETY: the caller's contract: `acts` holds 16 values per vector at `at`; `c` is two
        // tiles of 16 rows of 64 bytes.
        unsafe {
            let cp = c.0.as_mut_ptr();
            if EQ {
                let c0 = cp;
                if b.is_multiple_of(2) {
                    asm!("tilestored [{c0} + {s64}], tmm0", c0 = in(reg) c0, s64 = in(reg) 64usize, options(nostack));
                } else {
                    asm!("tilestored [{c0} + {s64}], tmm1", c0 = in(reg) c0, s64 = in(reg) 64usize, options(nostack));
                }
            } else if b.is_multiple_of(2) {
                asm!(
                    "tilestored [{c0} + {s64}], tmm0",
                    "tilestored [{c1} + {s64}], tmm1",
                    c0 = in(reg) cp, c1 = in(reg) cp.add(1), s64 = in(reg) 64usize,
                    options(nostack)
                );
            } else {
                asm!(
                    "tilestored [{c0} + {s64}], tmm6",
                    "tilestored [{c1} + {s64}], tmm7",
                    c0 = in(reg) cp, c1 = in(reg) cp.add(1), s64 = in(reg) 64usize,
                    options(nostack)
                );
            }
            if b + 1 < nb {
                issue(b + 1);
            }
            let dx = _mm512_loadu_ps(acts.d[at..at + TR].as_ptr());
            let s0 = _mm512_loadu_si512(acts.s0[at..at + TR].as_ptr() as *const __m512i);
            let s1 = _mm512_loadu_si512(acts.s1[at..at + TR].as_ptr() as *const __m512i);
            let (o0, o1) = (_mm512_sll_epi32(s0, shift), _mm512_sll_epi32(s1, shift));
            let o01 = _mm512_sll_epi32(_mm512_add_epi32(s0, s1), shift);
            let (s0f, s1f) = (_mm512_cvtepi32_ps(s0), _mm512_cvtepi32_ps(s1));
            let s01f = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
            let lane = b % SB_BLOCKS;
            for (r, acc) in acc.iter_mut().enumerate() {
                let pa = r * nbp + b;
                // The twin's `f32(P)`, `f32(M)`: products and sums of integers whose
                // magnitudes stay below 2^24 (the twin's bound), so computing them in f32 from
                // the exact conversions gives the same values as converting the integers.
                let pf = if EQ {
                    // The whole block's dot (both halves share the scale).
                    let mut h = _mm512_loadu_si512(c.0[0][r].as_ptr() as *const __m512i);
                    if form.off_shift.is_some() {
                        h = _mm512_sub_epi32(h, o01);
                    }
                    // `d` carries the block's scale (`prescale`, in `unpack_panel`).
                    _mm512_cvtepi32_ps(h)
                } else {
                    let mut h0 = _mm512_loadu_si512(c.0[0][r].as_ptr() as *const __m512i);
                    let mut h1 = _mm512_loadu_si512(c.0[1][r].as_ptr() as *const __m512i);
                    if form.off_shift.is_some() {
                        h0 = _mm512_sub_epi32(h0, o0);
                        h1 = _mm512_sub_epi32(h1, o1);
                    }
                    _mm512_add_ps(
                        _mm512_mul_ps(_mm512_set1_ps(p.isc[0][pa]), _mm512_cvtepi32_ps(h0)),
                        _mm512_mul_ps(_mm512_set1_ps(p.isc[1][pa]), _mm512_cvtepi32_ps(h1)),
                    )
                };
                let mut tv = _mm512_mul_ps(_mm512_set1_ps(p.d[pa]), pf);
                if MIN {
                    let mf = if EQ {
                        // `dm` carries the block's min scale (`prescale`).
                        s01f
                    } else {
                        _mm512_add_ps(
                            _mm512_mul_ps(_mm512_set1_ps(p.imin[0][pa]), s0f),
                            _mm512_mul_ps(_mm512_set1_ps(p.imin[1][pa]), s1f),
                        )
                    };
                    tv = _mm512_add_ps(tv, _mm512_mul_ps(_mm512_set1_ps(p.dm[pa]), mf));
                }
                acc[lane] = _mm512_add_ps(acc[lane], _mm512_mul_ps(dx, tv));
            }
        }
    }
    // The twin's lane tree, then the group's rows present.
    let present = (rows - g * TR).min(TR);
    let mask: __mmask16 = if present == TR {
        !0
    } else {
        (1u16 << present) - 1
    };
    for (r, l) in acc.iter().enumerate() {
        let y = &mut out[r * rows + g * TR..][..present];
        // SAFETY: this function's features; the masked store writes `present` floats of `y`.
        unsafe {
            let s = _mm512_add_ps(
                _mm512_add_ps(_mm512_add_ps(l[0], l[4]), _mm512_add_ps(l[2], l[6])),
                _mm512_add_ps(_mm512_add_ps(l[1], l[5]), _mm512_add_ps(l[3], l[7])),
            );
            _mm512_mask_storeu_ps(y.as_mut_ptr(), mask, s);
        }
    }
}
