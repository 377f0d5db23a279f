//! Super-blocks: 8 consecutive 32-element blocks of one weight row (one K-quant block, or 8
//! blocks of a 32-element type) unpacked into vector registers for the vector paths, straight
//! from the ggml bytes: block `j`'s 32 values in one 256-bit vector and its parameters in lane
//! `j` of the parameter vectors. The integers are those of the twin's decoders
//! ([`crate::backend::reference::quant_block`]), possibly in an offset form (see [`Form`]), so
//! the paths compute the twin's exact integer products.
//!
//! Each unpacker takes exactly one super-block's bytes (the caller cuts them with
//! `chunks_exact`, so the length is checked once); types without an unpacker here go through
//! [`from_decoded`], which reads the twin's decoded row.
//!
//! # Safety
//! Every `unsafe fn` here only requires AVX2 and F16C: they are plain `#[inline(always)]`
//! functions (not `#[target_feature]`, which cannot be forced inline) so that they inline into
//! the vector path functions of `dot_x86.rs`, whose target features include both and are
//! checked at runtime before any of them runs. Memory accesses are bounded as each notes.

use std::arch::x86_64::*;

use crate::backend::reference::quant_block::{q3_k_scales, BlockParams};

/// Blocks per super-block: one per 32-bit lane of a 256-bit vector.
pub(super) const SB_BLOCKS: usize = 8;
/// Elements per super-block.
pub(super) const SB_ELEMS: usize = 256;

/// How a super-block's values relate to the twin's `i8` values `q`, and which combine terms
/// its type has. The flags only select cheaper exact integer forms of the same numbers.
#[derive(Clone, Copy, Debug)]
pub(super) struct Form {
    /// Values are the twin's signed `q`; otherwise unsigned `u = q + 2^off_shift` (or `u = q`).
    pub signed: bool,
    /// `log2` of the offset of unsigned values (`q = u - 2^off_shift`).
    pub off_shift: Option<i32>,
    /// The type has min terms (`dm * imin`).
    pub min: bool,
    /// `isc[0] == isc[1]` and `imin[0] == imin[1]` in every block.
    pub equal_halves: bool,
    /// `isc == 1` in every block.
    pub unit: bool,
    /// How many `vpmaddubsw` results (each an `i16` pair sum of value times activation,
    /// `|x| <= 127`) an `i16` lane can add up exactly: `32767 / (2 · 127 · max |value|)`,
    /// capped at 4 (a half's steps). 4 for values up to 31, 2 up to 63, 1 for signed `i8`
    /// values (up to 128). The AVX2 path sums that many in `i16` before widening.
    pub i16_sums: usize,
}

/// One super-block (see the module docs). Lanes past the blocks present are zero.
#[derive(Clone, Copy)]
pub(super) struct Sb {
    /// Block `j`'s values (`i8` or `u8`, see [`Form`]).
    pub v: [__m256i; SB_BLOCKS],
    /// Lane `j`: block `j`'s `d`.
    pub d: __m256,
    /// Lane `j`: block `j`'s `dm`.
    pub dm: __m256,
    /// Lane `j`: block `j`'s `isc[0]`, `isc[1]`.
    pub isc: [__m256i; 2],
    /// Lane `j`: block `j`'s `imin[0]`, `imin[1]`.
    pub imin: [__m256i; 2],
}

/// Q4_K / Q5_K: unsigned values, mins, one scale per block.
pub(super) const FORM_K4: Form = Form {
    signed: false,
    off_shift: None,
    min: true,
    equal_halves: true,
    unit: false,
    i16_sums: 4,
};
/// Q6_K: `u = q + 32`, a scale per half.
pub(super) const FORM_Q6K: Form = Form {
    signed: false,
    off_shift: Some(5),
    min: false,
    equal_halves: false,
    unit: false,
    i16_sums: 2,
};
/// Q4_0: `u = q + 8`, unit scales.
pub(super) const FORM_Q4_0: Form = Form {
    signed: false,
    off_shift: Some(3),
    min: false,
    equal_halves: true,
    unit: true,
    i16_sums: 4,
};
/// Q5_0: `u = q + 16`, unit scales.
pub(super) const FORM_Q5_0: Form = Form {
    signed: false,
    off_shift: Some(4),
    min: false,
    equal_halves: true,
    unit: true,
    i16_sums: 4,
};
/// Q4_1 / Q5_1: unsigned values, unit scales and mins.
pub(super) const FORM_MIN_UNIT: Form = Form {
    signed: false,
    off_shift: None,
    min: true,
    equal_halves: true,
    unit: true,
    i16_sums: 4,
};
/// Q8_0 / IQ4_NL: signed values, unit scales.
pub(super) const FORM_SIGNED_UNIT: Form = Form {
    signed: true,
    off_shift: None,
    min: false,
    equal_halves: true,
    unit: true,
    i16_sums: 1,
};

/// IQ4_XS: signed values (the code book), one integer scale per block.
pub(super) const FORM_SIGNED: Form = Form {
    signed: true,
    off_shift: None,
    min: false,
    equal_halves: true,
    unit: false,
    i16_sums: 1,
};

/// Q2_K: unsigned 2-bit values, a scale and a min per half.
pub(super) const FORM_Q2K: Form = Form {
    signed: false,
    off_shift: None,
    min: true,
    equal_halves: false,
    unit: false,
    i16_sums: 4,
};
/// Q3_K: `u = q + 4`, a scale per half.
pub(super) const FORM_Q3K: Form = Form {
    signed: false,
    off_shift: Some(2),
    min: false,
    equal_halves: false,
    unit: false,
    i16_sums: 4,
};

/// The f16 at `b[at..at + 2]` as f32 (F16C; the caller guarantees `at + 2 <= b.len()`).
#[inline(always)]
unsafe fn f16_at(b: &[u8], at: usize) -> f32 {
    debug_assert!(at + 2 <= b.len());
    let bits = u16::from_le_bytes([b[at], b[at + 1]]);
    // SAFETY: F16C is available (module docs).
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))) }
}

/// 32 bytes at `b[at..]` (the caller guarantees `at + 32 <= b.len()`).
#[inline(always)]
unsafe fn load32(b: &[u8], at: usize) -> __m256i {
    debug_assert!(at + 32 <= b.len());
    // SAFETY: every caller passes `at + 32 <= b.len()` (fixed offsets inside a block of a
    // length checked by `chunks_exact`); loadu has no alignment requirement; AVX2 (module docs).
    unsafe { _mm256_loadu_si256(b.as_ptr().add(at) as *const __m256i) }
}

