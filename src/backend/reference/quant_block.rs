//! Decoding of ggml weight blocks into the form the quantized matmul works on: for every
//! 32-element block, 32 signed 8-bit integers `q` and a [`BlockParams`] such that the element
//! `i` of half `h` (`h = i / 16`) is
//!
//! ```text
//! w[i] = (d * isc[h]) * q[i] + dm * imin[h]      (the min term only for types with mins)
//! ```
//!
//! which is exactly (bitwise) the value ggml's `dequantize_row_*` computes (see [`dequant_row`]).
//! Layouts are ggml's (`ggml-common.h`, little-endian); the per-type notes are on each decoder.
//! Pure functions; no allocation.

use half::f16;

use crate::quant::GgmlType;

/// Elements per activation / decoded block.
pub const QBLOCK: usize = 32;

/// Scales of one decoded 32-element block (see the module docs for the formula).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BlockParams {
    /// Float scale (the f16 `d` of the ggml block, widened).
    pub d: f32,
    /// Float min scale: `m` of Q4_1/Q5_1, `-dmin` of Q2_K/Q4_K/Q5_K, 0 otherwise.
    pub dm: f32,
    /// Integer scale of each 16-element half (1 for types without sub-block scales).
    pub isc: [i32; 2],
    /// Integer min of each half (0 for types without mins).
    pub imin: [i32; 2],
}

/// The block-quantized types the quantized matmul computes on.
pub const KERNEL_TYPES: [GgmlType; 12] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Iq4Nl,
    GgmlType::Iq4Xs,
];

/// Whether the quantized matmul (and [`decode_row`]) supports `ty`.
pub fn is_kernel_type(ty: GgmlType) -> bool {
    KERNEL_TYPES.contains(&ty)
}

/// Whether elements of `ty` carry a min term (`dm * imin`).
pub fn has_min(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q2K | GgmlType::Q4K | GgmlType::Q5K
    )
}

/// ggml's IQ4_NL / IQ4_XS code book.
const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

#[inline(always)]
fn params(d: f32, dm: f32, isc: [i32; 2], imin: [i32; 2]) -> BlockParams {
    BlockParams { d, dm, isc, imin }
}

/// Q8_0 (34 bytes): f16 `d`, 32 `i8`.
#[inline(always)]
fn q8_0(b: &[u8], q: &mut [i8], p: &mut [BlockParams]) {
    for (o, &v) in q[..32].iter_mut().zip(&b[2..34]) {
        *o = v as i8;
    }
    p[0] = params(f16_at(b, 0), 0.0, [1, 1], [0, 0]);
}

/// Splits 16 bytes of nibbles: low nibble of byte `j` is element `j`, high nibble element
/// `j + 16`, each mapped through `f`.
#[inline(always)]
fn nibbles(qs: &[u8], q: &mut [i8], f: impl Fn(u8) -> i8) {
    // Fixed lengths, so the loop is vectorized (no bounds checks inside).
    let (Some(qs), Some(q)) = (qs.get(..16), q.get_mut(..32)) else {
        return;
    };
    for j in 0..16 {
        q[j] = f(qs[j] & 0x0F);
        q[j + 16] = f(qs[j] >> 4);
    }
}

/// Q4_0 (18 bytes): f16 `d`, 16 bytes of nibbles; `w = (n - 8) * d`.
#[inline(always)]
fn q4_0(b: &[u8], q: &mut [i8], p: &mut [BlockParams]) {
    nibbles(&b[2..18], q, |n| n as i8 - 8);
    p[0] = params(f16_at(b, 0), 0.0, [1, 1], [0, 0]);
}

/// Q4_1 (20 bytes): f16 `d`, f16 `m`, 16 bytes of nibbles; `w = n * d + m`.
#[inline(always)]
fn q4_1(b: &[u8], q: &mut [i8], p: &mut [BlockParams]) {
    nibbles(&b[4..20], q, |n| n as i8);
    p[0] = params(f16_at(b, 0), f16_at(b, 2), [1, 1], [1, 1]);
}

