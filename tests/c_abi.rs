//! The C ABI from C and C++: the generated header compiles as C99 and C++17 with -Werror,
//! examples/quickstart.c and bindings/cpp/test_loraplex.cpp build against libloraplex.so and
//! run on a tiny model, and quickstart is valgrind-clean (no definite leaks, no errors).
//! Skips (saying so) when gcc/g++/valgrind are absent.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping: {tool} is not installed");
    }
    ok
}

/// The directory holding libloraplex.so built with this test (target/<profile>). `cargo test`
/// does not place the cdylib there, so it is built once here when missing (the same profile).
fn lib_dir() -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    BUILD.call_once(|| {
        if !dir.join("libloraplex.so").is_file() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--lib"]).current_dir(root());
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().unwrap();
            assert!(status.success(), "cargo build --lib failed");
        }
    });
    assert!(
        dir.join("libloraplex.so").is_file(),
        "{} has no libloraplex.so",
        dir.display()
    );
    dir
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn build(compiler: &str, std: &str, src: &Path, out: &Path, extra: &[&str]) {
    let lib = lib_dir();
    let mut c = Command::new(compiler);
    c.args([std, "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1"])
        .arg(format!("-I{}", root().join("include").display()))
        .arg(format!("-I{}", root().join("bindings/cpp").display()))
        .arg(src)
        .arg("-o")
        .arg(out)
        .arg(format!("-L{}", lib.display()))
        .arg("-lloraplex")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(extra);
    run(&mut c);
}

#[test]
fn header_compiles_as_c99_and_cpp17() {
    if !have("gcc") || !have("g++") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("h.c");
    std::fs::write(
        &src,
        "#include \"loraplex.h\"\nint main(void) { lpx_engine_config c; lpx_request r; \
         lpx_engine_config_init(&c); lpx_request_init(&r); \
         return (int)(lpx_abi_version() != LPX_ABI_VERSION) + (int)(LPX_ERROR_CODE_CAPACITY != 5); }\n",
    )
    .unwrap();
    let exe = dir.path().join("h");
    build("gcc", "-std=c99", &src, &exe, &[]);
    run(&mut Command::new(&exe));
    let exe2 = dir.path().join("h2");
    build("g++", "-std=c++17", &src, &exe2, &["-x", "none"]);
    run(&mut Command::new(&exe2));
}

#[test]
fn quickstart_runs_and_is_valgrind_clean() {
    if !have("gcc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    common::write_tiny_model(&model, common::TinySpec::default());
    let exe = dir.path().join("quickstart");
    build(
        "gcc",
        "-std=c99",
        &root().join("examples/quickstart.c"),
        &exe,
        &[],
    );
    // A PEFT source with one adapter, so the quickstart serves a mixed batch.
    let peft = dir.path().join("loras");
    let shape = common::tiny_shape(common::TinySpec::default());
    let adapter = common::random_adapter(&shape, [8; 7], 5, false, false);
    loraplex::adapters::export::export(
        &adapter,
        &shape,
        loraplex::adapters::export::ExportFormat::HfSafetensors,
        &peft.join("tiny-lora"),
    )
    .unwrap();
    let out = run(Command::new(&exe)
        .arg(&model)
        .arg(&peft)
        .env("LPX_THREADS", "2"));
    assert!(out.contains("\"object\":\"list\""), "{out}");
    assert!(out.contains("[tiny-lora] finished: "), "{out}");
    assert!(out.contains("3 requests over 1 adapters"), "{out}");
    if !have("valgrind") {
        return;
    }
    let out = run(Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--error-exitcode=1",
        ])
        .arg(&exe)
        .arg(&model)
        .arg(&peft)
        .env("LPX_THREADS", "1"));
    assert!(out.contains("ERROR SUMMARY: 0 errors"), "{out}");
    eprintln!(
        "{}",
        out.lines()
            .filter(|l| l.contains("=="))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn cpp_binding_tests_pass() {
    if !have("g++") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    common::write_tiny_model(&model, common::TinySpec::default());
    let exe = dir.path().join("test_loraplex");
    build(
        "g++",
        "-std=c++17",
        &root().join("bindings/cpp/test_loraplex.cpp"),
        &exe,
        &["-lpthread"],
    );
    let out = run(Command::new(&exe).arg(&model));
    assert!(out.contains(" passed, 0 failed"), "{out}");
    let chat = dir.path().join("chat");
    build(
        "g++",
        "-std=c++17",
        &root().join("examples/chat.cpp"),
        &chat,
        &[],
    );
    let out = run(Command::new(&chat).arg(&model).arg("hello there"));
    assert!(out.contains("tokens"), "{out}");
}
