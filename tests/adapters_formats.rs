//! NeMo and TensorRT-LLM adapters: the fixtures in ../shared/fixtures/tiny-llama/adapters-formats
//! load and equal the HF adapters reference-formats.json names as equivalent; and every
//! `ExportFormat` round-trips through its reader (GQA tiny-llama shape, TRT rows shuffled).
//!
//! Fixture tests read ../shared and skip (with a println) when it is absent.

mod common;

use std::path::{Path, PathBuf};

use loraplex::adapters::export::{export, ExportFormat};
use loraplex::adapters::{
    load_adapter, AdapterFormat, AdapterLimits, LoraModule, ModelShape, NormalizedAdapter,
};
use loraplex::backend::LoraTarget;
use loraplex::tensor::DType;
use rand::{Rng, SeedableRng};

/// The shared fixtures (skips, saying so, when absent; honours LORAPLEX_SHARED).
fn shared() -> Option<PathBuf> {
    common::shared_dir().map(|p| p.join("fixtures/tiny-llama"))
}

/// Reads an adapter directory the one way the crate reads adapters: [`load_adapter`] (discovery,
/// checked file reads, `parse_*`, validation).
fn load(dir: &Path, name: &str, shape: &ModelShape) -> loraplex::Result<NormalizedAdapter> {
    load_adapter(dir, name, shape, &AdapterLimits::default())
}

fn tiny_shape(dtype: DType) -> ModelShape {
    ModelShape {
        num_layers: 3,
        hidden_size: 64,
        intermediate_size: 176,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        dtype,
    }
}

/// The HF adapter read straight from its safetensors (independent of the HF reader): per
/// (layer, target) A, B and the uniform scale `alpha / r`.
fn hf_reference(dir: &Path, scale: f32) -> NormalizedAdapter {
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let shape = tiny_shape(DType::F32);
    let mut layers: Vec<[Option<LoraModule>; 7]> = vec![Default::default(); 3];
    let f32s = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (t.shape().to_vec(), v)
    };
    for (l, mods) in layers.iter_mut().enumerate() {
        for t in LoraTarget::ALL {
            let part = if matches!(t, LoraTarget::Gate | LoraTarget::Up | LoraTarget::Down) {
                "mlp"
            } else {
                "self_attn"
            };
            let base = format!("base_model.model.model.layers.{l}.{part}.{}", t.hf_name());
            if st.tensor(&format!("{base}.lora_A.weight")).is_err() {
                continue;
            }
            let (ash, a) = f32s(&format!("{base}.lora_A.weight"));
            let (bsh, b) = f32s(&format!("{base}.lora_B.weight"));
            let (i, o) = shape.module_dims(t);
            assert_eq!((ash[1], bsh[0]), (i, o));
            mods[t.index()] = Some(LoraModule {
                rank: ash[0],
                in_dim: i,
                out_dim: o,
                a,
                b,
                scale,
            });
        }
    }
    NormalizedAdapter {
        name: "ref".into(),
        format: AdapterFormat::HfSafetensors,
        source: dir.into(),
        generation: String::new(),
        layers,
    }
}

/// Asserts two adapters are mathematically equal: same modules, same A, same `scale·B`
/// (relative tolerance `rel`).
fn assert_equivalent(got: &NormalizedAdapter, want: &NormalizedAdapter, rel: f32, what: &str) {
    assert_eq!(got.layers.len(), want.layers.len(), "{what}: layer count");
    let close = |x: f32, y: f32| (x - y).abs() <= rel * y.abs().max(x.abs()) + 1e-7;
    for (l, (g, w)) in got.layers.iter().zip(&want.layers).enumerate() {
        for t in LoraTarget::ALL {
            match (&g[t.index()], &w[t.index()]) {
                (None, None) => {}
                (Some(g), Some(w)) => {
                    assert_eq!((g.rank, g.in_dim, g.out_dim), (w.rank, w.in_dim, w.out_dim));
                    assert_eq!(g.a.len(), w.a.len());
                    assert_eq!(g.b.len(), w.b.len());
                    for (i, (x, y)) in g.a.iter().zip(&w.a).enumerate() {
                        assert!(close(*x, *y), "{what}: layer {l} {t:?} A[{i}] {x} vs {y}");
                    }
                    for (i, (x, y)) in g.b.iter().zip(&w.b).enumerate() {
                        let (x, y) = (x * g.scale, y * w.scale);
                        assert!(close(x, y), "{what}: layer {l} {t:?} sB[{i}] {x} vs {y}");
                    }
                }
                (g, w) => panic!(
                    "{what}: layer {l} {t:?} present {} vs expected {}",
                    g.is_some(),
                    w.is_some()
                ),
            }
        }
    }
}

