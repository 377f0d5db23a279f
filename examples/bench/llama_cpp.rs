//! llama.cpp's side of the comparison: `llama-batched-bench` (built by scripts/llama-cpp.sh from
//! the llama-cpp-python sdist) run as a child process, one measurement per call, its JSONL line
//! parsed.
//!
//! llama.cpp's CPU build synchronises its threads with OpenMP barriers, which spin by default
//! (`OMP_WAIT_POLICY` unset). On an oversubscribed machine a spinning thread burns the slice its
//! partner needs and decode slows by 5-15x; `OMP_WAIT_POLICY=passive` sleeps instead. The
//! caller picks the policy per call ([`WaitPolicy`]) and reports it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The llama.cpp tools directory (holds `llama-batched-bench`).
pub struct LlamaCpp {
    bin: PathBuf,
}

/// `OMP_WAIT_POLICY` for a llama.cpp run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitPolicy {
    /// Unset: llama.cpp's default (spinning).
    Default,
    /// `passive`: threads sleep at barriers.
    Passive,
    /// `active`: threads spin at barriers.
    Active,
}

impl WaitPolicy {
    /// The report's name.
    pub fn name(self) -> &'static str {
        match self {
            WaitPolicy::Default => "default",
            WaitPolicy::Passive => "passive",
            WaitPolicy::Active => "active",
        }
    }
}

/// One llama.cpp measurement: tokens/s, or why there is none.
pub type Measured = Result<f64, String>;

impl LlamaCpp {
    /// Checks that `dir/llama-batched-bench` exists; the error names the path and the script
    /// that builds it.
    pub fn new(dir: &Path) -> Result<Self, String> {
        let exe = dir.join("llama-batched-bench");
        if !exe.is_file() {
            return Err(format!(
                "{} not found (build it with scripts/llama-cpp.sh, or pass --llama-bin DIR)",
                exe.display()
            ));
        }
        Ok(Self {
            bin: dir.to_path_buf(),
        })
    }

    /// The tools directory.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Runs `llama-batched-bench` once with `pl` parallel sequences of a `pp`-token prompt each,
    /// then `tg` decode steps, and returns its JSONL record.
    fn batched_bench(
        &self,
        model: &Path,
        threads: usize,
        pp: usize,
        tg: usize,
        pl: usize,
        wait: WaitPolicy,
    ) -> Result<Value, String> {
        // Context: every sequence's prompt and generated tokens (not shared), rounded up.
        let ctx = (pl * (pp + tg)).div_ceil(256) * 256;
        let mut cmd = Command::new(self.bin.join("llama-batched-bench"));
        match wait {
            WaitPolicy::Default => cmd.env_remove("OMP_WAIT_POLICY"),
            WaitPolicy::Passive => cmd.env("OMP_WAIT_POLICY", "passive"),
            WaitPolicy::Active => cmd.env("OMP_WAIT_POLICY", "active"),
        };
        let out = cmd
            .arg("-m")
            .arg(model)
            .args(["-t", &threads.to_string(), "-tb", &threads.to_string()])
            .args(["-c", &ctx.max(256).to_string(), "-b", "2048", "-ub", "512"])
            .args(["-npp", &pp.to_string(), "-ntg", &tg.to_string()])
            .args(["-npl", &pl.to_string(), "--output-format", "jsonl"])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match record(&stdout, &stderr) {
            Some(v) if out.status.success() => Ok(v),
            _ => {
                let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Err(format!(
                    "llama-batched-bench on {} exited with {} without a result: {}",
                    model.display(),
                    out.status,
                    tail.join(" | ")
                ))
            }
        }
    }

    /// Decode tokens/s with `batch` sequences (16-token prompts, `tokens` steps each), summed
    /// over the sequences: `speed_tg`.
    pub fn decode(
        &self,
        model: &Path,
        threads: usize,
        batch: usize,
        tokens: usize,
        wait: WaitPolicy,
    ) -> Measured {
        let v = self.batched_bench(model, threads, 16, tokens, batch, wait)?;
        field(&v, "speed_tg")
    }

    /// Prefill tokens/s of one `len`-token prompt: `speed_pp`.
    pub fn prefill(&self, model: &Path, threads: usize, len: usize, wait: WaitPolicy) -> Measured {
        let v = self.batched_bench(model, threads, len, 1, 1, wait)?;
        field(&v, "speed_pp")
    }
}

/// The first JSONL result record (`{... "speed_tg": ...}`) in the tool's output.
fn record(stdout: &str, stderr: &str) -> Option<Value> {
    stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| l.trim_start().starts_with('{') && l.contains("\"speed_tg\""))
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
}

fn field(v: &Value, key: &str) -> Measured {
    v[key]
        .as_f64()
        .filter(|x| x.is_finite() && *x > 0.0)
        .ok_or_else(|| format!("llama-batched-bench record has no positive \"{key}\": {v}"))
}

#[cfg(test)]
mod tests {
    use super::{field, record};

    #[test]
    fn parses_the_jsonl_record_among_log_lines() {
        let out = "llama_model_loader: loaded meta data\n\
            {\"n_kv_max\": 512, \"pp\": 16, \"tg\": 32, \"pl\": 8, \"t_pp\": 0.1, \"speed_pp\": 1280.5, \"t_tg\": 2.0, \"speed_tg\": 128.25, \"t\": 2.1, \"speed\": 200.0}\n";
        let v = record(out, "main: done").expect("record");
        assert_eq!(field(&v, "speed_tg"), Ok(128.25));
        assert_eq!(field(&v, "speed_pp"), Ok(1280.5));
        assert!(record("no result here", "error: unable to load model").is_none());
    }

    #[test]
    fn a_missing_or_zero_speed_is_an_error() {
        let v = serde_json::json!({"speed_tg": 0.0});
        assert!(field(&v, "speed_tg").is_err());
        assert!(field(&v, "speed_pp").is_err());
    }
}
