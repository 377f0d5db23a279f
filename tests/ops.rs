//! Every backend op: CpuBackend (SIMD and portable kernels) against the scalar ReferenceBackend,
//! plus bitwise batch- and thread-invariance of matmul and attention (full and windowed).

use std::sync::Arc;

mod common;

use common::paged::{paged_step, slot, PagedStep};
use common::values::{assert_bits_eq, assert_close, rand_vec};
use loraplex::backend::cpu::{Bf16Kernel, CpuBackend};
use loraplex::backend::reference::ReferenceBackend;
use loraplex::backend::{
    AttentionArgs, AttnMeta, Backend, KvGeometry, KvStore, KvWriteArgs, RopeArgs, View, ViewMut,
    WeightFormat,
};
use loraplex::tensor::{HostTensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const FORMATS: [WeightFormat; 2] = [WeightFormat::F32, WeightFormat::BF16];

fn pool(n: usize) -> Arc<rayon::ThreadPool> {
    Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap(),
    )
}

fn cpu(n: usize) -> CpuBackend {
    CpuBackend::new(pool(n))
}

fn tensor(rng: &mut ChaCha8Rng, out: usize, inp: usize) -> HostTensor {
    HostTensor::f32(vec![out, inp], rand_vec(rng, out * inp))
}

/// f32-accumulation bound for y[t, o]: 1e-6 * sqrt(in) * sum_i |x_i w_i| (+ denormal slack).
fn matmul_tol(x: &[f32], w: &[f32], rows: usize, out: usize, inp: usize) -> Vec<f32> {
    let mut tol = vec![0f32; rows * out];
    for t in 0..rows {
        for o in 0..out {
            let s: f32 = (0..inp)
                .map(|i| (x[t * inp + i] * w[o * inp + i]).abs())
                .sum();
            tol[t * out + o] = 1e-6 * (inp as f32).sqrt() * s + 1e-30;
        }
    }
    tol
}

fn check_matmul<B: Backend<Buf = Vec<f32>>>(
    be: &B,
    label: &str,
    shapes: &[(usize, usize, &[usize])],
) {
    let r = ReferenceBackend;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for &(inp, out, rows_list) in shapes {
        let t = tensor(&mut rng, out, inp);
        for format in FORMATS {
            let wr = r.weight(&t, format).unwrap();
            let wc = be.weight(&t, format).unwrap();
            assert_eq!(be.weight_dims(&wc), (out, inp));
            for &rows in rows_list {
                let x = rand_vec(&mut rng, rows * inp);
                let mut yr = vec![0f32; rows * out];
                let mut yc = vec![0f32; rows * out];
                r.matmul(&x, rows, &wr, &mut yr);
                be.matmul(&x, rows, &wc, &mut yc);
                let tol = matmul_tol(&x, &wr.data, rows, out, inp);
                let what = format!("{label} matmul {format:?} in={inp} out={out} rows={rows}");
                assert_close(&what, &yc, &yr, |i| tol[i]);
            }
        }
    }
}

const MATMUL_SHAPES: &[(usize, usize, &[usize])] = &[
    (1, 1, &[1, 2, 3]),
    (1, 5, &[1, 8, 33]),
    (7, 63, &[1, 2, 3, 8, 31, 32, 33, 257]),
    (64, 5, &[1, 3, 8, 32, 257]),
    (64, 63, &[1, 2, 31, 33]),
    (576, 63, &[1, 2, 3, 8, 31, 32, 33, 257]),
    (576, 1536, &[1, 3, 8, 33]),
    (1000, 5, &[1, 2, 3, 8, 31, 32, 33, 257]),
    (1000, 1536, &[1, 32]),
    (1536, 63, &[1, 8, 33]),
];

/// Every SIMD kernel path this CPU runs (bf16 weights: the AVX2/FMA f32 kernels on rounded
/// activations, the AVX-512 BF16 `vdpbf16ps` kernels and the AMX tiles where present; and the
/// kernel set of a CPU without AVX-512), with `threads` threads.
fn simd_paths(threads: usize) -> Vec<(&'static str, CpuBackend)> {
    let mut v = Vec::new();
    match CpuBackend::avx2_only(pool(threads)) {
        Ok(be) => v.push(("cpu avx2-only", be)),
        Err(e) => eprintln!("skipping the avx2-only kernel set: {e}"),
    }
    for (label, k) in [
        ("cpu avx2-fma", Bf16Kernel::F32),
        ("cpu avx512-bf16", Bf16Kernel::Avx512Bf16),
        ("cpu amx-bf16", Bf16Kernel::Amx),
    ] {
        match CpuBackend::with_bf16_kernel(pool(threads), k) {
            Ok(be) => v.push((label, be)),
            Err(e) => eprintln!("skipping the {label} path: {e}"),
        }
    }
    v
}

#[test]
fn matmul_simd_matches_reference() {
    for (label, be) in simd_paths(2) {
        check_matmul(&be, label, MATMUL_SHAPES);
    }
}

