//! Generates include/loraplex.h from src/ffi with cbindgen (pinned in Cargo.toml).
//!
//! The header is committed. The build always writes the freshly generated header to
//! `$OUT_DIR/loraplex.h` (tests/header_fresh.rs compares the committed one with it) and rewrites
//! include/loraplex.h only when it is missing or when `LPX_WRITE_HEADER=1` (`make header`);
//! otherwise a stale committed header only produces a warning here and a failing test.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
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
