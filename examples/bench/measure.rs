//! loraplex's side of every measurement: prefill and decode throughput of an in-process
//! [`Engine`], and the synthetic adapters the multi-LoRA measurements use.

use std::path::Path;
use std::time::{Duration, Instant};

use loraplex::engine::{Engine, Prompt, Request};
use loraplex::sampling::SamplingParams;

/// Greedy sampling of exactly `max_tokens` tokens (EOS ignored).
pub fn params(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        temperature: 0.0,
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

/// A deterministic `len`-token prompt; salts that differ modulo 20,000 give different first
/// tokens (no prefix shared between them), while one salt's prompts of different lengths are
/// prefixes of each other (a longer one hits the prefix cache of a shorter one).
pub fn prompt(len: usize, salt: usize) -> Vec<u32> {
    (0..len)
        .map(|k| (100 + (k * 7919 + salt * 104_729) % 20_000) as u32)
        .collect()
}

/// Prefill tokens/s of one `len`-token prompt (one request, one output token), timed once.
pub fn prefill_once(engine: &Engine, len: usize, salt: usize) -> Result<f64, loraplex::Error> {
    let t = Instant::now();
    engine.generate(Request::new(Prompt::Tokens(prompt(len, salt)), params(1)))?;
    Ok(len as f64 / t.elapsed().as_secs_f64().max(1e-9))
}

/// Best-of-`reps` prefill throughput for a `len`-token prompt (one request, one output token).
pub fn prefill_tps(engine: &Engine, len: usize, reps: usize) -> Result<f64, loraplex::Error> {
    let mut best = 0.0f64;
    for r in 0..reps {
        best = best.max(prefill_once(engine, len, r)?);
    }
    Ok(best)
}

/// Decode throughput with `batch` concurrent base-model requests.
pub fn decode_tps(engine: &Engine, batch: usize, n: usize) -> Result<f64, loraplex::Error> {
    decode_tps_models(engine, &vec![None; batch], n)
}

/// Decode throughput with one concurrent request per entry of `models` (None = base): generated
/// tokens per second measured from the moment every request has its first token until all have
/// `n` tokens.
pub fn decode_tps_models(
    engine: &Engine,
    models: &[Option<String>],
    n: usize,
) -> Result<f64, loraplex::Error> {
    let requests = models
        .iter()
        .enumerate()
        .map(|(i, m)| Request {
            model: m.clone(),
            prompt: Prompt::Tokens(prompt(16, i)),
            sampling: params(n),
            ..Request::default()
        })
        .collect();
    decode_tps_requests(engine, requests)
}

/// Decode throughput of `requests` submitted together: generated tokens per second measured from
/// the moment every request has its first token until all have ended.
pub fn decode_tps_requests(
    engine: &Engine,
    requests: Vec<Request>,
) -> Result<f64, loraplex::Error> {
    let batch = requests.len();
    let ids: Vec<_> = requests
        .into_iter()
        .map(|r| engine.submit(r))
        .collect::<Result<_, _>>()?;
    let mut got = vec![0usize; batch];
    let mut done = vec![false; batch];
    let mut t_all_started: Option<(Instant, usize)> = None;
    while done.iter().any(|d| !d) {
        for (i, &id) in ids.iter().enumerate() {
            if done[i] {
                continue;
            }
            if let Some(o) = engine.poll(id, Duration::from_millis(1))? {
                got[i] += o.token_ids.len();
                if o.is_final() {
                    done[i] = true;
                }
            }
        }
        if t_all_started.is_none() && got.iter().all(|&g| g > 0) {
            t_all_started = Some((Instant::now(), got.iter().sum()));
        }
    }
    let (t0, base) = t_all_started.unwrap_or((Instant::now(), 0));
    let total: usize = got.iter().sum();
    Ok((total - base) as f64 / t0.elapsed().as_secs_f64().max(1e-9))
}

/// Writes `n` synthetic rank-8 adapters over every target module, shaped for `engine`'s model,
/// as HF safetensors PEFT directories `bench-00`, `bench-01`, ... under `peft`, and returns
/// their names (the engine sees them after [`Engine::refresh`] when `peft` is its source).
pub fn write_adapters(
    engine: &Engine,
    peft: &Path,
    n: usize,
    rank: usize,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    use loraplex::adapters::export::{export, ExportFormat};
    use loraplex::adapters::synth::synthesize;
    use loraplex::adapters::ModelShape;

    let shape = ModelShape::of(engine.model_config(), loraplex::tensor::DType::F32);
    let spec = adapter_spec(rank);
    let names: Vec<String> = (0..n).map(|i| format!("bench-{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        export(
            &synthesize(name, &shape, &spec, 1000 + i as u64),
            &shape,
            ExportFormat::HfSafetensors,
            &peft.join(name),
        )?;
    }
    Ok(names)
}

/// The adapters the bench sections use: `rank` (8 unless `--lora-rank` says otherwise in the
/// compare section), all seven target modules, scale 2.
pub fn adapter_spec(rank: usize) -> loraplex::adapters::synth::SynthSpec<'static> {
    loraplex::adapters::synth::SynthSpec {
        rank,
        scale: 2.0,
        targets: &loraplex::backend::LoraTarget::ALL,
        shared_a: true,
        strength: 0.15,
    }
}
