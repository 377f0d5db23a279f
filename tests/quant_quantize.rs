//! Quantizers (f32 rows → ggml blocks): Q8_0 and Q4_0 bit-exact with gguf-py 0.17.1's
//! `gguf.quants.quantize` (tests/fixtures/quant/quant-*), the K-quants (Q4_K, Q5_K, Q6_K)
//! round-tripped through the gguf-py-exact dequantizer within error bounds derived from each
//! format, row independence, and the errors.

use loraplex::quant::dequant::dequantize;
use loraplex::quant::quantize::{is_quantizable, quantize};
use loraplex::quant::GgmlType;
use loraplex::ErrorCode;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod quant_support;
use quant_support::{assert_bits_eq, cases};

const WRITTEN: [GgmlType; 7] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

#[test]
fn q8_0_and_k_quants_match_ggml_c_reference_bytes() {
    // Blocks written by ggml's own quantize_row_*_ref (ggml-quants.c built with gcc,
    // no FMA contraction) from the same rows; see scripts/quant-oracle.py --ggml.
    let mut seen = Vec::new();
    for c in cases().iter().filter(|c| c.name.starts_with("ggml-")) {
        let x = c.input.as_ref().expect("ggml case without input");
        let cols = 512;
        let q = quantize(c.ty, x.len() / cols, cols, x).unwrap();
        let ts = c.ty.type_size() as usize;
        for (b, (got, want)) in q.bytes().chunks(ts).zip(c.blocks.chunks(ts)).enumerate() {
            assert_eq!(
                got,
                want,
                "{}: block {b} (row {}) differs from ggml",
                c.name,
                b * c.ty.block_size() as usize / cols
            );
        }
        assert_eq!(q.bytes().len(), c.blocks.len());
        seen.push(c.ty);
    }
    assert_eq!(
        seen.len(),
        4,
        "expected ggml fixtures for Q8_0, Q4_K, Q5_K, Q6_K: {seen:?}"
    );
}

#[test]
fn q8_0_q4_0_q5_0_q5_1_match_gguf_py_bytes() {
    let mut seen = 0;
    for c in cases().iter().filter(|c| c.name.starts_with("quant-")) {
        let x = c.input.as_ref().expect("quant case without input");
        let cols = 64;
        let q = quantize(c.ty, x.len() / cols, cols, x).unwrap();
        assert_eq!(
            q.bytes(),
            &c.blocks[..],
            "{}: blocks differ from gguf-py",
            c.name
        );
        assert_bits_eq(&q.to_f32().unwrap(), &c.expected, &c.name);
        seen += 1;
    }
    assert_eq!(
        seen, 4,
        "expected the Q8_0, Q4_0, Q5_0 and Q5_1 quantize fixtures"
    );
}

/// Rows that exercise the fits: normal, all-positive, all-negative, sparse outliers, a
/// constant, all zeros, tiny and huge magnitudes, mixed groups.
fn test_rows(cols: usize) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut normal = |s: f32| -> Vec<f32> {
        (0..cols)
            .map(|_| {
                // Box-Muller: a normal sample without extra crates.
                let (u, v): (f32, f32) = (rng.gen_range(1e-7..1.0), rng.gen());
                s * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
            })
            .collect()
    };
    let mut rows = vec![normal(1.0), normal(0.02), normal(3e-6), normal(4e3)];
    rows.push(normal(1.0).into_iter().map(f32::abs).collect());
    rows.push(normal(1.0).into_iter().map(|v| -v.abs() - 0.5).collect());
    let mut outliers = normal(0.05);
    for i in (0..cols).step_by(97) {
        outliers[i] = if i % 2 == 0 { 9.0 } else { -7.0 };
    }
    rows.push(outliers);
    rows.push(vec![0.375; cols]);
    rows.push(vec![0.0; cols]);
    let mut mixed = normal(1.0);
    for (i, v) in mixed.iter_mut().enumerate() {
        // Alternate 32-element groups of very different spread.
        if (i / 32) % 2 == 1 {
            *v *= 1e-3;
        }
    }
    rows.push(mixed);
    rows
}