/// The 5-bit values of Q5_0/Q5_1: nibbles of `qs` plus bit `j` (element `j`) or `j + 16`
/// (element `j + 16`) of the little-endian `qh` as bit 4, minus `off`.
#[inline(always)]
fn five_bits(qh: &[u8], qs: &[u8], q: &mut [i8], off: i8) {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let (lo, hi) = q[..32].split_at_mut(16);
    for (j, ((l, h), &v)) in lo.iter_mut().zip(hi.iter_mut()).zip(&qs[..16]).enumerate() {
        let h0 = (((qh >> j) << 4) & 0x10) as u8;
        let h1 = ((qh >> (j + 12)) & 0x10) as u8;
        *l = ((v & 0x0F) | h0) as i8 - off;
        *h = ((v >> 4) | h1) as i8 - off;
    }
}

/// Q5_0 (22 bytes): f16 `d`, u32 `qh`, 16 bytes of nibbles; `w = (n - 16) * d`.
#[inline(always)]
fn q5_0(b: &[u8], q: &mut [i8], p: &mut [BlockParams]) {
    five_bits(&b[2..6], &b[6..22], q, 16);
    p[0] = params(f16_at(b, 0), 0.0, [1, 1], [0, 0]);
}

/// Q5_1 (24 bytes): f16 `d`, f16 `m`, u32 `qh`, 16 bytes of nibbles; `w = n * d + m`.
#[inline(always)]
fn q5_1(b: &[u8], q: &mut [i8], p: &mut [BlockParams]) {
    five_bits(&b[4..8], &b[8..24], q, 0);
    p[0] = params(f16_at(b, 0), f16_at(b, 2), [1, 1], [1, 1]);
}

/// IQ4_NL (18 bytes): f16 `d`, 16 bytes of nibbles indexing the code book; `w = d * kv[n]`.
#[inline(always)]
fn iq4_nl(b: &[u8], q: &mut [i8], p: &mut [BlockParams]) {
    nibbles(&b[2..18], q, |n| KVALUES_IQ4NL[n as usize]);
    p[0] = params(f16_at(b, 0), 0.0, [1, 1], [0, 0]);
}

/// IQ4_XS (136 bytes, 256 elements): f16 `d`, u16 `scales_h`, 4 bytes `scales_l`, 128 bytes of
/// nibbles; block `ib` has the 6-bit scale `ls` (4 low bits from `scales_l`, 2 high from
/// `scales_h`) and `w = (d * (ls - 32)) * kv[n]`, nibbles split as in IQ4_NL.
#[inline(always)]
fn iq4_xs(b: &[u8], q: &mut [i8], p: &mut [BlockParams]) {
    let d = f16_at(b, 0);
    let sh = u16::from_le_bytes([b[2], b[3]]) as i32;
    for ib in 0..8 {
        let sl = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F) as i32;
        let ls = sl | (((sh >> (2 * ib)) & 3) << 4);
        nibbles(&b[8 + 16 * ib..], &mut q[32 * ib..], |n| {
            KVALUES_IQ4NL[n as usize]
        });
        p[ib] = params(d, 0.0, [ls - 32; 2], [0, 0]);
    }
}