/// 16 bytes at `b[at..]` (the caller guarantees `at + 16 <= b.len()`).
#[inline(always)]
unsafe fn load16(b: &[u8], at: usize) -> __m128i {
    debug_assert!(at + 16 <= b.len());
    // SAFETY: as in `load32`, with 16 bytes.
    unsafe { _mm_loadu_si128(b.as_ptr().add(at) as *const __m128i) }
}

/// 8 bytes (little-endian in `v`) zero- or sign-extended to 8 `i32` lanes.
#[inline(always)]
unsafe fn bytes_to_lanes(v: u64, signed: bool) -> __m256i {
    // SAFETY: AVX2 (module docs); registers only.
    unsafe {
        let x = _mm_cvtsi64_si128(v as i64);
        if signed {
            _mm256_cvtepi8_epi32(x)
        } else {
            _mm256_cvtepu8_epi32(x)
        }
    }
}

/// The low nibbles of `v` (as bytes) and the high nibbles.
#[inline(always)]
unsafe fn split_nibbles(v: __m256i) -> (__m256i, __m256i) {
    // SAFETY: AVX2 (module docs); registers only.
    unsafe {
        let m = _mm256_set1_epi8(0x0F);
        (
            _mm256_and_si256(v, m),
            _mm256_and_si256(_mm256_srli_epi16::<4>(v), m),
        )
    }
}

/// A Q4_K / Q5_K block `b` (f16 `d`, `dmin` at 0 and 2, 12 bytes of packed 6-bit scales and
/// mins at 4; the same 16 bytes in either order) with values `v`: `get_scale_min_k4` for all 8
/// blocks at once, on 32-bit words.
#[inline(always)]
unsafe fn k4_sb(b: &[u8], v: [__m256i; SB_BLOCKS]) -> Sb {
    let word = |k: usize| u32::from_le_bytes([b[k], b[k + 1], b[k + 2], b[k + 3]]);
    let (u0, u1, u2) = (word(4), word(8), word(12));
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    // Blocks 0-3: 6 bits of bytes 0-3 (scales) and 4-7 (mins); blocks 4-7: a nibble of bytes
    // 8-11 plus the top 2 bits of bytes 0-3 (scales) or 4-7 (mins) as bits 4-5.
    let sc = (u0 & LOW6) as u64 | (((u2 & LOW4) | (((u0 >> 6) & LOW2) << 4)) as u64) << 32;
    let mn = (u1 & LOW6) as u64 | ((((u2 >> 4) & LOW4) | (((u1 >> 6) & LOW2) << 4)) as u64) << 32;
    // SAFETY: AVX2 and F16C (module docs); registers only.
    unsafe {
        let (isc, imin) = (bytes_to_lanes(sc, false), bytes_to_lanes(mn, false));
        // d and dmin converted together.
        let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(word(0) as i32));
        // `-dmin`: the sign bit flipped, as the twin's negation.
        let neg = _mm_xor_ps(dd, _mm_set1_ps(-0.0));
        Sb {
            v,
            d: _mm256_broadcastss_ps(dd),
            dm: _mm256_broadcastss_ps(_mm_shuffle_ps::<1>(neg, neg)),
            isc: [isc, isc],
            imin: [imin, imin],
        }
    }
}

/// One Q4_K block (144 bytes): block `2k` is the low nibbles of `qs[32k..]`, `2k+1` the high.
#[inline(always)]
pub(super) unsafe fn q4_k(b: &[u8]) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); `b` is 144 bytes, every offset below is inside it.
    unsafe {
        let mut v = [_mm256_setzero_si256(); SB_BLOCKS];
        for k in 0..4 {
            (v[2 * k], v[2 * k + 1]) = split_nibbles(load32(b, 16 + 32 * k));
        }
        k4_sb(b, v)
    }
}

/// The 128 bytes of step order at `b[at..at + 128]` (`step_order`) as the transposed
/// super-block: step `s` the low nibbles of the 32 bytes at `at + 32s`, step `s + 4` the high
/// ones.
#[inline(always)]
unsafe fn steps_at(b: &[u8], at: usize) -> [__m256i; SB_BLOCKS] {
    // SAFETY: AVX2 (module docs); the caller guarantees `b.len() >= at + 128`.
    unsafe {
        let mut v = [_mm256_setzero_si256(); SB_BLOCKS];
        for s in 0..4 {
            (v[s], v[s + 4]) = split_nibbles(load32(b, at + 32 * s));
        }
        v
    }
}

/// One Q4_K block (144 bytes) whose quant bytes are in the step order (`step_order`): `v`
/// holds the transposed super-block (`lanes::transpose8` of [`q4_k`]'s blocks, [`steps_at`]).
#[inline(always)]
pub(super) unsafe fn q4_k_steps(b: &[u8]) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); `b` is 144 bytes, every offset below is inside it.
    unsafe {
        let v = steps_at(b, 16);
        k4_sb(b, v)
    }
}

/// One Q5_K block (176 bytes): as Q4_K plus bit `j` of `qh[l]` as bit 4 of element `l` of
/// block `j`.
#[inline(always)]
pub(super) unsafe fn q5_k(b: &[u8]) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); `b` is 176 bytes, every offset below is inside it.
    unsafe {
        let qh = load32(b, 16);
        let bit4 = _mm256_set1_epi8(0x10);
        let mut v = [_mm256_setzero_si256(); SB_BLOCKS];
        for k in 0..4 {
            let (lo, hi) = split_nibbles(load32(b, 48 + 32 * k));
            // Bit 2k of qh moved to bit 4 (16-bit shifts; the mask drops what crossed bytes).
            let (hl, hh) = match k {
                0 => (_mm256_slli_epi16::<4>(qh), _mm256_slli_epi16::<3>(qh)),
                1 => (_mm256_slli_epi16::<2>(qh), _mm256_slli_epi16::<1>(qh)),
                2 => (qh, _mm256_srli_epi16::<1>(qh)),
                _ => (_mm256_srli_epi16::<2>(qh), _mm256_srli_epi16::<3>(qh)),
            };
            v[2 * k] = _mm256_or_si256(lo, _mm256_and_si256(hl, bit4));
            v[2 * k + 1] = _mm256_or_si256(hi, _mm256_and_si256(hh, bit4));
        }
        k4_sb(b, v)
    }
}