/// The AVX-512 BF16 path is bit for bit the order its kernel documents: per weight row, 4 lanes
/// each adding the pair `(k + 2i + 1, k + 2i)` of every 8-column step (odd element first, each
/// bf16 × bf16 product exact in f32), then `(l0 + l2) + (l1 + l3)`.
#[test]
fn matmul_bf16_dot_follows_its_documented_order() {
    let Ok(be) = CpuBackend::with_bf16_kernel(pool(2), Bf16Kernel::Avx512Bf16) else {
        eprintln!("skipping: no AVX-512 BF16 on this CPU");
        return;
    };
    let bf = |v: f32| half::bf16::from_f32(v).to_f32();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for &(inp, out, rows) in &[
        (64usize, 8usize, 5usize),
        (7, 5, 3),
        (576, 63, 17),
        (1000, 9, 33),
    ] {
        let t = tensor(&mut rng, out, inp);
        let w = be.weight(&t, WeightFormat::BF16).unwrap();
        let x = rand_vec(&mut rng, rows * inp);
        let mut y = vec![0f32; rows * out];
        be.matmul(&x, rows, &w, &mut y);
        let wd = t.to_f32_vec();
        for r in 0..rows {
            for o in 0..out {
                let at = |i: usize| {
                    if i < inp {
                        bf(x[r * inp + i]) * bf(wd[o * inp + i])
                    } else {
                        0.0
                    }
                };
                let mut lanes = [0f32; 4];
                for k in (0..inp.div_ceil(8) * 8).step_by(8) {
                    for (i, l) in lanes.iter_mut().enumerate() {
                        *l += at(k + 2 * i + 1);
                        *l += at(k + 2 * i);
                    }
                }
                let want = (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]);
                assert_eq!(
                    y[r * out + o].to_bits(),
                    want.to_bits(),
                    "in={inp} row {r} out {o}: {} vs {want}",
                    y[r * out + o]
                );
            }
        }
    }
}

#[test]
fn matmul_portable_matches_reference() {
    let be = CpuBackend::portable(pool(2));
    check_matmul(&be, "portable", MATMUL_SHAPES);
}

#[test]
fn matmul_fused_weight_stacks_parts() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let parts = [
        tensor(&mut rng, 5, 13),
        tensor(&mut rng, 2, 13),
        tensor(&mut rng, 9, 13),
    ];
    let refs: Vec<&HostTensor> = parts.iter().collect();
    let mut all = Vec::new();
    for p in &parts {
        all.extend(p.to_f32_vec());
    }
    let whole = HostTensor::f32(vec![16, 13], all);
    let be = cpu(2);
    for format in FORMATS {
        let fused = be.fused_weight(&refs, format).unwrap();
        let single = be.weight(&whole, format).unwrap();
        assert_eq!(be.weight_dims(&fused), (16, 13));
        let x = rand_vec(&mut rng, 3 * 13);
        let (mut a, mut b) = (vec![0f32; 3 * 16], vec![0f32; 3 * 16]);
        be.matmul(&x, 3, &fused, &mut a);
        be.matmul(&x, 3, &single, &mut b);
        assert_bits_eq("fused vs single", &a, &b);
    }
    let bad = tensor(&mut rng, 4, 12);
    let err = be
        .fused_weight(&[&parts[0], &bad], WeightFormat::F32)
        .unwrap_err();
    assert!(err.to_string().contains("part 1"), "{err}");
}

#[test]
fn bf16_host_tensor_packs_exactly() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let vals = rand_vec(&mut rng, 6 * 9);
    let bf: Vec<half::bf16> = vals.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let t_bf = HostTensor {
        shape: vec![6, 9],
        data: TensorData::BF16(bf),
    };
    let t_f = HostTensor::f32(vec![6, 9], vals);
    let be = cpu(1);
    let x = rand_vec(&mut rng, 2 * 9);
    let (mut a, mut b) = (vec![0f32; 12], vec![0f32; 12]);
    be.matmul(
        &x,
        2,
        &be.weight(&t_bf, WeightFormat::BF16).unwrap(),
        &mut a,
    );
    be.matmul(&x, 2, &be.weight(&t_f, WeightFormat::BF16).unwrap(), &mut b);
    assert_bits_eq("bf16 from bf16 vs from f32", &a, &b);
    // 9 columns padded to the layout's chunk: 8-column chunks, or 32 for AMX tiles.
    let kp = if be.bf16_kernel() == Bf16Kernel::Amx {
        32
    } else {
        16
    };
    assert_eq!(
        be.weight_bytes(&be.weight(&t_bf, WeightFormat::BF16).unwrap()),
        6 * kp * 2
    );
}

#[test]
fn matmul_row_is_independent_of_batch() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut paths: Vec<CpuBackend> = simd_paths(2).into_iter().map(|(_, be)| be).collect();
    paths.push(CpuBackend::portable(pool(2)));
    for be in paths {
        for &(inp, out) in &[(576usize, 1536usize), (7, 63), (1000, 5)] {
            let t = tensor(&mut rng, out, inp);
            for format in FORMATS {
                let w = be.weight(&t, format).unwrap();
                let x = rand_vec(&mut rng, 257 * inp);
                let mut full = vec![0f32; 257 * out];
                be.matmul(&x, 257, &w, &mut full);
                for &(start, rows) in &[
                    (0usize, 1usize),
                    (5, 1),
                    (256, 1),
                    (0, 32),
                    (1, 32),
                    (7, 8),
                    (100, 3),
                    (2, 31),
                ] {
                    let mut y = vec![0f32; rows * out];
                    be.matmul(
                        &x[start * inp..(start + rows) * inp].to_vec(),
                        rows,
                        &w,
                        &mut y,
                    );
                    let what = format!("{format:?} in={inp} rows {start}..+{rows}");
                    assert_bits_eq(&what, &y, &full[start * out..(start + rows) * out]);
                }
            }
        }
    }
}

