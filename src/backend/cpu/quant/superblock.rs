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

use std::arch::x86_64::*;

use half::f16;

use crate::backend::reference::quant_block::BlockParams;

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
};
/// Q6_K: `u = q + 32`, a scale per half.
pub(super) const FORM_Q6K: Form = Form {
    signed: false,
    off_shift: Some(5),
    min: false,
    equal_halves: false,
    unit: false,
};
/// Q4_0: `u = q + 8`, unit scales.
pub(super) const FORM_Q4_0: Form = Form {
    signed: false,
    off_shift: Some(3),
    min: false,
    equal_halves: true,
    unit: true,
};
/// Q8_0 / IQ4_NL: signed values, unit scales.
pub(super) const FORM_SIGNED_UNIT: Form = Form {
    signed: true,
    off_shift: None,
    min: false,
    equal_halves: true,
    unit: true,
};

#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    match b.get(at..at + 2) {
        Some(&[x, y]) => f16::from_le_bytes([x, y]).to_f32(),
        _ => f32::NAN,
    }
}

/// 32 bytes at `b[at..]` (the caller guarantees `at + 32 <= b.len()`).
#[target_feature(enable = "avx2")]
#[inline]
fn load32(b: &[u8], at: usize) -> __m256i {
    debug_assert!(at + 32 <= b.len());
    // SAFETY: every caller passes `at + 32 <= b.len()` (fixed offsets inside a block of a
    // length checked by `chunks_exact`); loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(b.as_ptr().add(at) as *const __m256i) }
}

/// 16 bytes at `b[at..]` (the caller guarantees `at + 16 <= b.len()`).
#[target_feature(enable = "avx2")]
#[inline]
fn load16(b: &[u8], at: usize) -> __m128i {
    debug_assert!(at + 16 <= b.len());
    // SAFETY: as in `load32`, with 16 bytes.
    unsafe { _mm_loadu_si128(b.as_ptr().add(at) as *const __m128i) }
}

/// 8 bytes zero-extended to 8 `i32` lanes.
#[target_feature(enable = "avx2")]
#[inline]
fn u8x8(v: [u8; 8]) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_set1_epi64x(i64::from_le_bytes(v)))
}

/// 8 bytes sign-extended to 8 `i32` lanes.
#[target_feature(enable = "avx2")]
#[inline]
fn i8x8(v: [u8; 8]) -> __m256i {
    _mm256_cvtepi8_epi32(_mm_set1_epi64x(i64::from_le_bytes(v)))
}

/// The 8 six-bit scales and mins of a Q4_K/Q5_K block (`get_scale_min_k4` for every `j`).
#[inline(always)]
fn scales_mins_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    if s.len() < 12 {
        return (sc, mn);
    }
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// The low nibbles of `v` (as bytes) and the high nibbles.
#[target_feature(enable = "avx2")]
#[inline]
fn split_nibbles(v: __m256i) -> (__m256i, __m256i) {
    let m = _mm256_set1_epi8(0x0F);
    (
        _mm256_and_si256(v, m),
        _mm256_and_si256(_mm256_srli_epi16::<4>(v), m),
    )
}

/// The K-quant parameters shared by Q4_K and Q5_K.
#[target_feature(enable = "avx2")]
#[inline]
fn k4_params(b: &[u8]) -> (__m256, __m256, [__m256i; 2], [__m256i; 2]) {
    let (sc, mn) = scales_mins_k4(&b[4..16]);
    let (isc, imin) = (u8x8(sc), u8x8(mn));
    (
        _mm256_set1_ps(f16_at(b, 0)),
        _mm256_set1_ps(-f16_at(b, 2)),
        [isc, isc],
        [imin, imin],
    )
}

/// One Q4_K block (144 bytes): block `2k` is the low nibbles of `qs[32k..]`, `2k+1` the high.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn q4_k(b: &[u8]) -> Sb {
    let mut v = [_mm256_setzero_si256(); SB_BLOCKS];
    for k in 0..4 {
        (v[2 * k], v[2 * k + 1]) = split_nibbles(load32(b, 16 + 32 * k));
    }
    let (d, dm, isc, imin) = k4_params(b);
    Sb {
        v,
        d,
        dm,
        isc,
        imin,
    }
}

/// One Q5_K block (176 bytes): as Q4_K plus bit `j` of `qh[l]` as bit 4 of element `l` of
/// block `j`.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn q5_k(b: &[u8]) -> Sb {
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
    let (d, dm, isc, imin) = k4_params(b);
    Sb {
        v,
        d,
        dm,
        isc,
        imin,
    }
}

/// One Q6_K block (210 bytes) as `u = q + 32`: in half `n`, blocks `4n..4n+4` take the low
/// nibbles of `ql[64n..]`, of `ql[64n+32..]`, then the high nibbles, each with 2 bits of
/// `qh[32n..]` (bits 0-1, 2-3, 4-5, 6-7) as bits 4-5.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn q6_k(b: &[u8]) -> Sb {
    let m2 = _mm256_set1_epi8(0x30);
    let mut v = [_mm256_setzero_si256(); SB_BLOCKS];
    for n in 0..2 {
        let (l0, h0) = split_nibbles(load32(b, 64 * n));
        let (l1, h1) = split_nibbles(load32(b, 64 * n + 32));
        let qh = load32(b, 128 + 32 * n);
        let hb = [
            _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m2),
            _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m2),
            _mm256_and_si256(qh, m2),
            _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2),
        ];
        for (k, lo) in [l0, l1, h0, h1].into_iter().enumerate() {
            v[4 * n + k] = _mm256_or_si256(lo, hb[k]);
        }
    }
    let sc = &b[192..208];
    let even: [u8; 8] = std::array::from_fn(|j| sc[2 * j]);
    let odd: [u8; 8] = std::array::from_fn(|j| sc[2 * j + 1]);
    let zero = _mm256_setzero_si256();
    Sb {
        v,
        d: _mm256_set1_ps(f16_at(b, 208)),
        dm: _mm256_setzero_ps(),
        isc: [i8x8(even), i8x8(odd)],
        imin: [zero, zero],
    }
}