/// One Q6_K block (210 bytes) as `u = q + 32`: in half `n`, blocks `4n..4n+4` take the low
/// nibbles of `ql[64n..]`, of `ql[64n+32..]`, then the high nibbles, each with 2 bits of
/// `qh[32n..]` (bits 0-1, 2-3, 4-5, 6-7) as bits 4-5.
#[inline(always)]
pub(super) unsafe fn q6_k(b: &[u8]) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); `b` is 210 bytes, every offset below is inside it.
    unsafe {
        let mut v = [_mm256_setzero_si256(); SB_BLOCKS];
        for n in 0..2 {
            let (l0, h0) = split_nibbles(load32(b, 64 * n));
            let (l1, h1) = split_nibbles(load32(b, 64 * n + 32));
            let hb = q6_k_pairs(load32(b, 128 + 32 * n));
            for (k, lo) in [l0, l1, h0, h1].into_iter().enumerate() {
                v[4 * n + k] = _mm256_or_si256(lo, hb[k]);
            }
        }
        q6_k_sb(b, v)
    }
}

/// One Q5_K block (176 bytes) in the step order (`step_order`): its header, the fifth-bit
/// plane at 16, the quant bytes in step order at 48; `v` the transposed super-block.
#[inline(always)]
pub(super) unsafe fn q5_k_steps(b: &[u8]) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); `b` is 176 bytes, every offset below is inside it.
    unsafe {
        let mut v = steps_at(b, 48);
        add_plane(&mut v, load32(b, 16));
        k4_sb(b, v)
    }
}

/// The four bit pairs of each byte of `qh` (bits `2k..2k+2`, `k < 4`) as bits 4-5 of the byte.
#[inline(always)]
unsafe fn q6_k_pairs(qh: __m256i) -> [__m256i; 4] {
    // SAFETY: AVX2 (module docs); registers only.
    unsafe {
        let m2 = _mm256_set1_epi8(0x30);
        [
            _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m2),
            _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m2),
            _mm256_and_si256(qh, m2),
            _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2),
        ]
    }
}

/// One Q6_K block (210 bytes) in the step order (`step_order`) as `u = q + 32`, transposed:
/// step `s` the low nibbles of [`steps_at`] with bit pair `s % 4` of plane `s / 4`.
#[inline(always)]
pub(super) unsafe fn q6_k_steps(b: &[u8]) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); `b` is 210 bytes, every offset below is inside it.
    unsafe {
        let mut v = steps_at(b, 0);
        for h in 0..2 {
            let hb = q6_k_pairs(load32(b, 128 + 32 * h));
            for (k, hk) in hb.into_iter().enumerate() {
                v[4 * h + k] = _mm256_or_si256(v[4 * h + k], hk);
            }
        }
        q6_k_sb(b, v)
    }
}

/// A Q6_K block's parameters (its scales and `d`, at 192 and 208 in either order) with values
/// `v`.
#[inline(always)]
unsafe fn q6_k_sb(b: &[u8], v: [__m256i; SB_BLOCKS]) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); `b` is 210 bytes, every offset below is inside it.
    unsafe {
        // The 16 scales, even ones (first halves) then odd ones (second halves).
        let sc = _mm_shuffle_epi8(
            load16(b, 192),
            _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15),
        );
        let zero = _mm256_setzero_si256();
        Sb {
            v,
            d: _mm256_set1_ps(f16_at(b, 208)),
            dm: _mm256_setzero_ps(),
            isc: [
                _mm256_cvtepi8_epi32(sc),
                _mm256_cvtepi8_epi32(_mm_unpackhi_epi64(sc, sc)),
            ],
            imin: [zero, zero],
        }
    }
}

/// `d` of each of `n <= 8` blocks of `ts` bytes (f16 at the block start; the caller
/// guarantees `b.len() >= ts * n`); 0 past `n`.
#[inline(always)]
unsafe fn block_d(b: &[u8], ts: usize, n: usize) -> __m256 {
    // SAFETY: the caller's contract.
    unsafe { block_f16(b, ts, n, 0) }
}

/// The f16 at offset `at` of each of `n <= 8` blocks of `ts` bytes (the caller guarantees
/// `b.len() >= ts * n` and `at + 2 <= ts`); 0 past `n`.
#[inline(always)]
unsafe fn block_f16(b: &[u8], ts: usize, n: usize, at: usize) -> __m256 {
    // A plain loop: `array::from_fn`'s closure is not always inlined.
    let mut h = [0u16; SB_BLOCKS];
    for (j, hj) in h.iter_mut().enumerate().take(n) {
        *hj = u16::from_le_bytes([b[ts * j + at], b[ts * j + at + 1]]);
    }
    // SAFETY: `h` holds 8 u16 (16 bytes); loadu has no alignment requirement; F16C (module
    // docs).
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i)) }
}

/// Unit-scale parameters for `d` (no mins).
#[inline(always)]
unsafe fn unit_sb(v: [__m256i; SB_BLOCKS], d: __m256) -> Sb {
    // SAFETY: AVX2 (module docs); registers only.
    unsafe {
        let (one, zero) = (_mm256_set1_epi32(1), _mm256_setzero_si256());
        Sb {
            v,
            d,
            dm: _mm256_setzero_ps(),
            isc: [one, one],
            imin: [zero, zero],
        }
    }
}

/// The values of `$n <= 8` blocks, block `$j` from `$e`; zeros past `$n`. A macro, not a
/// function taking a closure: the closure would not inherit the callers' target features.
macro_rules! per_block {
    ($n:expr, |$j:ident| $e:expr) => {{
        let mut v = [_mm256_setzero_si256(); SB_BLOCKS];
        for ($j, vj) in v.iter_mut().enumerate().take($n) {
            *vj = $e;
        }
        v
    }};
}

/// `n <= 8` Q8_0 blocks (34 bytes each; the caller guarantees `b.len() >= 34 n`).
#[inline(always)]
pub(super) unsafe fn q8_0(b: &[u8], n: usize) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); block `j < n` spans `b[34 j..34 j + 34]`.
    unsafe {
        let v = per_block!(n, |j| load32(b, 34 * j + 2));
        unit_sb(v, block_d(b, 34, n))
    }
}

/// Eight Q8_0 blocks in the step order (272 bytes: the 8 `d`, then the 256 values in step
/// order, `step_order`), transposed: step `s` is the 32 bytes at `16 + 32s`.
#[inline(always)]
pub(super) unsafe fn q8_0_steps(b: &[u8]) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); `b` is the group's 272 bytes, every offset below
    // is inside them.
    unsafe {
        let mut v = [_mm256_setzero_si256(); SB_BLOCKS];
        for (s, vs) in v.iter_mut().enumerate() {
            *vs = load32(b, 16 + 32 * s);
        }
        unit_sb(v, _mm256_cvtph_ps(load16(b, 0)))
    }
}