#[test]
fn trt_fixtures_equal_hf_all_r8() {
    let Some(fx) = shared() else { return };
    let want = hf_reference(&fx.join("adapters/hf-all-r8"), 2.0);
    for v in ["trt-all-r8-npy", "trt-all-r8-bin"] {
        let got = load(
            &fx.join("adapters-formats").join(v),
            v,
            &tiny_shape(DType::F32),
        )
        .unwrap();
        assert_eq!(got.format, AdapterFormat::TrtLlm);
        assert_eq!(got.name, v);
        assert!(
            !got.generation.is_empty(),
            "{v}: generation set by the loader"
        );
        assert!(got.modules().all(|(_, _, m)| m.scale == 1.0));
        assert_eq!(got.modules().count(), 21);
        assert_equivalent(&got, &want, 1e-6, v);
    }
}

#[test]
fn nemo_canonical_fixture_equals_hf_all_r8() {
    let Some(fx) = shared() else { return };
    let dir = fx.join("adapters-formats/nemo-canonical-r8");
    let got = load(&dir, "nemo-canonical-r8", &tiny_shape(DType::F32)).unwrap();
    assert_eq!(got.format, AdapterFormat::Nemo);
    assert_eq!(got.source, dir);
    assert!(got.modules().all(|(_, _, m)| m.scale == 2.0 && m.rank == 8));
    let want = hf_reference(&fx.join("adapters/hf-all-r8"), 2.0);
    // Same A/B values, not just the same products.
    assert_eq!(got.layers, want.layers);
}

#[test]
fn nemo_fused_fixture_matches_trt_f16_qkv() {
    let Some(fx) = shared() else { return };
    let shape = tiny_shape(DType::F32);
    let fused = load(
        &fx.join("adapters-formats/nemo-fused-r8"),
        "nemo-fused-r8",
        &shape,
    )
    .unwrap();
    assert_eq!(fused.modules().count(), 21);
    for (l, mods) in fused.layers.iter().enumerate() {
        let a = |t: LoraTarget| &mods[t.index()].as_ref().unwrap().a;
        assert_eq!(a(LoraTarget::Q), a(LoraTarget::K), "layer {l}: q/k share A");
        assert_eq!(a(LoraTarget::Q), a(LoraTarget::V), "layer {l}: q/v share A");
        assert_eq!(
            a(LoraTarget::Gate),
            a(LoraTarget::Up),
            "layer {l}: gate/up share A"
        );
        assert_ne!(a(LoraTarget::Q), a(LoraTarget::O));
    }
    assert!(fused.modules().all(|(_, _, m)| m.scale == 2.0));
    // trt-qkv-f16-npy holds the same q/k/v/o values (A, 2·B rounded to f16), with attn_qkv as
    // [Q; K; V]: equality checks the per-KV-group de-interleave.
    let trt = load(
        &fx.join("adapters-formats/trt-qkv-f16-npy"),
        "trt-qkv-f16-npy",
        &shape,
    )
    .unwrap();
    assert_eq!(trt.modules().count(), 12);
    let mut attn_only = fused.clone();
    for l in &mut attn_only.layers {
        for t in [LoraTarget::Gate, LoraTarget::Up, LoraTarget::Down] {
            l[t.index()] = None;
        }
    }
    assert_equivalent(&trt, &attn_only, 1.0e-3, "trt-qkv-f16 vs nemo-fused");
}

#[test]
fn nemo_legacy_gzip_fixture() {
    let Some(fx) = shared() else { return };
    let got = load(
        &fx.join("adapters-formats/nemo-legacy-qkv-gz"),
        "legacy",
        &tiny_shape(DType::F32),
    )
    .unwrap();
    assert_eq!(got.modules().count(), 9);
    assert_eq!(
        got.targets(),
        vec![LoraTarget::Q, LoraTarget::K, LoraTarget::V]
    );
    for (_, _, m) in got.modules() {
        assert_eq!(
            (m.rank, m.scale),
            (16, 1.0),
            "alpha defaults to adapter_dim"
        );
        assert!(m.b.iter().any(|&x| x != 0.0));
    }
    for l in &got.layers {
        assert_eq!(l[0].as_ref().unwrap().a, l[1].as_ref().unwrap().a);
    }
}

