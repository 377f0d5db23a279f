//! Writes deterministic sample LoRA adapters in every supported format.
//!
//! ```text
//! cargo run --release --example gen_sample_adapters -- --out <dir> [--shape smollm2|tiny]
//!     [--seed N] [--dtype f32|f16|bf16] [--strength X]
//! ```
//!
//! Shapes: `smollm2` (SmolLM2-135M: hidden 576, intermediate 1536, 30 layers, 9 heads, 3 KV
//! heads, head_dim 64; the default) and `tiny` (the tiny-llama fixture: 64 / 176 / 3 / 4 / 2 /
//! 16). `--dtype` is the base model dtype the TensorRT-LLM weights are stored in (default f32:
//! the GGUF SmolLM2 is dequantized to f32 and tiny-llama is f32).
//!
//! Adapters written under `<dir>` (each a directory named after the adapter):
//!
//! | adapter | format | rank | modules | scale |
//! | --- | --- | --- | --- | --- |
//! | `sample-hf` | HF safetensors | 8 | all 7 | 2 (alpha 16) |
//! | `sample-hf-bin` | HF `.bin` (torch zip) | 16 | q, v | 2 (alpha 32) |
//! | `sample-nemo-fused` | NeMo fused (q/k/v and gate/up share A) | 8 | all 7 | 2 |
//! | `sample-nemo-canonical` | NeMo canonical | 8 | all 7 | 1 |
//! | `sample-trt-npy` | TensorRT-LLM `.npy`, rows shuffled | 8 | all 7 | 1 (B pre-scaled ×2) |
//! | `sample-trt-bin` | TensorRT-LLM headerless `.bin` | 4 | q, k, v, o | 1 (B pre-scaled ×2) |
//!
//! Weights (seeded ChaCha8, Box–Muller normals, so a given `--seed` always gives the same
//! files): `A ~ N(0, 1/in)`, so `A·x` has about the per-element rms of `x`; `B ~ N(0, σ²)` with
//! `σ = strength / (s·√r)`, so each module adds `s·B·A·x` with a per-element rms of about
//! `strength × rms(x)` (default strength 0.15: large enough to change greedy outputs visibly,
//! small enough to keep them coherent). Every adapter uses its own derived seed, so all six
//! differ. A `samples.json` manifest describing them is written next to them.

use std::path::{Path, PathBuf};

use loraplex::adapters::export::{export, ExportFormat};
use loraplex::adapters::synth::{synthesize, SynthSpec};
use loraplex::adapters::{ModelShape, NormalizedAdapter};
use loraplex::backend::LoraTarget;
use loraplex::tensor::DType;

type BoxResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Args {
    out: PathBuf,
    shape: ModelShape,
    shape_name: String,
    seed: u64,
    strength: f64,
}

fn shape_named(name: &str, dtype: DType) -> Option<ModelShape> {
    let (l, h, i, nh, nkv, d) = match name {
        "smollm2" => (30, 576, 1536, 9, 3, 64),
        "tiny" => (3, 64, 176, 4, 2, 16),
        _ => return None,
    };
    Some(ModelShape {
        num_layers: l,
        hidden_size: h,
        intermediate_size: i,
        num_heads: nh,
        num_kv_heads: nkv,
        head_dim: d,
        dtype,
    })
}

fn parse_args() -> BoxResult<Args> {
    let mut out = None;
    let mut shape_name = "smollm2".to_string();
    let mut seed = 0u64;
    let mut dtype = DType::F32;
    let mut strength = 0.15f64;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--out" => out = Some(PathBuf::from(val()?)),
            "--shape" => shape_name = val()?,
            "--seed" => seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--strength" => {
                strength = val()?.parse().map_err(|e| format!("--strength: {e}"))?;
                if !(strength.is_finite() && strength >= 0.0) {
                    return Err("--strength must be a finite number >= 0".into());
                }
            }
            "--dtype" => {
                dtype = match val()?.as_str() {
                    "f32" => DType::F32,
                    "f16" => DType::F16,
                    "bf16" => DType::BF16,
                    d => return Err(format!("--dtype {d}: expected f32, f16 or bf16").into()),
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: gen_sample_adapters --out <dir> [--shape smollm2|tiny] [--seed N] \
                     [--dtype f32|f16|bf16] [--strength X]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other} (see --help)").into()),
        }
    }
    let out = out.ok_or("--out <dir> is required")?;
    let shape = shape_named(&shape_name, dtype)
        .ok_or_else(|| format!("--shape {shape_name}: expected smollm2 or tiny"))?;
    Ok(Args {
        out,
        shape,
        shape_name,
        seed,
        strength,
    })
}