/// The 32 nibbles of a Q4_0 / IQ4_NL block at `b[at..at + 16]` as bytes: low nibbles are
/// elements 0-15, high nibbles 16-31. The 16 bytes are loaded into both halves at once and
/// the high half shifted by 4 (a 32-bit shift: what crosses into a byte from its neighbour is
/// masked off), so no lane insert is needed.
#[inline(always)]
unsafe fn nibbles32(b: &[u8], at: usize) -> __m256i {
    // SAFETY: AVX2 (module docs); the caller guarantees `at + 16 <= b.len()`.
    unsafe {
        let q = _mm256_broadcastsi128_si256(load16(b, at));
        let q = _mm256_srlv_epi32(q, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
        _mm256_and_si256(q, _mm256_set1_epi8(0x0F))
    }
}

/// Step `s`'s fifth bits as bit 4 of each byte, from a fifth-bit plane `hv` (`step_order`:
/// bit `s` of each byte): a 16-bit shift by `4 - s` moves bit `s` of every byte to bit 4 of
/// the same byte (bits 8-15 land on 12, within the high byte), the mask drops the rest.
#[inline(always)]
unsafe fn plane_step(hv: __m256i, s: usize) -> __m256i {
    // SAFETY: AVX2 (module docs); registers only.
    unsafe {
        let v = match s {
            0 => _mm256_slli_epi16::<4>(hv),
            1 => _mm256_slli_epi16::<3>(hv),
            2 => _mm256_slli_epi16::<2>(hv),
            3 => _mm256_slli_epi16::<1>(hv),
            4 => hv,
            5 => _mm256_srli_epi16::<1>(hv),
            6 => _mm256_srli_epi16::<2>(hv),
            _ => _mm256_srli_epi16::<3>(hv),
        };
        _mm256_and_si256(v, _mm256_set1_epi8(0x10))
    }
}

/// Adds to the transposed super-block `v` its fifth bits from the plane `hv` (bit 4 of each
/// byte of step `s`: [`plane_step`]).
#[inline(always)]
unsafe fn add_plane(v: &mut [__m256i; SB_BLOCKS], hv: __m256i) {
    // SAFETY: AVX2 (module docs); registers only.
    unsafe {
        for (s, vs) in v.iter_mut().enumerate() {
            *vs = _mm256_or_si256(*vs, plane_step(hv, s));
        }
    }
}

/// Eight blocks of a 32-element type in the step order (`step_order`): `halves` f16 fields
/// per block (`d`, and `m` when 2), a fifth-bit plane when `fifth`, then the nibbles. Returns
/// the transposed super-block of the values (nibble + 16 · fifth bit), `d` and `m` (0 when
/// `halves == 1`).
#[inline(always)]
unsafe fn legacy_steps(b: &[u8], halves: usize, fifth: bool) -> ([__m256i; 8], __m256, __m256) {
    // SAFETY: AVX2 and F16C (module docs); the caller guarantees the group's
    // `16 halves + 32 fifth + 128` bytes, every offset below is inside them.
    unsafe {
        let d = _mm256_cvtph_ps(load16(b, 0));
        let m = if halves == 2 {
            _mm256_cvtph_ps(load16(b, 16))
        } else {
            _mm256_setzero_ps()
        };
        let plane = 16 * halves;
        let mut v = steps_at(b, plane + if fifth { 32 } else { 0 });
        if fifth {
            add_plane(&mut v, load32(b, plane));
        }
        (v, d, m)
    }
}

/// Eight Q4_0 blocks in the step order (144 bytes) as `u = q + 8`, `v` the transposed
/// super-block (`lanes::transpose8` of [`q4_0`]'s blocks).
#[inline(always)]
pub(super) unsafe fn q4_0_steps(b: &[u8]) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); `b` is the group's 144 bytes.
    unsafe {
        let (v, d, _) = legacy_steps(b, 1, false);
        unit_sb(v, d)
    }
}

/// Eight Q5_0 blocks in the step order (176 bytes) as `u = q + 16`, transposed.
#[inline(always)]
pub(super) unsafe fn q5_0_steps(b: &[u8]) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); `b` is the group's 176 bytes.
    unsafe {
        let (v, d, _) = legacy_steps(b, 1, true);
        unit_sb(v, d)
    }
}

/// Eight Q4_1 blocks in the step order (160 bytes), transposed.
#[inline(always)]
pub(super) unsafe fn q4_1_steps(b: &[u8]) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); `b` is the group's 160 bytes.
    unsafe {
        let (v, d, m) = legacy_steps(b, 2, false);
        min_unit_sb(v, d, m)
    }
}

/// Eight Q5_1 blocks in the step order (192 bytes), transposed.
#[inline(always)]
pub(super) unsafe fn q5_1_steps(b: &[u8]) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); `b` is the group's 192 bytes.
    unsafe {
        let (v, d, m) = legacy_steps(b, 2, true);
        min_unit_sb(v, d, m)
    }
}

/// `n <= 8` Q4_0 blocks (18 bytes each; `b.len() >= 18 n`) as `u = q + 8`.
#[inline(always)]
pub(super) unsafe fn q4_0(b: &[u8], n: usize) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); block `j < n` spans `b[18 j..18 j + 18]`.
    unsafe {
        let v = per_block!(n, |j| nibbles32(b, 18 * j + 2));
        unit_sb(v, block_d(b, 18, n))
    }
}

