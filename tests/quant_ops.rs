//! The quantized matmul: every ggml type × every CPU kernel path bitwise equal to the scalar
//! twin (`backend::reference::quant_dot`, what `ReferenceBackend` computes on quantized
//! weights); the twin within its derived error bound of the f64 product of the dequantized
//! weights; batch and thread invariance; fused weights mixing types (and dense parts);
//! embedding gather from a quantized table.

use std::sync::Arc;

use loraplex::backend::cpu::{CpuBackend, QuantKernel};
use loraplex::backend::reference::quant_block::{decode_row, dequant_row, has_min, BlockParams};
use loraplex::backend::reference::quant_dot::error_bound;
use loraplex::backend::reference::ReferenceBackend;
use loraplex::backend::{Backend, WeightFormat};
use loraplex::quant::{dequantize, GgmlType, QuantData};
use loraplex::tensor::HostTensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Every type with kernels, and the byte offsets of its f16 scale fields.
const TYPES: [(GgmlType, &[usize]); 12] = [
    (GgmlType::Q8_0, &[0]),
    (GgmlType::Q4_0, &[0]),
    (GgmlType::Q4_1, &[0, 2]),
    (GgmlType::Q5_0, &[0]),
    (GgmlType::Q5_1, &[0, 2]),
    (GgmlType::Q2K, &[80, 82]),
    (GgmlType::Q3K, &[108]),
    (GgmlType::Q4K, &[0, 2]),
    (GgmlType::Q5K, &[0, 2]),
    (GgmlType::Q6K, &[208]),
    (GgmlType::Iq4Nl, &[0]),
    (GgmlType::Iq4Xs, &[0]),
];

fn pool(n: usize) -> Arc<rayon::ThreadPool> {
    Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap(),
    )
}

/// The backends of every kernel path this CPU has (a missing path is reported, not hidden).
fn backends(threads: usize) -> Vec<(QuantKernel, CpuBackend)> {
    QuantKernel::ALL
        .iter()
        .filter_map(|&k| match CpuBackend::with_quant_kernel(pool(threads), k) {
            Ok(b) => Some((k, b)),
            Err(e) => {
                eprintln!(
                    "SKIPPED quantized kernel path {}: {}",
                    k.name(),
                    e.message()
                );
                None
            }
        })
        .collect()
}

/// Random blocks of `ty` (`rows` rows of `cols`) with sane f16 scales (|d| in [2^-10, 2^-4],
/// random sign for mins).
fn random_quant(rng: &mut ChaCha8Rng, ty: GgmlType, rows: usize, cols: usize) -> QuantData {
    let offsets = TYPES.iter().find(|t| t.0 == ty).unwrap().1;
    let ts = ty.type_size() as usize;
    let nblk = rows * cols / ty.block_size() as usize;
    let mut bytes: Vec<u8> = (0..nblk * ts).map(|_| rng.gen()).collect();
    for blk in bytes.chunks_exact_mut(ts) {
        for (k, &off) in offsets.iter().enumerate() {
            let mag = 2f32.powf(rng.gen_range(-10.0..-4.0));
            let sign = if k == 1 && rng.gen_bool(0.5) {
                -1.0
            } else {
                1.0
            };
            let v = half::f16::from_f32(sign * mag).to_le_bytes();
            blk[off..off + 2].copy_from_slice(&v);
        }
    }
    QuantData::new(ty, rows, cols, bytes).unwrap()
}

/// Row lengths to test `ty` at: one super-block and several; for 32-element types a partial
/// super-block alone (7 blocks), whole ones followed by a partial one (15 blocks), and whole
/// ones only (the kernels unpack whole super-blocks and the last partial one differently).
fn cols_for(ty: GgmlType) -> Vec<usize> {
    if ty.block_size() == 256 {
        vec![256, 768]
    } else {
        vec![224, 480, 768]
    }
}

fn rand_x(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect()
}

fn assert_bits(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "{what}: index {i}: {x} vs {y}");
    }
}

