//! `lora_apply` and the adapter arena: CpuBackend (SIMD and portable kernels) against the scalar
//! ReferenceBackend on random data, bitwise batch and thread-count invariance, and the
//! `lora_load_slot` / `lora_clear_slot` contract, for f32 and bf16 arenas (a bf16 arena is the
//! f32 arena of the bf16-rounded adapter, bit for bit).
//!
//! Tolerance: the reference accumulates in f64; the CPU backend in f32 with 8-lane partial sums.
//! For an output the bound is `TOL_ULPS · f32::EPSILON · (in/8 + r + 8) · mag`, where
//! `mag = |y0| + |s| · Σ_k |B[o,k]| · Σ_i |A[k,i] x_i|` is the sum of absolute terms.

mod common;

use std::sync::Arc;

use common::lora::{model_layout as layout, random_adapter, view, OwnedAdapter};
use common::values::{assert_bits_eq, rand_vec};
use loraplex::backend::cpu::CpuBackend;
use loraplex::backend::reference::ReferenceBackend;
use loraplex::backend::{
    Backend, LoraArgs, LoraBatch, LoraLane, LoraPrecision, LoraSlotData, LoraStackGeometry,
    LoraTarget, View, ViewMut,
};
use loraplex::error::ErrorCode;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TOL_ULPS: f64 = 4.0;

fn pool(n: usize) -> Arc<rayon::ThreadPool> {
    Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap(),
    )
}

fn load<B: Backend>(be: &B, stack: &mut B::LoraStack, slot: usize, a: &OwnedAdapter) {
    let v = view(a);
    let data: &LoraSlotData<'_> = &v;
    be.lora_load_slot(stack, slot, data).unwrap();
}

/// SmolLM2-like dims: hidden 576, q 576, kv 192, inter 1536.
fn smol_geom(num_slots: usize, max_rank: usize) -> LoraStackGeometry {
    let (h, q, kv, i) = (576, 576, 192, 1536);
    LoraStackGeometry {
        num_slots,
        max_rank,
        num_layers: 2,
        dims: [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)],
        precision: LoraPrecision::F32,
    }
}

/// Odd dims (nothing a multiple of 8).
fn odd_geom(num_slots: usize, max_rank: usize) -> LoraStackGeometry {
    let (h, q, kv, i) = (37, 27, 9, 61);
    LoraStackGeometry {
        num_slots,
        max_rank,
        num_layers: 3,
        dims: [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)],
        precision: LoraPrecision::F32,
    }
}

/// `g` storing bf16 weights.
fn bf16(g: LoraStackGeometry) -> LoraStackGeometry {
    LoraStackGeometry {
        precision: LoraPrecision::Bf16,
        ..g
    }
}

/// Mixed-rank arena contents: slot 0 rank 8 everywhere, slot 1 ranks 4/16/64 and absent
/// modules, slot 2 rank 1/3 (odd), slot 3 loaded then cleared, slot 4 never loaded.
fn fill<B: Backend>(be: &B, geom: &LoraStackGeometry, seed: u64) -> B::LoraStack {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut stack = be.alloc_lora_stack(*geom).unwrap();
    let a0 = random_adapter(geom, &mut rng, |_, _| Some(8));
    let a1 = random_adapter(geom, &mut rng, |l, t| match (l + t.index()) % 4 {
        0 => Some(4),
        1 => Some(16),
        2 => Some(64.min(geom.max_rank)),
        _ => None,
    });
    let a2 = random_adapter(geom, &mut rng, |l, t| {
        (t != LoraTarget::O || l != 0).then_some(1 + 2 * (t.index() % 2))
    });
    let a3 = random_adapter(geom, &mut rng, |_, _| Some(2));
    load(be, &mut stack, 0, &a0);
    load(be, &mut stack, 1, &a1);
    load(be, &mut stack, 2, &a2);
    load(be, &mut stack, 3, &a3);
    be.lora_clear_slot(&mut stack, 3);
    stack
}

/// One `lora_apply` call: `rows` rows of `x` into a copy of `y0`, at the model's layout for
/// target `t` of `layer`.
fn apply<B: Backend<Buf = Vec<f32>>>(
    be: &B,
    stack: &B::LoraStack,
    (x, y0, rows): (&[f32], &[f32], usize),
    batch: &LoraBatch,
    layer: usize,
    t: LoraTarget,
    geom: &LoraStackGeometry,
) -> Vec<f32> {
    let (xs, xc, ys, yc) = layout(geom, t);
    let (x, mut y) = (x.to_vec(), y0.to_vec());
    let args = LoraArgs {
        batch,
        stack,
        layer,
        target: t,
    };
    be.lora_apply(
        View::new(&x, rows, xs, xc),
        ViewMut::new(&mut y, rows, ys, yc),
        &args,
    );
    y
}

