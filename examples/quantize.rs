//! Re-quantizes a GGUF model file with loraplex's own quantizers.
//!
//! ```text
//! cargo run --release --example quantize -- <in.gguf> <out.gguf> <Q8_0|Q4_0|Q4_K_M|Q5_K_M|Q6_K>
//! ```
//!
//! The tensor types each scheme picks are documented in `loraplex::model::gguf::requantize`.
//! Prints one line per tensor type with its count, then the tensor bytes written.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use loraplex::model::gguf::requantize::{requantize_gguf, QuantScheme};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [src, dst, scheme] = args.as_slice() else {
        eprintln!("usage: quantize <in.gguf> <out.gguf> <Q8_0|Q4_0|Q4_K_M|Q5_K_M|Q6_K>");
        return ExitCode::from(2);
    };
    let run = || -> loraplex::Result<()> {
        let scheme: QuantScheme = scheme.parse()?;
        let report = requantize_gguf(&PathBuf::from(src), &PathBuf::from(dst), scheme)?;
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, ty) in &report.tensors {
            *counts.entry(ty.name()).or_default() += 1;
        }
        for (ty, n) in counts {
            println!("{ty}: {n} tensors");
        }
        println!(
            "{dst}: {} tensor bytes ({})",
            report.tensor_bytes,
            scheme.name()
        );
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quantize: {e}");
            ExitCode::FAILURE
        }
    }
}