#[test]
fn nemo_shape_mismatch_is_refused() {
    let Some(fx) = shared() else { return };
    let mut shape = tiny_shape(DType::F32);
    shape.hidden_size = 128;
    let e = load(&fx.join("adapters-formats/nemo-fused-r8"), "x", &shape).unwrap_err();
    assert!(e.message().contains("hidden_size is 64"), "{}", e.message());
    let shape = ModelShape {
        num_layers: 2,
        ..tiny_shape(DType::F32)
    };
    let e = load(&fx.join("adapters-formats/trt-all-r8-npy"), "x", &shape).unwrap_err();
    assert!(e.message().contains("out of range"), "{}", e.message());
}

#[test]
fn fixtures_load_through_load_adapter() {
    let Some(fx) = shared() else { return };
    let shape = tiny_shape(DType::F32);
    let refj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("reference-formats.json")).unwrap())
            .unwrap();
    for (v, format) in [
        ("nemo-canonical-r8", AdapterFormat::Nemo),
        ("nemo-fused-r8", AdapterFormat::Nemo),
        ("nemo-legacy-qkv-gz", AdapterFormat::Nemo),
        ("trt-all-r8-npy", AdapterFormat::TrtLlm),
        ("trt-all-r8-bin", AdapterFormat::TrtLlm),
        ("trt-qkv-f16-npy", AdapterFormat::TrtLlm),
    ] {
        let dir = fx.join("adapters-formats").join(v);
        let loaded = loraplex::adapters::load_adapter(
            &dir,
            v,
            &shape,
            &loraplex::adapters::AdapterLimits::default(),
        )
        .unwrap_or_else(|e| panic!("{v}: {}", e.message()));
        assert_eq!(loaded.format, format, "{v}");
        assert!(
            !loaded.generation.is_empty(),
            "{v}: generation set by the loader"
        );
        // Independent of the readers: the module count and every rank/scale PEFT resolved.
        let want = &refj["variants"][v]["adapter"];
        assert_eq!(
            loaded.modules().count() as u64,
            want["num_lora_modules"].as_u64().unwrap(),
            "{v}"
        );
        for (layer, target, m) in loaded.modules() {
            let key = format!(
                "model.layers.{layer}.{}.{}",
                if target.index() < 4 {
                    "self_attn"
                } else {
                    "mlp"
                },
                target.hf_name()
            );
            let r = &want["modules"][&key];
            assert_eq!(m.rank as u64, r["r"].as_u64().unwrap(), "{v} {key}");
            // TensorRT-LLM stores B pre-scaled, so its scale is 1.
            let want_scale = if format == AdapterFormat::TrtLlm {
                1.0
            } else {
                r["scaling"].as_f64().unwrap()
            };
            assert!((m.scale as f64 - want_scale).abs() < 1e-6, "{v} {key}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Export → read round trips.

fn gauss(rng: &mut impl Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u1, u2): (f32, f32) = (rng.gen_range(1e-7..1.0), rng.gen());
            std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
        })
        .collect()
}

/// A random adapter; `shared_a` makes q/k/v (and gate/up) of a layer share A.
fn random_adapter(
    shape: &ModelShape,
    targets: &[LoraTarget],
    rank: usize,
    scale: f32,
    shared_a: bool,
    seed: u64,
) -> NormalizedAdapter {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut layers: Vec<[Option<LoraModule>; 7]> = vec![Default::default(); shape.num_layers];
    for mods in layers.iter_mut() {
        let a_qkv = gauss(&mut rng, rank * shape.hidden_size, 0.1);
        let a_fc1 = gauss(&mut rng, rank * shape.hidden_size, 0.1);
        for &t in targets {
            let (i, o) = shape.module_dims(t);
            let a = match t {
                LoraTarget::Q | LoraTarget::K | LoraTarget::V if shared_a => a_qkv.clone(),
                LoraTarget::Gate | LoraTarget::Up if shared_a => a_fc1.clone(),
                _ => gauss(&mut rng, rank * i, 0.1),
            };
            mods[t.index()] = Some(LoraModule {
                rank,
                in_dim: i,
                out_dim: o,
                a,
                b: gauss(&mut rng, o * rank, 0.05),
                scale,
            });
        }
    }
    NormalizedAdapter {
        name: "rand".into(),
        format: AdapterFormat::HfSafetensors,
        source: PathBuf::new(),
        generation: String::new(),
        layers,
    }
}