/// `d` of each of `n <= 8` blocks of `ts` bytes (f16 at the block start); 0 past `n`.
#[target_feature(enable = "avx2")]
#[inline]
fn block_d(b: &[u8], ts: usize, n: usize) -> __m256 {
    let d: [f32; SB_BLOCKS] = std::array::from_fn(|j| if j < n { f16_at(b, ts * j) } else { 0.0 });
    // SAFETY: `d` holds 8 f32 (32 bytes); loadu has no alignment requirement.
    unsafe { _mm256_loadu_ps(d.as_ptr()) }
}

/// Unit-scale parameters for `d` (no mins).
#[target_feature(enable = "avx2")]
#[inline]
fn unit_sb(v: [__m256i; SB_BLOCKS], d: __m256) -> Sb {
    let (one, zero) = (_mm256_set1_epi32(1), _mm256_setzero_si256());
    Sb {
        v,
        d,
        dm: _mm256_setzero_ps(),
        isc: [one, one],
        imin: [zero, zero],
    }
}

/// `n <= 8` Q8_0 blocks (34 bytes each; `b.len() >= 34 n`).
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn q8_0(b: &[u8], n: usize) -> Sb {
    let mut v = [_mm256_setzero_si256(); SB_BLOCKS];
    for (j, vj) in v.iter_mut().enumerate().take(n) {
        *vj = load32(b, 34 * j + 2);
    }
    unit_sb(v, block_d(b, 34, n))
}

/// The 32 nibbles of a Q4_0 / IQ4_NL block at `b[at..at + 16]` as bytes: low nibbles are
/// elements 0-15, high nibbles 16-31.
#[target_feature(enable = "avx2")]
#[inline]
fn nibbles32(b: &[u8], at: usize) -> __m256i {
    let q = load16(b, at);
    let m = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(q, m);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), m);
    _mm256_set_m128i(hi, lo)
}

/// `n <= 8` Q4_0 blocks (18 bytes each) as `u = q + 8`.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn q4_0(b: &[u8], n: usize) -> Sb {
    let mut v = [_mm256_setzero_si256(); SB_BLOCKS];
    for (j, vj) in v.iter_mut().enumerate().take(n) {
        *vj = nibbles32(b, 18 * j + 2);
    }
    unit_sb(v, block_d(b, 18, n))
}

/// `n <= 8` IQ4_NL blocks (18 bytes each): nibbles through the code book (signed values).
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn iq4_nl(b: &[u8], n: usize) -> Sb {
    const KV: [i8; 16] = [
        -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
    ];
    // SAFETY: `KV` holds 16 bytes; loadu has no alignment requirement.
    let table = unsafe { _mm_loadu_si128(KV.as_ptr() as *const __m128i) };
    let table = _mm256_set_m128i(table, table);
    let mut v = [_mm256_setzero_si256(); SB_BLOCKS];
    for (j, vj) in v.iter_mut().enumerate().take(n) {
        *vj = _mm256_shuffle_epi8(table, nibbles32(b, 18 * j + 2));
    }
    unit_sb(v, block_d(b, 18, n))
}

/// `n <= 8` blocks of a decoded row: `q` (`32 n` signed values) and `p` (`n` params), for the
/// types without an unpacker above (their [`Form`]: signed, general halves, `min` per type).
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn from_decoded(q: &[i8], p: &[BlockParams], n: usize) -> Sb {
    let n = n.min(SB_BLOCKS).min(p.len()).min(q.len() / 32);
    let mut v = [_mm256_setzero_si256(); SB_BLOCKS];
    for (j, vj) in v.iter_mut().enumerate().take(n) {
        // SAFETY: `32 j + 32 <= 32 n <= q.len()`; loadu has no alignment requirement.
        *vj = unsafe { _mm256_loadu_si256(q.as_ptr().add(32 * j) as *const __m256i) };
    }
    let lane = |f: &dyn Fn(&BlockParams) -> i32| -> __m256i {
        let a: [i32; SB_BLOCKS] = std::array::from_fn(|j| if j < n { f(&p[j]) } else { 0 });
        // SAFETY: `a` holds 8 i32 (32 bytes); loadu has no alignment requirement.
        unsafe { _mm256_loadu_si256(a.as_ptr() as *const __m256i) }
    };
    let flane = |f: &dyn Fn(&BlockParams) -> f32| -> __m256 {
        let a: [f32; SB_BLOCKS] = std::array::from_fn(|j| if j < n { f(&p[j]) } else { 0.0 });
        // SAFETY: `a` holds 8 f32 (32 bytes); loadu has no alignment requirement.
        unsafe { _mm256_loadu_ps(a.as_ptr()) }
    };
    Sb {
        v,
        d: flane(&|p| p.d),
        dm: flane(&|p| p.dm),
        isc: [lane(&|p| p.isc[0]), lane(&|p| p.isc[1])],
        imin: [lane(&|p| p.imin[0]), lane(&|p| p.imin[1])],
    }
}
