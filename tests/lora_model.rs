//! The LoRA math of a whole model (DESIGN.md §5): `Llama::forward` with an adapter in an arena
//! slot must equal the same model with merged weights `W + s·B·A` run without adapters, on
//! ReferenceBackend and CpuBackend (and the `LORAPLEX_TEST_DEVICE` backend when it is a GPU); a
//! mixed batch gives every row bitwise the logits of running it alone (CpuBackend, and that GPU
//! backend); a zero-B adapter is bitwise the base model. The real-model check
//! (reads ../shared/reference and models/SmolLM2-135M-Instruct.Q4_1.gguf; skips when absent)
//! compares with PEFT's logits for the `hf-qv-r16-bin` adapter.
//!
//! Merged-weight tolerance: the merged weights are computed in f64 and rounded to f32, while the
//! LoRA path adds `s·B·(A·x)` to `W·x` in f32 — a different association of the same sum, so the
//! results differ by f32 rounding only. Measured max|diff| is 1e-6..1e-5 × std of the logit row
//! (2-layer tiny model); the bound used is `MERGED_TOL = 5e-5 × std` (the adapter itself moves
//! the logits by ~1 × std, so a wrong LoRA contribution fails by orders of magnitude).

mod common;

use std::path::Path;
use std::sync::Arc;

use loraplex::adapters::{load_adapter, AdapterLimits, ModelShape};
use loraplex::backend::cpu::CpuBackend;
use loraplex::backend::reference::ReferenceBackend;
use loraplex::backend::{
    AttnMeta, Backend, KvGeometry, LoraBatch, LoraLane, LoraPrecision, LoraStackGeometry,
    LoraTarget, LoraWeights, WeightFormat,
};
use loraplex::model::llama::{Llama, StepInput};
use loraplex::model::{ModelConfig, ModelFiles, TensorMap};
use loraplex::tensor::{DType, HostTensor};
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use common::max_rel_diff;

const MERGED_TOL: f32 = 5e-5;
const BLOCK: usize = 16;
const BLOCKS_PER_SEQ: usize = 4;

fn pool(n: usize) -> Arc<rayon::ThreadPool> {
    Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap(),
    )
}

/// Owned adapter: `[layer][target]` = (rank, A [r, in], B [out, r], scale).
type Adapter = Vec<[Option<(usize, Vec<f32>, Vec<f32>, f32)>; 7]>;

fn dims(cfg: &ModelConfig) -> [(usize, usize); 7] {
    shape_of(cfg).lora_dims()
}

fn shape_of(cfg: &ModelConfig) -> ModelShape {
    ModelShape::of(cfg, DType::F32)
}

fn random_adapter(
    cfg: &ModelConfig,
    seed: u64,
    zero_b: bool,
    rank_of: impl Fn(usize, LoraTarget) -> Option<usize>,
) -> Adapter {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let d = dims(cfg);
    (0..cfg.num_layers)
        .map(|l| {
            std::array::from_fn(|ti| {
                let r = rank_of(l, LoraTarget::ALL[ti])?;
                let (i, o) = d[ti];
                let a = (0..r * i).map(|_| rng.gen_range(-0.35f32..0.35)).collect();
                let b = (0..o * r)
                    .map(|_| {
                        if zero_b {
                            0.0
                        } else {
                            rng.gen_range(-0.35f32..0.35)
                        }
                    })
                    .collect();
                Some((r, a, b, 16.0 / r as f32 * 0.25))
            })
        })
        .collect()
}

fn view(a: &Adapter) -> Vec<[Option<LoraWeights<'_>>; 7]> {
    a.iter()
        .map(|m| {
            std::array::from_fn(|t| {
                m[t].as_ref().map(|(r, a, b, s)| LoraWeights {
                    rank: *r,
                    a,
                    b,
                    scale: *s,
                })
            })
        })
        .collect()
}