/// The largest error the format allows for one element of `block` (the block of `ty` holding
/// it), from the format's arithmetic:
/// * Q8_0: `d = amax/127` rounded to f16 (relative error ≤ 2⁻¹¹); `|x - q·d| ≤ d/2` plus
///   `127 · d · 2⁻¹¹` from the f16 scale.
/// * Q4_0: `d = m/-8`; the element of the other sign and full magnitude lands on level 16 and is
///   clamped to 15, an error of `|d|`; everything else is within `|d|/2`; plus `16 · |d| · 2⁻¹¹`.
/// * Q4_K / Q5_K (affine, `nmax` = 15 / 31): with block range `R = max - min(min, 0)` the group
///   step is at most `R / (nmax - 1)` (the search's narrowest grid), so rounding costs half of
///   it; the 6-bit group scale and min are within half a super-scale step (`S/126`, `M/126`,
///   `S ≤ R/(nmax-1)`, `M ≤ R`), which moves level `nmax` by `nmax · S/126` and the offset by
///   `M/126`.
/// * Q6_K (symmetric, levels -32..31): group scale `≈ a/32` (a = the group's max |x|); rounding
///   costs half a step, clamping the other sign at 31 one step; the i8 group scale is within
///   half a super-step (`A/(128·32)`, A = block max |x|), times 32 levels.
///
/// Every f16 scale also carries its own rounding error, `max(|v|·2⁻¹¹, 2⁻²⁵)` (relative for
/// normal f16, half the subnormal spacing below 2⁻¹⁴), times the largest level it multiplies;
/// a factor of 1.25 covers f32 arithmetic and the relative part for the K-quants.
fn bound(ty: GgmlType, block: &[f32]) -> f32 {
    let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
    let hi = block.iter().fold(f32::MIN, |a, &v| a.max(v));
    let lo = block.iter().fold(f32::MAX, |a, &v| a.min(v)).min(0.0);
    let range = hi - lo;
    let f16_abs = (2.0f32).powi(-25);
    let f16_err = |v: f32| (v.abs() / 2048.0).max(f16_abs);
    match ty {
        GgmlType::Q8_0 => {
            let d = amax / 127.0;
            (d * 0.5 + 127.0 * f16_err(d)) * 1.001
        }
        GgmlType::Q4_0 => {
            let d = amax / 8.0;
            (d + 16.0 * f16_err(d)) * 1.001
        }
        GgmlType::Q5_0 => {
            let d = amax / 16.0;
            (d + 32.0 * f16_err(d)) * 1.001
        }
        GgmlType::Q5_1 => {
            // d = range / 31 (half a step of rounding), plus f16 rounding of d (times the level,
            // up to 31) and of the stored minimum.
            let min = block.iter().fold(f32::MAX, |a, &v| a.min(v));
            let d = (hi - min) / 31.0;
            (d * 0.5 + 31.0 * f16_err(d) + f16_err(min)) * 1.001
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let nmax = if ty == GgmlType::Q4K { 15.0 } else { 31.0 };
            let step = range / (nmax - 1.0);
            (0.5 * step + nmax * step / 126.0 + range / 126.0 + (nmax + 1.0) * 63.0 * f16_abs)
                * 1.25
        }
        GgmlType::Q6K => {
            (amax / 32.0 + 32.0 * amax / (128.0 * 32.0) * 0.5 + 32.0 * 128.0 * f16_abs) * 1.25
        }
        _ => unreachable!(),
    }
}

