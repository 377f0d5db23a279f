//! The prefill matmuls on their own: one layer's weight matmuls as the engine runs them (fused
//! q/k/v, o, fused gate/up, down; shapes read from the GGUF file) with random bf16 weights, at a
//! prefill's row count, timed on loraplex's CPU backend and set against the machine's peak of
//! the path bf16 weights take, the peak measured in the same rounds (the machine drifts).
//!
//! The end-to-end prefill rate of the comparison (`loraplex_layer_matmul_gflops`) also holds
//! attention, norms, RoPE and the activation, so it is a lower bound on the matmuls' rate; this
//! is their own rate. Every product is timed with the activations and weights the engine would
//! hand the kernel (bf16 weights packed for the path, f32 activations rounded by the kernel
//! driver), so the number includes the driver's rounding and packing of the activations.

use std::sync::Arc;
use std::time::{Duration, Instant};

use loraplex::backend::cpu::peak::{peak_gflops, PeakPath};
use loraplex::backend::cpu::{Bf16Kernel, CpuBackend};
use loraplex::backend::{Backend, WeightFormat};
use loraplex::model::gguf::GgufFile;
use loraplex::tensor::HostTensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::comparison::median;

/// One weight matmul of a layer: a name and `(in, out)`.
type Shape = (&'static str, usize, usize);

/// The weight matmuls of layer 0 of the GGUF at `path` as the engine fuses them (q/k/v stacked,
/// gate/up stacked): `None` when a projection is missing.
pub fn layer_shapes(path: &std::path::Path) -> Option<Vec<Shape>> {
    let g = GgufFile::open(path).ok()?;
    let dims = |n: &str| -> Option<(usize, usize)> {
        let t = g
            .tensors
            .iter()
            .find(|t| t.name == format!("blk.0.{n}.weight"))?;
        match t.dims[..] {
            [i, o] => Some((i as usize, o as usize)),
            _ => None,
        }
    };
    let (q, k, v) = (dims("attn_q")?, dims("attn_k")?, dims("attn_v")?);
    let (gate, up) = (dims("ffn_gate")?, dims("ffn_up")?);
    let (o, down) = (dims("attn_output")?, dims("ffn_down")?);
    Some(vec![
        ("qkv", q.0, q.1 + k.1 + v.1),
        ("o", o.0, o.1),
        ("gate_up", gate.0, gate.1 + up.1),
        ("down", down.0, down.1),
    ])
}

/// The peak calibration loops of the path bf16 weights take on this CPU: the instruction's
/// own peak and, on AMX, the kernel's step with its tile loads.
fn peak_paths() -> (&'static str, PeakPath, Option<PeakPath>) {
    match Bf16Kernel::detect() {
        Bf16Kernel::Amx => ("amx_bf16", PeakPath::AmxBf16, Some(PeakPath::AmxBf16Step)),
        Bf16Kernel::Avx512Bf16 => ("bf16_dot_512", PeakPath::Bf16Dot, None),
        Bf16Kernel::F32 => ("f32_fma_256", PeakPath::F32Fma, None),
    }
}

/// Seconds per call of `f`: the median of calls repeated for at least `min` (after one warm-up
/// call, at least three).
fn seconds_per_call(min: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 3 || start.elapsed() < min {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    median(&times).unwrap_or(f64::NAN)
}

/// For each prefill length in `rows`: the layer's matmuls (`shapes`) timed on a backend of
/// `threads` threads, `rounds` rounds each of (peak loops, every matmul), and the medians of the
/// achieved GFLOP/s and of its per-round ratio to each peak. Weights are random bf16 packed for
/// the path this CPU takes.
pub fn measure(shapes: &[Shape], rows: &[usize], threads: usize, rounds: usize) -> Value {
    let pool = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(p) => Arc::new(p),
        Err(e) => return json!({"error": e.to_string()}),
    };
    let be = CpuBackend::new(pool.clone());
    let (path, peak, step) = peak_paths();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut weights = Vec::new();
    for &(name, inp, out) in shapes {
        let data: Vec<f32> = (0..inp * out)
            .map(|_| rng.gen_range(-0.1f32..0.1))
            .collect();
        match be.weight(&HostTensor::f32(vec![out, inp], data), WeightFormat::BF16) {
            Ok(w) => weights.push(w),
            Err(e) => return json!({"error": format!("{name}: {e}")}),
        }
    }
    let mut per_rows = serde_json::Map::new();
    for &n in rows {
        let acts: Vec<Vec<f32>> = shapes
            .iter()
            .map(|&(_, inp, _)| (0..n * inp).map(|_| rng.gen_range(-1f32..1.0)).collect())
            .collect();
        let mut ys: Vec<Vec<f32>> = shapes
            .iter()
            .map(|&(_, _, out)| vec![0f32; n * out])
            .collect();
        let flops: f64 = shapes
            .iter()
            .map(|&(_, inp, out)| 2.0 * (n * inp * out) as f64)
            .sum();
        let (mut achieved, mut over_peak, mut over_step) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds.max(1) {
            let p = peak_gflops(&pool, peak, 3).unwrap_or(f64::NAN);
            let s = step.and_then(|s| peak_gflops(&pool, s, 3));
            let secs: f64 = weights
                .iter()
                .zip(&acts)
                .zip(ys.iter_mut())
                .map(|((w, x), y)| {
                    seconds_per_call(Duration::from_millis(60), || be.matmul(x, n, w, y))
                })
                .sum();
            let g = flops / secs / 1e9;
            achieved.push(g);
            over_peak.push(g / p);
            if let Some(s) = s {
                over_step.push(g / s);
            }
        }
        per_rows.insert(
            format!("prefill_{n}"),
            json!({
                "gflops": median(&achieved),
                "over_peak": median(&over_peak),
                "over_amx_step_peak": median(&over_step),
                "rounds_gflops": achieved,
            }),
        );
    }
    json!({
        "note": "one layer's weight matmuls alone (shapes from the file, random bf16 weights) at \
            each prefill length, on loraplex's CPU backend with the bench's threads: median over \
            rounds of the achieved GFLOP/s and of its ratio to the peak of the path bf16 weights \
            take, measured in the same round (over_amx_step_peak: against the AMX kernel's own \
            step with its tile loads from L1, the ceiling of its loop on this machine)",
        "threads": threads,
        "peak_path": path,
        "shapes_in_out": shapes.iter().map(|&(n, i, o)| json!({"name": n, "in": i, "out": o})).collect::<Vec<_>>(),
        "by_prefill": per_rows,
    })
}