/// A bf16 weight packed by one path (AMX tiles or 4-row panels) still computes correctly on a
/// backend whose kernels read the other arrangement (they fall back to the portable loop over
/// the weight's own layout), and its rows read back exactly.
#[test]
fn bf16_weights_work_on_every_path_whoever_packed_them() {
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let r = ReferenceBackend;
    let mut paths: Vec<(&str, CpuBackend)> = simd_paths(2);
    paths.push(("portable", CpuBackend::portable(pool(2))));
    for &(inp, out, rows) in &[(7usize, 63usize, 3usize), (576, 40, 17), (1000, 5, 33)] {
        let t = tensor(&mut rng, out, inp);
        let wr = r.weight(&t, WeightFormat::BF16).unwrap();
        let x = rand_vec(&mut rng, rows * inp);
        let mut yr = vec![0f32; rows * out];
        r.matmul(&x, rows, &wr, &mut yr);
        let tol = matmul_tol(&x, &wr.data, rows, out, inp);
        for (packer, pb) in &paths {
            let w = pb.weight(&t, WeightFormat::BF16).unwrap();
            let ids: Vec<u32> = (0..out as u32).collect();
            let (mut a, mut b) = (vec![0f32; out * inp], vec![0f32; out * inp]);
            for (runner, rb) in &paths {
                let mut y = vec![0f32; rows * out];
                rb.matmul(&x, rows, &w, &mut y);
                let what = format!("packed by {packer}, run on {runner}: in={inp} out={out}");
                assert_close(&what, &y, &yr, |i| tol[i]);
                rb.embedding_gather(&w, &ids, &mut a);
                r.embedding_gather(&wr, &ids, &mut b);
                assert_bits_eq(&what, &a, &b);
            }
        }
    }
}

/// `run_step` (pool threads polling for work through a step) changes nothing in the results,
/// whether the step runs on a thread of the pool (as the engine's worker) or outside it, on 1-3
/// threads; a panic inside the step propagates instead of leaving the pollers running, and the
/// pool still works afterwards.
#[test]
fn run_step_keeps_results_and_propagates_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let (inp, out, rows) = (576, 960, 8);
    let t = tensor(&mut rng, out, inp);
    let x = rand_vec(&mut rng, rows * inp);
    for threads in [1usize, 2, 3] {
        let be = cpu(threads);
        let w = be.weight(&t, WeightFormat::BF16).unwrap();
        let plain = {
            let mut y = vec![0f32; rows * out];
            be.matmul(&x, rows, &w, &mut y);
            y
        };
        let step = || {
            be.run_step(|| {
                let mut y = vec![0f32; rows * out];
                for _ in 0..3 {
                    be.matmul(&x, rows, &w, &mut y);
                }
                y
            })
        };
        assert_bits_eq(
            &format!("{threads} threads, outside the pool"),
            &plain,
            &step(),
        );
        let inside = be.pool().install(step);
        assert_bits_eq(
            &format!("{threads} threads, inside the pool"),
            &plain,
            &inside,
        );
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            be.pool()
                .install(|| be.run_step(|| panic!("a failing step")))
        }));
        assert!(panicked.is_err(), "the step's panic reaches the caller");
        assert_bits_eq(
            &format!("{threads} threads, after a panic"),
            &plain,
            &step(),
        );
    }
}

#[test]
fn matmul_is_independent_of_thread_count() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (inp, out) = (576, 3072);
    let t = tensor(&mut rng, out, inp);
    for format in FORMATS {
        for rows in [1usize, 8, 33, 257] {
            let x = rand_vec(&mut rng, rows * inp);
            for path in 0..simd_paths(1).len() {
                let mut results = Vec::new();
                for threads in [1usize, 2, 3] {
                    let (label, be) = simd_paths(threads).swap_remove(path);
                    let w = be.weight(&t, format).unwrap();
                    let mut y = vec![0f32; rows * out];
                    be.matmul(&x, rows, &w, &mut y);
                    results.push((label, y));
                }
                let label = results[0].0;
                assert_bits_eq(
                    &format!("{label} 1 vs 2 threads"),
                    &results[0].1,
                    &results[1].1,
                );
                assert_bits_eq(
                    &format!("{label} 1 vs 3 threads"),
                    &results[0].1,
                    &results[2].1,
                );
            }
        }
    }
}

#[test]
fn matmul_bad_sizes_fill_nan() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let be = cpu(1);
    let w = be
        .weight(&tensor(&mut rng, 4, 8), WeightFormat::F32)
        .unwrap();
    let x = rand_vec(&mut rng, 8); // one row, asked for two
    let mut y = vec![0f32; 8];
    be.matmul(&x, 2, &w, &mut y);
    assert!(y.iter().all(|v| v.is_nan()));
    let r = ReferenceBackend;
    let wr = r
        .weight(&tensor(&mut rng, 4, 8), WeightFormat::F32)
        .unwrap();
    let mut y = vec![0f32; 8];
    r.matmul(&x, 2, &wr, &mut y);
    assert!(y.iter().all(|v| v.is_nan()));
}

#[test]
fn weight_rejects_bad_tensors() {
    let be = cpu(1);
    let r = ReferenceBackend;
    let t3 = HostTensor::f32(vec![2, 2, 2], vec![0.0; 8]);
    let short = HostTensor::f32(vec![2, 3], vec![0.0; 5]);
    let zero = HostTensor::f32(vec![0, 3], vec![]);
    for t in [&t3, &short, &zero] {
        assert!(be.weight(t, WeightFormat::F32).is_err());
        assert!(r.weight(t, WeightFormat::BF16).is_err());
    }
    assert!(be.fused_weight(&[], WeightFormat::F32).is_err());
    let geom = KvGeometry {
        num_layers: 1,
        num_blocks: 0,
        block_size: 16,
        num_kv_heads: 1,
        head_dim: 8,
    };
    assert!(be.alloc_kv(geom).is_err());
    assert!(r.alloc_kv(geom).is_err());
    let huge = KvGeometry {
        num_blocks: usize::MAX / 2,
        ..geom
    };
    assert!(be.alloc_kv(huge).is_err());
}