/// Bit `e` of the little-endian `u32` at `b[at..at + 4]` as bit 4 of byte `e` (the fifth bit
/// of element `e` of a Q5_0 / Q5_1 block).
#[inline(always)]
unsafe fn fifth_bits(b: &[u8], at: usize) -> __m256i {
    let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    // SAFETY: AVX2 (module docs); registers only.
    unsafe {
        // Byte e takes byte e / 8 of qh, then tests bit e % 8.
        let v = _mm256_shuffle_epi8(
            _mm256_set1_epi32(qh as i32),
            _mm256_setr_epi64x(
                0,
                0x0101_0101_0101_0101,
                0x0202_0202_0202_0202,
                0x0303_0303_0303_0303,
            ),
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }
}

/// [`nibbles32`] with the fifth bits of [`fifth_bits`] added, in the form of the paths with
/// AVX-512BW (`BW`): the 32 bits of `qh` go straight into a mask register and a masked byte
/// add sets bit 4 where they are set (two instructions instead of a shuffle, a compare and
/// three logic operations). The same bytes either way.
#[inline(always)]
unsafe fn nibbles32_fifth<const BW: bool>(b: &[u8], at: usize, qh_at: usize) -> __m256i {
    // SAFETY: AVX2 (module docs), and AVX-512BW/VL when `BW` (the paths instantiating it
    // with `BW` have those features); the caller guarantees `at + 16 <= b.len()` and
    // `qh_at + 4 <= b.len()`.
    unsafe {
        let nib = nibbles32(b, at);
        if BW {
            let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
            _mm256_mask_add_epi8(nib, _cvtu32_mask32(qh), nib, _mm256_set1_epi8(0x10))
        } else {
            _mm256_or_si256(nib, fifth_bits(b, qh_at))
        }
    }
}

/// `n <= 8` Q5_0 blocks (22 bytes each; `b.len() >= 22 n`) as `u = q + 16`.
#[inline(always)]
pub(super) unsafe fn q5_0<const BW: bool>(b: &[u8], n: usize) -> Sb {
    // SAFETY: AVX2 and F16C (module docs; AVX-512BW/VL when `BW`); block `j < n` spans
    // `b[22 j..22 j + 22]`.
    unsafe {
        let v = per_block!(n, |j| nibbles32_fifth::<BW>(b, 22 * j + 6, 22 * j + 2));
        unit_sb(v, block_d(b, 22, n))
    }
}

/// Parameters of unit-scale types with mins: `d` and `m` per block.
#[inline(always)]
unsafe fn min_unit_sb(v: [__m256i; SB_BLOCKS], d: __m256, m: __m256) -> Sb {
    // SAFETY: AVX2 (module docs); registers only.
    unsafe {
        let one = _mm256_set1_epi32(1);
        Sb {
            v,
            d,
            dm: m,
            isc: [one, one],
            imin: [one, one],
        }
    }
}

/// `n <= 8` Q5_1 blocks (24 bytes each; `b.len() >= 24 n`).
#[inline(always)]
pub(super) unsafe fn q5_1<const BW: bool>(b: &[u8], n: usize) -> Sb {
    // SAFETY: AVX2 and F16C (module docs; AVX-512BW/VL when `BW`); block `j < n` spans
    // `b[24 j..24 j + 24]`.
    unsafe {
        let v = per_block!(n, |j| nibbles32_fifth::<BW>(b, 24 * j + 8, 24 * j + 4));
        min_unit_sb(v, block_f16(b, 24, n, 0), block_f16(b, 24, n, 2))
    }
}

/// `n <= 8` Q4_1 blocks (20 bytes each; `b.len() >= 20 n`).
#[inline(always)]
pub(super) unsafe fn q4_1(b: &[u8], n: usize) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); block `j < n` spans `b[20 j..20 j + 20]`.
    unsafe {
        let v = per_block!(n, |j| nibbles32(b, 20 * j + 4));
        min_unit_sb(v, block_f16(b, 20, n, 0), block_f16(b, 20, n, 2))
    }
}

/// ggml's IQ4_NL / IQ4_XS code book.
const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The IQ4_NL code book in both 128-bit halves (for `vpshufb`).
#[inline(always)]
unsafe fn iq4_nl_table() -> __m256i {
    // SAFETY: AVX2 (module docs); the code book is 16 bytes.
    unsafe {
        let table = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
        _mm256_set_m128i(table, table)
    }
}

/// `n <= 8` IQ4_NL blocks (18 bytes each; `b.len() >= 18 n`): nibbles through the code book
/// (signed values).
#[inline(always)]
pub(super) unsafe fn iq4_nl(b: &[u8], n: usize) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); block `j < n` spans `b[18 j..18 j + 18]`.
    unsafe {
        let table = iq4_nl_table();
        let v = per_block!(n, |j| _mm256_shuffle_epi8(table, nibbles32(b, 18 * j + 2)));
        unit_sb(v, block_d(b, 18, n))
    }
}

/// Eight IQ4_NL blocks in the step order (144 bytes), transposed: each step's nibbles through
/// the code book.
#[inline(always)]
pub(super) unsafe fn iq4_nl_steps(b: &[u8]) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); `b` is the group's 144 bytes.
    unsafe {
        let (mut v, d, _) = legacy_steps(b, 1, false);
        let table = iq4_nl_table();
        for vs in v.iter_mut() {
            *vs = _mm256_shuffle_epi8(table, *vs);
        }
        unit_sb(v, d)
    }
}

/// An IQ4_XS block's parameters with values `v`: `d` (f16 at 0) and block `j`'s scale
/// `ls - 32`, `ls` the nibble `j % 2` of byte `4 + j / 2` with bits `2j..2j+2` of the `u16` at
/// 2 as bits 4-5 (the same 8 header bytes in either order).
#[inline(always)]
unsafe fn iq4_xs_sb(b: &[u8], v: [__m256i; SB_BLOCKS]) -> Sb {
    let sh = u16::from_le_bytes([b[2], b[3]]) as i32;
    let mut ls = [0i32; SB_BLOCKS];
    for (j, l) in ls.iter_mut().enumerate() {
        let sl = ((b[4 + j / 2] >> (4 * (j % 2))) & 0x0F) as i32;
        *l = (sl | (((sh >> (2 * j)) & 3) << 4)) - 32;
    }
    // SAFETY: AVX2 and F16C (module docs); `ls` holds 8 i32 (32 bytes), loadu has no
    // alignment requirement; `b` holds the block's 136 bytes.
    unsafe {
        let isc = _mm256_loadu_si256(ls.as_ptr() as *const __m256i);
        let zero = _mm256_setzero_si256();
        Sb {
            v,
            d: _mm256_set1_ps(f16_at(b, 0)),
            dm: _mm256_setzero_ps(),
            isc: [isc, isc],
            imin: [zero, zero],
        }
    }
}