/// `W + s·B·A` for every adapted module (f64, stored f32).
fn merge(tensors: &mut TensorMap, ad: &Adapter) {
    let names = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ];
    for (l, mods) in ad.iter().enumerate() {
        for (ti, m) in mods.iter().enumerate() {
            let Some((r, a, b, s)) = m else { continue };
            let key = format!("model.layers.{l}.{}.weight", names[ti]);
            let t = tensors.remove(&key).unwrap();
            let (out, inp) = (t.shape[0], t.shape[1]);
            let mut w = t.into_f32_vec();
            for o in 0..out {
                for i in 0..inp {
                    let d: f64 = (0..*r)
                        .map(|k| b[o * r + k] as f64 * a[k * inp + i] as f64)
                        .sum();
                    w[o * inp + i] = (w[o * inp + i] as f64 + *s as f64 * d) as f32;
                }
            }
            tensors.insert(key, HostTensor::f32(vec![out, inp], w));
        }
    }
}

/// One chunk of a step: sequence `seq` (its block table is `seq`'s contiguous blocks),
/// positions `start..end` of `tokens`, adapters `mix` as (slot, mixture scale) (empty = base;
/// one entry at scale 1 = one adapter).
struct Chunk<'a> {
    seq: usize,
    tokens: &'a [u32],
    start: usize,
    end: usize,
    mix: &'a [(i32, f32)],
}

