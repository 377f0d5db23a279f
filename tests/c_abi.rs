//! The C ABI from C and C++: the generated header compiles as C99 and C++17 with -Werror,
//! examples/quickstart.c and bindings/cpp/test_loraplex.cpp build against libloraplex.so and
//! run on a tiny model, and quickstart is valgrind-clean (no definite leaks, no errors).
//! A C program and the C++ tests set every `lpx_engine_config` field to a non-default value and
//! read each back through `lpx_engine_stats_json`. When gcc/g++/valgrind are absent the checks
//! fail under `CI=true` and skip (saying so) otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `tool` runs. When it does not, the one rule for missing tools applies
/// ([`common::missing`]): the test fails under CI=true and skips, saying why, elsewhere.
fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok || common::missing::<()>(format!(
        "{tool} is not installed (scripts/install-test-deps.sh installs it)"
    ))
    .is_some()
}

/// The directory holding libloraplex.so built with this test (target/<profile>). `cargo test`
/// does not place the cdylib there, so it is built once here (the same profile; a no-op when it
/// is fresh, and a stale library from an older checkout is never linked).
fn lib_dir() -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--lib"]).current_dir(root());
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().unwrap();
        assert!(status.success(), "cargo build --lib failed");
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

/// A temporary directory holding the tiny test model in `tiny/`.
fn tiny_model() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    common::write_tiny_model(&model, common::TinySpec::default());
    (dir, model)
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
    let (dir, model) = tiny_model();
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
    common::export_tiny_adapter(&peft.join("tiny-lora"), 5);
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
    let (dir, model) = tiny_model();
    let exe = dir.path().join("test_loraplex");
    build(
        "g++",
        "-std=c++17",
        &root().join("bindings/cpp/test_loraplex.cpp"),
        &exe,
        &["-lpthread"],
    );
    let peft = dir.path().join("loras");
    std::fs::create_dir(&peft).unwrap();
    let out = run(Command::new(&exe).arg(&model).arg(&peft));
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

/// The field names of `lpx_engine_config` in the committed header, `struct_size` excluded.
fn header_config_fields() -> Vec<String> {
    let h = std::fs::read_to_string(root().join("include/loraplex.h")).unwrap();
    let lines: Vec<&str> = h.lines().collect();
    let end = lines
        .iter()
        .position(|l| l.trim() == "} lpx_engine_config;")
        .expect("the header defines lpx_engine_config");
    let start = lines[..end]
        .iter()
        .rposition(|l| l.starts_with("typedef struct"))
        .unwrap();
    let fields: Vec<String> = lines[start + 1..end]
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.starts_with("//") && l.ends_with(';'))
        .map(|l| {
            let name = l.trim_end_matches(';').rsplit([' ', '*']).next().unwrap();
            name.to_string()
        })
        .filter(|n| n != "struct_size")
        .collect();
    assert!(fields.len() >= 17, "{fields:?}");
    fields
}

#[test]
fn c_sets_every_config_field_and_reads_it_back_through_stats() {
    if !have("gcc") {
        return;
    }
    let (dir, model) = tiny_model();
    let peft = dir.path().join("loras");
    std::fs::create_dir(&peft).unwrap();
    let (m, p) = (model.to_str().unwrap(), peft.to_str().unwrap());
    // Every field: its C assignment and the value `config` must report. Each differs from the
    // default except `device` ("cpu" is the only device of a CPU build).
    let table: Vec<(&str, &str, serde_json::Value)> = vec![
        ("model", "argv[1]", m.into()),
        ("served_model_name", "\"c-served\"", "c-served".into()),
        ("device", "\"cpu\"", "cpu".into()),
        ("threads", "2", 2.into()),
        ("weight_dtype", "LPX_WEIGHT_DTYPE_Q4_K", "q4_k".into()),
        ("max_num_seqs", "5", 5.into()),
        ("max_batch_tokens", "40", 40.into()),
        ("max_model_len", "100", 100.into()),
        ("kv_block_size", "8", 8.into()),
        ("kv_cache_bytes", "1048576", 1_048_576.into()),
        ("max_queue", "77", 77.into()),
        ("peft_source", "argv[2]", serde_json::json!([p])),
        ("peft_refresh_interval_ms", "60000", 60_000.into()),
        ("max_cpu_loras", "5", 5.into()),
        ("max_gpu_loras", "3", 3.into()),
        ("max_lora_rank", "32", 32.into()),
        ("memory_budget_bytes", "1073741824", 1_073_741_824u64.into()),
    ];
    let mut names: Vec<String> = table.iter().map(|(n, _, _)| n.to_string()).collect();
    let mut fields = header_config_fields();
    names.sort();
    fields.sort();
    assert_eq!(
        names, fields,
        "this test must set every field of lpx_engine_config"
    );
    let sets: String = table
        .iter()
        .map(|(n, v, _)| format!("    cfg.{n} = {v};\n"))
        .collect();
    let src = dir.path().join("config_fields.c");
    std::fs::write(
        &src,
        format!(
            r#"#include <stdio.h>
#include "loraplex.h"
static int fail(lpx_error *err) {{
    fprintf(stderr, "error %d: %s\n", (int)lpx_error_code(err), lpx_error_message(err));
    lpx_error_free(err);
    return 1;
}}
int main(int argc, char **argv) {{
    lpx_engine_config cfg;
    lpx_engine *e = NULL;
    char *stats = NULL;
    lpx_error *err;
    if (argc != 3) return 2;
    lpx_engine_config_init(&cfg);
{sets}    if ((err = lpx_engine_create(&cfg, &e)) != NULL) return fail(err);
    if ((err = lpx_engine_stats_json(e, &stats)) != NULL) return fail(err);
    printf("%s\n", stats);
    lpx_string_free(stats);
    lpx_engine_free(e);
    return 0;
}}
"#
        ),
    )
    .unwrap();
    let exe = dir.path().join("config_fields");
    build("gcc", "-std=c99", &src, &exe, &[]);
    let out = run(Command::new(&exe).arg(&model).arg(&peft));
    let stats: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let cfg = stats["config"]
        .as_object()
        .expect("stats has a config object");
    let mut reported: Vec<&String> = cfg.keys().collect();
    reported.sort();
    assert_eq!(reported, fields.iter().collect::<Vec<_>>(), "{stats}");
    for (name, _, want) in &table {
        assert_eq!(&cfg[*name], want, "config.{name} in {stats}");
    }
}