/// Bits `2j..2j+2` of each byte of the 64 bytes at `b[at..]` (two vectors, `n = 0, 1`) as
/// block `4n + j`'s values: the 2-bit planes of Q2_K and Q3_K (16-bit shifts; the mask drops
/// what crossed bytes).
#[inline(always)]
unsafe fn two_bit_planes(b: &[u8], at: usize) -> [__m256i; SB_BLOCKS] {
    // SAFETY: AVX2 (module docs); the caller guarantees `b.len() >= at + 64`.
    unsafe {
        let m = _mm256_set1_epi8(3);
        let mut v = [_mm256_setzero_si256(); SB_BLOCKS];
        for n in 0..2 {
            let q = load32(b, at + 32 * n);
            v[4 * n] = _mm256_and_si256(q, m);
            v[4 * n + 1] = _mm256_and_si256(_mm256_srli_epi16::<2>(q), m);
            v[4 * n + 2] = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m);
            v[4 * n + 3] = _mm256_and_si256(_mm256_srli_epi16::<6>(q), m);
        }
        v
    }
}

/// 16 bytes, one per half-block (block `j`'s halves at `2j`, `2j + 1`), as the per-half lane
/// bytes: even bytes (first halves), then odd ones (second halves), each in the low 8 bytes.
#[inline(always)]
unsafe fn halves_of(sc: __m128i) -> (__m128i, __m128i) {
    // SAFETY: AVX2 (module docs); registers only.
    unsafe {
        let s = _mm_shuffle_epi8(
            sc,
            _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15),
        );
        (s, _mm_unpackhi_epi64(s, s))
    }
}

/// One Q2_K block (84 bytes): 16 scale bytes (low nibble the scale, high nibble the min, one
/// per 16 elements), 64 bytes of 2-bit values (block `4n + j` bits `2j..2j+2` of
/// `qs[32n..]`), f16 `d` and `dmin` at 80 and 82.
#[inline(always)]
pub(super) unsafe fn q2_k(b: &[u8]) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); `b` is 84 bytes, every offset below is inside it.
    unsafe {
        let v = two_bit_planes(b, 16);
        let (s0, s1) = halves_of(load16(b, 0));
        let lo = _mm_set1_epi8(0x0F);
        let isc = |s: __m128i| _mm256_cvtepu8_epi32(_mm_and_si128(s, lo));
        let imin = |s: __m128i| _mm256_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16::<4>(s), lo));
        Sb {
            v,
            d: _mm256_set1_ps(f16_at(b, 80)),
            // `-dmin`, as the twin's negation.
            dm: _mm256_set1_ps(-f16_at(b, 82)),
            isc: [isc(s0), isc(s1)],
            imin: [imin(s0), imin(s1)],
        }
    }
}

/// One Q3_K block (110 bytes) as `u = q + 4`: `hmask` (32 bytes; bit `4n + j` of byte `l` is
/// bit 2 of element `l` of block `4n + j`), 64 bytes of 2-bit values as Q2_K's, 12 bytes of
/// packed 6-bit scales (one per 16 elements, minus 32), f16 `d` at 108.
#[inline(always)]
pub(super) unsafe fn q3_k(b: &[u8]) -> Sb {
    // ggml's unpacking of the 16 scales (byte `s`: half-block `s`'s scale plus 32).
    let aux = q3_k_scales(b);
    // SAFETY: AVX2 and F16C (module docs); `b` is 110 bytes, every offset below is inside it;
    // `aux` is 16 bytes.
    unsafe {
        let mut v = two_bit_planes(b, 32);
        let hm = load32(b, 0);
        let bit2 = _mm256_set1_epi8(4);
        // Bit `k` of each byte of `hm` to bit 2 (16-bit shifts by at most 5 keep it within
        // its byte), then ored in.
        let hb = [
            _mm256_slli_epi16::<2>(hm),
            _mm256_slli_epi16::<1>(hm),
            hm,
            _mm256_srli_epi16::<1>(hm),
            _mm256_srli_epi16::<2>(hm),
            _mm256_srli_epi16::<3>(hm),
            _mm256_srli_epi16::<4>(hm),
            _mm256_srli_epi16::<5>(hm),
        ];
        for (vk, h) in v.iter_mut().zip(hb) {
            *vk = _mm256_or_si256(*vk, _mm256_and_si256(h, bit2));
        }
        let (s0, s1) = halves_of(_mm_loadu_si128(aux.as_ptr() as *const __m128i));
        let c = _mm256_set1_epi32(32);
        let isc = |s: __m128i| _mm256_sub_epi32(_mm256_cvtepu8_epi32(s), c);
        let zero = _mm256_setzero_si256();
        Sb {
            v,
            d: _mm256_set1_ps(f16_at(b, 108)),
            dm: _mm256_setzero_ps(),
            isc: [isc(s0), isc(s1)],
            imin: [zero, zero],
        }
    }
}

/// One IQ4_XS block (136 bytes: f16 `d`, the scales' high bits, their low nibbles, then 16
/// bytes of nibbles per 32-element block as Q4_0's): nibbles through the code book.
#[inline(always)]
pub(super) unsafe fn iq4_xs(b: &[u8]) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); `b` is 136 bytes, every offset below is inside it.
    unsafe {
        let table = iq4_nl_table();
        let v = per_block!(SB_BLOCKS, |j| _mm256_shuffle_epi8(
            table,
            nibbles32(b, 8 + 16 * j)
        ));
        iq4_xs_sb(b, v)
    }
}

/// One IQ4_XS block in the step order (`step_order`: its 128 bytes of nibbles at 8 in step
/// order), transposed: each step's nibbles through the code book.
#[inline(always)]
pub(super) unsafe fn iq4_xs_steps(b: &[u8]) -> Sb {
    // SAFETY: AVX2 and F16C (module docs); `b` is 136 bytes, every offset below is inside it.
    unsafe {
        let mut v = steps_at(b, 8);
        let table = iq4_nl_table();
        for vs in v.iter_mut() {
            *vs = _mm256_shuffle_epi8(table, *vs);
        }
        iq4_xs_sb(b, v)
    }
}