/// The rows of `q` dequantized through the kernels' decoder (as ggml does).
fn dequant(q: &QuantData) -> Vec<f32> {
    let cols = q.cols();
    let mut out = vec![0f32; q.rows() * cols];
    let mut wq = vec![0i8; cols];
    let mut wp = vec![BlockParams::default(); cols / 32];
    for r in 0..q.rows() {
        assert!(decode_row(q.ty(), q.row(r), &mut wq, &mut wp));
        dequant_row(
            &wq,
            &wp,
            has_min(q.ty()),
            &mut out[r * cols..(r + 1) * cols],
        );
    }
    out
}

#[test]
fn decoder_dequantizes_like_dequantize() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (ty, _) in TYPES {
        let q = random_quant(&mut rng, ty, 3, cols_for(ty)[1]);
        let want = dequantize(ty, q.bytes(), q.rows() * q.cols()).unwrap();
        assert_bits(&format!("{ty}"), &dequant(&q), &want);
    }
}

#[test]
fn every_type_and_path_matches_the_twin_bitwise() {
    let r = ReferenceBackend;
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let bes = backends(2);
    for (ty, _) in TYPES {
        for cols in cols_for(ty) {
            let out = 37;
            let t = HostTensor::quantized(random_quant(&mut rng, ty, out, cols));
            let wr = r.weight(&t, WeightFormat::F32).unwrap();
            assert_eq!(r.weight_bytes(&wr), t.quant().unwrap().bytes().len());
            // 37 rows: the AMX int8 path's tiles (two whole groups of 16 and a partial one).
            for rows in [1, 3, 5, 9, 37] {
                let x = rand_x(&mut rng, rows * cols);
                let mut yr = vec![0f32; rows * out];
                r.matmul(&x, rows, &wr, &mut yr);
                assert!(yr.iter().all(|v| v.is_finite()), "{ty}: finite");
                for (k, be) in &bes {
                    for format in [WeightFormat::F32, WeightFormat::BF16] {
                        let wc = be.weight(&t, format).unwrap();
                        assert_eq!(be.weight_dims(&wc), (out, cols));
                        assert_eq!(be.weight_bytes(&wc), t.quant().unwrap().bytes().len());
                        let mut yc = vec![0f32; rows * out];
                        be.matmul(&x, rows, &wc, &mut yc);
                        let what = format!("{ty} {} cols={cols} rows={rows}", k.name());
                        assert_bits(&what, &yc, &yr);
                    }
                }
            }
        }
    }
}

#[test]
fn twin_is_within_its_error_bound_of_the_dequantized_product() {
    let r = ReferenceBackend;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (ty, _) in TYPES {
        let cols = cols_for(ty)[1];
        let (out, rows) = (16, 4);
        let q = random_quant(&mut rng, ty, out, cols);
        let w = dequant(&q);
        let wr = r
            .weight(&HostTensor::quantized(q), WeightFormat::F32)
            .unwrap();
        // Activations with outliers per block, as real hidden states have.
        let mut x = rand_x(&mut rng, rows * cols);
        for v in x.iter_mut().step_by(37) {
            *v *= 20.0;
        }
        let mut y = vec![0f32; rows * out];
        r.matmul(&x, rows, &wr, &mut y);
        let mut worst = 0f64;
        for t in 0..rows {
            let xr = &x[t * cols..(t + 1) * cols];
            for o in 0..out {
                let wrow = &w[o * cols..(o + 1) * cols];
                let exact: f64 = wrow
                    .iter()
                    .zip(xr)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum();
                let bound = error_bound(wrow, xr);
                let err = (y[t * out + o] as f64 - exact).abs();
                assert!(err <= bound, "{ty} t={t} o={o}: err {err} > bound {bound}");
                worst = worst.max(err / bound);
            }
        }
        // The bound is not vacuous: the error reaches a visible fraction of it.
        assert!(worst > 0.01, "{ty}: worst err/bound {worst}");
    }
}

