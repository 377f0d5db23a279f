//! Deterministic synthetic adapters (for samples, benchmarks and tests): seeded ChaCha8 normals,
//! `A ~ N(0, 1/in)` and `B ~ N(0, (strength / (scale·√r))²)`, so each module adds a term of about
//! `strength × rms(x)` per element. `strength = 0` gives an all-zero B (the base model exactly).

use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{AdapterFormat, LoraModule, ModelShape, NormalizedAdapter};
use crate::lora_target::LoraTarget;

/// What to synthesise.
#[derive(Debug, Clone, Copy)]
pub struct SynthSpec<'a> {
    /// Rank of every adapted module.
    pub rank: usize,
    /// Scale s of every module.
    pub scale: f32,
    /// Adapted targets (in every layer).
    pub targets: &'a [LoraTarget],
    /// q/k/v (and gate/up) of a layer share one A, as NeMo's fused layout requires.
    pub shared_a: bool,
    /// Size of each module's contribution relative to its input (0 = zero B).
    pub strength: f64,
}

/// `n` samples of N(0, std²) (Box–Muller in f64).
fn normals(rng: &mut ChaCha8Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
            let u2: f64 = rng.gen();
            (std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// A synthetic adapter named `name` for `shape`, fully determined by `spec` and `seed`.
pub fn synthesize(
    name: &str,
    shape: &ModelShape,
    spec: &SynthSpec<'_>,
    seed: u64,
) -> NormalizedAdapter {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let r = spec.rank;
    let b_std = spec.strength / (spec.scale as f64 * (r.max(1) as f64).sqrt());
    let mut layers: Vec<[Option<LoraModule>; 7]> = vec![Default::default(); shape.num_layers];
    for mods in layers.iter_mut() {
        let h = shape.hidden_size;
        let a_qkv = normals(&mut rng, r * h, 1.0 / (h as f64).sqrt());
        let a_fc1 = normals(&mut rng, r * h, 1.0 / (h as f64).sqrt());
        for &t in spec.targets {
            let (i, o) = shape.module_dims(t);
            let a = match t {
                LoraTarget::Q | LoraTarget::K | LoraTarget::V if spec.shared_a => a_qkv.clone(),
                LoraTarget::Gate | LoraTarget::Up if spec.shared_a => a_fc1.clone(),
                _ => normals(&mut rng, r * i, 1.0 / (i as f64).sqrt()),
            };
            mods[t.index()] = Some(LoraModule {
                rank: r,
                in_dim: i,
                out_dim: o,
                a,
                b: normals(&mut rng, o * r, b_std),
                scale: spec.scale,
            });
        }
    }
    NormalizedAdapter {
        name: name.to_string(),
        format: AdapterFormat::HfSafetensors,
        source: PathBuf::new(),
        generation: String::new(),
        layers,
    }
}
