//! Times the CPU backend's matmul at SmolLM2-135M shapes and compares with memory bandwidth.
//!
//! `cargo run --release --example kernel_bench [-- --quick] [--only qkv|o|gate_up|down|lm_head] [--step] [--attn] [--quant [--only TYPE] [--rows N]] [--lora] [--lora-step] [--elementwise]`
//!
//! `--elementwise` instead times rms_norm, rope, silu_mul and add at SmolLM2 shapes.
//! `--attn` instead times SmolLM2-shaped paged attention (decode and prefill).
//! `--lora` instead times mixed-batch `lora_apply` against the base matmuls.
//! `--lora-step` instead times 30 layers of bf16 base matmuls with and without distinct adapters.
//! `--quant` instead times the quantized matmul per type, kernel path and row count.
//!   It honours `QB_IN`, `QB_OUT` (weight shape) and `QB_KERNEL` (one path by name).
//! `--step` instead times whole decode steps over 30 distinct layers (weights from DRAM).
//!
//! For each weight shape (in -> out), format (F32, BF16; `bf16f`: BF16 on the AVX2/FMA f32 kernels), thread count (1, 2) and row count
//! (1, 8, 32, 256) it prints the time per call, the weight traffic in GB/s (weight bytes / time,
//! i.e. the bandwidth needed to stream the weight once per call) and GFLOP/s (2·rows·in·out /
//! time) and GFLOP per CPU-second (summed over threads; robust to other load). It also prints the memory copy bandwidth of a 256 MB buffer and the estimated time of
//! all weight matmuls of one SmolLM2 decode step (30 layers + LM head).

use std::sync::Arc;
use std::time::{Duration, Instant};

use loraplex::backend::cpu::{Bf16Kernel, CpuBackend};
use loraplex::backend::{
    AttentionArgs, AttnMeta, Backend, KvGeometry, KvWriteArgs, LoraArgs, LoraBatch, LoraPrecision,
    LoraStackGeometry, LoraTarget, LoraWeights, RopeArgs, View, ViewMut, WeightFormat,
};
use loraplex::tensor::HostTensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// (name, in, out, uses per decode step)
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("qkv", 576, 960, 30),
    ("o", 576, 576, 30),
    ("gate_up", 576, 3072, 30),
    ("down", 1536, 576, 30),
    ("lm_head", 576, 49152, 1),
];

/// Process CPU time (user + system) in seconds from /proc/self/stat (0 where unavailable).
fn cpu_time() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the ")" that closes the command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Returns (wall seconds per call, CPU seconds per call summed over threads).
fn time_cpu(min: Duration, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let start = Instant::now();
    let c0 = cpu_time();
    let mut n = 0u32;
    while n < 3 || start.elapsed() < min {
        f();
        n += 1;
    }
    let wall = start.elapsed().as_secs_f64() / n as f64;
    (wall, (cpu_time() - c0) / n as f64)
}

fn time_it(min: Duration, f: impl FnMut()) -> f64 {
    time_cpu(min, f).0
}

fn copy_bandwidth() -> f64 {
    let n = 64 << 20; // 64 Mi f32 = 256 MB
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let t = time_it(Duration::from_millis(500), || {
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
    });
    (n * 4) as f64 / t / 1e9
}

/// Times all weight matmuls of one real decode step: 30 distinct layers (so weights stream from
/// DRAM, as in the engine) plus the LM head, for rows 1, 8 and 32.
fn decode_step(pools: &[Arc<rayon::ThreadPool>], copy_bw: f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for format in [WeightFormat::F32, WeightFormat::BF16] {
        let be = CpuBackend::new(pools[0].clone());
        let mut layers = Vec::new();
        for &(_, inp, out, uses) in SHAPES {
            let data: Vec<f32> = (0..inp * out)
                .map(|_| rng.gen_range(-0.1f32..0.1))
                .collect();
            let t = HostTensor::f32(vec![out, inp], data);
            for _ in 0..uses {
                layers.push(be.weight(&t, format).expect("weight"));
            }
        }
        let bytes: usize = layers.iter().map(|w| be.weight_bytes(w)).sum();
        for pool in pools {
            let be = CpuBackend::new(pool.clone());
            for rows in [1usize, 8, 32] {
                let x: Vec<f32> = (0..rows * 1536)
                    .map(|_| rng.gen_range(-1f32..1.0))
                    .collect();
                let mut y = vec![0f32; rows * 49152];
                let (secs, cpu) = time_cpu(Duration::from_millis(1000), || {
                    for w in &layers {
                        be.matmul(&x, rows, w, &mut y);
                    }
                });
                let gbs = bytes as f64 / secs / 1e9;
                println!(
                    "decode step {:?} {} thr rows {:>2}: {:>7.2} ms ({:.0} MB weights, {:.1} GB/s = {:.0}% of copy bw; {:.1} cpu-ms)",
                    format,
                    pool.current_num_threads(),
                    rows,
                    secs * 1e3,
                    bytes as f64 / 1e6,
                    gbs,
                    100.0 * gbs / copy_bw,
                    cpu * 1e3
                );
            }
        }
    }
}