/// Asserts `|got - want| <= tol(mag)` elementwise (see the module docs).
fn check_close(got: &[f32], want: &[f32], mag: &[f32], inp: usize, r: usize, what: &str) {
    let k = TOL_ULPS * f32::EPSILON as f64 * ((inp / 8 + r + 8) as f64);
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = k * (m.abs() as f64) + 1e-30;
        assert!(
            ((g - w) as f64).abs() <= tol,
            "{what}: element {i}: got {g}, reference {w}, tol {tol:e}"
        );
    }
}

/// An arena holding |A|, |B|, |s| of `fill`'s arena (same seed), for error magnitudes.
fn fill_abs(geom: &LoraStackGeometry, seed: u64) -> <ReferenceBackend as Backend>::LoraStack {
    // Re-generate with the same RNG stream, then take absolute values.
    let be = ReferenceBackend;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let abs = |a: OwnedAdapter| -> OwnedAdapter {
        a.into_iter()
            .map(|mods| {
                mods.map(|m| {
                    m.map(|(r, a, b, s)| {
                        (
                            r,
                            a.iter().map(|v| v.abs()).collect(),
                            b.iter().map(|v| v.abs()).collect(),
                            s.abs(),
                        )
                    })
                })
            })
            .collect()
    };
    let mut stack = be.alloc_lora_stack(*geom).unwrap();
    let a0 = abs(random_adapter(geom, &mut rng, |_, _| Some(8)));
    let a1 = abs(random_adapter(geom, &mut rng, |l, t| {
        match (l + t.index()) % 4 {
            0 => Some(4),
            1 => Some(16),
            2 => Some(64.min(geom.max_rank)),
            _ => None,
        }
    }));
    let a2 = abs(random_adapter(geom, &mut rng, |l, t| {
        (t != LoraTarget::O || l != 0).then_some(1 + 2 * (t.index() % 2))
    }));
    load(&be, &mut stack, 0, &a0);
    load(&be, &mut stack, 1, &a1);
    load(&be, &mut stack, 2, &a2);
    stack
}

fn compare_with_reference(geom: LoraStackGeometry, cpu: &CpuBackend, label: &str) {
    let seed = 11;
    let r = ReferenceBackend;
    let rs = fill(&r, &geom, seed);
    let cs = fill(cpu, &geom, seed);
    let abs_stack = fill_abs(&geom, seed);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for rows in [1usize, 7, 40] {
        // Slots cycle over -1, 0..4 (3 is cleared, 4 never loaded); the last 2 rows are beyond
        // token_slot (base model).
        let token_slot: Vec<i32> = (0..rows.saturating_sub(2).max(1))
            .map(|_| rng.gen_range(-1..5))
            .collect();
        let plain = LoraBatch::from_slots(token_slot.clone());
        // Mixtures: every row's first adapter at a scale, plus up to two more lanes (a slot or
        // none per row), scales of both signs.
        let mut scales =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-1.5f32..1.5)).collect() };
        let token_scale = scales(token_slot.len());
        let mixed = LoraBatch {
            token_slot: token_slot.clone(),
            token_scale,
            mix: (0..2)
                .map(|_| LoraLane {
                    slot: (0..rows)
                        .map(|k| [(k % 5) as i32 - 1, 2, 0][k % 3])
                        .collect(),
                    scale: scales(rows),
                })
                .collect(),
        };
        let abs_scales = |b: &LoraBatch| LoraBatch {
            token_slot: b.token_slot.clone(),
            token_scale: b.token_scale.iter().map(|v| v.abs()).collect(),
            mix: b
                .mix
                .iter()
                .map(|l| LoraLane {
                    slot: l.slot.clone(),
                    scale: l.scale.iter().map(|v| v.abs()).collect(),
                })
                .collect(),
        };
        for (kind, batch) in [("one adapter", &plain), ("mixture", &mixed)] {
            let mag_batch = abs_scales(batch);
            for layer in 0..geom.num_layers {
                for t in LoraTarget::ALL {
                    let (xs, _, ys, _) = layout(&geom, t);
                    let x = rand_vec(&mut rng, rows * xs);
                    let y0 = rand_vec(&mut rng, rows * ys);
                    let want = apply(&r, &rs, (&x, &y0, rows), batch, layer, t, &geom);
                    let got = apply(cpu, &cs, (&x, &y0, rows), batch, layer, t, &geom);
                    let xa: Vec<f32> = x.iter().map(|v| v.abs()).collect();
                    let ya: Vec<f32> = y0.iter().map(|v| v.abs()).collect();
                    let mag = apply(
                        &r,
                        &abs_stack,
                        (&xa, &ya, rows),
                        &mag_batch,
                        layer,
                        t,
                        &geom,
                    );
                    let (inp, _) = geom.dims[t.index()];
                    check_close(
                        &got,
                        &want,
                        &mag,
                        inp,
                        geom.max_rank,
                        &format!("{label} {kind} rows {rows} layer {layer} {t:?}"),
                    );
                }
            }
        }
    }
}