fn read_back(dir: &Path, format: ExportFormat, shape: &ModelShape) -> NormalizedAdapter {
    match format {
        ExportFormat::NemoFused | ExportFormat::NemoCanonical => load(dir, "rt", shape),
        ExportFormat::TrtNpy { .. } | ExportFormat::TrtBin => load(dir, "rt", shape),
        ExportFormat::HfSafetensors | ExportFormat::HfBin => {
            // The crate's HF reader (PEFT rank/alpha pattern semantics) and an independent
            // test-local reader must agree on what the exporter wrote.
            let local = read_hf_local(dir, shape);
            let crate_hf =
                load(dir, "rt", shape).unwrap_or_else(|e| panic!("{format:?}: {}", e.message()));
            assert_eq!(
                crate_hf.layers, local.layers,
                "{format:?}: HF readers disagree"
            );
            return local;
        }
    }
    .unwrap_or_else(|e| panic!("{format:?}: {}", e.message()))
}

/// A test-local reader of the HF files the exporter writes (independent of the crate's HF
/// reader): tensors from safetensors or the torch zip, per-module rank/alpha from the exact
/// module-path keys of rank_pattern/alpha_pattern, else the globals.
fn read_hf_local(dir: &Path, shape: &ModelShape) -> NormalizedAdapter {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    let r0 = cfg["r"].as_u64().unwrap() as usize;
    let alpha0 = cfg["lora_alpha"].as_f64().unwrap();
    let mut tensors: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> = Default::default();
    let st = dir.join("adapter_model.safetensors");
    if st.exists() {
        let bytes = std::fs::read(st).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (k, t) in st.tensors() {
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            tensors.insert(k, (t.shape().to_vec(), v));
        }
    } else {
        let bytes = std::fs::read(dir.join("adapter_model.bin")).unwrap();
        for (k, t) in loraplex::adapters::torch_pickle::read_torch_zip(&bytes, "bin").unwrap() {
            tensors.insert(k, (t.shape.clone(), t.into_f32_vec()));
        }
    }
    let mut layers: Vec<[Option<LoraModule>; 7]> = vec![Default::default(); shape.num_layers];
    let mut used = 0;
    for (l, mods) in layers.iter_mut().enumerate() {
        for t in LoraTarget::ALL {
            let path = loraplex::adapters::export::hf_module_path(l, t);
            let Some((ash, a)) = tensors.get(&format!("base_model.model.{path}.lora_A.weight"))
            else {
                continue;
            };
            let (bsh, b) = &tensors[&format!("base_model.model.{path}.lora_B.weight")];
            used += 2;
            let r = cfg["rank_pattern"][&path]
                .as_u64()
                .map_or(r0, |x| x as usize);
            let alpha = cfg["alpha_pattern"][&path].as_f64().unwrap_or(alpha0);
            assert_eq!(ash[0], r);
            mods[t.index()] = Some(LoraModule {
                rank: r,
                in_dim: ash[1],
                out_dim: bsh[0],
                a: a.clone(),
                b: b.clone(),
                scale: (alpha / r as f64) as f32,
            });
        }
    }
    assert_eq!(used, tensors.len(), "unexpected tensors in the HF export");
    NormalizedAdapter {
        name: "rt".into(),
        format: AdapterFormat::HfSafetensors,
        source: dir.into(),
        generation: String::new(),
        layers,
    }
}

const ALL7: [LoraTarget; 7] = LoraTarget::ALL;

#[test]
fn export_roundtrip_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let shape = tiny_shape(dtype);
        let adapter = random_adapter(&shape, &ALL7, 8, 2.0, true, 7);
        let formats = [
            ExportFormat::HfSafetensors,
            ExportFormat::HfBin,
            ExportFormat::NemoFused,
            ExportFormat::NemoCanonical,
            ExportFormat::TrtNpy {
                shuffle_rows: false,
            },
            ExportFormat::TrtNpy { shuffle_rows: true },
            ExportFormat::TrtBin,
        ];
        for (i, f) in formats.into_iter().enumerate() {
            let dir = tmp.path().join(format!("{}-{i}", dtype.name()));
            export(&adapter, &shape, f, &dir).unwrap();
            let got = read_back(&dir, f, &shape);
            // Only the TRT weights are stored in the model dtype (as TensorRT-LLM requires).
            let trt = matches!(f, ExportFormat::TrtBin | ExportFormat::TrtNpy { .. });
            let rel = match (trt, dtype) {
                (true, DType::F16) => 1e-3,
                (true, DType::BF16) => 8e-3,
                _ => 1e-6,
            };
            assert_equivalent(&got, &adapter, rel, &format!("{f:?} {}", dtype.name()));
        }
    }
}

