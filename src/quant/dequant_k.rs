//! Expansion of ggml's 256-element "super-block" types to f32: the K-quants (Q2_K, Q3_K, Q4_K,
//! Q5_K, Q6_K) and IQ4_XS, bit-exact with ggml's `dequantize_row_*` (each element is one f32
//! product of an f32 sub-block scale and the integer quant, as ggml computes it).
//!
//! Every function here expands exactly one block: `blk` is the block's bytes (the type's
//! `type_size`) and `y` its [`QK_K`] outputs; callers slice whole blocks (see
//! [`super::dequant::dequantize`]), so the slicing below cannot go out of range.
//!
//! Block layouts (little-endian; "element e" counts from 0 within the block):
//! * Q2_K (84 bytes): `scales[16]` (low nibble scale, high nibble min of each 16-element group),
//!   `qs[64]`, f16 `d`, f16 `dmin`; element `128c + 32s + l` is bits `2s..2s+2` of
//!   `qs[32c + l]`, value `d*sc * q - dmin*m`.
//! * Q3_K (110 bytes): `hmask[32]`, `qs[64]`, `scales[12]` (sixteen 6-bit scales, offset 32),
//!   f16 `d`; low two bits as Q2_K, element `32i + l` has high bit `i` of `hmask[l]`; value
//!   `d*(sc-32) * (low - (high ? 0 : 4))`.
//! * Q4_K (144 bytes): f16 `d`, f16 `dmin`, `scales[12]` (eight 6-bit scales and mins, see
//!   [`scale_min_k4`]), `qs[128]`; element `64c + 32s + l` is nibble `s` of `qs[32c + l]`,
//!   value `d*sc * q - dmin*m` with the scale and min of its 32-element group.
//! * Q5_K (176 bytes): as Q4_K with `qh[32]` before `qs`; element `32i + l` adds bit `i` of
//!   `qh[l]` as bit 4 of `q`.
//! * Q6_K (210 bytes): `ql[128]`, `qh[64]`, `scales[16]` (i8), f16 `d`; element
//!   `128c + 64s + l` (l < 64) has low nibble `s` of `ql[64c + l]`, element `128c + 32s + l`
//!   (l < 32) has bits `2s..2s+2` of `qh[32c + l]` as bits 4..6; value `d*sc * (q - 32)`.
//! * IQ4_XS (136 bytes): f16 `d`, u16 `scales_h`, `scales_l[4]`, `qs[128]`; group `j` (32
//!   elements) has scale `(nibble j%2 of scales_l[j/2] | bits 2j..2j+2 of scales_h << 4) - 32`;
//!   its element `16s + l` is [`IQ4_NL_VALUES`]`[nibble s of qs[16j + l]]`, value `d*sc * v`.

use half::f16;

/// Elements of a K-quant super-block.
pub const QK_K: usize = 256;

/// The 16 non-linear levels of IQ4_NL and IQ4_XS (ggml's `kvalues_iq4nl`).
pub const IQ4_NL_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The little-endian f16 at `b[at..at + 2]`, widened to f32.
#[inline]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The 6-bit scale and min of group `j` (< 8) from Q4_K/Q5_K's 12 packed scale bytes
/// (ggml's `get_scale_min_k4`): groups 0..4 keep the low 6 bits of bytes `j` and `j + 4`;
/// groups 4..8 combine a nibble of byte `j + 4` with the top two bits of bytes `j - 4` / `j`.
#[inline]
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// One Q2_K block.
pub fn q2_k(blk: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&blk[..16], &blk[16..80]);
    let (d, dmin) = (f16_at(blk, 80), f16_at(blk, 82));
    for (e, out) in y.iter_mut().enumerate().take(QK_K) {
        let (c, s, l) = (e / 128, (e / 32) % 4, e % 32);
        let q = (qs[32 * c + l] >> (2 * s)) & 3;
        let sc = scales[e / 16];
        let dl = d * (sc & 0x0F) as f32;
        let ml = dmin * (sc >> 4) as f32;
        *out = dl * q as f32 - ml;
    }
}

