//! `make demo`: loads SmolLM2-135M-Instruct (or `--model`), then runs a chat request and a text
//! completion concurrently (they share batches) and streams both answers.

use std::io::Write;
use std::time::{Duration, Instant};

use loraplex::config::EngineConfig;
use loraplex::engine::{Engine, Prompt, Request};
use loraplex::sampling::SamplingParams;
use loraplex::tokenizer::ChatMessage;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut model = "models/SmolLM2-135M-Instruct.Q4_1.gguf".to_string();
    while let Some(a) = args.next() {
        if a == "--model" {
            model = args.next().ok_or("--model needs a path")?;
        }
    }
    let t0 = Instant::now();
    let mut cfg = EngineConfig::new(&model);
    cfg.apply_env()?;
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
    let chat = Request::new(
        Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: "What is the capital of France? Answer in one sentence.".into(),
        }]),
        SamplingParams {
            max_tokens: 48,
            temperature: 0.0,
            ..SamplingParams::default()
        },
    );
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
    let ids = [
        ("chat", engine.submit(chat)?),
        ("completion", engine.submit(completion)?),
    ];
    for (label, id) in ids {
        print!("\n[{label}] ");
        std::io::stdout().flush()?;
        loop {
            let Some(out) = engine.poll(id, Duration::from_millis(50))? else {
                continue;
            };
            print!("{}", out.text);
            std::io::stdout().flush()?;
            if let Some(reason) = out.finish_reason {
                println!(
                    "\n[{label}] finish={} prompt_tokens={} completion_tokens={}",
                    reason.as_str(),
                    out.usage.prompt_tokens,
                    out.usage.completion_tokens
                );
                if let Some(e) = out.error {
                    return Err(e.into());
                }
                break;
            }
        }
    }
    let s = engine.stats();
    println!(
        "\nboth requests done in {:.2}s over {} engine steps",
        t1.elapsed().as_secs_f64(),
        s.steps
    );
    Ok(())
}