#[test]
fn every_written_type_round_trips_within_its_format_bound() {
    let cols = 512;
    for ty in WRITTEN {
        let bs = ty.block_size() as usize;
        let mut rms = Vec::new();
        for (r, row) in test_rows(cols).iter().enumerate() {
            let q = quantize(ty, 1, cols, row).unwrap();
            assert_eq!(q.bytes().len(), cols / bs * ty.type_size() as usize);
            let y = dequantize(ty, q.bytes(), cols).unwrap();
            for (b, (xb, yb)) in row.chunks(bs).zip(y.chunks(bs)).enumerate() {
                let lim = bound(ty, xb);
                for (i, (x, y)) in xb.iter().zip(yb).enumerate() {
                    assert!(
                        (x - y).abs() <= lim,
                        "{ty} row {r} block {b} element {i}: {x} -> {y}, bound {lim}"
                    );
                }
            }
            let err2: f32 = row.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
            let sig2: f32 = row.iter().map(|a| a * a).sum();
            if r == 0 {
                rms.push((err2 / sig2).sqrt());
            }
            if row.iter().all(|&v| v == 0.0) {
                assert!(y.iter().all(|&v| v == 0.0), "{ty}: zeros stay zeros");
            }
        }
        eprintln!("{ty}: relative RMS error on N(0,1) = {:.4}", rms[0]);
    }
}

#[test]
fn k_quants_rank_by_bits_on_normal_data() {
    let cols = 4096;
    let row = &test_rows(cols)[0];
    let rel = |ty| {
        let y = quantize(ty, 1, cols, row).unwrap().to_f32().unwrap();
        let e: f32 = row.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
        let s: f32 = row.iter().map(|a| a * a).sum();
        (e / s).sqrt()
    };
    let (q4, q5, q6, q8) = (
        rel(GgmlType::Q4K),
        rel(GgmlType::Q5K),
        rel(GgmlType::Q6K),
        rel(GgmlType::Q8_0),
    );
    // Each extra bit roughly halves the error; llama.cpp's reference quantizers reach about
    // these levels on Gaussian data.
    assert!(
        q4 < 0.11 && q5 < 0.055 && q6 < 0.03 && q8 < 0.01,
        "{q4} {q5} {q6} {q8}"
    );
    assert!(q5 < q4 * 0.7 && q6 < q5 * 0.7, "{q4} {q5} {q6}");
    assert!(q4 < rel(GgmlType::Q4_0), "Q4_K beats Q4_0");
}

#[test]
fn a_row_quantizes_the_same_alone_and_in_a_matrix() {
    let cols = 256;
    let rows = test_rows(cols);
    let flat: Vec<f32> = rows.concat();
    for ty in WRITTEN {
        let all = quantize(ty, rows.len(), cols, &flat).unwrap();
        for (r, row) in rows.iter().enumerate() {
            let one = quantize(ty, 1, cols, row).unwrap();
            assert_eq!(all.row(r), one.bytes(), "{ty} row {r}");
        }
    }
}

#[test]
fn bad_inputs_are_invalid_argument_errors_naming_the_fault() {
    let x = vec![0.5f32; 512];
    let e = quantize(GgmlType::Q4K, 2, 128, &x[..256]).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(e.message().contains("128 columns"), "{}", e.message());
    let e = quantize(GgmlType::Q8_0, 2, 256, &x[..500]).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(e.message().contains("500"), "{}", e.message());
    let mut bad = x.clone();
    bad[256 + 7] = f32::NAN;
    let e = quantize(GgmlType::Q6K, 2, 256, &bad).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(e.message().contains("row 1, column 7"), "{}", e.message());
    bad[256 + 7] = f32::INFINITY;
    assert!(quantize(GgmlType::Q8_0, 2, 256, &bad).is_err());
    let e = quantize(GgmlType::Q2K, 1, 256, &x[..256]).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(e.message().contains("Q2_K"), "{}", e.message());
    assert!(WRITTEN.iter().all(|&t| is_quantizable(t)));
    assert!(!is_quantizable(GgmlType::F16));
}