/// The sixteen 6-bit Q3_K scales (offset by 32 removed) from their 12 packed bytes: scale `j`
/// has low nibble `j % 8` of byte `j % 8` (low nibble for `j < 8`, high otherwise) and high
/// two bits from byte `8 + j % 4`, bits `2 * (j / 4)..`.
fn q3_k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = (s[j % 8] >> (4 * (j / 8))) & 0x0F;
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = ((low | (high << 4)) as i8).wrapping_sub(32);
    }
    out
}

/// One Q3_K block.
pub fn q3_k(blk: &[u8], y: &mut [f32]) {
    let (hmask, qs) = (&blk[..32], &blk[32..96]);
    let scales = q3_k_scales(&blk[96..108]);
    let d = f16_at(blk, 108);
    for (e, out) in y.iter_mut().enumerate().take(QK_K) {
        let (c, s, l) = (e / 128, (e / 32) % 4, e % 32);
        let low = ((qs[32 * c + l] >> (2 * s)) & 3) as i8;
        let high = (hmask[l] >> (e / 32)) & 1;
        let q = if high == 1 { low } else { low - 4 };
        let dl = d * scales[e / 16] as f32;
        *out = dl * q as f32;
    }
}

/// One Q4_K block.
pub fn q4_k(blk: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    let (scales, qs) = (&blk[4..16], &blk[16..144]);
    for (e, out) in y.iter_mut().enumerate().take(QK_K) {
        let (c, s, l) = (e / 64, (e / 32) % 2, e % 32);
        let q = (qs[32 * c + l] >> (4 * s)) & 0x0F;
        let (sc, m) = scale_min_k4(e / 32, scales);
        *out = (d * sc as f32) * q as f32 - dmin * m as f32;
    }
}

/// One Q5_K block.
pub fn q5_k(blk: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    let (scales, qh, qs) = (&blk[4..16], &blk[16..48], &blk[48..176]);
    for (e, out) in y.iter_mut().enumerate().take(QK_K) {
        let (c, s, l) = (e / 64, (e / 32) % 2, e % 32);
        let low = (qs[32 * c + l] >> (4 * s)) & 0x0F;
        let high = (qh[l] >> (e / 32)) & 1;
        let q = low | (high << 4);
        let (sc, m) = scale_min_k4(e / 32, scales);
        *out = (d * sc as f32) * q as f32 - dmin * m as f32;
    }
}

/// One Q6_K block.
pub fn q6_k(blk: &[u8], y: &mut [f32]) {
    let (ql, qh, scales) = (&blk[..128], &blk[128..192], &blk[192..208]);
    let d = f16_at(blk, 208);
    for (e, out) in y.iter_mut().enumerate().take(QK_K) {
        let c = e / 128;
        let (s_lo, l_lo) = ((e % 128) / 64, e % 64);
        let (s_hi, l_hi) = ((e % 128) / 32, e % 32);
        let low = (ql[64 * c + l_lo] >> (4 * s_lo)) & 0x0F;
        let high = (qh[32 * c + l_hi] >> (2 * s_hi)) & 3;
        let q = (low | (high << 4)) as i8 - 32;
        let dl = d * (scales[e / 16] as i8) as f32;
        *out = dl * q as f32;
    }
}

/// One IQ4_XS block.
pub fn iq4_xs(blk: &[u8], y: &mut [f32]) {
    let d = f16_at(blk, 0);
    let scales_h = u16::from_le_bytes([blk[2], blk[3]]);
    let (scales_l, qs) = (&blk[4..8], &blk[8..136]);
    for (j, group) in y.chunks_exact_mut(32).enumerate().take(QK_K / 32) {
        let low = (scales_l[j / 2] >> (4 * (j % 2))) & 0x0F;
        let high = ((scales_h >> (2 * j)) & 3) as u8;
        let dl = d * ((low | (high << 4)) as i8 - 32) as f32;
        for (e, out) in group.iter_mut().enumerate() {
            let q = (qs[16 * j + e % 16] >> (4 * (e / 16))) & 0x0F;
            *out = dl * IQ4_NL_VALUES[q as usize] as f32;
        }
    }
}