#[test]
fn cpu_matches_reference_smollm2_dims() {
    for be in [CpuBackend::new(pool(2)), CpuBackend::portable(pool(2))] {
        for g in [smol_geom(5, 64), bf16(smol_geom(5, 64))] {
            let label = format!("smol simd={} {:?}", be.simd_enabled(), g.precision);
            compare_with_reference(g, &be, &label);
        }
    }
}

#[test]
fn cpu_matches_reference_odd_dims() {
    for be in [CpuBackend::new(pool(1)), CpuBackend::portable(pool(2))] {
        for g in [odd_geom(5, 64), bf16(odd_geom(5, 64))] {
            let label = format!("odd simd={} {:?}", be.simd_enabled(), g.precision);
            compare_with_reference(g, &be, &label);
        }
    }
}

/// A bf16 arena computes exactly what an f32 arena holding the adapter rounded to bf16 (nearest
/// even, as `half` rounds) computes: the same f32 arithmetic on the stored values, on every
/// kernel path, and the reference agrees. Odd dims and ranks reach every masked tail.
#[test]
fn bf16_arena_is_the_f32_arena_of_the_rounded_adapter() {
    let round = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect()
    };
    for geom in [odd_geom(2, 16), smol_geom(2, 16)] {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let adapter = random_adapter(&geom, &mut rng, |l, t| Some(1 + (l + 3 * t.index()) % 16));
        let rounded: Vec<_> = adapter
            .iter()
            .map(|mods| {
                mods.clone()
                    .map(|m| m.map(|(r, a, b, s)| (r, round(&a), round(&b), s)))
            })
            .collect();
        let check = |label: &str, got: Vec<f32>, want: Vec<f32>| {
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{label}: a bf16 arena differs from the f32 arena of the rounded adapter"
            );
        };
        let cpus = [CpuBackend::new(pool(2)), CpuBackend::portable(pool(1))];
        for t in LoraTarget::ALL {
            let (xs, _, ys, _) = layout(&geom, t);
            let rows = 9;
            let x = rand_vec(&mut rng, rows * xs);
            let y0 = rand_vec(&mut rng, rows * ys);
            let batch = LoraBatch::from_slots((0..rows).map(|k| (k % 3) as i32 - 1).collect());
            for be in &cpus {
                let mut sb = be.alloc_lora_stack(bf16(geom)).unwrap();
                let mut sf = be.alloc_lora_stack(geom).unwrap();
                load(be, &mut sb, 0, &adapter);
                load(be, &mut sb, 1, &adapter);
                load(be, &mut sf, 0, &rounded);
                load(be, &mut sf, 1, &rounded);
                let got = apply(be, &sb, (&x, &y0, rows), &batch, 1, t, &geom);
                let want = apply(be, &sf, (&x, &y0, rows), &batch, 1, t, &geom);
                check(&format!("simd={} {t:?}", be.simd_enabled()), got, want);
            }
            let r = ReferenceBackend;
            let mut sb = r.alloc_lora_stack(bf16(geom)).unwrap();
            let mut sf = r.alloc_lora_stack(geom).unwrap();
            load(&r, &mut sb, 0, &adapter);
            load(&r, &mut sf, 0, &rounded);
            let got = apply(&r, &sb, (&x, &y0, rows), &batch, 1, t, &geom);
            let want = apply(&r, &sf, (&x, &y0, rows), &batch, 1, t, &geom);
            check(&format!("reference {t:?}"), got, want);
            assert_eq!(
                r.lora_stack_bytes(&sb) * 2,
                r.lora_stack_bytes(&sf),
                "a bf16 arena reserves 2 bytes per weight"
            );
        }
    }
}

