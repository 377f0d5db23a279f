//! Human- and machine-readable summaries of adapters (used by `examples/inspect_adapter.rs`).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use crate::adapters::load::{detect_format, load_adapter};
use crate::adapters::normalize::{ModelShape, NormalizedAdapter};
use crate::adapters::validate::AdapterLimits;
use crate::lora_target::LoraTarget;

/// Loads the adapter in `dir` (named after the directory) and describes it: format, source,
/// generation hash, bytes, and per target module the layers (as ranges), ranks and scales. If it
/// is refused, the text says so and gives the error code and the precise reason. Never fails.
pub fn inspect(dir: &Path, shape: &ModelShape, limits: &AdapterLimits) -> String {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    match load_adapter(dir, &name, shape, limits) {
        Ok(a) => describe(&a),
        Err(e) => {
            let fmt = detect_format(dir)
                .map(|f| f.name().to_owned())
                .unwrap_or_else(|_| "unrecognised".into());
            format!(
                "adapter '{name}' ({})\n  format: {fmt}\n  REFUSED ({:?}): {}\n",
                dir.display(),
                e.code(),
                e.message()
            )
        }
    }
}

/// `0,1,2,5` → `0-2,5`.
fn ranges(v: &[usize]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&start) = v.get(i) {
        let mut end = start;
        while v.get(i + 1) == Some(&(end + 1)) {
            end += 1;
            i += 1;
        }
        out.push(if end == start {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

fn distinct<T: PartialEq + Copy>(v: impl Iterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

fn describe(a: &NormalizedAdapter) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "adapter '{}' ({})", a.name, a.source.display());
    let _ = writeln!(s, "  format: {}", a.format.name());
    let _ = writeln!(s, "  generation: {}", a.generation);
    let _ = writeln!(
        s,
        "  modules: {}, max rank {}, {} bytes (f32 A+B)",
        a.modules().count(),
        a.max_rank(),
        a.bytes()
    );
    for t in a.targets() {
        let mods: Vec<(usize, &crate::adapters::LoraModule)> = a
            .modules()
            .filter(|(_, tt, _)| *tt == t)
            .map(|(l, _, m)| (l, m))
            .collect();
        let layers: Vec<usize> = mods.iter().map(|(l, _)| *l).collect();
        let ranks = distinct(mods.iter().map(|(_, m)| m.rank));
        let scales = distinct(mods.iter().map(|(_, m)| m.scale));
        let (i, o) = mods.first().map_or((0, 0), |(_, m)| (m.in_dim, m.out_dim));
        let _ = writeln!(
            s,
            "  {:<9} layers {:<8} in {i} out {o} rank {} scale {}",
            t.hf_name(),
            ranges(&layers),
            ranks
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("/"),
            scales
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("/"),
        );
    }
    s
}

/// JSON summary of a loaded adapter: `name`, `format`, `source`, `generation`, `bytes`,
/// `max_rank`, `targets` (HF names) and `modules` (one object per module with `layer`, `target`,
/// `rank`, `in`, `out`, `scale`), in layer then canonical target order.
pub fn summary_json(a: &NormalizedAdapter) -> Value {
    let modules: Vec<Value> = a
        .modules()
        .map(|(l, t, m)| {
            json!({"layer": l, "target": t.hf_name(), "rank": m.rank, "in": m.in_dim,
                   "out": m.out_dim, "scale": m.scale})
        })
        .collect();
    json!({
        "name": a.name,
        "format": a.format.name(),
        "source": a.source.display().to_string(),
        "generation": a.generation,
        "bytes": a.bytes(),
        "max_rank": a.max_rank(),
        "targets": a.targets().iter().map(|t: &LoraTarget| t.hf_name()).collect::<Vec<_>>(),
        "modules": modules,
    })
}