/// `rows x cols` of `ty` from random bytes, each block's f16 scales set to small values: for
/// timing the types the quantizer does not write.
fn random_blocks(
    ty: loraplex::quant::GgmlType,
    rows: usize,
    cols: usize,
) -> loraplex::quant::QuantData {
    use loraplex::quant::GgmlType as G;
    // Where each type's f16 scales lie in its block.
    let scales: &[usize] = match ty {
        G::Q2K => &[80, 82],
        G::Q3K => &[108],
        G::Q4_1 | G::Q5_1 => &[0, 2],
        _ => &[0],
    };
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let ts = ty.type_size() as usize;
    let nblk = rows * cols / ty.block_size() as usize;
    let mut bytes: Vec<u8> = (0..nblk * ts).map(|_| rng.gen()).collect();
    for blk in bytes.chunks_exact_mut(ts) {
        for &at in scales {
            blk[at..at + 2].copy_from_slice(&half::f16::from_f32(0.001).to_le_bytes());
        }
    }
    loraplex::quant::QuantData::new(ty, rows, cols, bytes).expect("random blocks")
}

/// Times the quantized matmul on a 2048 x 2048 weight (Llama-3.2-1B's `o` shape) per type,
/// kernel path, thread count and row count: ms per call, weight GB/s and GMAC/s.
fn quant(pools: &[Arc<rayon::ThreadPool>], quick: bool, only: Option<&str>, rows: Option<usize>) {
    use loraplex::backend::cpu::QuantKernel;
    use loraplex::quant::{quantize::quantize, GgmlType};
    let rows_only = rows;
    let inp: usize = std::env::var("QB_IN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let out: usize = std::env::var("QB_OUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let data: Vec<f32> = (0..inp * out)
        .map(|_| rng.gen_range(-0.1f32..0.1))
        .collect();
    let min = Duration::from_millis(if quick { 100 } else { 300 });
    println!(
        "{:<6} {:<12} {:>3} {:>4} {:>8} {:>7} {:>8}",
        "type", "path", "thr", "rows", "ms/call", "GB/s", "GMAC/s"
    );
    // The types the quantizer writes, then (with `--only`) those timed on random blocks.
    let types = [
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::Q8_0,
        GgmlType::Q5K,
        GgmlType::Q4_0,
        GgmlType::Q5_0,
    ];
    let extra = [
        GgmlType::Q4_1,
        GgmlType::Q5_1,
        GgmlType::Iq4Nl,
        GgmlType::Iq4Xs,
        GgmlType::Q2K,
        GgmlType::Q3K,
    ];
    let extra = extra.iter().filter(|_| only.is_some());
    for &ty in types.iter().chain(extra) {
        if only.is_some_and(|o| o != ty.to_string()) {
            continue;
        }
        let q = quantize(ty, out, inp, &data).unwrap_or_else(|_| random_blocks(ty, out, inp));
        let t = HostTensor::quantized(q);
        let only_kernel = std::env::var("QB_KERNEL").ok();
        for kernel in QuantKernel::ALL
            .iter()
            .rev()
            .filter(|k| k.available() && only_kernel.as_deref().is_none_or(|n| n == k.name()))
        {
            for pool in pools {
                let be = CpuBackend::with_quant_kernel(pool.clone(), *kernel).expect("kernel");
                let w = be.weight(&t, WeightFormat::F32).expect("weight");
                let bytes = be.weight_bytes(&w);
                for rows in [1usize, 8, 16, 32, 256] {
                    if rows_only.is_some_and(|r| r != rows) {
                        continue;
                    }
                    if *kernel == QuantKernel::Portable && rows > 8 {
                        continue;
                    }
                    let x: Vec<f32> = (0..rows * inp).map(|_| rng.gen_range(-1f32..1.0)).collect();
                    let mut y = vec![0f32; rows * out];
                    let secs = time_it(min, || be.matmul(&x, rows, &w, &mut y));
                    println!(
                        "{:<6} {:<12} {:>3} {:>4} {:>8.3} {:>7.1} {:>8.1}",
                        ty.to_string(),
                        kernel.name(),
                        pool.current_num_threads(),
                        rows,
                        secs * 1e3,
                        bytes as f64 / secs / 1e9,
                        (rows * inp * out) as f64 / secs / 1e9
                    );
                }
            }
        }
    }
}

/// Times SmolLM2-shaped attention (9 heads, 3 KV heads, head_dim 64, block 16): 32 decode rows
/// at context 1024, and a 256-token causal prefill.
fn attention(pools: &[Arc<rayon::ThreadPool>]) {
    let (nh, nkv, hd, bs) = (9usize, 3usize, 64usize, 16usize);
    let stride = (nh + 2 * nkv) * hd;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (label, nseq, ctx, prefill) in [
        ("decode 32 x ctx 1024", 32usize, 1024usize, false),
        ("prefill 256", 1, 256, true),
        ("prefill 2048", 1, 2048, true),
    ] {
        let blocks_per = ctx.div_ceil(bs);
        let geom = KvGeometry {
            num_layers: 1,
            num_blocks: nseq * blocks_per,
            block_size: bs,
            num_kv_heads: nkv,
            head_dim: hd,
        };
        let tables: Vec<Vec<u32>> = (0..nseq)
            .map(|s| (0..blocks_per).map(|b| (b * nseq + s) as u32).collect())
            .collect();
        let table_refs: Vec<&[u32]> = tables.iter().map(|t| t.as_slice()).collect();
        let (row_seq, row_pos): (Vec<u32>, Vec<u32>) = if prefill {
            (0..ctx).map(|p| (0u32, p as u32)).unzip()
        } else {
            (0..nseq).map(|s| (s as u32, (ctx - 1) as u32)).unzip()
        };
        let rows = row_seq.len();
        let slots: Vec<u32> = row_seq
            .iter()
            .zip(&row_pos)
            .map(|(&s, &p)| tables[s as usize][p as usize / bs] * bs as u32 + p % bs as u32)
            .collect();
        let meta = AttnMeta {
            row_seq: &row_seq,
            row_pos: &row_pos,
            slot_mapping: &slots,
            block_tables: &table_refs,
        };
        let qkv: Vec<f32> = (0..rows * stride)
            .map(|_| rng.gen_range(-1f32..1.0))
            .collect();
        let mut out = vec![0f32; rows * nh * hd];
        let kv_bytes: usize = row_pos
            .iter()
            .map(|&p| (p as usize + 1) * 2 * nkv * hd * 4)
            .sum();
        // This CPU's kernels, and those of a CPU without AVX-512 where they differ.
        let sets = pools.iter().flat_map(|pool| {
            let mut v = vec![("", CpuBackend::new(pool.clone()))];
            if let Ok(be) = CpuBackend::avx2_only(pool.clone()) {
                v.push((" avx2-only", be));
            }
            v
        });
        for (set, be) in sets {
            let pool = be.pool().clone();
            let mut cache = be.alloc_kv(geom).expect("kv");
            let fill: Vec<f32> = (0..geom.num_blocks * bs * stride)
                .map(|_| rng.gen_range(-1f32..1.0))
                .collect();
            let all_slots: Vec<u32> = (0..(geom.num_blocks * bs) as u32).collect();
            let n = all_slots.len();
            let write = KvWriteArgs {
                layer: 0,
                k: View::new(&fill, n, stride, nh * hd),
                v: View::new(&fill, n, stride, (nh + nkv) * hd),
                slot_mapping: &all_slots,
            };
            be.kv_write(&mut cache, write);
            let args = AttentionArgs {
                q: View::new(&qkv, rows, stride, 0),
                n_heads: nh,
                cache: &cache,
                layer: 0,
                meta,
                window: None,
            };
            let (secs, cpu) = time_cpu(Duration::from_millis(300), || {
                be.attention_paged(args, &mut out)
            });
            let best = best_of(|| be.attention_paged(args, &mut out), 3);
            println!(
                "attention {label}{set}, {} thr: {:.3} ms/layer (best of 5: {:.3} ms; KV read {:.1} GB/s; {:.3} cpu-ms)",
                pool.current_num_threads(),
                secs * 1e3,
                best * 1e3,
                kv_bytes as f64 / secs / 1e9,
                cpu * 1e3
            );
        }
    }
}

/// Best-of-5 wall time per call of `f` (robust to other load on the machine).
fn best_of(mut f: impl FnMut(), reps: usize) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let s = Instant::now();
        for _ in 0..reps {
            f();
        }
        best = best.min(s.elapsed().as_secs_f64() / reps as f64);
    }
    best
}