#[test]
fn cpp_and_go_configs_cover_every_field() {
    let hpp = std::fs::read_to_string(root().join("bindings/cpp/loraplex.hpp")).unwrap();
    let go = std::fs::read_to_string(root().join("bindings/go/loraplex/config.go")).unwrap();
    for f in header_config_fields() {
        // The C++ setter's name (the model is the constructor's argument).
        let setter = match f.as_str() {
            "model" => "explicit Config(std::string model)".to_string(),
            "served_model_name" => "Config &served_name(".to_string(),
            "peft_refresh_interval_ms" => "Config &peft_refresh_interval(".to_string(),
            _ => format!("Config &{f}("),
        };
        assert!(
            hpp.contains(&setter),
            "loraplex.hpp's Config lacks {setter}"
        );
        // Go: configFromC reads it and toC writes it.
        let reads = format!("(c.{f})");
        let writes = format!("c.{f}");
        assert!(
            go.contains(&reads) || go.contains(&format!("goStr(c.{f})")),
            "config.go's configFromC does not read c.{f}"
        );
        assert!(
            go.matches(&writes).count() >= 2,
            "config.go's toC does not write c.{f}"
        );
    }
}

#[test]
fn free_with_requests_in_flight_is_valgrind_clean() {
    if !have("gcc") || !have("valgrind") {
        return;
    }
    let (dir, model) = tiny_model();
    let src = dir.path().join("free_in_flight.c");
    // 8 long requests, one sequence at a time; the engine is freed while they run, after one
    // output was taken; that output stays readable after the free.
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <string.h>
#include "loraplex.h"
static int fail(lpx_error *err) {
    fprintf(stderr, "error: %s\n", lpx_error_message(err));
    lpx_error_free(err);
    return 1;
}
int main(int argc, char **argv) {
    lpx_engine_config cfg;
    lpx_request req;
    lpx_engine *e = NULL;
    lpx_output *first = NULL;
    lpx_error *err;
    uint32_t toks[3] = {1, 2, 3};
    uint64_t ids[8];
    char *stats = NULL;
    int i;
    if (argc != 2) return 2;
    lpx_engine_config_init(&cfg);
    cfg.model = argv[1];
    cfg.threads = 1;
    cfg.max_num_seqs = 1;
    if ((err = lpx_engine_create(&cfg, &e)) != NULL) return fail(err);
    lpx_request_init(&req);
    req.prompt_tokens = toks;
    req.prompt_tokens_len = 3;
    req.max_tokens = 100000;
    req.ignore_eos = true;
    for (i = 0; i < 8; i++)
        if ((err = lpx_engine_submit(e, &req, &ids[i])) != NULL) return fail(err);
    while (first == NULL)
        if ((err = lpx_engine_poll(e, ids[0], 1000, &first)) != NULL) return fail(err);
    if ((err = lpx_engine_stats_json(e, &stats)) != NULL) return fail(err);
    printf("before free: %s\n", stats);
    lpx_string_free(stats);
    lpx_engine_free(e);
    printf("after free: request %llu had %zu bytes of text\n",
           (unsigned long long)lpx_output_request_id(first), strlen(lpx_output_text(first)));
    lpx_output_free(first);
    return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.path().join("free_in_flight");
    build("gcc", "-std=c99", &src, &exe, &[]);
    let out = run(Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--error-exitcode=1",
        ])
        .arg(&exe)
        .arg(&model));
    assert!(out.contains("ERROR SUMMARY: 0 errors"), "{out}");
    assert!(out.contains("after free: request 1 had"), "{out}");
    // The requests were in flight when the engine was freed.
    let before = out
        .lines()
        .find_map(|l| l.strip_prefix("before free: "))
        .unwrap();
    let s: serde_json::Value = serde_json::from_str(before).unwrap();
    let in_flight =
        s["requests"]["running"].as_u64().unwrap() + s["requests"]["waiting"].as_u64().unwrap();
    assert!(in_flight >= 2, "{before}");
}