#[test]
fn embedding_gather_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (be, r) = (cpu(2), ReferenceBackend);
    for &(vocab, hidden) in &[(50usize, 7usize), (300, 64), (1000, 576)] {
        let t = tensor(&mut rng, vocab, hidden);
        for format in FORMATS {
            let (wc, wr) = (
                be.weight(&t, format).unwrap(),
                r.weight(&t, format).unwrap(),
            );
            let ids: Vec<u32> = (0..37).map(|_| rng.gen_range(0..vocab as u32)).collect();
            let (mut a, mut b) = (vec![0f32; 37 * hidden], vec![0f32; 37 * hidden]);
            be.embedding_gather(&wc, &ids, &mut a);
            r.embedding_gather(&wr, &ids, &mut b);
            assert_bits_eq("embedding_gather", &a, &b);
            // An out-of-range id gives a NaN row, not a panic.
            let mut c = vec![0f32; 2 * hidden];
            be.embedding_gather(&wc, &[0, vocab as u32], &mut c);
            assert!(c[..hidden].iter().all(|v| v.is_finite()));
            assert!(c[hidden..].iter().all(|v| v.is_nan()));
        }
    }
}

#[test]
fn rms_norm_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (be, r) = (cpu(2), ReferenceBackend);
    for &(rows, dim) in &[(1usize, 1usize), (3, 7), (8, 64), (33, 576), (2, 1000)] {
        let x: Vec<f32> = rand_vec(&mut rng, rows * dim)
            .iter()
            .map(|v| v * 3.0)
            .collect();
        let w = rand_vec(&mut rng, dim);
        let (mut a, mut b) = (vec![0f32; rows * dim], vec![0f32; rows * dim]);
        be.rms_norm(&x, &w, rows, dim, 1e-5, &mut a);
        r.rms_norm(&x, &w, rows, dim, 1e-5, &mut b);
        assert_close(&format!("rms_norm {rows}x{dim}"), &a, &b, |i| {
            1e-6 * (1.0 + b[i].abs())
        });
    }
}

#[test]
fn rope_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (be, r) = (cpu(2), ReferenceBackend);
    for &(n_heads, head_dim, theta) in
        &[(9usize, 64usize, 10000f32), (3, 16, 100000.0), (2, 2, 10.0)]
    {
        let inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32))
            .collect();
        let rows = 11;
        let col0 = 5;
        let stride = col0 + n_heads * head_dim + 3;
        let pos: Vec<u32> = (0..rows).map(|_| rng.gen_range(0..8192)).collect();
        let x = rand_vec(&mut rng, rows * stride);
        let (mut a, mut b) = (x.clone(), x.clone());
        let args = RopeArgs {
            n_heads,
            head_dim,
            row_pos: &pos,
            inv_freq: &inv_freq,
        };
        be.rope(ViewMut::new(&mut a, rows, stride, col0), &args);
        r.rope(ViewMut::new(&mut b, rows, stride, col0), &args);
        assert_close("rope", &a, &b, |_| 1e-6);
        // Columns outside the heads are untouched.
        for t in 0..rows {
            assert_eq!(
                a[t * stride..t * stride + col0],
                x[t * stride..t * stride + col0]
            );
            assert_eq!(
                a[(t + 1) * stride - 3..(t + 1) * stride],
                x[(t + 1) * stride - 3..(t + 1) * stride]
            );
        }
    }
}

#[test]
fn silu_mul_add_gather_rows_match_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let (be, r) = (cpu(2), ReferenceBackend);
    for &(rows, inter) in &[(1usize, 1usize), (3, 7), (33, 1536)] {
        let gu: Vec<f32> = rand_vec(&mut rng, rows * 2 * inter)
            .iter()
            .map(|v| v * 20.0)
            .collect();
        let (mut a, mut b) = (vec![0f32; rows * inter], vec![0f32; rows * inter]);
        be.silu_mul(&gu, rows, inter, &mut a);
        r.silu_mul(&gu, rows, inter, &mut b);
        assert_close("silu_mul", &a, &b, |i| 1e-6 * (1.0 + b[i].abs()));

        let x = rand_vec(&mut rng, rows * inter);
        let (mut a2, mut b2) = (a.clone(), a.clone());
        let len = rows * inter - (rows * inter) / 3;
        be.add(&mut a2, &x, len);
        r.add(&mut b2, &x, len);
        assert_bits_eq("add", &a2, &b2);
        assert_bits_eq("add leaves tail", &a2[len..], &a[len..]);

        let idx: Vec<u32> = (0..5).map(|_| rng.gen_range(0..rows as u32)).collect();
        let (mut a3, mut b3) = (vec![0f32; 5 * inter], vec![0f32; 5 * inter]);
        be.gather_rows(&x, inter, &idx, &mut a3);
        r.gather_rows(&x, inter, &idx, &mut b3);
        assert_bits_eq("gather_rows", &a3, &b3);
    }
}

/// A random paged-attention scenario: sequences with shuffled block tables, all positions
/// written with kv_write, then one step mixing prefill chunks and decode rows.
struct Scenario {
    geom: KvGeometry,
    n_heads: usize,
    stride: usize,
    tables: Vec<Vec<u32>>,
    row_seq: Vec<u32>,
    row_pos: Vec<u32>,
    slots: Vec<u32>,
    qkv: Vec<f32>,
}

fn scenario(
    seed: u64,
    n_heads: usize,
    nkv: usize,
    hd: usize,
    bs: usize,
    lens: &[usize],
) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let PagedStep {
        geom,
        tables,
        row_seq,
        row_pos,
        slots,
    } = paged_step(&mut rng, nkv, hd, bs, lens);
    let stride = (n_heads + 2 * nkv) * hd + 3;
    let qkv = rand_vec(&mut rng, row_seq.len() * stride);
    Scenario {
        geom,
        n_heads,
        stride,
        tables,
        row_seq,
        row_pos,
        slots,
        qkv,
    }
}