/// Times the row-wise ops of one SmolLM2 layer (hidden 576, inter 1536, 9 + 3 + 3 heads of 64)
/// at 1, 32 and 256 rows on `pool`, and their share of a 30-layer step.
fn elementwise(pool: &Arc<rayon::ThreadPool>) {
    let be = CpuBackend::new(pool.clone());
    let (h, inter, hd) = (576usize, 1536usize, 64usize);
    let stride = 15 * hd;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / 100000f32.powf(2.0 * i as f32 / hd as f32))
        .collect();
    let norm_w: Vec<f32> = (0..h).map(|_| rng.gen_range(0.5f32..1.5)).collect();
    for rows in [1usize, 32, 256] {
        let mut v = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-4f32..4.0)).collect() };
        let (x, gu, mut qkv, mut acc) = (
            v(rows * h),
            v(rows * 2 * inter),
            v(rows * stride),
            v(rows * h),
        );
        let (mut normed, mut act) = (vec![0f32; rows * h], vec![0f32; rows * inter]);
        let pos: Vec<u32> = (0..rows as u32).map(|p| p + 100).collect();
        let reps = (2000 / rows).max(4);
        let t_norm = best_of(
            || be.rms_norm(&x, &norm_w, rows, h, 1e-5, &mut normed),
            reps,
        );
        let t_rope = best_of(
            || {
                let heads = |n_heads| RopeArgs {
                    n_heads,
                    head_dim: hd,
                    row_pos: &pos,
                    inv_freq: &inv_freq,
                };
                be.rope(ViewMut::new(&mut qkv, rows, stride, 0), &heads(9));
                be.rope(ViewMut::new(&mut qkv, rows, stride, 9 * hd), &heads(3));
            },
            reps,
        );
        let t_silu = best_of(|| be.silu_mul(&gu, rows, inter, &mut act), reps);
        let t_add = best_of(|| be.add(&mut acc, &x, rows * h), reps);
        let layer = 2.0 * t_norm + t_rope + t_silu + 2.0 * t_add;
        println!(
            "elementwise rows {rows:>3}: rms_norm {:.1} us, rope(q+k) {:.1} us, silu_mul {:.1} us, add {:.1} us; 30 layers {:.3} ms",
            t_norm * 1e6,
            t_rope * 1e6,
            t_silu * 1e6,
            t_add * 1e6,
            30.0 * layer * 1e3
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--elementwise") {
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .expect("pool"),
        );
        return elementwise(&pool);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let min = Duration::from_millis(if quick { 100 } else { 300 });
    let bw = copy_bandwidth();
    println!("memory copy bandwidth (256 MB, bytes copied/s): {bw:.1} GB/s");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let pools: Vec<Arc<rayon::ThreadPool>> = [1usize, 2]
        .iter()
        .map(|&n| {
            Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .expect("thread pool"),
            )
        })
        .collect();
    if args.iter().any(|a| a == "--attn") {
        attention(&pools);
        return;
    }
    if args.iter().any(|a| a == "--lora-step") {
        lora_step(&pools[1]);
        return;
    }
    if args.iter().any(|a| a == "--lora") {
        lora(&pools, quick);
        return;
    }
    if args.iter().any(|a| a == "--step") {
        decode_step(&pools, bw);
        return;
    }
    if args.iter().any(|a| a == "--quant") {
        let rows = args
            .iter()
            .position(|a| a == "--rows")
            .and_then(|i| args.get(i + 1)?.parse().ok());
        quant(&pools, quick, only.as_deref(), rows);
        return;
    }
    // `KB_ROWS=256,512` replaces the row counts, `KB_FMT=bf16` keeps one weight format and
    // `KB_SHAPE=2048,16384` adds a shape (`custom`), for A/B runs of one kernel.
    let env_list = |k: &str| -> Option<Vec<usize>> {
        let v = std::env::var(k).ok()?;
        v.split(',').map(|x| x.trim().parse().ok()).collect()
    };
    let mut rows_list = vec![1usize, 8, 32, 256];
    if let Some(r) = env_list("KB_ROWS") {
        rows_list = r;
    }
    let fmt_only = std::env::var("KB_FMT").ok();
    let mut shapes = SHAPES.to_vec();
    if let Some([i, o]) = env_list("KB_SHAPE").as_deref() {
        shapes.insert(0, ("custom", *i, *o, 1));
    }
    for pool in &pools {
        use loraplex::backend::cpu::peak::{peak_gflops, PeakPath};
        let show = |p: Option<f64>| p.map_or("n/a".to_string(), |g| format!("{g:.0}"));
        println!(
            "peak GFLOP/s with {} thr (calibration loops): f32 fma {}, bf16 dot {}, amx bf16 {}",
            pool.current_num_threads(),
            show(peak_gflops(pool, PeakPath::F32Fma, 5)),
            show(peak_gflops(pool, PeakPath::Bf16Dot, 5)),
            show(peak_gflops(pool, PeakPath::AmxBf16, 5))
        );
        println!(
            "  the AMX kernel's step with its tile loads (L1): {}",
            show(peak_gflops(pool, PeakPath::AmxBf16Step, 5))
        );
    }
    // step[format][threads][rows] = seconds of all weight matmuls in one decode step
    let mut step = vec![[vec![0f64; rows_list.len()], vec![0f64; rows_list.len()]]; 4];
    // bf16 on the default path (AMX or AVX-512 BF16 where present), on the AVX-512 BF16
    // kernels and on the AVX2/FMA f32 kernels (paths this CPU lacks are skipped).
    let formats = [
        ("f32", WeightFormat::F32, None),
        ("bf16", WeightFormat::BF16, None),
        ("bf16v", WeightFormat::BF16, Some(Bf16Kernel::Avx512Bf16)),
        ("bf16f", WeightFormat::BF16, Some(Bf16Kernel::F32)),
    ];
    println!(
        "{:<8} {:>5} {:>6} {:>4} {:>3} {:>4} {:>8} {:>7} {:>7} {:>8}",
        "shape", "in", "out", "fmt", "thr", "rows", "ms/call", "GB/s", "GFLOP/s", "GF/cpu-s"
    );
    for &(name, inp, out, uses) in &shapes {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let data: Vec<f32> = (0..inp * out)
            .map(|_| rng.gen_range(-0.1f32..0.1))
            .collect();
        let t = HostTensor::f32(vec![out, inp], data);
        for (fi, &(fname, format, bf16_kernel)) in formats.iter().enumerate() {
            if fmt_only.as_deref().is_some_and(|f| f != fname) {
                continue;
            }
            for (pi, pool) in pools.iter().enumerate() {
                let be = match bf16_kernel {
                    None => CpuBackend::new(pool.clone()),
                    Some(k) => match CpuBackend::with_bf16_kernel(pool.clone(), k) {
                        Ok(be) => be,
                        Err(_) => continue,
                    },
                };
                let w = be.weight(&t, format).expect("weight");
                let wbytes = be.weight_bytes(&w) as f64;
                for (ri, &rows) in rows_list.iter().enumerate() {
                    let x: Vec<f32> = (0..rows * inp).map(|_| rng.gen_range(-1f32..1.0)).collect();
                    let mut y = vec![0f32; rows * out];
                    let (secs, cpu) = time_cpu(min, || be.matmul(&x, rows, &w, &mut y));
                    step[fi][pi][ri] += secs * uses as f64;
                    let flops = 2.0 * (rows * inp * out) as f64;
                    println!(
                        "{:<8} {:>5} {:>6} {:>4} {:>3} {:>4} {:>8.3} {:>7.1} {:>7.1} {:>8.1}",
                        name,
                        inp,
                        out,
                        fname,
                        pool.current_num_threads(),
                        rows,
                        secs * 1e3,
                        wbytes / secs / 1e9,
                        flops / secs / 1e9,
                        if cpu > 0.0 {
                            flops / cpu / 1e9
                        } else {
                            f64::NAN
                        }
                    );
                }
            }
        }
    }
    println!("\nall weight matmuls of one SmolLM2-135M decode step (30 layers + lm head):");
    for (fi, (fname, _, _)) in formats.iter().enumerate() {
        for (pi, thr) in [1, 2].iter().enumerate() {
            let cells: Vec<String> = rows_list
                .iter()
                .zip(step[fi][pi].iter())
                .map(|(r, s)| format!("rows {r}: {:.1} ms", s * 1e3))
                .collect();
            println!("  {fname} {thr} thr: {}", cells.join(", "));
        }
    }
}

