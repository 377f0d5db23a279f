//! Random inputs and output comparisons shared by the backend op tests (tests/ops.rs,
//! tests/device_ops.rs, tests/lora_ops.rs).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// `n` values uniform in [-1, 1).
pub fn rand_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// Asserts `|a[i] - b[i]| <= tol(i)` elementwise (a NaN on either side fails); `b` is the
/// reference.
pub fn assert_close(what: &str, a: &[f32], b: &[f32], tol: impl Fn(usize) -> f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for i in 0..a.len() {
        let d = (a[i] - b[i]).abs();
        assert!(
            d <= tol(i),
            "{what}: index {i}: {} vs reference {} (diff {d:e}, tol {:e})",
            a[i],
            b[i],
            tol(i)
        );
    }
}

/// Asserts that `a` and `b` hold the same bits, naming the first index that differs.
pub fn assert_bits_eq(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
        panic!("{what}: index {i}: {} vs {}", a[i], b[i]);
    }
}
