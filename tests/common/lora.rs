//! Random LoRA adapters for the backend-level tests (tests/lora_ops.rs, tests/device_ops.rs):
//! owned A/B matrices per layer and target, and their borrowed [`LoraWeights`] view for
//! `Backend::lora_load_slot`.

use loraplex::backend::{LoraStackGeometry, LoraTarget, LoraWeights};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// An owned module: (rank, A [r, in], B [out, r], scale).
pub type OwnedModule = (usize, Vec<f32>, Vec<f32>, f32);
/// An owned adapter: `[layer][target]`.
pub type OwnedAdapter = Vec<[Option<OwnedModule>; 7]>;

/// A random adapter over `geom`: `rank_of(layer, target)` gives the rank (None = module absent);
/// A and B uniform in ±0.5, scale in [0.25, 2).
pub fn random_adapter(
    geom: &LoraStackGeometry,
    rng: &mut ChaCha8Rng,
    rank_of: impl Fn(usize, LoraTarget) -> Option<usize>,
) -> OwnedAdapter {
    (0..geom.num_layers)
        .map(|l| {
            std::array::from_fn(|ti| {
                let t = LoraTarget::ALL[ti];
                let r = rank_of(l, t)?;
                let (i, o) = geom.dims[ti];
                let a = (0..r * i).map(|_| rng.gen_range(-0.5f32..0.5)).collect();
                let b = (0..o * r).map(|_| rng.gen_range(-0.5f32..0.5)).collect();
                Some((r, a, b, rng.gen_range(0.25f32..2.0)))
            })
        })
        .collect()
}

/// The adapter as the backend's upload format.
pub fn view(a: &OwnedAdapter) -> Vec<[Option<LoraWeights<'_>>; 7]> {
    a.iter()
        .map(|mods| {
            std::array::from_fn(|ti| {
                mods[ti].as_ref().map(|(r, a, b, s)| LoraWeights {
                    rank: *r,
                    a,
                    b,
                    scale: *s,
                })
            })
        })
        .collect()
}

/// `(x_stride, x_col, y_stride, y_col)` of target `t` as the model lays out its rows: x read
/// from a `[rows, x_stride]` buffer at `x_col`, y written into the fused qkv / gate_up rows at
/// `y_col` (Q's x is padded and offset, to exercise strided views).
pub fn model_layout(geom: &LoraStackGeometry, t: LoraTarget) -> (usize, usize, usize, usize) {
    let (q, kv) = (geom.dims[0].1, geom.dims[1].1);
    let inter = geom.dims[4].1;
    let (inp, out) = geom.dims[t.index()];
    match t {
        LoraTarget::Q => (inp + 3, 2, q + 2 * kv, 0),
        LoraTarget::K => (inp, 0, q + 2 * kv, q),
        LoraTarget::V => (inp, 0, q + 2 * kv, q + kv),
        LoraTarget::Gate => (inp, 0, 2 * inter, 0),
        LoraTarget::Up => (inp, 0, 2 * inter, inter),
        _ => (inp, 0, out, 0),
    }
}