/// Fills every position of every sequence (layer `layer`) with random K/V via kv_write.
fn fill_cache<B: Backend<Buf = Vec<f32>>>(
    be: &B,
    sc: &Scenario,
    cache: &mut B::KvCache,
    layer: usize,
    seed: u64,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let kv_dim = sc.geom.num_kv_heads * sc.geom.head_dim;
    let q_dim = sc.n_heads * sc.geom.head_dim;
    for (s, t) in sc.tables.iter().enumerate() {
        let len = t.len() * sc.geom.block_size;
        let rows = len;
        let qkv = rand_vec(&mut rng, rows * sc.stride);
        let slots: Vec<u32> = (0..len)
            .map(|p| slot(&sc.tables, sc.geom.block_size, s, p))
            .collect();
        let write = KvWriteArgs {
            layer,
            k: View::new(&qkv, rows, sc.stride, q_dim),
            v: View::new(&qkv, rows, sc.stride, q_dim + kv_dim),
            slot_mapping: &slots,
        };
        be.kv_write(cache, write);
    }
}

fn run_attention<B: Backend<Buf = Vec<f32>>>(
    be: &B,
    sc: &Scenario,
    cache: &B::KvCache,
    rows: std::ops::Range<usize>,
) -> Vec<f32> {
    run_attention_window(be, sc, cache, rows, None)
}

/// [`run_attention`] with a sliding window.
fn run_attention_window<B: Backend<Buf = Vec<f32>>>(
    be: &B,
    sc: &Scenario,
    cache: &B::KvCache,
    rows: std::ops::Range<usize>,
    window: Option<usize>,
) -> Vec<f32> {
    let tables: Vec<&[u32]> = sc.tables.iter().map(|t| t.as_slice()).collect();
    let n = rows.len();
    let meta = AttnMeta {
        row_seq: &sc.row_seq[rows.clone()],
        row_pos: &sc.row_pos[rows.clone()],
        slot_mapping: &sc.slots[rows.clone()],
        block_tables: &tables,
    };
    let qkv = sc.qkv[rows.start * sc.stride..rows.end * sc.stride].to_vec();
    let mut out = vec![0f32; n * sc.n_heads * sc.geom.head_dim];
    let args = AttentionArgs {
        window,
        ..attention(&qkv, n, sc, cache, meta)
    };
    be.attention_paged(args, &mut out);
    out
}

/// Attention arguments for Q at column 0 of `qkv` (`[rows, sc.stride]`), layer 1.
fn attention<'a, C>(
    qkv: &'a Vec<f32>,
    rows: usize,
    sc: &Scenario,
    cache: &'a C,
    meta: AttnMeta<'a>,
) -> AttentionArgs<'a, Vec<f32>, C> {
    AttentionArgs {
        q: View::new(qkv, rows, sc.stride, 0),
        n_heads: sc.n_heads,
        cache,
        layer: 1,
        meta,
        window: None,
    }
}

const ATTN_CASES: &[(usize, usize, usize, usize, &[usize])] = &[
    (9, 3, 64, 16, &[40, 70, 33, 1]),
    (9, 3, 64, 1, &[20, 9, 17]),
    (4, 2, 16, 16, &[16, 100, 5]),
    (4, 2, 16, 1, &[3, 30]),
    (4, 4, 8, 4, &[13, 2, 1]),
    // Two 64-dimension slots per head; a head size that is a multiple of 16 but not of 64.
    (8, 2, 128, 16, &[37, 2]),
    (4, 2, 80, 8, &[21, 35]),
    // Several key blocks (128 positions): the running softmax's rescales, windows that start
    // inside a block.
    (9, 3, 64, 16, &[300, 1, 140]),
    (4, 2, 80, 8, &[270, 3]),
];

#[test]
fn kv_write_and_attention_match_reference() {
    for (ci, &(nh, nkv, hd, bs, lens)) in ATTN_CASES.iter().enumerate() {
        let sc = scenario(100 + ci as u64, nh, nkv, hd, bs, lens);
        let (be, r) = (cpu(2), ReferenceBackend);
        let mut cc = be.alloc_kv(sc.geom).unwrap();
        let mut rc = r.alloc_kv(sc.geom).unwrap();
        for layer in 0..2 {
            fill_cache(&be, &sc, &mut cc, layer, 7 + layer as u64);
            fill_cache(&r, &sc, &mut rc, layer, 7 + layer as u64);
        }
        for layer in 0..2 {
            let ((k, v), (rk, rv)) = (cc.layer(layer).unwrap(), rc.layer(layer).unwrap());
            assert_bits_eq("kv_write K", k, rk);
            assert_bits_eq("kv_write V", v, rv);
        }
        let rows = sc.row_seq.len();
        let a = run_attention(&be, &sc, &cc, 0..rows);
        let b = run_attention(&r, &sc, &rc, 0..rows);
        assert_close(&format!("attention case {ci}"), &a, &b, |_| {
            2e-6 * (hd as f32).sqrt()
        });
        // The portable build of the same loops gives the same bits (Rust never contracts
        // a * b + c into an FMA, and the SIMD dot mirrors the portable lane order).
        let p = run_attention(&CpuBackend::portable(pool(1)), &sc, &cc, 0..rows);
        assert_bits_eq(&format!("portable attention case {ci}"), &p, &a);
        // So does the AVX2 build on a CPU with AVX-512 (its own dot and weighted-sum kernels).
        if let Ok(be) = CpuBackend::avx2_only(pool(2)) {
            let p = run_attention(&be, &sc, &cc, 0..rows);
            assert_bits_eq(&format!("avx2-only attention case {ci}"), &p, &a);
        }
    }
}

