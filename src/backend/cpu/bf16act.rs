//! Activations rounded to bf16 for the matmul of a bf16 weight (round to nearest even, NaN kept
//! NaN: bit for bit `half::bf16::from_f32`, the reference backend's rounding).
//!
//! Two forms: raw bf16 bits for the `vdpbf16ps` kernels ([`to_bits`]), or the rounded values
//! widened back to f32 for the f32 kernels ([`to_rounded_f32`]); both pad each row from `inp` to
//! `kp` columns with zeros. An AVX2 version runs when the CPU has it; its results are the scalar
//! version's bits.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The bf16 bits of `v` (round to nearest even; a NaN stays a quiet NaN).
#[inline]
fn bits(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

/// `v` rounded to bf16 and widened back to f32.
#[inline]
fn rounded(v: f32) -> f32 {
    f32::from_bits(u32::from(bits(v)) << 16)
}

/// Eight f32 rounded to bf16, as f32 bit patterns (the bf16 bits in the top half, zero below).
///
/// `bits + 0x7fff + lsb` then truncation is round to nearest even; NaNs get the quiet bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn round8(v: __m256) -> __m256i {
    let b = _mm256_castps_si256(v);
    let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(1));
    let r = _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)), lsb);
    let hi = _mm256_set1_epi32(0xffff_0000u32 as i32);
    let r = _mm256_and_si256(r, hi);
    let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
    let quiet = _mm256_and_si256(_mm256_or_si256(b, _mm256_set1_epi32(0x0040_0000)), hi);
    _mm256_blendv_epi8(r, quiet, nan)
}

/// Rounds `src` into `dst` (same length) as f32 values, 8 at a time, the tail scalar.
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_f32_avx2(src: &[f32], dst: &mut [f32]) {
    let mut s = src.chunks_exact(8);
    let mut d = dst.chunks_exact_mut(8);
    for (sc, dc) in (&mut s).zip(&mut d) {
        // SAFETY: both chunks hold 8 f32; the loads and stores are unaligned.
        unsafe {
            let r = round8(_mm256_loadu_ps(sc.as_ptr()));
            _mm256_storeu_ps(dc.as_mut_ptr(), _mm256_castsi256_ps(r));
        }
    }
    for (a, b) in s.remainder().iter().zip(d.into_remainder()) {
        *b = rounded(*a);
    }
}

/// Rounds `src` into `dst` (same length) as bf16 bits, 8 at a time, the tail scalar.
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_bits_avx2(src: &[f32], dst: &mut [u16]) {
    let mut s = src.chunks_exact(8);
    let mut d = dst.chunks_exact_mut(8);
    for (sc, dc) in (&mut s).zip(&mut d) {
        // SAFETY: the source chunk holds 8 f32 and the destination 8 u16 (one 128-bit store).
        unsafe {
            let r = _mm256_srli_epi32::<16>(round8(_mm256_loadu_ps(sc.as_ptr())));
            // Pack within 128-bit lanes, then gather lanes 0 and 2 of 64 bits: [r0..r3, r4..r7].
            let p = _mm256_permute4x64_epi64::<0b00_00_10_00>(_mm256_packus_epi32(r, r));
            _mm_storeu_si128(dc.as_mut_ptr().cast(), _mm256_castsi256_si128(p));
        }
    }
    for (a, b) in s.remainder().iter().zip(d.into_remainder()) {
        *b = bits(*a);
    }
}

/// Whether the AVX2 versions can run (cached by std).
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    is_x86_feature_detected!("avx2")
}

/// A row conversion that needs AVX2, offered only when AVX2 was detected at runtime.
type SimdRow<T> = Option<unsafe fn(&[f32], &mut [T])>;

