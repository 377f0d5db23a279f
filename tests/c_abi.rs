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

/// valgrind checking for definite leaks and memory errors (exit status 1 on either), with fair
/// scheduling: valgrind runs one thread at a time, and with its default lock a thread that
/// spins or yields waiting for another (the pool's idle threads between ops) can keep taking
/// the lock back, which made the same check take 2 minutes in one run and over 20 in another.
fn valgrind() -> Command {
    let mut c = Command::new("valgrind");
    c.args([
        "--fair-sched=yes",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite",
        "--error-exitcode=1",
    ]);
    c
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
        r#"#include "loraplex.h"
/* The init macros call the _sized functions with the caller's sizeof; the functions of the
   same names stay reachable (parenthesised, or by address) and write only the layout older
   headers declared. */
static void (*const req_init_v1)(lpx_request *) = lpx_request_init;
static void (*const cfg_init_v1)(lpx_engine_config *) = &lpx_engine_config_init;
int main(void) {
    lpx_engine_config c;
    lpx_request r;
    lpx_error *e1 = lpx_engine_config_init(&c);
    lpx_error *e2 = lpx_request_init(&r);
    if (e1 != NULL || e2 != NULL) return 10;
    if (c.struct_size != sizeof c) return 11;
    if (r.struct_size != sizeof r) return 12;
    if (r.n != 1 || r.prompt_logprobs != -1 || r.echo) return 13;
    (lpx_request_init)(&r);
    if (r.struct_size >= sizeof r) return 14;
    req_init_v1(&r);
    if (r.struct_size >= sizeof r) return 15;
    (lpx_engine_config_init)(&c);
    cfg_init_v1(&c);
    /* The legacy symbol writes the layout before prefix_caching. */
    if (c.struct_size >= sizeof c) return 16;
    return (int)(lpx_abi_version() != LPX_ABI_VERSION) + (int)(LPX_ERROR_CODE_CAPACITY != 5);
}
"#,
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
    let out = run(valgrind()
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
        ("prefix_caching", "false", false.into()),
        ("adapter_weights", "\"a=3,b=2\"", "a=3,b=2".into()),
        ("max_running_per_adapter", "4", 4.into()),
        ("adapter_max_running", "\"b=1\"", "b=1".into()),
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
    let out = run(valgrind().arg(&exe).arg(&model));
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

#[test]
fn c_request_old_layout_and_new_fields() {
    if !have("gcc") {
        return;
    }
    let (dir, model) = tiny_model();
    let src = dir.path().join("request_fields.c");
    // An old caller (the lpx_request layout before n, logit_bias, response_format, echo and
    // prompt_logprobs were appended, its own struct_size, tail padding garbage) and a new one
    // setting every new field; the outputs are printed for the checks below.
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "loraplex.h"
typedef struct {
    uint32_t struct_size;
    const char *model;
    const char *prompt;
    const uint32_t *prompt_tokens;
    size_t prompt_tokens_len;
    const lpx_message *messages;
    size_t messages_len;
    uint32_t max_tokens;
    float temperature;
    float top_p;
    uint32_t top_k;
    float min_p;
    uint64_t seed;
    bool has_seed;
    const char *const *stop;
    size_t stop_len;
    const uint32_t *stop_token_ids;
    size_t stop_token_ids_len;
    int32_t logprobs;
    bool ignore_eos;
    float repetition_penalty;
    float presence_penalty;
    float frequency_penalty;
} lpx_request_v1;
static int fail(lpx_error *err) {
    fprintf(stderr, "error %d: %s\n", (int)lpx_error_code(err), lpx_error_message(err));
    lpx_error_free(err);
    return 1;
}
/* Polls id until done, printing one line per output. */
static int drain(lpx_engine *e, uint64_t id, const char *tag) {
    for (;;) {
        lpx_output *o = NULL;
        lpx_error *err = lpx_engine_poll(e, id, 1000, &o);
        size_t n = 0, plen = 0, pn = 0, lpn = 0, i;
        const uint32_t *ids;
        const char *pt;
        int done;
        if (err != NULL) return fail(err);
        if (o == NULL) continue;
        ids = lpx_output_token_ids(o, &n);
        pt = lpx_output_prompt_text(o, &plen);
        lpx_output_prompt_token_ids(o, &pn);
        lpx_output_prompt_logprobs(o, &lpn);
        printf("%s index=%u final=%d done=%d finish=%d cum=%.3f prompt=%s prompt_ids=%zu prompt_lps=%zu tokens=",
               tag, lpx_output_index(o), (int)lpx_output_is_final(o), (int)lpx_output_is_done(o),
               (int)lpx_output_finish_reason(o), lpx_output_cumulative_logprob(o),
               pt ? pt : "(none)", pn, lpn);
        for (i = 0; i < n; i++) printf("%u,", ids[i]);
        printf(" text=[%s]\n", lpx_output_text(o));
        done = lpx_output_is_done(o);
        lpx_output_free(o);
        if (done) return 0;
    }
}
int main(int argc, char **argv) {
    lpx_engine_config cfg;
    lpx_engine *e = NULL;
    lpx_request_v1 v1;
    lpx_request_v1 *v1p;
    struct {
        lpx_request_v1 r;
        unsigned char tail[64];
    } canaried;
    size_t i;
    lpx_request r;
    lpx_logit_bias bias[1];
    const char *choices[2];
    uint64_t id;
    lpx_error *err;
    if (argc != 2) return 2;
    if (sizeof(lpx_request_v1) != offsetof(lpx_request, logit_bias)) {
        fprintf(stderr, "old layout %zu bytes, new fields start at %zu\n",
                sizeof(lpx_request_v1), offsetof(lpx_request, logit_bias));
        return 3;
    }
    if ((err = lpx_engine_config_init(&cfg)) != NULL) return fail(err);
    if (cfg.struct_size != sizeof cfg) return 3;
    cfg.model = argv[1];
    cfg.threads = 1;
    if ((err = lpx_engine_create(&cfg, &e)) != NULL) return fail(err);

    memset(&v1, 0xAB, sizeof v1);
    v1.struct_size = (uint32_t)sizeof v1;
    v1.model = NULL;
    v1.prompt = "hi";
    v1.prompt_tokens = NULL;
    v1.prompt_tokens_len = 0;
    v1.messages = NULL;
    v1.messages_len = 0;
    v1.max_tokens = 3;
    v1.temperature = 0.0f;
    v1.top_p = 1.0f;
    v1.top_k = 0;
    v1.min_p = 0.0f;
    v1.seed = 0;
    v1.has_seed = false;
    v1.stop = NULL;
    v1.stop_len = 0;
    v1.stop_token_ids = NULL;
    v1.stop_token_ids_len = 0;
    v1.logprobs = -1;
    v1.ignore_eos = true;
    v1.repetition_penalty = 1.0f;
    v1.presence_penalty = 0.0f;
    v1.frequency_penalty = 0.0f;
    if ((err = lpx_engine_submit(e, (const lpx_request *)(const void *)&v1, &id)) != NULL) return fail(err);
    if (drain(e, id, "v1")) return 1;

    /* An old binary calling the exported lpx_request_init symbol on its own (first-layout)
       struct: exactly sizeof(lpx_request_v1) bytes on the heap (valgrind reports any write past
       them), then in front of a canary that must stay intact. */
    v1p = (lpx_request_v1 *)malloc(sizeof *v1p);
    if (v1p == NULL) return 2;
    (lpx_request_init)((lpx_request *)(void *)v1p);
    if (v1p->struct_size != sizeof *v1p) {
        fprintf(stderr, "old init: struct_size %u, not %zu\n", v1p->struct_size, sizeof *v1p);
        return 4;
    }
    memset(&canaried, 0xA5, sizeof canaried);
    (lpx_request_init)((lpx_request *)(void *)&canaried.r);
    for (i = 0; i < sizeof canaried.tail; i++)
        if (canaried.tail[i] != 0xA5) {
            fprintf(stderr, "old init wrote past the first layout at +%zu\n", i);
            return 5;
        }
    if (canaried.r.struct_size != sizeof canaried.r || canaried.r.max_tokens != 16
        || canaried.r.logprobs != -1 || canaried.r.repetition_penalty != 1.0f) return 6;
    v1p->prompt = "hi";
    v1p->max_tokens = 3;
    v1p->temperature = 0.0f;
    v1p->ignore_eos = true;
    if ((err = lpx_engine_submit(e, (const lpx_request *)(const void *)v1p, &id)) != NULL) return fail(err);
    free(v1p);
    if (drain(e, id, "v1init")) return 1;

    /* New code: the macro passes sizeof r, so every field of this header is initialised. */
    memset(&r, 0xA5, sizeof r);
    if ((err = lpx_request_init(&r)) != NULL) return fail(err);
    if (r.struct_size != sizeof r || r.n != 1 || r.best_of != 0 || r.echo
        || r.prompt_logprobs != -1 || r.logit_bias != NULL
        || r.response_format != LPX_RESPONSE_FORMAT_TYPE_TEXT) {
        fprintf(stderr, "macro init: struct_size %u (sizeof %zu)\n", r.struct_size, sizeof r);
        return 7;
    }
    /* An unknown size writes nothing and names it. */
    memset(&r, 0xA5, sizeof r);
    err = lpx_request_init_sized(&r, sizeof *v1p + 8);
    if (err == NULL || lpx_error_code(err) != LPX_ERROR_CODE_INVALID_ARGUMENT) return 8;
    printf("unknown size: %s\n", lpx_error_message(err));
    lpx_error_free(err);
    for (i = 0; i < sizeof r; i++)
        if (((const unsigned char *)&r)[i] != 0xA5) return 9;

    lpx_request_init(&r);
    r.prompt = "hi";
    r.max_tokens = 3;
    r.ignore_eos = true;
    r.seed = 4;
    r.has_seed = true;
    r.n = 2;
    r.best_of = 3;
    bias[0].token = 65;
    bias[0].bias = 100.0f;
    r.logit_bias = bias;
    r.logit_bias_len = 1;
    r.echo = true;
    r.prompt_logprobs = 1;
    if ((err = lpx_engine_submit(e, &r, &id)) != NULL) return fail(err);
    if (drain(e, id, "new")) return 1;

    lpx_request_init(&r);
    r.prompt = "hi";
    r.max_tokens = 20;
    r.temperature = 0.0f;
    choices[0] = "yes";
    choices[1] = "no";
    r.response_format = LPX_RESPONSE_FORMAT_TYPE_CHOICE;
    r.response_format_choices = choices;
    r.response_format_choices_len = 2;
    if ((err = lpx_engine_submit(e, &r, &id)) != NULL) return fail(err);
    if (drain(e, id, "choice")) return 1;

    lpx_request_init(&r);
    r.prompt = "hi";
    r.max_tokens = 60;
    r.temperature = 0.0f;
    r.response_format = LPX_RESPONSE_FORMAT_TYPE_JSON_SCHEMA;
    r.response_format_value = "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":9}},\"required\":[\"a\"],\"additionalProperties\":false}";
    if ((err = lpx_engine_submit(e, &r, &id)) != NULL) return fail(err);
    if (drain(e, id, "schema")) return 1;
    lpx_engine_free(e);
    return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.path().join("request_fields");
    build("gcc", "-std=c99", &src, &exe, &[]);
    let out = if have("valgrind") {
        let out = run(valgrind().arg(&exe).arg(&model));
        assert!(out.contains("ERROR SUMMARY: 0 errors"), "{out}");
        out
    } else {
        run(Command::new(&exe).arg(&model))
    };
    let lines = |tag: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with(&format!("{tag} ")))
            .map(str::to_string)
            .collect()
    };
    // The old caller: one choice, three tokens, the last output done, no prompt.
    let v1 = lines("v1");
    assert!(!v1.is_empty(), "{out}");
    assert!(
        v1.iter()
            .all(|l| l.contains("index=0 ") && l.contains("prompt=(none)")),
        "{out}"
    );
    assert!(v1.last().unwrap().contains("done=1 finish=2"), "{out}");
    let n: usize = v1
        .iter()
        .map(|l| {
            l.split("tokens=")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .matches(',')
                .count()
        })
        .sum();
    assert_eq!(n, 3, "{out}");
    // The old binary's struct initialised by the exported symbol: the same as the first.
    let v1init = lines("v1init");
    assert!(!v1init.is_empty(), "{out}");
    assert!(v1init.last().unwrap().contains("done=1 finish=2"), "{out}");
    let toks = |ls: &[String]| -> Vec<String> {
        ls.iter()
            .map(|l| {
                l.split("tokens=")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(toks(&v1init).concat(), toks(&v1).concat(), "{out}");
    assert!(
        out.contains(&format!(
            "unknown size: lpx_request_init_sized: size = {} is not a layout of lpx_request",
            152 + 8
        )) || !cfg!(target_pointer_width = "64"),
        "{out}"
    );
    // The new one: two choices (best of three), token 65 forced, the prompt and its
    // log-probabilities on each choice's first output, done only at the end.
    let new = lines("new");
    for i in 0..2 {
        let mine: Vec<&String> = new
            .iter()
            .filter(|l| l.contains(&format!("index={i} ")))
            .collect();
        assert!(!mine.is_empty(), "choice {i}: {out}");
        assert!(mine[0].contains("prompt=hi "), "{out}");
        assert!(!mine[0].contains("prompt_lps=0"), "{out}");
        let text: String = mine
            .iter()
            .map(|l| l.split("text=[").nth(1).unwrap().trim_end_matches(']'))
            .collect();
        assert_eq!(text, "AAA", "{out}");
    }
    assert!(new.iter().all(|l| !l.contains("index=2 ")), "{out}");
    assert_eq!(
        new.iter().filter(|l| l.contains("done=1")).count(),
        1,
        "{out}"
    );
    assert!(new.last().unwrap().contains("done=1"), "{out}");
    // The choice constraint and the schema: finish STOP, the text as asked.
    let text_of = |tag: &str| -> String {
        lines(tag)
            .iter()
            .map(|l| {
                l.split("text=[")
                    .nth(1)
                    .unwrap()
                    .trim_end_matches(']')
                    .to_string()
            })
            .collect()
    };
    assert!(["yes", "no"].contains(&text_of("choice").as_str()), "{out}");
    assert!(
        lines("choice").last().unwrap().contains("finish=1"),
        "{out}"
    );
    let schema_text = text_of("schema");
    let v: serde_json::Value = serde_json::from_str(&schema_text)
        .unwrap_or_else(|e| panic!("schema output {schema_text:?} is not JSON: {e}\n{out}"));
    let a = v["a"].as_i64().unwrap_or_else(|| panic!("{v}"));
    assert!((0..=9).contains(&a), "{v}");
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    assert!(
        lines("schema").last().unwrap().contains("finish=1"),
        "{out}"
    );
}