struct Spec {
    name: &'static str,
    format: ExportFormat,
    rank: usize,
    scale: f32,
    targets: &'static [LoraTarget],
    /// q/k/v (and gate/up) of a layer share one A (needed by the fused NeMo variant).
    shared_a: bool,
}

const ALL: &[LoraTarget] = &LoraTarget::ALL;
const QV: &[LoraTarget] = &[LoraTarget::Q, LoraTarget::V];
const ATTN: &[LoraTarget] = &[LoraTarget::Q, LoraTarget::K, LoraTarget::V, LoraTarget::O];

const SPECS: &[Spec] = &[
    Spec {
        name: "sample-hf",
        format: ExportFormat::HfSafetensors,
        rank: 8,
        scale: 2.0,
        targets: ALL,
        shared_a: false,
    },
    Spec {
        name: "sample-hf-bin",
        format: ExportFormat::HfBin,
        rank: 16,
        scale: 2.0,
        targets: QV,
        shared_a: false,
    },
    Spec {
        name: "sample-nemo-fused",
        format: ExportFormat::NemoFused,
        rank: 8,
        scale: 2.0,
        targets: ALL,
        shared_a: true,
    },
    Spec {
        name: "sample-nemo-canonical",
        format: ExportFormat::NemoCanonical,
        rank: 8,
        scale: 1.0,
        targets: ALL,
        shared_a: false,
    },
    Spec {
        name: "sample-trt-npy",
        format: ExportFormat::TrtNpy { shuffle_rows: true },
        rank: 8,
        scale: 2.0,
        targets: ALL,
        shared_a: false,
    },
    Spec {
        name: "sample-trt-bin",
        format: ExportFormat::TrtBin,
        rank: 4,
        scale: 2.0,
        targets: ATTN,
        shared_a: false,
    },
];

fn make_adapter(spec: &Spec, shape: &ModelShape, seed: u64, strength: f64) -> NormalizedAdapter {
    let synth = SynthSpec {
        rank: spec.rank,
        scale: spec.scale,
        targets: spec.targets,
        shared_a: spec.shared_a,
        strength,
    };
    synthesize(spec.name, shape, &synth, seed)
}

fn write_all(args: &Args) -> BoxResult<()> {
    std::fs::create_dir_all(&args.out)?;
    let mut manifest = Vec::new();
    for (k, spec) in SPECS.iter().enumerate() {
        let seed = args
            .seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(k as u64 + 1);
        let adapter = make_adapter(spec, &args.shape, seed, args.strength);
        let dir: &Path = &args.out.join(spec.name);
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        export(&adapter, &args.shape, spec.format, dir)
            .map_err(|e| format!("{}: {}", spec.name, e.message()))?;
        manifest.push(serde_json::json!({
            "name": spec.name,
            "format": format!("{:?}", spec.format),
            "rank": spec.rank,
            "scale": spec.scale,
            "modules": spec.targets.iter().map(|t| t.hf_name()).collect::<Vec<_>>(),
            "q_k_v_gate_up_share_a": spec.shared_a,
            "seed": seed,
        }));
        println!("wrote {}", dir.display());
    }
    let doc = serde_json::json!({
        "shape": args.shape_name,
        "dtype": args.shape.dtype.name(),
        "seed": args.seed,
        "strength": args.strength,
        "weights": "A ~ N(0, 1/in); B ~ N(0, (strength / (scale*sqrt(rank)))^2); ChaCha8 seeded",
        "adapters": manifest,
    });
    std::fs::write(
        args.out.join("samples.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    Ok(())
}

fn main() {
    let result = parse_args().and_then(|a| write_all(&a));
    if let Err(e) = result {
        eprintln!("gen_sample_adapters: {e}");
        std::process::exit(2);
    }
}