/// Runs one step; returns the logits of every row.
fn step<B: Backend>(
    be: &B,
    model: &Llama<B>,
    kv: &mut B::KvCache,
    stack: Option<&B::LoraStack>,
    chunks: &[Chunk<'_>],
) -> Vec<Vec<f32>> {
    let tables: Vec<Vec<u32>> = (0..10)
        .map(|s| ((s * BLOCKS_PER_SEQ) as u32..((s + 1) * BLOCKS_PER_SEQ) as u32).collect())
        .collect();
    let (mut tokens, mut row_seq, mut row_pos, mut slots) = (vec![], vec![], vec![], vec![]);
    let lanes = chunks.iter().map(|c| c.mix.len()).max().unwrap_or(0).max(1);
    let mut lane: Vec<(Vec<i32>, Vec<f32>)> = vec![(vec![], vec![]); lanes];
    for c in chunks {
        for p in c.start..c.end {
            tokens.push(c.tokens[p]);
            row_seq.push(c.seq as u32);
            row_pos.push(p as u32);
            slots.push(tables[c.seq][p / BLOCK] * BLOCK as u32 + (p % BLOCK) as u32);
            for (k, (ls, lw)) in lane.iter_mut().enumerate() {
                let (slot, scale) = c.mix.get(k).copied().unwrap_or((-1, 1.0));
                ls.push(slot);
                lw.push(scale);
            }
        }
    }
    let refs: Vec<&[u32]> = tables.iter().map(|t| t.as_slice()).collect();
    let logit_rows: Vec<u32> = (0..tokens.len() as u32).collect();
    let mut lane = lane.into_iter();
    let (token_slot, token_scale) = lane.next().unwrap_or_default();
    let batch = LoraBatch {
        token_slot,
        token_scale,
        mix: lane.map(|(slot, scale)| LoraLane { slot, scale }).collect(),
    };
    let input = StepInput {
        tokens: &tokens,
        meta: AttnMeta {
            row_seq: &row_seq,
            row_pos: &row_pos,
            slot_mapping: &slots,
            block_tables: &refs,
        },
        logit_rows: &logit_rows,
        lora: &batch,
    };
    let v = model.config().vocab_size;
    let out = model.forward(be, kv, stack, &input).unwrap();
    out.chunks(v).map(|r| r.to_vec()).collect()
}

fn kv_geom(cfg: &ModelConfig) -> KvGeometry {
    KvGeometry {
        num_layers: cfg.num_layers,
        num_blocks: 10 * BLOCKS_PER_SEQ,
        block_size: BLOCK,
        num_kv_heads: cfg.num_kv_heads,
        head_dim: cfg.head_dim,
    }
}

fn tiny_files(dir: &Path) -> ModelFiles {
    common::write_tiny_model(
        dir,
        common::TinySpec {
            hidden: 36,
            inter: 60,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 10,
            tied: false,
            seed: 7,
        },
    );
    ModelFiles::load(dir).unwrap()
}

fn arena_geom(cfg: &ModelConfig, max_rank: usize) -> LoraStackGeometry {
    LoraStackGeometry {
        num_slots: 4,
        max_rank,
        num_layers: cfg.num_layers,
        dims: dims(cfg),
        precision: LoraPrecision::F32,
    }
}

/// Adapter vs merged weights on one backend; returns the max relative diff seen.
fn adapter_equals_merged<B: Backend>(be: &B, files: &ModelFiles, ad: &Adapter) -> f32 {
    let cfg = &files.config;
    let mut base_t = files.tensors.clone();
    let model = Llama::load(be, cfg, &mut base_t, WeightFormat::F32).unwrap();
    let mut merged_t = files.tensors.clone();
    merge(&mut merged_t, ad);
    let merged = Llama::load(be, cfg, &mut merged_t, WeightFormat::F32).unwrap();
    let mut stack = be.alloc_lora_stack(arena_geom(cfg, 16)).unwrap();
    be.lora_load_slot(&mut stack, 2, &view(ad)).unwrap();
    let toks: Vec<u32> = (0..23u32).map(|i| (i * 37 + 5) % 259).collect();
    let mut worst = 0f32;
    // A CUDA backend keeps K/V in bf16: the merged weights' different rounding can move a K/V
    // element across a bf16 rounding boundary, so the bf16 bound applies there.
    let tol = if be.name().starts_with("cuda") {
        MERGED_TOL.max(common::BF16_REL_TOL)
    } else {
        MERGED_TOL
    };
    // A 20-token prefill then 3 decode steps, with the adapter vs merged vs base.
    let mut kv_a = be.alloc_kv(kv_geom(cfg)).unwrap();
    let mut kv_m = be.alloc_kv(kv_geom(cfg)).unwrap();
    let mut kv_b = be.alloc_kv(kv_geom(cfg)).unwrap();
    let mut bounds = vec![(0usize, 20usize)];
    bounds.extend((20..23).map(|p| (p, p + 1)));
    for (start, end) in bounds {
        let c = |mix| {
            [Chunk {
                seq: 1,
                tokens: &toks,
                start,
                end,
                mix,
            }]
        };
        let got = step(be, &model, &mut kv_a, Some(&stack), &c(&[(2, 1.0)]));
        let want = step(be, &merged, &mut kv_m, None, &c(&[]));
        let base = step(be, &model, &mut kv_b, Some(&stack), &c(&[]));
        for ((g, w), b) in got.iter().zip(&want).zip(&base) {
            let d = max_rel_diff(g, w);
            assert!(
                d <= tol,
                "{}: rows {start}..{end}: max|diff| {d:.2e} x std > {tol:e}",
                be.name()
            );
            // The adapter must matter (otherwise the test proves nothing).
            assert!(max_rel_diff(b, w) > 1e-2, "adapter barely changes logits");
            worst = worst.max(d);
        }
    }
    worst
}

#[test]
fn adapter_matches_merged_weights() {
    let dir = tempfile::tempdir().unwrap();
    let files = tiny_files(dir.path());
    let cfg = files.config.clone();
    let full = random_adapter(&cfg, 1, false, |_, _| Some(8));
    let mixed = random_adapter(&cfg, 2, false, |l, t| match (l + t.index()) % 3 {
        0 => Some(4),
        1 => Some(16),
        _ => None,
    });
    for ad in [&full, &mixed] {
        let r = adapter_equals_merged(&ReferenceBackend, &files, ad);
        let c = adapter_equals_merged(&CpuBackend::new(pool(2)), &files, ad);
        let p = adapter_equals_merged(&CpuBackend::portable(pool(1)), &files, ad);
        println!("max|diff|/std vs merged: reference {r:.2e}, cpu {c:.2e}, portable {p:.2e}");
        if common::device_is_cuda() {
            let dev = loraplex::backend::select(&common::test_device(), 2).unwrap();
            let d = adapter_equals_merged(&dev, &files, ad);
            println!("max|diff|/std vs merged: {} {d:.2e}", dev.name());
        }
    }
}

/// Logits of one backend's run in [`mixture_matches_merged_weights`]: the mixture, the merged
/// model and the mixture's first adapter alone.
struct MixRun {
    name: String,
    got: Vec<Vec<f32>>,
    want: Vec<Vec<f32>>,
    single: Vec<Vec<f32>>,
}

/// The adapters of one test sequence, its tokens and where its prefill splits.
type TestSeq<'a> = (&'a [(i32, f32)], Vec<u32>, usize);