/// `out = x` (`rows` rows of `inp`) converted per value by `scalar`, or per row by `simd` (the
/// same results), rows padded to `kp` with `T::default()`; in bands of rows across `pool` when
/// the call is large.
fn convert<T: Copy + Default + Send>(
    pool: &rayon::ThreadPool,
    x: &[f32],
    (rows, inp, kp): (usize, usize, usize),
    out: &mut Vec<T>,
    scalar: fn(f32) -> T,
    simd: SimdRow<T>,
) {
    use rayon::prelude::*;
    /// Rows per band.
    const BAND: usize = 16;
    out.clear();
    out.resize(rows * kp, T::default());
    let (inp, kp) = (inp.max(1), kp.max(1));
    let band = |(src, dst): (&[f32], &mut [T])| {
        for (src, dst) in src.chunks_exact(inp).zip(dst.chunks_exact_mut(kp)) {
            let dst = &mut dst[..inp];
            match simd {
                // SAFETY: `simd` is offered only when AVX2 was detected (see `SimdRow`).
                Some(f) => unsafe { f(src, dst) },
                None => src.iter().zip(dst).for_each(|(a, b)| *b = scalar(*a)),
            }
        }
    };
    if pool.current_num_threads() > 1 && rows > BAND && rows * inp >= 1 << 16 {
        pool.install(|| {
            x.par_chunks(BAND * inp)
                .zip(out.par_chunks_mut(BAND * kp))
                .for_each(band)
        });
    } else {
        band((x, out));
    }
}

/// `out = x` (`rows` rows of `inp`) as bf16 bits, rows padded to `kp` with zeros (across `pool`
/// when large).
pub(crate) fn to_bits(
    pool: &rayon::ThreadPool,
    x: &[f32],
    (rows, inp, kp): (usize, usize, usize),
    out: &mut Vec<u16>,
) {
    #[cfg(target_arch = "x86_64")]
    let simd: SimdRow<u16> = avx2().then_some(row_bits_avx2);
    #[cfg(not(target_arch = "x86_64"))]
    let simd = None;
    convert(pool, x, (rows, inp, kp), out, bits, simd);
}

/// `out = x` (`rows` rows of `inp`) rounded to bf16 and widened back to f32, rows padded to `kp`
/// with zeros (across `pool` when large).
pub(crate) fn to_rounded_f32(
    pool: &rayon::ThreadPool,
    x: &[f32],
    (rows, inp, kp): (usize, usize, usize),
    out: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    let simd: SimdRow<f32> = avx2().then_some(row_f32_avx2);
    #[cfg(not(target_arch = "x86_64"))]
    let simd = None;
    convert(pool, x, (rows, inp, kp), out, rounded, simd);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Both forms, SIMD and scalar, are `half`'s rounding bit for bit, on random bit patterns
    /// (NaNs, infinities, denormals, ties included) and every row tail length.
    #[test]
    fn rounding_is_half_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut vals: Vec<f32> = (0..4000).map(|_| f32::from_bits(rng.gen())).collect();
        vals.extend([
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE / 3.0,
            0.0,
            -0.0,
            f32::from_bits(0x3f80_8000), // a tie to even (down)
            f32::from_bits(0x3f81_8000), // a tie to even (up)
            f32::from_bits(0x7f7f_ffff), // rounds to infinity
        ]);
        // Large enough that two threads split the rows into bands.
        let vals = vals.repeat(20);
        let pools = [1, 2].map(|n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .expect("pool")
        });
        for (pool, inp) in pools
            .iter()
            .flat_map(|p| [1usize, 7, 8, 13, 64].map(|i| (p, i)))
        {
            let rows = vals.len() / inp;
            let x = &vals[..rows * inp];
            let kp = inp.div_ceil(8) * 8;
            let (mut b, mut f) = (Vec::new(), Vec::new());
            to_bits(pool, x, (rows, inp, kp), &mut b);
            to_rounded_f32(pool, x, (rows, inp, kp), &mut f);
            for t in 0..rows {
                for i in 0..kp {
                    let want = if i < inp {
                        half::bf16::from_f32(x[t * inp + i]).to_bits()
                    } else {
                        0
                    };
                    assert_eq!(
                        b[t * kp + i],
                        want,
                        "bits of {}",
                        x[t * inp + i.min(inp - 1)]
                    );
                    assert_eq!(f[t * kp + i].to_bits(), u32::from(want) << 16);
                }
            }
        }
    }
}
