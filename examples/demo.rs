//! `make demo-rust`: loads SmolLM2-135M-Instruct (or `--model`) with a PEFT source of sample
//! adapters in every format (`--adapters`, default `models/sample-adapters` when present), prints
//! the model list, then runs a chat on the base model, a text completion, and the same chat on
//! every adapter, all concurrently (one mixed batch), streaming the base chat live.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, Output, Prompt, Request};
use loraplex::sampling::SamplingParams;
use loraplex::tokenizer::ChatMessage;

fn chat(model: Option<String>, question: &str) -> Request {
    Request {
        model,
        prompt: Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: question.into(),
        }]),
        sampling: SamplingParams {
            max_tokens: 48,
            temperature: 0.0,
            ..SamplingParams::default()
        },
        ..Request::default()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut model = "models/SmolLM2-135M-Instruct.Q4_1.gguf".to_string();
    let mut adapters = Some(PathBuf::from("models/sample-adapters"));
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model = args.next().ok_or("--model needs a path")?,
            "--adapters" => {
                adapters = Some(PathBuf::from(args.next().ok_or("--adapters needs a path")?))
            }
            "--no-adapters" => adapters = None,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let t0 = Instant::now();
    let mut cfg = EngineConfig::new(&model);
    cfg.apply_env()?;
    if let Some(a) = adapters.filter(|a| a.is_dir()) {
        cfg.peft_source.push(a);
    }
    let engine = Engine::new(cfg)?;
    let mc = engine.model_config();
    println!(
        "loaded {} ({} layers, hidden {}, {} heads / {} KV heads, vocab {}) in {:.2}s; weights {:.0} MB",
        engine.served_name(),
        mc.num_layers,
        mc.hidden_size,
        mc.num_heads,
        mc.num_kv_heads,
        mc.vocab_size,
        t0.elapsed().as_secs_f64(),
        engine.stats().weight_bytes as f64 / 1e6
    );
    let models = engine.models_json();
    println!("models (GET /v1/models):");
    for m in models["data"].as_array().into_iter().flatten() {
        println!("  {}", serde_json::to_string(m)?);
    }
    let adapter_names: Vec<String> = models["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .skip(1)
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();

    let question = "Write one sentence about the sea.";
    let completion = Request::new(
        Prompt::Text("The three primary colors are".into()),
        SamplingParams {
            max_tokens: 32,
            temperature: 0.7,
            top_p: 0.9,
            seed: Some(7),
            ..SamplingParams::default()
        },
    );
    let t1 = Instant::now();
    let base_chat = engine.submit(chat(None, question))?;
    let mut others = vec![("completion (base)".to_string(), engine.submit(completion)?)];
    for name in &adapter_names {
        others.push((
            format!("chat ({name})"),
            engine.submit(chat(Some(name.clone()), question))?,
        ));
    }
    print!("\n[chat (base)] ");
    std::io::stdout().flush()?;
    loop {
        let Some(out) = engine.poll(base_chat, Duration::from_millis(50))? else {
            continue;
        };
        print!("{}", out.text);
        std::io::stdout().flush()?;
        if out.is_final() {
            report("chat (base)", &out)?;
            break;
        }
    }
    for (label, id) in others {
        let out = engine.wait(id)?;
        print!("\n[{label}] {}", out.text);
        report(&label, &out)?;
    }
    let s = engine.stats();
    println!(
        "\n{} requests over {} adapters done in {:.2}s in {} engine steps (mixed batches)",
        adapter_names.len() + 2,
        adapter_names.len(),
        t1.elapsed().as_secs_f64(),
        s.steps
    );
    Ok(())
}

fn report(label: &str, out: &Output) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "\n[{label}] finish={} prompt_tokens={} completion_tokens={}",
        out.finish_reason.map(|r| r.as_str()).unwrap_or("?"),
        out.usage.prompt_tokens,
        out.usage.completion_tokens
    );
    match &out.error {
        Some(e) => Err(e.clone().into()),
        None => Ok(()),
    }
}