/// Q2_K (84 bytes, 256 elements): 16 scale bytes (low nibble scale, high nibble min, one per
/// 16 elements), 64 bytes of 2-bit values, f16 `d`, f16 `dmin`. Element `e` (`n = e / 128`,
/// `j = e % 128 / 32`, `l = e % 32`) is bits `2j..2j+2` of `qs[32n + l]`;
/// `w = (d * sc) * q - dmin * m`.
#[inline(always)]
fn q2_k(b: &[u8], q: &mut [i8], p: &mut [BlockParams]) {
    let (sc, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (e, o) in q[..256].iter_mut().enumerate() {
        let (n, j, l) = (e / 128, e % 128 / 32, e % 32);
        *o = ((qs[32 * n + l] >> (2 * j)) & 3) as i8;
    }
    for (bi, pb) in p[..8].iter_mut().enumerate() {
        let (s0, s1) = (sc[2 * bi] as i32, sc[2 * bi + 1] as i32);
        *pb = params(d, -dmin, [s0 & 15, s1 & 15], [s0 >> 4, s1 >> 4]);
    }
}

/// Q3_K (110 bytes, 256 elements): 32 bytes `hmask`, 64 bytes of 2-bit values, 12 bytes of
/// packed 6-bit scales (one per 16 elements, unpacked as ggml's `kmask` shuffle), f16 `d`.
/// Element `e` (`n`, `j`, `l` as in Q2_K) is `(bits 2j..2j+2 of qs[32n + l]) - 4` unless bit
/// `4n + j` of `hmask[l]` is set; `w = (d * (sc - 32)) * q`.
#[inline(always)]
fn q3_k(b: &[u8], q: &mut [i8], p: &mut [BlockParams]) {
    let (hm, qs) = (&b[0..32], &b[32..96]);
    let d = f16_at(b, 108);
    let sc = q3_k_scales(b);
    let scale = |s: usize| sc[s] as i32 - 32;
    for (e, o) in q[..256].iter_mut().enumerate() {
        let (n, j, l) = (e / 128, e % 128 / 32, e % 32);
        let v = ((qs[32 * n + l] >> (2 * j)) & 3) as i8;
        let high = hm[l] & (1u8 << (4 * n + j)) != 0;
        *o = if high { v } else { v - 4 };
    }
    for (bi, pb) in p[..8].iter_mut().enumerate() {
        *pb = params(d, 0.0, [scale(2 * bi), scale(2 * bi + 1)], [0, 0]);
    }
}

/// The 16 scales of a Q3_K block `b` (12 bytes of packed 6-bit values at 96), unpacked as
/// ggml's `kmask` shuffle: byte `s` is the scale of 16-element half-block `s` plus 32.
#[inline(always)]
pub(crate) fn q3_k_scales(b: &[u8]) -> [u8; 16] {
    let word =
        |k: usize| u32::from_le_bytes([b[96 + 4 * k], b[97 + 4 * k], b[98 + 4 * k], b[99 + 4 * k]]);
    let (a0, a1, tmp) = (word(0), word(1), word(2));
    const K1: u32 = 0x0303_0303;
    const K2: u32 = 0x0f0f_0f0f;
    let aux = [
        (a0 & K2) | ((tmp & K1) << 4),
        (a1 & K2) | (((tmp >> 2) & K1) << 4),
        ((a0 >> 4) & K2) | (((tmp >> 4) & K1) << 4),
        ((a1 >> 4) & K2) | (((tmp >> 6) & K1) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(aux) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (of 8) of Q4_K/Q5_K.
#[inline(always)]
fn scale_min_k4(j: usize, s: &[u8]) -> (i32, i32) {
    if j < 4 {
        ((s[j] & 63) as i32, (s[j + 4] & 63) as i32)
    } else {
        (
            ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4)) as i32,
            ((s[j + 4] >> 4) | ((s[j] >> 6) << 4)) as i32,
        )
    }
}

/// Q4_K (144 bytes, 256 elements): f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales/mins (one
/// pair per 32 elements), 128 bytes of nibbles: 32-element block `2k` is the low nibbles of
/// `qs[32k..32k+32]`, block `2k+1` the high nibbles; `w = (d * sc) * n - dmin * m`.
#[inline(always)]
fn q4_k(b: &[u8], q: &mut [i8], p: &mut [BlockParams]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, qs) = (&b[4..16], &b[16..144]);
    for k in 0..4 {
        let chunk = &qs[32 * k..32 * k + 32];
        let (lo, hi) = q[64 * k..64 * k + 64].split_at_mut(32);
        for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(chunk) {
            *l = (v & 0x0F) as i8;
            *h = (v >> 4) as i8;
        }
    }
    for (bi, pb) in p[..8].iter_mut().enumerate() {
        let (s, m) = scale_min_k4(bi, sc);
        *pb = params(d, -dmin, [s, s], [m, m]);
    }
}

/// Q5_K (176 bytes, 256 elements): as Q4_K with 32 bytes `qh` before the nibbles: bit `2k`
/// (block `2k`) or `2k+1` (block `2k+1`) of `qh[l]` adds 16 to element `l` of the block.
#[inline(always)]
fn q5_k(b: &[u8], q: &mut [i8], p: &mut [BlockParams]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for k in 0..4 {
        let chunk = &qs[32 * k..32 * k + 32];
        let (lo, hi) = q[64 * k..64 * k + 64].split_at_mut(32);
        for (((l, h), &v), &hb) in lo.iter_mut().zip(hi.iter_mut()).zip(chunk).zip(qh) {
            *l = ((v & 0x0F) | (((hb >> (2 * k)) & 1) << 4)) as i8;
            *h = ((v >> 4) | (((hb >> (2 * k + 1)) & 1) << 4)) as i8;
        }
    }
    for (bi, pb) in p[..8].iter_mut().enumerate() {
        let (s, m) = scale_min_k4(bi, sc);
        *pb = params(d, -dmin, [s, s], [m, m]);
    }
}

/// Q6_K (210 bytes, 256 elements): 128 bytes `ql` (low nibbles), 64 bytes `qh` (2 high bits),
/// 16 `i8` scales (one per 16 elements), f16 `d`. In half `n` (128 elements), for `l < 32`,
/// elements `l`, `l+32`, `l+64`, `l+96` take the low nibble of `ql[64n+l]`, of `ql[64n+l+32]`,
/// the high nibbles of the same, and bits 0-1, 2-3, 4-5, 6-7 of `qh[32n+l]`;
/// `w = (d * sc) * (q - 32)`.
#[inline(always)]
fn q6_k(b: &[u8], q: &mut [i8], p: &mut [BlockParams]) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for n in 0..2 {
        let (ql, qh, y) = (&ql[64 * n..], &qh[32 * n..], &mut q[128 * n..]);
        for l in 0..32 {
            let h = qh[l];
            y[l] = ((ql[l] & 0x0F) | ((h & 3) << 4)) as i8 - 32;
            y[l + 32] = ((ql[l + 32] & 0x0F) | (((h >> 2) & 3) << 4)) as i8 - 32;
            y[l + 64] = ((ql[l] >> 4) | (((h >> 4) & 3) << 4)) as i8 - 32;
            y[l + 96] = ((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    for (bi, pb) in p[..8].iter_mut().enumerate() {
        let s = |k: usize| (sc[k] as i8) as i32;
        *pb = params(d, 0.0, [s(2 * bi), s(2 * bi + 1)], [0, 0]);
    }
}

/// Decodes one row of `ty` blocks (`bytes`, a whole number of blocks) into `q` (one `i8` per
/// element) and `p` (one [`BlockParams`] per 32 elements). Returns false (writing nothing
/// meaningful) when `ty` is not a kernel type or `q` / `p` are too short for the row.
///
/// Always inlined, each type's decoder with it, so that callers compiled for wider vector
/// instructions decode with them (the integer results are the same on every path).
#[inline(always)]
pub fn decode_row(ty: GgmlType, bytes: &[u8], q: &mut [i8], p: &mut [BlockParams]) -> bool {
    let (bs, ts) = (ty.block_size() as usize, ty.type_size() as usize);
    let nblk = bytes.len() / ts.max(1);
    if !bytes.len().is_multiple_of(ts.max(1)) || q.len() < nblk * bs || p.len() < nblk * bs / QBLOCK
    {
        return false;
    }
    let (q, p) = (&mut q[..nblk * bs], &mut p[..nblk * bs / QBLOCK]);
    // A macro rather than a function taking the decoder: each type's loop is then a direct
    // (inlined) call, not a call through a closure shim.
    macro_rules! blocks {
        ($f:ident) => {
            for ((blk, qb), pb) in bytes
                .chunks_exact(ts)
                .zip(q.chunks_exact_mut(bs))
                .zip(p.chunks_exact_mut(bs / QBLOCK))
            {
                $f(blk, qb, pb);
            }
        };
    }
    match ty {
        GgmlType::Q8_0 => blocks!(q8_0),
        GgmlType::Q4_0 => blocks!(q4_0),
        GgmlType::Q4_1 => blocks!(q4_1),
        GgmlType::Q5_0 => blocks!(q5_0),
        GgmlType::Q5_1 => blocks!(q5_1),
        GgmlType::Iq4Nl => blocks!(iq4_nl),
        GgmlType::Iq4Xs => blocks!(iq4_xs),
        GgmlType::Q2K => blocks!(q2_k),
        GgmlType::Q3K => blocks!(q3_k),
        GgmlType::Q4K => blocks!(q4_k),
        GgmlType::Q5K => blocks!(q5_k),
        GgmlType::Q6K => blocks!(q6_k),
        _ => return false,
    }
    true
}

/// Expands one decoded row to f32 exactly as ggml's `dequantize_row_*` does:
/// `(d * isc[h]) * q + dm * imin[h]` (the min term only when `min` is set).
pub fn dequant_row(q: &[i8], p: &[BlockParams], min: bool, out: &mut [f32]) {
    for ((o, qb), pb) in out.chunks_mut(QBLOCK).zip(q.chunks(QBLOCK)).zip(p) {
        for (i, (y, &v)) in o.iter_mut().zip(qb).enumerate() {
            let h = i / 16;
            let s = pb.d * pb.isc[h] as f32;
            *y = if min {
                s * v as f32 + pb.dm * pb.imin[h] as f32
            } else {
                s * v as f32
            };
        }
    }
}