#[test]
fn attention_row_is_independent_of_batch_and_threads() {
    for (ci, &(nh, nkv, hd, bs, lens)) in ATTN_CASES.iter().enumerate() {
        let sc = scenario(200 + ci as u64, nh, nkv, hd, bs, lens);
        let be2 = cpu(2);
        let mut cache = be2.alloc_kv(sc.geom).unwrap();
        fill_cache(&be2, &sc, &mut cache, 1, 3);
        let rows = sc.row_seq.len();
        let q_dim = nh * hd;
        let full = run_attention(&be2, &sc, &cache, 0..rows);
        let one_thread = run_attention(&cpu(1), &sc, &cache, 0..rows);
        assert_bits_eq("attention 1 vs 2 threads", &full, &one_thread);
        let three = run_attention(&cpu(3), &sc, &cache, 0..rows);
        assert_bits_eq("attention 2 vs 3 threads", &full, &three);
        for t in (0..rows).step_by(3).chain([rows - 1]) {
            let alone = run_attention(&be2, &sc, &cache, t..t + 1);
            assert_bits_eq(
                &format!("case {ci} row {t} alone"),
                &alone,
                &full[t * q_dim..(t + 1) * q_dim],
            );
        }
        let half = rows / 2;
        let tail = run_attention(&be2, &sc, &cache, half..rows);
        assert_bits_eq("tail rows", &tail, &full[half * q_dim..]);
    }
}

#[test]
fn attention_bad_metadata_gives_nan_row() {
    let sc = scenario(300, 4, 2, 16, 4, &[10, 6]);
    let be = cpu(2);
    let mut cache = be.alloc_kv(sc.geom).unwrap();
    fill_cache(&be, &sc, &mut cache, 1, 1);
    let good: Vec<&[u32]> = sc.tables.iter().map(|t| t.as_slice()).collect();
    let bad_table = [sc.geom.num_blocks as u32 + 9];
    let tables = [good[0], &bad_table[..]];
    let meta = AttnMeta {
        row_seq: &[0, 1, 0, 5],
        row_pos: &[3, 0, 30, 0],
        slot_mapping: &[0, 0, 0, 0],
        block_tables: &tables,
    };
    let qkv = sc.qkv[..4 * sc.stride].to_vec();
    let mut out = vec![0f32; 4 * 4 * 16];
    be.attention_paged(attention(&qkv, 4, &sc, &cache, meta), &mut out);
    assert!(out[..64].iter().all(|v| v.is_finite()));
    assert!(
        out[64..].iter().all(|v| v.is_nan()),
        "bad block, position past table, bad seq"
    );
    // Inconsistent heads: whole output NaN.
    let mut out2 = vec![0f32; 4 * 3 * 16];
    let three_heads = AttentionArgs {
        n_heads: 3,
        ..attention(&qkv, 4, &sc, &cache, meta)
    };
    be.attention_paged(three_heads, &mut out2);
    assert!(out2.iter().all(|v| v.is_nan()));
    // Q columns past the row stride: whole output NaN.
    let mut out3 = vec![0f32; 4 * 4 * 16];
    let mut shifted = attention(&qkv, 4, &sc, &cache, meta);
    shifted.q.col = sc.stride - 4 * 16 + 1;
    be.attention_paged(shifted, &mut out3);
    assert!(out3.iter().all(|v| v.is_nan()));
}

/// The views' column offsets: Q read from column `c` of a wider buffer, K and V from two
/// separate buffers, give bitwise what the fused column-0 layout gives, on both backends.
#[test]
fn attention_and_kv_write_honour_view_columns() {
    fn check<B: Backend<Buf = Vec<f32>, KvCache = KvStore>>(be: &B) {
        let sc = scenario(400, 4, 2, 16, 4, &[10, 6, 3]);
        let (hd, nkv) = (sc.geom.head_dim, sc.geom.num_kv_heads);
        let (q_dim, kv_dim) = (sc.n_heads * hd, nkv * hd);
        let mut fused = be.alloc_kv(sc.geom).unwrap();
        fill_cache(be, &sc, &mut fused, 1, 5);
        let rows = sc.row_seq.len();
        let want = run_attention(be, &sc, &fused, 0..rows);

        // The same K/V written from separate K and V buffers (stride kv_dim + 2, column 1).
        let mut split = be.alloc_kv(sc.geom).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for (s, t) in sc.tables.iter().enumerate() {
            let n = t.len() * sc.geom.block_size;
            let qkv = rand_vec(&mut rng, n * sc.stride);
            let (mut k, mut v) = (
                vec![f32::NAN; n * (kv_dim + 2)],
                vec![0.5; n * (kv_dim + 2)],
            );
            for p in 0..n {
                let row = &qkv[p * sc.stride..];
                k[p * (kv_dim + 2) + 1..][..kv_dim].copy_from_slice(&row[q_dim..q_dim + kv_dim]);
                v[p * (kv_dim + 2) + 1..][..kv_dim]
                    .copy_from_slice(&row[q_dim + kv_dim..q_dim + 2 * kv_dim]);
            }
            let slots: Vec<u32> = (0..n)
                .map(|p| slot(&sc.tables, sc.geom.block_size, s, p))
                .collect();
            let write = KvWriteArgs {
                layer: 1,
                k: View::new(&k, n, kv_dim + 2, 1),
                v: View::new(&v, n, kv_dim + 2, 1),
                slot_mapping: &slots,
            };
            be.kv_write(&mut split, write);
        }
        // Q at column 7 of rows of stride q_dim + 9.
        let qs = q_dim + 9;
        let mut q = vec![f32::NAN; rows * qs];
        for t in 0..rows {
            q[t * qs + 7..][..q_dim].copy_from_slice(&sc.qkv[t * sc.stride..][..q_dim]);
        }
        let tables: Vec<&[u32]> = sc.tables.iter().map(|t| t.as_slice()).collect();
        let meta = AttnMeta {
            row_seq: &sc.row_seq,
            row_pos: &sc.row_pos,
            slot_mapping: &sc.slots,
            block_tables: &tables,
        };
        let mut got = vec![0f32; rows * q_dim];
        let args = AttentionArgs {
            q: View::new(&q, rows, qs, 7),
            ..attention(&q, rows, &sc, &split, meta)
        };
        be.attention_paged(args, &mut got);
        assert_bits_eq(&format!("{} attention from views", be.name()), &got, &want);

        // K and V views with different row counts: nothing is written.
        let mut untouched = be.alloc_kv(sc.geom).unwrap();
        let (k, v) = (vec![1f32; 2 * kv_dim], vec![1f32; 3 * kv_dim]);
        let write = KvWriteArgs {
            layer: 1,
            k: View::new(&k, 2, kv_dim, 0),
            v: View::new(&v, 3, kv_dim, 0),
            slot_mapping: &[0, 1, 2],
        };
        be.kv_write(&mut untouched, write);
        let fresh = be.alloc_kv(sc.geom).unwrap();
        assert!(
            untouched == fresh,
            "{}: mismatched K/V rows wrote",
            be.name()
        );
    }
    check(&cpu(2));
    check(&ReferenceBackend);
}