/// `n <= 8` blocks of a decoded row: `q` (`32 n` signed values) and `p` (`n` params), for the
/// types without an unpacker above (their [`Form`]: signed, general halves, `min` per type).
#[inline(always)]
pub(super) unsafe fn from_decoded(q: &[i8], p: &[BlockParams], n: usize) -> Sb {
    let n = n.min(SB_BLOCKS).min(p.len()).min(q.len() / 32);
    let (mut isc0, mut isc1, mut imin0, mut imin1) = ([0i32; 8], [0i32; 8], [0i32; 8], [0i32; 8]);
    let (mut d, mut dm) = ([0f32; 8], [0f32; 8]);
    for (j, pj) in p.iter().enumerate().take(n) {
        (isc0[j], isc1[j], imin0[j], imin1[j]) = (pj.isc[0], pj.isc[1], pj.imin[0], pj.imin[1]);
        (d[j], dm[j]) = (pj.d, pj.dm);
    }
    // SAFETY: AVX2 (module docs); block `j < n` spans `q[32 j..32 j + 32]` (`32 n <= q.len()`);
    // the arrays hold 8 values (32 bytes); loadu has no alignment requirement.
    unsafe {
        let mut v = [_mm256_setzero_si256(); SB_BLOCKS];
        for (j, vj) in v.iter_mut().enumerate().take(n) {
            *vj = _mm256_loadu_si256(q.as_ptr().add(32 * j) as *const __m256i);
        }
        let li = |a: &[i32; SB_BLOCKS]| _mm256_loadu_si256(a.as_ptr() as *const __m256i);
        Sb {
            v,
            d: _mm256_loadu_ps(d.as_ptr()),
            dm: _mm256_loadu_ps(dm.as_ptr()),
            isc: [li(&isc0), li(&isc1)],
            imin: [li(&imin0), li(&imin1)],
        }
    }
}

/// Type codes of the row kernels' const parameter (one monomorphic kernel per type).
pub(super) const T_Q4K: u8 = 0;
/// Q5_K.
pub(super) const T_Q5K: u8 = 1;
/// Q6_K.
pub(super) const T_Q6K: u8 = 2;
/// Q8_0.
pub(super) const T_Q8_0: u8 = 3;
/// Q4_0.
pub(super) const T_Q4_0: u8 = 4;
/// IQ4_NL.
pub(super) const T_IQ4NL: u8 = 5;
/// Q5_0.
pub(super) const T_Q5_0: u8 = 6;
/// Q5_1.
pub(super) const T_Q5_1: u8 = 7;
/// Q4_1.
pub(super) const T_Q4_1: u8 = 8;
/// Any other kernel type, read from the twin's decoded row ([`from_decoded`]).
pub(super) const T_DECODED: u8 = 9;
/// Q4_K in the step order ([`q4_k_steps`]: [`unpack`] gives the transposed super-block).
pub(super) const T_Q4K_STEPS: u8 = 10;
/// Q4_0 in the step order ([`q4_0_steps`]; [`unpack`] gives the transposed super-block).
pub(super) const T_Q4_0_STEPS: u8 = 11;
/// Q4_1 in the step order ([`q4_1_steps`]).
pub(super) const T_Q4_1_STEPS: u8 = 12;
/// Q5_0 in the step order ([`q5_0_steps`]).
pub(super) const T_Q5_0_STEPS: u8 = 13;
/// Q5_1 in the step order ([`q5_1_steps`]).
pub(super) const T_Q5_1_STEPS: u8 = 14;
/// IQ4_NL in the step order ([`iq4_nl_steps`]).
pub(super) const T_IQ4NL_STEPS: u8 = 15;
/// Q8_0 in the step order ([`q8_0_steps`]).
pub(super) const T_Q8_0_STEPS: u8 = 16;
/// Q6_K in the step order ([`q6_k_steps`]).
pub(super) const T_Q6K_STEPS: u8 = 17;
/// Q5_K in the step order ([`q5_k_steps`]).
pub(super) const T_Q5K_STEPS: u8 = 18;
/// IQ4_XS ([`iq4_xs`]).
pub(super) const T_IQ4XS: u8 = 19;
/// IQ4_XS in the step order ([`iq4_xs_steps`]).
pub(super) const T_IQ4XS_STEPS: u8 = 20;
/// Q2_K ([`q2_k`]).
pub(super) const T_Q2K: u8 = 21;
/// Q3_K ([`q3_k`]).
pub(super) const T_Q3K: u8 = 22;

/// Whether [`unpack`] gives the transposed super-block for type code `code` (the step order).
pub(super) const fn is_steps(code: u8) -> bool {
    matches!(
        code,
        T_Q4K_STEPS
            | T_Q5K_STEPS
            | T_Q6K_STEPS
            | T_Q4_0_STEPS
            | T_Q4_1_STEPS
            | T_Q5_0_STEPS
            | T_Q5_1_STEPS
            | T_IQ4NL_STEPS
            | T_IQ4XS_STEPS
            | T_Q8_0_STEPS
    )
}

/// Runs `$body` with the const `$c` set to `$code` (a type code, [`T_Q4K`] ...), so that
/// the body can name a monomorphic kernel (`row1::<C>`); codes not listed take `$other`.
macro_rules! by_code {
    ($code:expr, $other:expr, |$c:ident| $body:expr) => {{
        use $crate::backend::cpu::quant::superblock::*;
        macro_rules! with {
            ($t:expr) => {{
                const $c: u8 = $t;
                $body
            }};
        }
        match $code {
            T_Q4K => with!(T_Q4K),
            T_Q4K_STEPS => with!(T_Q4K_STEPS),
            T_Q5K => with!(T_Q5K),
            T_Q5K_STEPS => with!(T_Q5K_STEPS),
            T_Q6K => with!(T_Q6K),
            T_Q6K_STEPS => with!(T_Q6K_STEPS),
            T_Q8_0 => with!(T_Q8_0),
            T_Q8_0_STEPS => with!(T_Q8_0_STEPS),
            T_Q4_0 => with!(T_Q4_0),
            T_Q4_0_STEPS => with!(T_Q4_0_STEPS),
            T_Q4_1 => with!(T_Q4_1),
            T_Q4_1_STEPS => with!(T_Q4_1_STEPS),
            T_Q5_0 => with!(T_Q5_0),
            T_Q5_0_STEPS => with!(T_Q5_0_STEPS),
            T_Q5_1 => with!(T_Q5_1),
            T_Q5_1_STEPS => with!(T_Q5_1_STEPS),
            T_IQ4NL => with!(T_IQ4NL),
            T_IQ4NL_STEPS => with!(T_IQ4NL_STEPS),
            T_IQ4XS => with!(T_IQ4XS),
            T_Q2K => with!(T_Q2K),
            T_Q3K => with!(T_Q3K),
            T_IQ4XS_STEPS => with!(T_IQ4XS_STEPS),
            _ => with!($other),
        }
    }};
}
pub(super) use by_code;