#[test]
fn every_path_is_batch_and_thread_invariant() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (one, two) = (backends(1), backends(2));
    for (ty, _) in TYPES {
        let cols = cols_for(ty)[1];
        let out = 67;
        let t = HostTensor::quantized(random_quant(&mut rng, ty, out, cols));
        let rows = 64;
        let x = rand_x(&mut rng, rows * cols);
        for ((k, b1), (_, b2)) in one.iter().zip(&two) {
            let (w1, w2) = (
                b1.weight(&t, WeightFormat::F32).unwrap(),
                b2.weight(&t, WeightFormat::F32).unwrap(),
            );
            let mut y64 = vec![0f32; rows * out];
            b2.matmul(&x, rows, &w2, &mut y64);
            for r in 0..rows {
                let mut y1 = vec![0f32; out];
                b1.matmul(&x[r * cols..(r + 1) * cols].to_vec(), 1, &w1, &mut y1);
                let what = format!(
                    "{ty} {} row {r}: 1 row/1 thread vs 64 rows/2 threads",
                    k.name()
                );
                assert_bits(&what, &y1, &y64[r * out..(r + 1) * out]);
            }
        }
    }
}

#[test]
fn fused_weight_stacks_segments_of_different_types() {
    let r = ReferenceBackend;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let cols = 512;
    // Segments of a Q4_K_M file's types (Q4_K has mins, Q6_K not) whose boundaries (20, 37)
    // fall inside the vector kernels' 8-row groups and the AMX path's 16-row panels (a panel
    // of Q4_K rows 0-15, rows 16-19 on the VNNI kernels, a panel of Q6_K rows 20-35, the rest
    // on the VNNI kernels), and a partial last group (46 rows).
    let parts = [
        HostTensor::quantized(random_quant(&mut rng, GgmlType::Q4K, 20, cols)),
        HostTensor::quantized(random_quant(&mut rng, GgmlType::Q6K, 17, cols)),
        HostTensor::quantized(random_quant(&mut rng, GgmlType::Q4K, 9, cols)),
    ];
    let refs: Vec<&HostTensor> = parts.iter().collect();
    let bytes: usize = parts.iter().map(|p| p.quant().unwrap().bytes().len()).sum();
    const OUT: usize = 46;
    for rows in [6, 29] {
        let x = rand_x(&mut rng, rows * cols);
        let wr = r.fused_weight(&refs, WeightFormat::F32).unwrap();
        let mut yr = vec![0f32; rows * OUT];
        r.matmul(&x, rows, &wr, &mut yr);
        // Each part alone gives the same columns.
        let mut col = 0;
        for p in &parts {
            let n = p.shape[0];
            let w = r.weight(p, WeightFormat::F32).unwrap();
            let mut y = vec![0f32; rows * n];
            r.matmul(&x, rows, &w, &mut y);
            for t in 0..rows {
                assert_bits(
                    "part",
                    &y[t * n..(t + 1) * n],
                    &yr[t * OUT + col..t * OUT + col + n],
                );
            }
            col += n;
        }
        for (k, be) in backends(2) {
            let wc = be.fused_weight(&refs, WeightFormat::BF16).unwrap();
            assert_eq!(be.weight_dims(&wc), (OUT, cols));
            assert_eq!(be.weight_bytes(&wc), bytes);
            let mut yc = vec![0f32; rows * OUT];
            be.matmul(&x, rows, &wc, &mut yc);
            assert_bits(&format!("mixed fused {} rows={rows}", k.name()), &yc, &yr);
        }
    }
}

#[test]
fn fused_weight_mixing_dense_and_quantized_packs_dense_exactly() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let cols = 64;
    let q = random_quant(&mut rng, GgmlType::Q8_0, 5, cols);
    let dense = HostTensor::f32(vec![3, cols], rand_x(&mut rng, 3 * cols));
    let expanded = HostTensor::f32(vec![5, cols], dequant(&q));
    let quant = HostTensor::quantized(q);
    let be = CpuBackend::new(pool(1));
    let mixed = be
        .fused_weight(&[&quant, &dense], WeightFormat::F32)
        .unwrap();
    let plain = be
        .fused_weight(&[&expanded, &dense], WeightFormat::F32)
        .unwrap();
    assert_eq!(be.weight_bytes(&mixed), 8 * cols * 4, "packed dense f32");
    let x = rand_x(&mut rng, 2 * cols);
    let (mut a, mut b) = (vec![0f32; 16], vec![0f32; 16]);
    be.matmul(&x, 2, &mixed, &mut a);
    be.matmul(&x, 2, &plain, &mut b);
    assert_bits("dense + quantized", &a, &b);
}

