//! Generates include/loraplex.h from src/ffi with cbindgen (pinned in Cargo.toml).
//!
//! The header is committed. The build always writes the freshly generated header to
//! `$OUT_DIR/loraplex.h` (tests/header_fresh.rs compares the committed one with it) and rewrites
//! include/loraplex.h only when it is missing or when `LPX_WRITE_HEADER=1` (`make header`);
//! otherwise a stale committed header only produces a warning here and a failing test.
//!
//! With the `cuda` feature it also compiles every `kernels/*.cu` to PTX for `compute_80` and
//! `compute_90` with nvcc and writes `$OUT_DIR/kernels_ptx.rs`, which `backend/cuda` includes
//! (see [`cuda_kernels`] and kernels/README.md).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        cuda_kernels();
    }
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=include/loraplex.h");
    println!("cargo:rerun-if-env-changed=LPX_WRITE_HEADER");
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let mut config =
        cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("read cbindgen.toml");
    let v = |k: &str| std::env::var(k).unwrap_or_else(|_| "0".into());
    config.after_includes = Some(format!(
        "\n#define LPX_VERSION_MAJOR {}\n#define LPX_VERSION_MINOR {}\n#define LPX_VERSION_PATCH {}\n#define LPX_VERSION_STRING \"{}\"\n",
        v("CARGO_PKG_VERSION_MAJOR"),
        v("CARGO_PKG_VERSION_MINOR"),
        v("CARGO_PKG_VERSION_PATCH"),
        std::env::var("CARGO_PKG_VERSION").unwrap_or_default(),
    ));
    let generated = out_dir.join("loraplex.h");
    match cbindgen::Builder::new()
        .with_src(root.join("src/ffi/mod.rs"))
        .with_config(config)
        .generate()
    {
        Ok(b) => {
            b.write_to_file(&generated);
        }
        Err(e) => panic!("cbindgen failed to generate the C header: {e}"),
    }
    println!(
        "cargo:rustc-env=LPX_GENERATED_HEADER={}",
        generated.display()
    );
    let committed = root.join("include/loraplex.h");
    let fresh = std::fs::read(&generated).expect("read generated header");
    let old = std::fs::read(&committed).ok();
    let force = std::env::var("LPX_WRITE_HEADER").is_ok_and(|v| v == "1");
    if old.is_none() || force {
        if old.as_deref() != Some(&fresh[..]) {
            std::fs::create_dir_all(root.join("include")).expect("create include/");
            std::fs::write(&committed, &fresh).expect("write include/loraplex.h");
        }
    } else if old.as_deref() != Some(&fresh[..]) {
        println!(
            "cargo:warning=include/loraplex.h is stale: run `make header` (LPX_WRITE_HEADER=1 cargo build) and commit it"
        );
    }
}

/// The nvcc to use: `$LPX_NVCC`, then `.cache/cuda/bin/nvcc` under the crate (where
/// scripts/install-cuda-tools.sh installs it), then `nvcc` on `PATH`, then
/// `/usr/local/cuda/bin/nvcc`. Fails the build naming what to do when none is found.
fn find_nvcc(root: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("LPX_NVCC").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let cached = root.join(".cache/cuda/bin/nvcc");
    if cached.is_file() {
        return cached;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return p;
            }
        }
    }
    let usr = PathBuf::from("/usr/local/cuda/bin/nvcc");
    if usr.is_file() {
        return usr;
    }
    panic!(
        "the `cuda` feature compiles kernels/*.cu with nvcc, and none was found (tried $LPX_NVCC, \
         {}, nvcc on PATH, /usr/local/cuda/bin/nvcc): run scripts/install-cuda-tools.sh or set \
         LPX_NVCC to an nvcc binary",
        cached.display()
    );
}

/// Compiles every `kernels/*.cu` (sorted by name) to `$OUT_DIR/<stem>.sm80.ptx` and
/// `<stem>.sm90.ptx` and writes `$OUT_DIR/kernels_ptx.rs` with
/// `KERNEL_MODULES: &[(stem, sm80 ptx, sm90 ptx)]`. Any nvcc failure fails the build with its
/// output.
fn cuda_kernels() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=LPX_NVCC");
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let mut sources: Vec<PathBuf> = std::fs::read_dir(root.join("kernels"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "cu"))
                .collect()
        })
        .unwrap_or_default();
    sources.sort();
    let nvcc = if sources.is_empty() {
        None
    } else {
        Some(find_nvcc(&root))
    };
    let mut table = String::from(
        "/// Every kernel module: (file stem, PTX for compute_80, PTX for compute_90).\n\
         pub const KERNEL_MODULES: &[(&str, &str, &str)] = &[\n",
    );
    for src in &sources {
        let stem = src
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("kernel file name is UTF-8");
        let mut ptx = Vec::new();
        for arch in ["80", "90"] {
            let out = out_dir.join(format!("{stem}.sm{arch}.ptx"));
            let nvcc = nvcc.as_ref().expect("nvcc found for a non-empty kernels/");
            let run = Command::new(nvcc)
                .arg("--ptx")
                .arg("-O3")
                .arg(format!("-arch=compute_{arch}"))
                .arg("-o")
                .arg(&out)
                .arg(src)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
            if !run.status.success() {
                panic!(
                    "nvcc failed on {} for compute_{arch} ({}):\n{}{}",
                    src.display(),
                    run.status,
                    String::from_utf8_lossy(&run.stdout),
                    String::from_utf8_lossy(&run.stderr)
                );
            }
            ptx.push(out);
        }
        table.push_str(&format!(
            "    ({stem:?}, include_str!({:?}), include_str!({:?})),\n",
            ptx[0].display().to_string(),
            ptx[1].display().to_string()
        ));
    }
    table.push_str("];\n");
    std::fs::write(out_dir.join("kernels_ptx.rs"), table).expect("write kernels_ptx.rs");
}