/// A mixture `W + Σ wᵢ·sᵢ·Bᵢ·Aᵢ` (three adapters of different ranks and targets in slots 0, 3
/// and 1, one weight negative) equals the model with all three merged, on every backend.
#[test]
fn mixture_matches_merged_weights() {
    let dir = tempfile::tempdir().unwrap();
    let files = tiny_files(dir.path());
    let cfg = files.config.clone();
    let ads = [
        random_adapter(&cfg, 11, false, |_, _| Some(8)),
        random_adapter(&cfg, 12, false, |l, t| match (l + t.index()) % 3 {
            0 => Some(4),
            1 => Some(16),
            _ => None,
        }),
        random_adapter(&cfg, 13, false, |_, t| (t.index() % 2 == 0).then_some(2)),
    ];
    let mix = [(0, 0.7f32), (3, -0.45), (1, 1.3)];
    let weighted = |ad: &Adapter, w: f32| -> Adapter {
        ad.iter()
            .map(|m| {
                std::array::from_fn(|t| {
                    m[t].as_ref()
                        .map(|(r, a, b, s)| (*r, a.clone(), b.clone(), s * w))
                })
            })
            .collect()
    };
    let mut merged_t = files.tensors.clone();
    for (ad, &(_, w)) in ads.iter().zip(&mix) {
        merge(&mut merged_t, &weighted(ad, w));
    }
    let toks: Vec<u32> = (0..21u32).map(|i| (i * 41 + 9) % 259).collect();
    let check = |be: &dyn Fn() -> MixRun| {
        let MixRun {
            name,
            got,
            want,
            single,
        } = be();
        for (g, w) in got.iter().zip(&want) {
            let d = max_rel_diff(g, w);
            assert!(d <= MERGED_TOL, "{name}: mixture vs merged {d:.2e} x std");
        }
        // The other adapters matter: the first alone is far from the mixture.
        assert!(max_rel_diff(&single[0], &want[0]) > 1e-2, "{name}");
    };
    fn run<B: Backend>(
        be: &B,
        files: &ModelFiles,
        merged_t: &TensorMap,
        ads: &[Adapter],
        mix: &[(i32, f32)],
        toks: &[u32],
    ) -> MixRun {
        let cfg = &files.config;
        let model = Llama::load(be, cfg, &mut files.tensors.clone(), WeightFormat::F32).unwrap();
        let merged = Llama::load(be, cfg, &mut merged_t.clone(), WeightFormat::F32).unwrap();
        let mut stack = be.alloc_lora_stack(arena_geom(cfg, 16)).unwrap();
        for (ad, &(slot, _)) in ads.iter().zip(mix) {
            be.lora_load_slot(&mut stack, slot as usize, &view(ad))
                .unwrap();
        }
        let c = |mix| {
            [Chunk {
                seq: 2,
                tokens: toks,
                start: 0,
                end: toks.len(),
                mix,
            }]
        };
        let got = step(
            be,
            &model,
            &mut be.alloc_kv(kv_geom(cfg)).unwrap(),
            Some(&stack),
            &c(mix),
        );
        let want = step(
            be,
            &merged,
            &mut be.alloc_kv(kv_geom(cfg)).unwrap(),
            None,
            &c(&[]),
        );
        let single = step(
            be,
            &model,
            &mut be.alloc_kv(kv_geom(cfg)).unwrap(),
            Some(&stack),
            &c(&mix[..1]),
        );
        MixRun {
            name: be.name().to_string(),
            got,
            want,
            single,
        }
    }
    check(&|| run(&ReferenceBackend, &files, &merged_t, &ads, &mix, &toks));
    check(&|| {
        run(
            &CpuBackend::new(pool(2)),
            &files,
            &merged_t,
            &ads,
            &mix,
            &toks,
        )
    });
    check(&|| {
        run(
            &CpuBackend::portable(pool(1)),
            &files,
            &merged_t,
            &ads,
            &mix,
            &toks,
        )
    });
}