/// SmolLM2-135M LoRA target dims `(in, out)` in [`LoraTarget::ALL`] order.
const LORA_DIMS: [(usize, usize); 7] = [
    (576, 576),
    (576, 192),
    (576, 192),
    (576, 576),
    (576, 1536),
    (576, 1536),
    (1536, 576),
];

/// `(rows, distinct slots)` cases: every row of the step uses an adapter, slots round-robin.
const LORA_CASES: [(usize, usize); 8] = [
    (1, 1),
    (8, 1),
    (8, 4),
    (8, 8),
    (32, 1),
    (32, 4),
    (32, 8),
    (32, 32),
];

/// Times `lora_apply` for SmolLM2 shapes.
///
/// Per module (one layer, weights cache-resident): time per call and GF/cpu-s of the LoRA
/// (`2 · rows · r · (in + out)` flops) vs the base matmul of that module alone.
///
/// Per decode step (30 distinct layers, all 7 modules, 32 slots in the arena so adapter weights
/// stream from DRAM like base weights): LoRA time vs all base weight matmuls of the 30 layers
/// (fused qkv, o, fused gate_up, down; LM head excluded), in CPU-ms (robust to other load).
fn lora(pools: &[Arc<rayon::ThreadPool>], quick: bool) {
    let min = Duration::from_millis(if quick { 60 } else { 200 });
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let rand = |rng: &mut ChaCha8Rng, n: usize| -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-0.1f32..0.1)).collect()
    };
    let gflops = |f: f64, cpu: f64| if cpu > 0.0 { f / cpu / 1e9 } else { f64::NAN };
    let pool = pools.last().expect("pool").clone();
    let be = CpuBackend::new(pool.clone());
    println!(
        "lora_apply per module, {} threads, one layer (cache-resident)",
        pool.current_num_threads()
    );
    println!(
        "{:<6} {:>4} {:>4} {:>5} {:>9} {:>9} {:>8} {:>9} {:>7}",
        "module", "rank", "rows", "slots", "lora ms", "base ms", "lora/base", "GF/cpu-s", "base GF"
    );
    for rank in [8usize, 16] {
        let layers = 1;
        let stack = filled_arena(&be, layers, rank, LoraPrecision::F32, &mut rng);
        for t in LoraTarget::ALL {
            let (inp, out) = LORA_DIMS[t.index()];
            let w = be
                .weight(
                    &HostTensor::f32(vec![out, inp], rand(&mut rng, inp * out)),
                    WeightFormat::F32,
                )
                .expect("weight");
            for &(rows, slots) in &LORA_CASES {
                let x = rand(&mut rng, rows * inp);
                let mut y = vec![0f32; rows * out];
                let batch = LoraBatch::from_slots((0..rows).map(|r| (r % slots) as i32).collect());
                let args = LoraArgs {
                    batch: &batch,
                    stack: &stack,
                    layer: 0,
                    target: t,
                };
                let (lw, lc) = time_cpu(min, || {
                    let (xv, yv) = (
                        View::new(&x, rows, inp, 0),
                        ViewMut::new(&mut y, rows, out, 0),
                    );
                    be.lora_apply(xv, yv, &args)
                });
                let (bw, bc) = time_cpu(min, || be.matmul(&x, rows, &w, &mut y));
                let lf = 2.0 * (rows * rank * (inp + out)) as f64;
                let bf = 2.0 * (rows * inp * out) as f64;
                println!(
                    "{:<6} {:>4} {:>4} {:>5} {:>9.4} {:>9.4} {:>8.1}% {:>9.1} {:>7.1}",
                    t.hf_name().trim_end_matches("_proj"),
                    rank,
                    rows,
                    slots,
                    lw * 1e3,
                    bw * 1e3,
                    100.0 * lc / bc,
                    gflops(lf, lc),
                    gflops(bf, bc)
                );
            }
        }
    }
    // Whole decode step over 30 distinct layers.
    let layers = 30;
    let base: Vec<_> = [(576usize, 960usize), (576, 576), (576, 3072), (1536, 576)]
        .iter()
        .flat_map(|&(inp, out)| {
            let t = HostTensor::f32(vec![out, inp], rand(&mut rng, inp * out));
            (0..layers).map(move |_| t.clone()).collect::<Vec<_>>()
        })
        .map(|t| {
            let (out, inp) = (t.shape[0], t.shape[1]);
            (inp, out, be.weight(&t, WeightFormat::F32).expect("weight"))
        })
        .collect();
    for (rank, precision) in [8usize, 16]
        .into_iter()
        .flat_map(|r| [(r, LoraPrecision::F32), (r, LoraPrecision::Bf16)])
    {
        for pool in pools {
            let be = CpuBackend::new(pool.clone());
            let stack = filled_arena(&be, layers, rank, precision, &mut rng);
            for &(rows, slots) in &LORA_CASES {
                let x = rand(&mut rng, rows * 1536);
                let mut y = vec![0f32; rows * 3072];
                let batch = LoraBatch::from_slots((0..rows).map(|r| (r % slots) as i32).collect());
                // Inside the pool, as the engine's worker runs its steps (`Driver::run`).
                let (bw, bc) = time_cpu(min, || {
                    pool.install(|| {
                        for (_, _, w) in &base {
                            be.matmul(&x, rows, w, &mut y);
                        }
                    })
                });
                let (lw, lc) = time_cpu(min, || {
                    pool.install(|| {
                        for l in 0..layers {
                            for t in LoraTarget::ALL {
                                let (inp, out) = LORA_DIMS[t.index()];
                                let args = LoraArgs {
                                    batch: &batch,
                                    stack: &stack,
                                    layer: l,
                                    target: t,
                                };
                                let xv = View::new(&x, rows, inp, 0);
                                be.lora_apply(xv, ViewMut::new(&mut y, rows, out, 0), &args);
                            }
                        }
                    })
                });
                let lf = 2.0
                    * (rows * rank * layers) as f64
                    * LORA_DIMS.iter().map(|(i, o)| i + o).sum::<usize>() as f64;
                println!(
                    "decode step lora r{rank} {precision:?} {} thr rows {rows:>2} slots {slots:>2}: lora {:.2} ms ({:.2} cpu-ms, {:.1} GF/cpu-s) vs base matmuls {:.2} ms ({:.2} cpu-ms): +{:.1}% cpu",
                    pool.current_num_threads(),
                    lw * 1e3,
                    lc * 1e3,
                    gflops(lf, lc),
                    bw * 1e3,
                    bc * 1e3,
                    100.0 * lc / bc
                );
            }
        }
    }
}