#[test]
fn simd_kernels_are_used_when_the_cpu_has_them() {
    #[cfg(target_arch = "x86_64")]
    {
        let has = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        assert_eq!(cpu(1).simd_enabled(), has);
        let bf16 =
            has && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16");
        let amx = Bf16Kernel::Amx.available();
        let want = if amx {
            Bf16Kernel::Amx
        } else if bf16 {
            Bf16Kernel::Avx512Bf16
        } else {
            Bf16Kernel::F32
        };
        assert_eq!(cpu(1).bf16_kernel(), want);
        assert_eq!(
            CpuBackend::with_bf16_kernel(pool(1), Bf16Kernel::Avx512Bf16).is_ok(),
            bf16
        );
        assert_eq!(
            CpuBackend::with_bf16_kernel(pool(1), Bf16Kernel::Amx).is_ok(),
            amx
        );
        let path = cpu(1).kernel_path();
        assert!(
            path.contains(match want {
                Bf16Kernel::Amx => "bf16=amx-bf16",
                Bf16Kernel::Avx512Bf16 => "bf16=avx512-bf16",
                Bf16Kernel::F32 => "bf16=avx2-fma",
            }),
            "{path}"
        );
    }
    assert_eq!(CpuBackend::portable(pool(1)).bf16_kernel(), Bf16Kernel::F32);
    assert!(!CpuBackend::portable(pool(1)).simd_enabled());
    assert_eq!(cpu(3).threads(), 3);
}

#[test]
fn windowed_attention_matches_reference_and_is_batch_invariant() {
    // Windows below, across and above block boundaries and sequence lengths (1 = the row only).
    for (ci, &(nh, nkv, hd, bs, lens)) in ATTN_CASES.iter().enumerate() {
        let sc = scenario(300 + ci as u64, nh, nkv, hd, bs, lens);
        let (be, r) = (cpu(2), ReferenceBackend);
        let mut cc = be.alloc_kv(sc.geom).unwrap();
        let mut rc = r.alloc_kv(sc.geom).unwrap();
        fill_cache(&be, &sc, &mut cc, 1, 5);
        fill_cache(&r, &sc, &mut rc, 1, 5);
        let rows = sc.row_seq.len();
        let q_dim = nh * hd;
        let full = run_attention(&be, &sc, &cc, 0..rows);
        for window in [1usize, 3, bs, bs + 1, 17, 150, 1000] {
            let w = Some(window);
            let a = run_attention_window(&be, &sc, &cc, 0..rows, w);
            let b = run_attention_window(&r, &sc, &rc, 0..rows, w);
            assert_close(&format!("case {ci} window {window}"), &a, &b, |_| {
                2e-6 * (hd as f32).sqrt()
            });
            let p = run_attention_window(&CpuBackend::portable(pool(1)), &sc, &cc, 0..rows, w);
            assert_bits_eq(&format!("portable case {ci} window {window}"), &p, &a);
            if let Ok(be) = CpuBackend::avx2_only(pool(2)) {
                let p = run_attention_window(&be, &sc, &cc, 0..rows, w);
                assert_bits_eq(&format!("avx2-only case {ci} window {window}"), &p, &a);
            }
            let three = run_attention_window(&cpu(3), &sc, &cc, 0..rows, w);
            assert_bits_eq(&format!("3 threads case {ci} window {window}"), &three, &a);
            for t in (0..rows).step_by(5) {
                let alone = run_attention_window(&be, &sc, &cc, t..t + 1, w);
                let row = &a[t * q_dim..(t + 1) * q_dim];
                assert_bits_eq(&format!("case {ci} window {window} row {t}"), &alone, row);
                // A row whose positions all fit the window is full attention, bit for bit.
                let full_row = &full[t * q_dim..(t + 1) * q_dim];
                if (sc.row_pos[t] as usize) < window {
                    assert_bits_eq(
                        &format!("case {ci} window {window} row {t} full"),
                        row,
                        full_row,
                    );
                } else if window < 3 && sc.row_pos[t] > 2 {
                    assert!(
                        row != full_row,
                        "case {ci} window {window} row {t}: no effect"
                    );
                }
            }
        }
    }
}