#[test]
fn mixed_batch_rows_equal_rows_alone() {
    let dir = tempfile::tempdir().unwrap();
    let files = tiny_files(dir.path());
    let cfg = files.config.clone();
    let a1 = random_adapter(&cfg, 1, false, |_, _| Some(8));
    let a2 = random_adapter(&cfg, 2, false, |l, t| match (l + t.index()) % 3 {
        0 => Some(4),
        1 => Some(16),
        _ => None,
    });
    for threads in [1, 2] {
        mixed_batch_check(&CpuBackend::new(pool(threads)), &files, &a1, &a2, threads);
    }
    if common::device_is_cuda() {
        let dev = loraplex::backend::select(&common::test_device(), 2).unwrap();
        mixed_batch_check(&dev, &files, &a1, &a2, 2);
    }
}

/// [`mixed_batch_rows_equal_rows_alone`] on one backend (`threads` names it in failures).
fn mixed_batch_check<B: Backend>(
    be: &B,
    files: &ModelFiles,
    a1: &Adapter,
    a2: &Adapter,
    threads: usize,
) {
    let cfg = &files.config;
    {
        let model = Llama::load(be, cfg, &mut files.tensors.clone(), WeightFormat::F32).unwrap();
        let mut stack = be.alloc_lora_stack(arena_geom(cfg, 16)).unwrap();
        be.lora_load_slot(&mut stack, 0, &view(a1)).unwrap();
        be.lora_load_slot(&mut stack, 3, &view(a2)).unwrap();
        // Nine sequences: (adapters, prompt length); step 1 prefills all but the last 1..3
        // tokens, step 2 mixes decode rows (1 token) with prefill chunks (several). Mixtures of
        // the same slots at other scales and in the other order sit next to single adapters.
        let mixes: [&[(i32, f32)]; 9] = [
            &[],
            &[(0, 1.0)],
            &[(3, 1.0)],
            &[(0, 1.0)],
            &[],
            &[(3, 1.0)],
            &[(0, 0.7), (3, 0.3)],
            &[(3, -0.5), (0, 1.25)],
            &[(0, 0.7)],
        ];
        let seqs: Vec<TestSeq<'_>> = [
            (9, 8),
            (12, 11),
            (7, 4),
            (5, 4),
            (14, 13),
            (10, 9),
            (11, 10),
            (6, 3),
            (8, 7),
        ]
        .iter()
        .enumerate()
        .map(|(s, &(len, split))| {
            let toks = (0..len as u32)
                .map(|i| (i * 31 + 7 * s as u32 + 3) % 259)
                .collect();
            (mixes[s], toks, split)
        })
        .collect();
        let chunks = |phase: usize, only: Option<usize>| -> Vec<Chunk<'_>> {
            seqs.iter()
                .enumerate()
                .filter(|(s, _)| only.is_none_or(|o| o == *s))
                .map(|(s, (mix, toks, split))| {
                    let (start, end) = if phase == 0 {
                        (0, *split)
                    } else {
                        (*split, toks.len())
                    };
                    Chunk {
                        seq: s,
                        tokens: toks,
                        start,
                        end,
                        mix,
                    }
                })
                .collect()
        };
        let mut kv = be.alloc_kv(kv_geom(cfg)).unwrap();
        let mut batched = step(be, &model, &mut kv, Some(&stack), &chunks(0, None));
        batched.extend(step(be, &model, &mut kv, Some(&stack), &chunks(1, None)));
        // The same rows, one sequence at a time (fresh cache per sequence).
        let mut alone: Vec<Vec<Vec<f32>>> = vec![Vec::new(); 2];
        for s in 0..seqs.len() {
            let mut kv = be.alloc_kv(kv_geom(cfg)).unwrap();
            for (phase, out) in alone.iter_mut().enumerate() {
                out.extend(step(
                    be,
                    &model,
                    &mut kv,
                    Some(&stack),
                    &chunks(phase, Some(s)),
                ));
            }
        }
        let alone: Vec<Vec<f32>> = alone.into_iter().flatten().collect();
        assert_eq!(batched.len(), alone.len());
        for (i, (b, a)) in batched.iter().zip(&alone).enumerate() {
            assert!(
                b.iter().zip(a).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{} ({threads} threads): row {i} differs between the mixed batch and running alone",
                be.name()
            );
        }
    }
}