/// Row `probe` computed alone equals (bitwise) the same row inside larger calls with other
/// slots, at other positions, and on pools of 1 and 2 threads.
fn batch_invariance(geom: LoraStackGeometry, simd: bool) {
    let p1 = pool(1);
    let p2 = pool(2);
    let mk = |p: &Arc<rayon::ThreadPool>| {
        if simd {
            CpuBackend::new(p.clone())
        } else {
            CpuBackend::portable(p.clone())
        }
    };
    let (b1, b2) = (mk(&p1), mk(&p2));
    let s1 = fill(&b1, &geom, 3);
    let s2 = fill(&b2, &geom, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for t in LoraTarget::ALL {
        let (xs, _, ys, _) = layout(&geom, t);
        for probe_slot in [0i32, 1, 2] {
            let xrow = rand_vec(&mut rng, xs);
            let yrow = rand_vec(&mut rng, ys);
            let alone = apply(
                &b1,
                &s1,
                (&xrow, &yrow, 1),
                &LoraBatch::from_slots(vec![probe_slot]),
                1,
                t,
                &geom,
            );
            for rows in [32usize, 257] {
                let pos = rng.gen_range(0..rows);
                let mut x = rand_vec(&mut rng, rows * xs);
                let mut y = rand_vec(&mut rng, rows * ys);
                x[pos * xs..(pos + 1) * xs].copy_from_slice(&xrow);
                y[pos * ys..(pos + 1) * ys].copy_from_slice(&yrow);
                let mut token_slot: Vec<i32> = (0..rows).map(|_| rng.gen_range(-1..3)).collect();
                token_slot[pos] = probe_slot;
                // Per-row scales split the rows into many segments (one per slot and scale),
                // which takes the one-task-per-segment path; the probe keeps scale 1.
                let mut token_scale: Vec<f32> =
                    (0..rows).map(|_| rng.gen_range(0.5f32..1.5)).collect();
                token_scale[pos] = 1.0;
                let plain = LoraBatch::from_slots(token_slot.clone());
                let scaled = LoraBatch {
                    token_slot,
                    token_scale,
                    mix: Vec::new(),
                };
                for (batch, kind) in [(&plain, "one scale"), (&scaled, "per-row scales")] {
                    for (be, st) in [(&b1, &s1), (&b2, &s2)] {
                        let got = apply(be, st, (&x, &y, rows), batch, 1, t, &geom);
                        let row = &got[pos * ys..(pos + 1) * ys];
                        assert!(
                            row.iter()
                                .zip(&alone)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{t:?} slot {probe_slot} ({kind}): row {pos} of {rows} ({} threads) differs from the row alone",
                            be.threads()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn batch_and_thread_invariance_simd() {
    batch_invariance(smol_geom(5, 64), true);
    batch_invariance(odd_geom(5, 64), true);
    batch_invariance(bf16(smol_geom(5, 64)), true);
    batch_invariance(bf16(odd_geom(5, 64)), true);
}

#[test]
fn batch_and_thread_invariance_portable() {
    batch_invariance(odd_geom(5, 64), false);
}

/// Rows of base, cleared and never-loaded slots, and rows beyond token_slot are left untouched.
#[test]
fn base_rows_untouched() {
    let geom = odd_geom(5, 64);
    let be = CpuBackend::new(pool(2));
    let st = fill(&be, &geom, 4);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let rows = 6;
    let batch = LoraBatch::from_slots(vec![-1, 3, 4, -7]);
    for t in LoraTarget::ALL {
        let (xs, _, ys, _) = layout(&geom, t);
        let x = rand_vec(&mut rng, rows * xs);
        let y0 = rand_vec(&mut rng, rows * ys);
        assert_eq!(apply(&be, &st, (&x, &y0, rows), &batch, 0, t, &geom), y0);
    }
    // A layer out of range is a no-op as well.
    let (xs, _, ys, _) = layout(&geom, LoraTarget::Q);
    let x = rand_vec(&mut rng, xs);
    let y0 = rand_vec(&mut rng, ys);
    let b = LoraBatch::from_slots(vec![0]);
    assert_eq!(
        apply(&be, &st, (&x, &y0, 1), &b, 99, LoraTarget::Q, &geom),
        y0
    );
}

fn load_errors<B: Backend<Buf = Vec<f32>>>(be: &B) {
    let geom = odd_geom(3, 16);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let mut st = be.alloc_lora_stack(geom).unwrap();
    assert_eq!(be.lora_stack_bytes(&st), geom.slot_elems() * 3 * 4);
    let good = random_adapter(&geom, &mut rng, |_, _| Some(4));
    load(be, &mut st, 1, &good);
    let (xs, _, ys, _) = layout(&geom, LoraTarget::Up);
    let x = rand_vec(&mut rng, 2 * xs);
    let y0 = rand_vec(&mut rng, 2 * ys);
    let batch = LoraBatch::from_slots(vec![1, 1]);
    let before = apply(be, &st, (&x, &y0, 2), &batch, 2, LoraTarget::Up, &geom);
    assert_ne!(before, y0);

    let other = random_adapter(&geom, &mut rng, |_, _| Some(4));
    let mut cases: Vec<(&str, usize, OwnedAdapter, ErrorCode)> = Vec::new();
    cases.push(("slot out of range", 3, other.clone(), ErrorCode::Internal));
    let mut rank0 = other.clone();
    rank0[2][5].as_mut().unwrap().0 = 0;
    cases.push(("rank 0", 1, rank0, ErrorCode::InvalidAdapter));
    let big = random_adapter(&geom, &mut rng, |l, _| Some(if l == 2 { 17 } else { 4 }));
    cases.push(("rank > max", 1, big, ErrorCode::InvalidAdapter));
    let mut short_a = other.clone();
    short_a[2][0].as_mut().unwrap().1.pop();
    cases.push(("short A", 1, short_a, ErrorCode::InvalidAdapter));
    let mut long_b = other.clone();
    long_b[1][6].as_mut().unwrap().2.push(0.5);
    cases.push(("long B", 1, long_b, ErrorCode::InvalidAdapter));
    let mut layers = other.clone();
    layers.pop();
    cases.push(("layer count", 1, layers, ErrorCode::InvalidAdapter));
    for (what, slot, ad, code) in cases {
        let v = view(&ad);
        let err = be.lora_load_slot(&mut st, slot, &v).unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err}");
        let after = apply(be, &st, (&x, &y0, 2), &batch, 2, LoraTarget::Up, &geom);
        assert_eq!(after, before, "{what}: slot 1 changed after a failed load");
    }
    // Replacing with a different adapter changes the result; clearing removes it.
    load(be, &mut st, 1, &other);
    let replaced = apply(be, &st, (&x, &y0, 2), &batch, 2, LoraTarget::Up, &geom);
    assert_ne!(replaced, before);
    be.lora_clear_slot(&mut st, 1);
    be.lora_clear_slot(&mut st, 99); // out of range: ignored
    assert_eq!(
        apply(be, &st, (&x, &y0, 2), &batch, 2, LoraTarget::Up, &geom),
        y0
    );
    // Reloading after a clear works again.
    load(be, &mut st, 1, &good);
    assert_eq!(
        apply(be, &st, (&x, &y0, 2), &batch, 2, LoraTarget::Up, &geom),
        before
    );
}

#[test]
fn load_slot_errors_keep_previous_content() {
    load_errors(&CpuBackend::new(pool(2)));
    load_errors(&ReferenceBackend);
}

/// Buffers shorter than `rows` rows: rows out of range are skipped (no panic), the others match
/// the reference; views whose rows would overlap (`col + width > stride`) or whose row counts
/// differ are a no-op.
#[test]
fn short_buffers_skip_rows() {
    let geom = odd_geom(5, 64);
    let cpu = CpuBackend::new(pool(2));
    let r = ReferenceBackend;
    let (cs, rs) = (fill(&cpu, &geom, 2), fill(&r, &geom, 2));
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let t = LoraTarget::Down;
    let (inp, out) = geom.dims[t.index()];
    let batch = LoraBatch::from_slots(vec![0, 1, 2, 0, 1, 2]);
    // x holds 4 rows, y 5 (the 5th partial): rows 4.. are skipped.
    let x = rand_vec(&mut rng, 4 * inp);
    let y0 = rand_vec(&mut rng, 4 * out + out / 2);
    let run = |be: &dyn Fn(&mut Vec<f32>)| {
        let mut y = y0.clone();
        be(&mut y);
        y
    };
    let x6 = View::new(&x, 6, inp, 0);
    let got = run(&|y| cpu.lora_apply(x6, ViewMut::new(y, 6, out, 0), &args(&batch, &cs, t)));
    let want = run(&|y| r.lora_apply(x6, ViewMut::new(y, 6, out, 0), &args(&batch, &rs, t)));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
    }
    assert_eq!(&got[4 * out..], &y0[4 * out..]);
    assert_ne!(&got[..out], &y0[..out]);
    // Overlapping rows (y stride below `out`, x stride below `in`) and x/y row counts that
    // differ: nothing is written, by either backend.
    let x4 = View::new(&x, 4, inp, 0);
    let cases = [
        (x4, out - 1, 4),
        (View::new(&x, 4, inp - 1, 0), out, 4),
        (x4, out, 3),
    ];
    for (xv, ys, yrows) in cases {
        let what = format!("x stride {}, y stride {ys}, y rows {yrows}", xv.stride);
        let same =
            run(&|y| cpu.lora_apply(xv, ViewMut::new(y, yrows, ys, 0), &args(&batch, &cs, t)));
        assert_eq!(same, y0, "cpu: {what}");
        let same = run(&|y| r.lora_apply(xv, ViewMut::new(y, yrows, ys, 0), &args(&batch, &rs, t)));
        assert_eq!(same, y0, "reference: {what}");
    }
}

/// LoRA arguments for layer 1.
fn args<'a, S>(batch: &'a LoraBatch, stack: &'a S, target: LoraTarget) -> LoraArgs<'a, S> {
    LoraArgs {
        batch,
        stack,
        layer: 1,
        target,
    }
}

/// `matmul_before_lora` (the base matmul asking for the following adapters' weights as it
/// goes) writes exactly what `matmul` writes, bit for bit, on every quantized kernel path and
/// for a dense weight, at 1 and 2 threads, for batches whose adapters fit the side stream's
/// budget (8 distinct slots) and exceed it (rows of every slot of a large arena), and for a
/// batch without adapters.
#[test]
fn matmul_before_lora_is_the_matmul() {
    use loraplex::backend::cpu::QuantKernel;
    use loraplex::backend::{LoraNext, WeightFormat};
    use loraplex::quant::{quantize::quantize, GgmlType};
    use loraplex::tensor::HostTensor;
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let geom = bf16(LoraStackGeometry {
        num_slots: 32,
        ..smol_geom(32, 16)
    });
    // The weight's shape is free (the arena's dims only size the side stream): whole Q4_K
    // blocks.
    let (inp, out) = (512, 960);
    let wdata = rand_vec(&mut rng, inp * out);
    let weights = [
        HostTensor::quantized(quantize(GgmlType::Q4K, out, inp, &wdata).unwrap()),
        HostTensor::quantized(quantize(GgmlType::Q8_0, out, inp, &wdata).unwrap()),
        HostTensor::f32(vec![out, inp], wdata.clone()),
    ];
    for threads in [1usize, 2] {
        for k in QuantKernel::ALL {
            let Ok(be) = CpuBackend::with_quant_kernel(pool(threads), k) else {
                eprintln!("SKIPPED quantized kernel path {}", k.name());
                continue;
            };
            let mut stack = be.alloc_lora_stack(geom).unwrap();
            for slot in 0..geom.num_slots {
                let a = random_adapter(&geom, &mut rng, |_, _| Some(16));
                load(&be, &mut stack, slot, &a);
            }
            for rows in [1usize, 8, 40] {
                let x = rand_vec(&mut rng, rows * inp);
                let batches = [
                    LoraBatch::from_slots((0..rows as i32).map(|r| r % 8).collect()),
                    LoraBatch::from_slots((0..rows as i32).map(|r| r % 32).collect()),
                    LoraBatch::from_slots(vec![-1; rows]),
                ];
                for w in &weights {
                    let w = be.weight(w, WeightFormat::BF16).unwrap();
                    let mut want = vec![0f32; rows * out];
                    be.matmul(&x, rows, &w, &mut want);
                    for (bi, batch) in batches.iter().enumerate() {
                        let next = LoraNext {
                            batch,
                            stack: &stack,
                            layer: 1,
                            targets: &[LoraTarget::Q, LoraTarget::K, LoraTarget::V],
                        };
                        let mut got = vec![f32::NAN; rows * out];
                        be.matmul_before_lora(&x, rows, &w, &mut got, next);
                        let what = format!(
                            "{} path, {threads} threads, {rows} rows, batch {bi}",
                            k.name()
                        );
                        assert_bits_eq(&what, &got, &want);
                    }
                }
            }
        }
    }
}