/// The code of `ty` (see [`T_Q4K`]).
pub(super) fn type_code(ty: crate::quant::GgmlType) -> u8 {
    use crate::quant::GgmlType as G;
    match ty {
        G::Q4K => T_Q4K,
        G::Q5K => T_Q5K,
        G::Q6K => T_Q6K,
        G::Q8_0 => T_Q8_0,
        G::Q4_0 => T_Q4_0,
        G::Iq4Nl => T_IQ4NL,
        G::Q5_0 => T_Q5_0,
        G::Q5_1 => T_Q5_1,
        G::Q4_1 => T_Q4_1,
        G::Iq4Xs => T_IQ4XS,
        G::Q2K => T_Q2K,
        G::Q3K => T_Q3K,
        _ => T_DECODED,
    }
}

/// The code of rows of `ty` in a weight whose rows are in the step order (`step_order`) when
/// `steps` and their type has one.
pub(super) fn row_code(ty: crate::quant::GgmlType, steps: bool) -> u8 {
    match type_code(ty) {
        T_Q4K if steps => T_Q4K_STEPS,
        T_Q5K if steps => T_Q5K_STEPS,
        T_Q6K if steps => T_Q6K_STEPS,
        T_Q4_0 if steps => T_Q4_0_STEPS,
        T_Q4_1 if steps => T_Q4_1_STEPS,
        T_Q5_0 if steps => T_Q5_0_STEPS,
        T_Q5_1 if steps => T_Q5_1_STEPS,
        T_IQ4NL if steps => T_IQ4NL_STEPS,
        T_Q8_0 if steps => T_Q8_0_STEPS,
        T_IQ4XS if steps => T_IQ4XS_STEPS,
        code => code,
    }
}

/// One weight row for the row kernels: its ggml bytes (`cols` elements of its type, checked by
/// the caller) and, for [`T_DECODED`], the twin's decoded row and the type's form.
#[derive(Clone, Copy)]
pub(super) struct RowRef<'a> {
    pub bytes: &'a [u8],
    pub dq: &'a [i8],
    pub dp: &'a [BlockParams],
    pub dform: Form,
}

/// Super-block `g` (of `k <= 8` blocks) of row `r` of type code `TY`, and its form; for the
/// step order ([`is_steps`]) the transposed super-block (`lanes::transpose8` of the blocks),
/// except a row's last group of fewer than 8 blocks of a 32-element type, which `step_order`
/// keeps in ggml order: that one comes as blocks (see [`unpack`]). `BW`: the calling path
/// has AVX-512BW and AVX-512VL (some unpackers then use mask registers).
#[inline(always)]
pub(super) unsafe fn unpack_blocks<const TY: u8, const BW: bool>(
    r: RowRef<'_>,
    g: usize,
    k: usize,
) -> (Sb, Form) {
    let b = r.bytes;
    let whole = k == SB_BLOCKS;
    // SAFETY: AVX2 and F16C (module docs); each unpacker gets whole blocks of its type
    // (bounds-checked slices of a row of `cols` elements, `k` blocks past `8 g`).
    unsafe {
        match TY {
            T_Q4K => (q4_k(&b[g * 144..][..144]), FORM_K4),
            T_Q4K_STEPS => (q4_k_steps(&b[g * 144..][..144]), FORM_K4),
            T_Q5K => (q5_k(&b[g * 176..][..176]), FORM_K4),
            T_Q5K_STEPS => (q5_k_steps(&b[g * 176..][..176]), FORM_K4),
            T_Q6K => (q6_k(&b[g * 210..][..210]), FORM_Q6K),
            T_Q6K_STEPS => (q6_k_steps(&b[g * 210..][..210]), FORM_Q6K),
            T_IQ4XS => (iq4_xs(&b[g * 136..][..136]), FORM_SIGNED),
            T_Q2K => (q2_k(&b[g * 84..][..84]), FORM_Q2K),
            T_Q3K => (q3_k(&b[g * 110..][..110]), FORM_Q3K),
            T_IQ4XS_STEPS => (iq4_xs_steps(&b[g * 136..][..136]), FORM_SIGNED),
            T_Q8_0_STEPS if whole => (q8_0_steps(&b[g * 272..][..272]), FORM_SIGNED_UNIT),
            T_Q8_0 | T_Q8_0_STEPS => (q8_0(&b[g * 272..][..k * 34], k), FORM_SIGNED_UNIT),
            T_Q4_0_STEPS if whole => (q4_0_steps(&b[g * 144..][..144]), FORM_Q4_0),
            T_Q4_0 | T_Q4_0_STEPS => (q4_0(&b[g * 144..][..k * 18], k), FORM_Q4_0),
            T_Q4_1_STEPS if whole => (q4_1_steps(&b[g * 160..][..160]), FORM_MIN_UNIT),
            T_Q4_1 | T_Q4_1_STEPS => (q4_1(&b[g * 160..][..k * 20], k), FORM_MIN_UNIT),
            T_Q5_0_STEPS if whole => (q5_0_steps(&b[g * 176..][..176]), FORM_Q5_0),
            T_Q5_0 | T_Q5_0_STEPS => (q5_0::<BW>(&b[g * 176..][..k * 22], k), FORM_Q5_0),
            T_Q5_1_STEPS if whole => (q5_1_steps(&b[g * 192..][..192]), FORM_MIN_UNIT),
            T_Q5_1 | T_Q5_1_STEPS => (q5_1::<BW>(&b[g * 192..][..k * 24], k), FORM_MIN_UNIT),
            T_IQ4NL_STEPS if whole => (iq4_nl_steps(&b[g * 144..][..144]), FORM_SIGNED_UNIT),
            T_IQ4NL | T_IQ4NL_STEPS => (iq4_nl(&b[g * 144..][..k * 18], k), FORM_SIGNED_UNIT),
            _ => (
                from_decoded(&r.dq[g * SB_ELEMS..], &r.dp[g * SB_BLOCKS..], k),
                r.dform,
            ),
        }
    }
}

/// [`unpack_blocks`], with a step-order row's last group of fewer than 8 blocks transposed
/// too: for the step order ([`is_steps`]) always the transposed super-block.
#[inline(always)]
pub(super) unsafe fn unpack<const TY: u8, const BW: bool>(
    r: RowRef<'_>,
    g: usize,
    k: usize,
) -> (Sb, Form) {
    // SAFETY: the caller's contract (as `unpack_blocks`'); AVX2 for the transpose.
    unsafe {
        let (sb, form) = unpack_blocks::<TY, BW>(r, g, k);
        if is_steps(TY) && k < SB_BLOCKS {
            let v = super::lanes::transpose8(sb.v);
            (Sb { v, ..sb }, form)
        } else {
            (sb, form)
        }
    }
}