#[test]
fn export_mixed_ranks_and_scales_hf() {
    let shape = tiny_shape(DType::F32);
    let mut adapter = random_adapter(&shape, &[LoraTarget::Q, LoraTarget::V], 16, 2.0, false, 9);
    let small = random_adapter(&shape, &[LoraTarget::Down], 4, 0.5, false, 10);
    adapter.layers[1][LoraTarget::Down.index()] = small.layers[1][LoraTarget::Down.index()].clone();
    adapter.layers[2][LoraTarget::V.index()]
        .as_mut()
        .unwrap()
        .scale = 3.0;
    let tmp = tempfile::tempdir().unwrap();
    for f in [
        ExportFormat::HfSafetensors,
        ExportFormat::HfBin,
        ExportFormat::TrtNpy { shuffle_rows: true },
        ExportFormat::NemoCanonical,
    ] {
        let dir = tmp.path().join(format!("{f:?}"));
        match f {
            ExportFormat::NemoCanonical => {
                let e = export(&adapter, &shape, f, &dir).unwrap_err();
                assert!(
                    e.message().contains("one rank and one scale"),
                    "{}",
                    e.message()
                );
            }
            _ => {
                export(&adapter, &shape, f, &dir).unwrap();
                assert_equivalent(
                    &read_back(&dir, f, &shape),
                    &adapter,
                    1e-6,
                    &format!("{f:?}"),
                );
            }
        }
    }
}

#[test]
fn nemo_fused_export_needs_shared_a() {
    let shape = tiny_shape(DType::F32);
    let tmp = tempfile::tempdir().unwrap();
    let separate = random_adapter(&shape, &ALL7, 4, 1.0, false, 3);
    let e = export(&separate, &shape, ExportFormat::NemoFused, tmp.path()).unwrap_err();
    assert!(e.message().contains("share one A"), "{}", e.message());
    let partial = random_adapter(&shape, &[LoraTarget::Q, LoraTarget::V], 4, 1.0, true, 3);
    let e = export(&partial, &shape, ExportFormat::NemoFused, tmp.path()).unwrap_err();
    assert!(e.message().contains("all of q/k/v"), "{}", e.message());
    // The canonical variant takes both.
    for (i, a) in [separate, partial].iter().enumerate() {
        let dir = tmp.path().join(format!("c{i}"));
        export(a, &shape, ExportFormat::NemoCanonical, &dir).unwrap();
        assert_equivalent(
            &read_back(&dir, ExportFormat::NemoCanonical, &shape),
            a,
            1e-6,
            "canon",
        );
    }
}

#[test]
fn trt_export_fused_qkv_row_is_split() {
    // A hand-written attn_qkv row: [A; Q rows; K rows; V rows] must come back as q/k/v with
    // the right B slices (checks the q_dim, kv_dim, kv_dim split independently of the exporter).
    let shape = tiny_shape(DType::F32);
    let r = 2;
    let (h, q, kv) = (64, 64, 32);
    let w = r * (h + q + 2 * kv);
    let row: Vec<f32> = (0..w).map(|i| i as f32).collect();
    let tmp = tempfile::tempdir().unwrap();
    let cfg: Vec<u8> = [0i32, 1, r as i32]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let wts: Vec<u8> = row.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(tmp.path().join("model.lora_config.bin"), cfg).unwrap();
    std::fs::write(tmp.path().join("model.lora_weights.bin"), wts).unwrap();
    let got = load(tmp.path(), "qkv", &shape).unwrap();
    let m = |t: LoraTarget| got.layers[1][t.index()].clone().unwrap();
    let ar = r * h;
    assert_eq!(m(LoraTarget::Q).a, row[..ar].to_vec());
    assert_eq!(m(LoraTarget::K).a, row[..ar].to_vec());
    assert_eq!(m(LoraTarget::Q).b, row[ar..ar + q * r].to_vec());
    assert_eq!(
        m(LoraTarget::K).b,
        row[ar + q * r..ar + (q + kv) * r].to_vec()
    );
    assert_eq!(m(LoraTarget::V).b, row[ar + (q + kv) * r..].to_vec());
    assert_eq!(m(LoraTarget::V).out_dim, kv);
}