/// Times 30 SmolLM2 layers' base matmuls (bf16 weights, the format's fastest path) alone and
/// followed by every module's LoRA (32 rank-8 bf16 adapters in the arena, a distinct one per
/// row), interleaved, 7 rounds, medians: the LoRA's cost in a step of distinct adapters.
/// `LO_LORA_ONLY=1` instead runs only the LoRA calls, 100 steps per case (for a profiler).
fn lora_step(pool: &Arc<rayon::ThreadPool>) {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let layers = 30;
    let be = CpuBackend::new(pool.clone());
    // (weight in, out, the LoRA targets that follow it, their column offsets in y)
    let shapes: [(usize, usize, &[LoraTarget], &[usize]); 4] = [
        (
            576,
            960,
            &[LoraTarget::Q, LoraTarget::K, LoraTarget::V],
            &[0, 576, 768],
        ),
        (576, 576, &[LoraTarget::O], &[0]),
        (576, 3072, &[LoraTarget::Gate, LoraTarget::Up], &[0, 1536]),
        (1536, 576, &[LoraTarget::Down], &[0]),
    ];
    let weights: Vec<Vec<_>> = (0..layers)
        .map(|_| {
            shapes
                .iter()
                .map(|&(inp, out, _, _)| {
                    let data = (0..inp * out)
                        .map(|_| rng.gen_range(-0.1f32..0.1))
                        .collect();
                    let t = HostTensor::f32(vec![out, inp], data);
                    be.weight(&t, WeightFormat::BF16).expect("weight")
                })
                .collect()
        })
        .collect();
    let rank = 8;
    let lora_only = std::env::var("LO_LORA_ONLY").is_ok();
    let stack = filled_arena(&be, layers, rank, LoraPrecision::Bf16, &mut rng);
    for rows in [8usize, 32] {
        // The activations of each input width.
        let xs: std::collections::HashMap<usize, Vec<f32>> = [576usize, 1536]
            .into_iter()
            .map(|inp| {
                (
                    inp,
                    (0..rows * inp).map(|_| rng.gen_range(-1f32..1.0)).collect(),
                )
            })
            .collect();
        let mut y = vec![0f32; rows * 3072];
        let batch = LoraBatch::from_slots((0..rows).map(|r| r as i32).collect());
        let mut step = |base: bool, lora: bool| {
            let t0 = Instant::now();
            pool.install(|| {
                for (l, ws) in weights.iter().enumerate() {
                    for (w, &(inp, out, targets, cols)) in ws.iter().zip(&shapes) {
                        if base {
                            be.matmul(&xs[&inp], rows, w, &mut y);
                        }
                        if !lora {
                            continue;
                        }
                        for (&target, &c) in targets.iter().zip(cols) {
                            let args = LoraArgs {
                                batch: &batch,
                                stack: &stack,
                                layer: l,
                                target,
                            };
                            let xv = View::new(&xs[&inp], rows, inp, 0);
                            be.lora_apply(xv, ViewMut::new(&mut y, rows, out, c), &args);
                        }
                    }
                }
            });
            t0.elapsed().as_secs_f64()
        };
        if lora_only {
            let t0 = Instant::now();
            for _ in 0..100 {
                step(false, true);
            }
            let ms = t0.elapsed().as_secs_f64() * 10.0;
            println!("rows {rows}: LoRA only {ms:.2} ms per step");
            continue;
        }
        let (mut tb, mut tl) = (vec![], vec![]);
        for _ in 0..7 {
            tb.push(step(true, false));
            tl.push(step(true, true));
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (b, l) = (med(&mut tb), med(&mut tl));
        println!(
            "rows {rows:>2}, {rows:>2} distinct adapters: base {:.2} ms, base + LoRA {:.2} ms (ratio {:.3})",
            b * 1e3,
            l * 1e3,
            b / l
        );
    }
}

/// An arena of 32 slots for `layers` SmolLM2 layers in `precision`, every slot holding a random
/// adapter of rank `rank` on all 7 modules of every layer.
fn filled_arena(
    be: &CpuBackend,
    layers: usize,
    rank: usize,
    precision: LoraPrecision,
    rng: &mut ChaCha8Rng,
) -> <CpuBackend as Backend>::LoraStack {
    let geom = LoraStackGeometry {
        num_slots: 32,
        max_rank: rank,
        num_layers: layers,
        dims: LORA_DIMS,
        precision,
    };
    let mut stack = be.alloc_lora_stack(geom).expect("arena");
    for slot in 0..geom.num_slots {
        let owned: Vec<Vec<(Vec<f32>, Vec<f32>)>> = (0..geom.num_layers)
            .map(|_| {
                LORA_DIMS
                    .iter()
                    .map(|&(i, o)| {
                        let a = (0..rank * i).map(|_| rng.gen_range(-0.1f32..0.1)).collect();
                        let b = (0..o * rank).map(|_| rng.gen_range(-0.1f32..0.1)).collect();
                        (a, b)
                    })
                    .collect()
            })
            .collect();
        let data: Vec<[Option<LoraWeights<'_>>; 7]> = owned
            .iter()
            .map(|mods| {
                std::array::from_fn(|t| {
                    Some(LoraWeights {
                        rank,
                        a: &mods[t].0,
                        b: &mods[t].1,
                        scale: 2.0,
                    })
                })
            })
            .collect();
        be.lora_load_slot(&mut stack, slot, &data)
            .expect("load adapter");
    }
    stack
}
