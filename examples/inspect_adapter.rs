//! Inspect a LoRA adapter directory: format, modules, ranks, scales, bytes, generation hash, or
//! the precise reason it is refused.
//!
//! ```text
//! cargo run --example inspect_adapter -- --adapter <dir> (--model <HF model dir> | --shape tiny|smollm2)
//!     [--max-rank N] [--json]
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use loraplex::adapters::inspect::{inspect, summary_json};
use loraplex::adapters::{load_adapter, AdapterLimits, ModelShape};
use loraplex::model::config::ModelConfig;
use loraplex::tensor::DType;

fn preset(name: &str) -> Option<ModelShape> {
    let (num_layers, hidden_size, intermediate_size, num_heads, num_kv_heads, head_dim) = match name
    {
        "tiny" => (3, 64, 176, 4, 2, 16),
        "smollm2" => (30, 576, 1536, 9, 3, 64),
        _ => return None,
    };
    Some(ModelShape {
        num_layers,
        hidden_size,
        intermediate_size,
        num_heads,
        num_kv_heads,
        head_dim,
        dtype: DType::F32,
    })
}

fn shape_from_model(dir: &Path) -> Result<ModelShape, String> {
    let c = ModelConfig::from_hf_dir(dir).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(dir.join("config.json")).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let dtype = match v
        .get("torch_dtype")
        .or_else(|| v.get("dtype"))
        .and_then(|d| d.as_str())
    {
        Some("bfloat16") => DType::BF16,
        Some("float16") => DType::F16,
        _ => DType::F32,
    };
    Ok(ModelShape::of(&c, dtype))
}

fn main() -> ExitCode {
    let usage = "usage: inspect_adapter --adapter <dir> (--model <HF model dir> | --shape tiny|smollm2) [--max-rank N] [--json]";
    let mut adapter: Option<PathBuf> = None;
    let mut shape: Option<Result<ModelShape, String>> = None;
    let mut limits = AdapterLimits::default();
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--adapter" => adapter = args.next().map(PathBuf::from),
            "--model" => shape = args.next().map(|d| shape_from_model(Path::new(&d))),
            "--shape" => {
                shape = args
                    .next()
                    .map(|s| preset(&s).ok_or_else(|| format!("unknown shape preset '{s}'")))
            }
            "--max-rank" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => limits.max_lora_rank = n,
                None => {
                    eprintln!("--max-rank needs a number\n{usage}");
                    return ExitCode::from(2);
                }
            },
            "--json" => json = true,
            _ => {
                eprintln!("unknown argument '{a}'\n{usage}");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(adapter), Some(shape)) = (adapter, shape) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let shape = match shape {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot read the model shape: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        let name = adapter
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match load_adapter(&adapter, &name, &shape, &limits) {
            Ok(a) => println!("{:#}", summary_json(&a)),
            Err(e) => {
                println!(
                    "{:#}",
                    serde_json::json!({"name": name, "error": format!("{:?}", e.code()), "message": e.message()})
                );
                return ExitCode::from(1);
            }
        }
    } else {
        print!("{}", inspect(&adapter, &shape, &limits));
    }
    ExitCode::SUCCESS
}
