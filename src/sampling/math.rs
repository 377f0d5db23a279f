//! Branch-free helpers that the compiler vectorises: `exp` of non-positive numbers, max and
//! sum reductions over a logits row.

/// Below this, `exp` is treated as exactly 0 (`exp(-87.3)` is the smallest normal f32).
const EXP_CUTOFF: f32 = -87.0;

/// `exp(x)` for `x <= 0` (also `-inf` → 0), within ~2 ulp of `f32::exp` for `x >= -87` and 0
/// below. Cephes `expf`: `x = n ln2 + r`, a degree-6 polynomial for `exp(r)`, exponent bits
/// for `2^n`. Positive `x` is clamped to 0 (callers pass `w - max`); NaN gives 0.
#[inline(always)]
pub(crate) fn exp_nonpos(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.clamp(EXP_CUTOFF, 0.0);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // n is an integer in [-126, 0]; its bits sit in the low mantissa bits of t.
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    // `x >= cutoff` is false for NaN and -inf.
    if x >= EXP_CUTOFF {
        y * scale
    } else {
        0.0
    }
}

const LANES: usize = 16;

/// Maximum of `xs` (−∞ when empty). `xs` must contain no NaN.
pub(crate) fn max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &x in lanes.iter().chain(rest) {
        m = if x > m { x } else { m };
    }
    m
}

/// `Σ f(x)` for `f(x)` in [0, 1]: f32 lanes over blocks of 256 (≤ 16 terms per lane, so
/// the f32 rounding stays near 1e-7 relative), blocks accumulated in f64. Vectorises.
#[inline(always)]
fn sum_map(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0.0f64;
    for block in xs.chunks(256) {
        let mut lanes = [0.0f32; LANES];
        let chunks = block.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for (s, &x) in lanes.iter_mut().zip(c) {
                *s += f(x);
            }
        }
        total += lanes.iter().map(|&l| f64::from(l)).sum::<f64>();
        total += rest.iter().map(|&x| f64::from(f(x))).sum::<f64>();
    }
    total
}

/// `Σ exp_nonpos((x - max) / temperature)`.
pub(crate) fn sum_exp(xs: &[f32], max: f32, temperature: f32) -> f64 {
    sum_map(xs, |x| exp_nonpos((x - max) / temperature))
}

/// `Σ xs` for values in [0, 1].
pub(crate) fn sum_unit(xs: &[f32]) -> f64 {
    sum_map(xs, |x| x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_nonpos_matches_std() {
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x > -87.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp_nonpos(x));
            worst = worst.max(((got - want) / want).abs());
            x -= 0.000_37;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert_eq!(exp_nonpos(-0.0), 1.0);
        assert_eq!(exp_nonpos(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpos(f32::NAN), 0.0);
        assert_eq!(exp_nonpos(-1000.0), 0.0);
        assert_eq!(exp_nonpos(3.0), 1.0);
    }

    #[test]
    fn max_and_sum_exp() {
        let xs: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin()).collect();
        let m = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max(&xs), m);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        let want: f64 = xs.iter().map(|&x| f64::from((x - m) / 0.5).exp()).sum();
        assert!((sum_exp(&xs, m, 0.5) - want).abs() < 1e-5);
    }
}