#[test]
fn zero_b_adapter_is_bitwise_base() {
    let dir = tempfile::tempdir().unwrap();
    let files = tiny_files(dir.path());
    let cfg = files.config.clone();
    let zero = random_adapter(&cfg, 5, true, |_, _| Some(8));
    let be = CpuBackend::new(pool(2));
    let model = Llama::load(&be, &cfg, &mut files.tensors.clone(), WeightFormat::F32).unwrap();
    let mut stack = be.alloc_lora_stack(arena_geom(&cfg, 8)).unwrap();
    be.lora_load_slot(&mut stack, 1, &view(&zero)).unwrap();
    let toks: Vec<u32> = (0..17u32).map(|i| (i * 13 + 1) % 259).collect();
    let run = |mix: &[(i32, f32)]| {
        let mut kv = be.alloc_kv(kv_geom(&cfg)).unwrap();
        let c = [Chunk {
            seq: 0,
            tokens: &toks,
            start: 0,
            end: toks.len(),
            mix,
        }];
        step(&be, &model, &mut kv, Some(&stack), &c)
    };
    let (with, base) = (run(&[(1, 1.0)]), run(&[]));
    assert!(!base.is_empty() && with.len() == base.len());
    for (w, b) in with.iter().zip(&base) {
        assert!(!b.is_empty() && w.len() == b.len());
        assert!(w.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

/// The SmolLM2 GGUF with PEFT's `hf-qv-r16-bin` adapter reproduces transformers+PEFT's
/// last-position logits within 3e-4 × std (reads ../shared and the GGUF; skips when absent).
#[test]
fn smollm2_hf_adapter_matches_peft() {
    let Some(common::Smollm2Reference {
        gguf,
        dir: refdir,
        json: refj,
    }) = common::smollm2_reference()
    else {
        return;
    };
    let want: Array2<f32> = ndarray_npy::read_npy(refdir.join("logits/hf-qv-r16-bin.npy")).unwrap();
    let mut files = ModelFiles::load(&gguf).unwrap();
    // The dequantized (f32) path: what PEFT ran (tests/quant_model.rs covers the quantized one).
    files.expand_quantized();
    let cfg = files.config.clone();
    let be = CpuBackend::new(pool(2));
    let model = Llama::load(&be, &cfg, &mut files.tensors, WeightFormat::F32).unwrap();
    let shape = shape_of(&cfg);
    let ad = load_adapter(
        &refdir.join("adapters/hf-qv-r16-bin"),
        "hf-qv-r16-bin",
        &shape,
        &AdapterLimits { max_lora_rank: 64 },
    )
    .unwrap();
    let data = loraplex::cache::slot_data(&ad);
    let mut stack = be
        .alloc_lora_stack(LoraStackGeometry {
            num_slots: 2,
            max_rank: 64,
            num_layers: cfg.num_layers,
            dims: dims(&cfg),
            precision: LoraPrecision::F32,
        })
        .unwrap();
    be.lora_load_slot(&mut stack, 1, &data).unwrap();
    let mut failures = Vec::new();
    for (i, p) in refj["prompts"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> = p["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let geom = KvGeometry {
            num_layers: cfg.num_layers,
            num_blocks: ids.len().div_ceil(BLOCK),
            block_size: BLOCK,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
        };
        let mut kv = be.alloc_kv(geom).unwrap();
        let table: Vec<u32> = (0..geom.num_blocks as u32).collect();
        let tables = [table.as_slice()];
        let row_seq = vec![0u32; ids.len()];
        let row_pos: Vec<u32> = (0..ids.len() as u32).collect();
        let batch = LoraBatch::from_slots(vec![1; ids.len()]);
        let last = [ids.len() as u32 - 1];
        let input = StepInput {
            tokens: &ids,
            meta: AttnMeta {
                row_seq: &row_seq,
                row_pos: &row_pos,
                slot_mapping: &row_pos,
                block_tables: &tables,
            },
            logit_rows: &last,
            lora: &batch,
        };
        let got = model.forward(&be, &mut kv, Some(&stack), &input).unwrap();
        let w = want.row(i);
        let std = common::std_dev(w.as_slice().unwrap());
        let d = got
            .iter()
            .zip(w.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "prompt {i}: max|diff| {d:.3e} (tol {:.3e}, std {std:.3})",
            3e-4 * std
        );
        if d > 3e-4 * std {
            failures.push(format!(
                "prompt {i}: max|diff| {d:.3e} > {:.3e}",
                3e-4 * std
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