#[test]
fn embedding_gather_dequantizes_rows_exactly() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let r = ReferenceBackend;
    for (ty, _) in TYPES {
        let cols = cols_for(ty)[0];
        let q = random_quant(&mut rng, ty, 11, cols);
        let w = dequant(&q);
        let t = HostTensor::quantized(q);
        let ids = [3u32, 0, 10, 3];
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&i| w[i as usize * cols..(i as usize + 1) * cols].to_vec())
            .collect();
        for (k, be) in backends(1) {
            let wc = be.weight(&t, WeightFormat::F32).unwrap();
            let mut out = vec![0f32; ids.len() * cols];
            be.embedding_gather(&wc, &ids, &mut out);
            assert_bits(&format!("{ty} gather {}", k.name()), &out, &want);
            let mut bad = vec![0f32; cols];
            be.embedding_gather(&wc, &[11], &mut bad);
            assert!(bad.iter().all(|v| v.is_nan()), "{ty}: out-of-range id");
        }
        let wr = r.weight(&t, WeightFormat::F32).unwrap();
        let mut out = vec![0f32; ids.len() * cols];
        r.embedding_gather(&wr, &ids, &mut out);
        assert_bits(&format!("{ty} reference gather"), &out, &want);
    }
}

#[test]
fn bad_shapes_give_nan_not_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let t = HostTensor::quantized(random_quant(&mut rng, GgmlType::Q4_0, 4, 64));
    for (_, be) in backends(1) {
        let w = be.weight(&t, WeightFormat::F32).unwrap();
        let mut y = vec![0f32; 8];
        be.matmul(&vec![1.0; 100], 2, &w, &mut y);
        assert!(y.iter().all(|v| v.is_nan()));
    }
}

#[test]
fn a_weight_computes_the_same_bits_whichever_path_packed_it() {
    // The AVX2 path keeps Q4_K, Q5_K, Q6_K and IQ4_XS blocks and groups of 8 blocks of the
    // 32-element types (4-, 5- and 8-bit) in its step order; every path reads either order, and
    // an embedding gather from such a table dequantizes the ggml values.
    let r = ReferenceBackend;
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let bes = backends(2);
    // The 32-element types at 576 columns: two whole groups and a tail of 2 blocks.
    for (ty, cols) in [
        (GgmlType::Q4K, 512),
        (GgmlType::Q4_0, 576),
        (GgmlType::Q4_1, 576),
        (GgmlType::Q5_0, 576),
        (GgmlType::Q5_1, 576),
        (GgmlType::Iq4Nl, 576),
        (GgmlType::Q8_0, 576),
        (GgmlType::Q5K, 512),
        (GgmlType::Q6K, 512),
        (GgmlType::Iq4Xs, 512),
    ] {
        let out = 19;
        let t = HostTensor::quantized(random_quant(&mut rng, ty, out, cols));
        let wr = r.weight(&t, WeightFormat::F32).unwrap();
        let ids: Vec<u32> = (0..out as u32).rev().collect();
        let mut want_rows = vec![0f32; ids.len() * cols];
        r.embedding_gather(&wr, &ids, &mut want_rows);
        assert!(want_rows.iter().all(|v| v.is_finite()), "{ty}: finite rows");
        for rows in [1, 6] {
            let x = rand_x(&mut rng, rows * cols);
            let mut yr = vec![0f32; rows * out];
            r.matmul(&x, rows, &wr, &mut yr);
            for (kp, bp) in &bes {
                let w = bp.weight(&t, WeightFormat::F32).unwrap();
                let steps = *kp == QuantKernel::Avx2;
                assert_eq!(w.is_step_order(), steps, "{ty} packed by {}", kp.name());
                let mut got_rows = vec![f32::NAN; ids.len() * cols];
                bp.embedding_gather(&w, &ids, &mut got_rows);
                assert_bits(
                    &format!("{ty} gather, packed by {}", kp.name()),
                    &got_rows,
                    &want_rows,
                );
                for (kc, bc) in &bes {
                    let mut yc = vec![0f32; rows * out];
                    bc.matmul(&x, rows, &w, &mut yc);
                    let what = format!(
                        "{ty} rows={rows} packed by {} run on {}",
                        kp.name(),
                        kc.name()
                    );
                    assert_bits(&what, &yc, &yr);
                }
            }
        }
    }
}