/// Scalar check of the window boundary (transformers: key k visible from query p iff
/// `p - w < k <= p`): with V = one-hot position and Q = 0 (uniform weights), the output is the
/// mean of the visible positions' one-hot vectors.
fn check_window_boundary<B: Backend<Buf = Vec<f32>, KvCache = KvStore>>(be: &B) {
    let (hd, bs) = (16usize, 4usize);
    let geom = KvGeometry {
        num_layers: 1,
        num_blocks: 4,
        block_size: bs,
        num_kv_heads: 1,
        head_dim: hd,
    };
    let table: Vec<u32> = vec![2, 0, 3, 1];
    let kv: Vec<f32> = (0..hd * hd)
        .map(|i| if i / hd == i % hd { 1.0 } else { 0.0 })
        .collect();
    let slots: Vec<u32> = (0..hd as u32)
        .map(|p| table[p as usize / bs] * bs as u32 + p % bs as u32)
        .collect();
    let mut cache = be.alloc_kv(geom).unwrap();
    let write = KvWriteArgs {
        layer: 0,
        k: View::new(&kv, hd, hd, 0),
        v: View::new(&kv, hd, hd, 0),
        slot_mapping: &slots,
    };
    be.kv_write(&mut cache, write);
    let q = vec![0f32; hd];
    let tables: Vec<&[u32]> = vec![&table];
    for pos in [0u32, 2, 5, 9, 15] {
        for w in [1usize, 2, 5, 16] {
            let meta = AttnMeta {
                row_seq: &[0],
                row_pos: &[pos],
                slot_mapping: &[0],
                block_tables: &tables,
            };
            let args = AttentionArgs {
                q: View::new(&q, 1, hd, 0),
                n_heads: 1,
                cache: &cache,
                layer: 0,
                meta,
                window: Some(w),
            };
            let mut out = vec![0f32; hd];
            be.attention_paged(args, &mut out);
            let lo = (pos as usize + 1).saturating_sub(w);
            let n = (pos as usize + 1 - lo) as f32;
            for (k, o) in out.iter().enumerate() {
                let want = if (lo..=pos as usize).contains(&k) {
                    1.0 / n
                } else {
                    0.0
                };
                assert!(
                    (o - want).abs() < 1e-6,
                    "{} pos {pos} w {w} k {k}: {o} vs {want}",
                    be.name()
                );
            }
        }
    }
}

#[test]
fn windowed_attention_sees_only_the_last_w_positions() {
    check_window_boundary(&cpu(1));
    check_window_boundary(&CpuBackend::portable(pool(1)));
    check_window_boundary(&ReferenceBackend);
}

#[test]
fn add_bias_and_head_rms_norm_match_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let backends = [cpu(2), CpuBackend::portable(pool(1))];
    // (rows, stride, col, width / heads x head_dim)
    for &(rows, stride, col, nh, hd) in &[
        (1usize, 16usize, 0usize, 1usize, 16usize),
        (5, 100, 3, 6, 16),
        (7, 256, 64, 3, 64),
        (2, 40, 1, 3, 13),
    ] {
        let x0: Vec<f32> = rand_vec(&mut rng, rows * stride)
            .iter()
            .map(|v| v * 4.0)
            .collect();
        let bias = rand_vec(&mut rng, nh * hd + 2);
        let w = rand_vec(&mut rng, hd);
        let mut want_b = x0.clone();
        ReferenceBackend.add_bias(ViewMut::new(&mut want_b, rows, stride, col), &bias, nh * hd);
        let mut want_n = x0.clone();
        ReferenceBackend.head_rms_norm(
            ViewMut::new(&mut want_n, rows, stride, col),
            &w,
            nh,
            hd,
            1e-6,
        );
        for be in &backends {
            let mut got = x0.clone();
            be.add_bias(ViewMut::new(&mut got, rows, stride, col), &bias, nh * hd);
            assert_bits_eq(&format!("add_bias {rows}x{stride}+{col}"), &got, &want_b);
            let mut got = x0.clone();
            be.head_rms_norm(ViewMut::new(&mut got, rows, stride, col), &w, nh, hd, 1e-6);
            assert_close(
                &format!("head_rms_norm {rows}x{stride}+{col}"),
                &got,
                &want_n,
                |i| 2e-6 * (1.0 + want_n[i].abs()),
            );
            // Columns outside the heads are untouched.
            for t in 0..rows {
                for j in (0..col).chain(col + nh * hd..stride) {
                    assert_eq!(got[t * stride + j].to_bits(), x0[t * stride + j].to_bits());
                }
            }
            // A row alone gives the same bits as in the batch.
            if rows > 1 {
                let mut one = x0[stride..2 * stride].to_vec();
                be.head_rms_norm(ViewMut::new(&mut one, 1, stride, col), &w, nh, hd, 1e-6);
                assert_bits_eq("head_rms_norm row alone", &one, &got[stride..2 * stride]);
            }
        }
    }
    // Shapes that do not fit make the whole buffer NaN.
    let be = cpu(1);
    let check_nan = |f: &dyn Fn(&mut Vec<f32>)| {
        let mut y = vec![1f32; 20];
        f(&mut y);
        assert!(y.iter().all(|v| v.is_nan()));
    };
    for r in [&be as &dyn BiasOps, &ReferenceBackend as &dyn BiasOps] {
        check_nan(&|y| r.bias(ViewMut::new(y, 2, 10, 5), &[0.0; 8], 6)); // col + width > stride
        check_nan(&|y| r.bias(ViewMut::new(y, 3, 10, 0), &[0.0; 8], 4)); // rows past the buffer
        check_nan(&|y| r.bias(ViewMut::new(y, 2, 10, 0), &[0.0; 3], 4)); // short bias
        check_nan(&|y| r.norm(ViewMut::new(y, 2, 10, 0), &[1.0; 4], 3, 4)); // heads past stride
        check_nan(&|y| r.norm(ViewMut::new(y, 2, 10, 0), &[1.0; 3], 2, 4)); // short weight
    }
}

/// The two ops behind one object-safe trait, so the NaN checks run on both backends.
trait BiasOps {
    fn bias(&self, y: ViewMut<'_, Vec<f32>>, b: &[f32], width: usize);
    fn norm(&self, y: ViewMut<'_, Vec<f32>>, w: &[f32], n_heads: usize, head_dim: usize);
}

impl<B: Backend<Buf = Vec<f32>>> BiasOps for B {
    fn bias(&self, y: ViewMut<'_, Vec<f32>>, b: &[f32], width: usize) {
        self.add_bias(y, &b.to_vec(), width);
    }
    fn norm(&self, y: ViewMut<'_, Vec<f32>>, w: &[f32], n_heads: usize, head_dim: usize) {
        self.head_rms_norm(y, &w.to_vec(), n_heads, head_dim, 1e-6);
    }
}
