//! The C ABI contract, exercised through the `extern "C"` functions themselves: NULL handling
//! with untouched out-params, panics as PANIC errors, struct_size checks, invalid UTF-8, and a
//! 16-thread submit/poll/cancel storm on a tiny model.

mod common;

use std::ffi::{c_char, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};

use loraplex::ffi::*;

const SENTINEL_ID: u64 = 0xDEAD_BEEF;

fn sentinel_ptr<T>() -> *mut T {
    0x1234usize as *mut T
}

/// Takes an error: returns (code, message) and frees it. Panics on success.
fn take_err(e: *mut lpx_error) -> (u32, String) {
    assert!(!e.is_null(), "expected an error");
    unsafe {
        let code = lpx_error_code(e) as u32;
        let msg = CStr::from_ptr(lpx_error_message(e))
            .to_str()
            .unwrap()
            .to_string();
        lpx_error_free(e);
        (code, msg)
    }
}

fn ok(e: *mut lpx_error) {
    if !e.is_null() {
        let (c, m) = take_err(e);
        panic!("unexpected error {c}: {m}");
    }
}

const INVALID: u32 = 1;

struct Tiny {
    _dir: tempfile::TempDir,
    engine: *mut lpx_engine,
}

fn tiny_engine(max_queue: u32) -> Tiny {
    tiny_engine_with(|cfg| cfg.max_queue = max_queue)
}

/// A tiny engine (1 thread) with `set` applied to its config after the defaults.
fn tiny_engine_with(set: impl FnOnce(&mut lpx_engine_config)) -> Tiny {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_model(dir.path(), common::TinySpec::default());
    let path = CString::new(dir.path().to_str().unwrap()).unwrap();
    unsafe {
        let mut cfg = std::mem::zeroed::<lpx_engine_config>();
        lpx_engine_config_init(&mut cfg);
        cfg.model = path.as_ptr();
        cfg.threads = 1;
        set(&mut cfg);
        let mut e = null_mut();
        ok(lpx_engine_create(&cfg, &mut e));
        assert!(!e.is_null());
        Tiny {
            _dir: dir,
            engine: e,
        }
    }
}

impl Drop for Tiny {
    fn drop(&mut self) {
        unsafe { lpx_engine_free(self.engine) };
    }
}

fn request(tokens: &[u32], max_tokens: u32) -> lpx_request {
    unsafe {
        let mut r = std::mem::zeroed::<lpx_request>();
        lpx_request_init(&mut r);
        r.prompt_tokens = tokens.as_ptr();
        r.prompt_tokens_len = tokens.len();
        r.max_tokens = max_tokens;
        r.temperature = 0.0;
        r.ignore_eos = true;
        r
    }
}

/// Polls `id` to its terminal output; returns (finish reason, tokens, concatenated text).
fn drain(e: *mut lpx_engine, id: u64) -> (lpx_finish_reason, usize, String) {
    let mut n = 0;
    let mut text = String::new();
    loop {
        let mut o = sentinel_ptr::<lpx_output>();
        ok(unsafe { lpx_engine_poll(e, id, 200, &mut o) });
        if o.is_null() {
            continue;
        }
        unsafe {
            let mut len = 0usize;
            lpx_output_token_ids(o, &mut len);
            n += len;
            text.push_str(CStr::from_ptr(lpx_output_text(o)).to_str().unwrap());
            let fr = lpx_output_finish_reason(o);
            lpx_output_free(o);
            if fr != lpx_finish_reason::None {
                return (fr, n, text);
            }
        }
    }
}

#[test]
fn version_and_abi() {
    assert_eq!(lpx_abi_version(), LPX_ABI_VERSION);
    let v = unsafe { CStr::from_ptr(lpx_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
}

#[test]
fn null_arguments_are_invalid_argument_and_out_params_untouched() {
    let t = tiny_engine(64);
    let e = t.engine;
    unsafe {
        let mut cfg = std::mem::zeroed::<lpx_engine_config>();
        lpx_engine_config_init(&mut cfg);
        let mut out_e = sentinel_ptr::<lpx_engine>();
        let (c, m) = take_err(lpx_engine_create(null(), &mut out_e));
        assert_eq!((c, out_e), (INVALID, sentinel_ptr()), "{m}");
        assert!(m.contains("cfg"), "{m}");
        let (c, m) = take_err(lpx_engine_create(&cfg, null_mut()));
        assert_eq!(c, INVALID);
        assert!(m.contains("out"), "{m}");
        // A config without a model.
        let (c, m) = take_err(lpx_engine_create(&cfg, &mut out_e));
        assert_eq!((c, out_e), (INVALID, sentinel_ptr()), "{m}");
        assert!(m.contains("cfg->model"), "{m}");
        let (c, _) = take_err(lpx_engine_config_from_env(null_mut()));
        assert_eq!(c, INVALID);

        let r = request(&[1, 2, 3], 2);
        let mut id = SENTINEL_ID;
        for (err, name) in [
            (lpx_engine_submit(null_mut(), &r, &mut id), "e"),
            (lpx_engine_submit(e, null(), &mut id), "req"),
            (lpx_engine_submit(e, &r, null_mut()), "id"),
            (
                lpx_engine_submit_json(null_mut(), c"{}".as_ptr(), &mut id),
                "e",
            ),
            (lpx_engine_submit_json(e, null(), &mut id), "openai_body"),
            (
                lpx_engine_submit_json(e, c"{\"prompt\":\"a\"}".as_ptr(), null_mut()),
                "id",
            ),
            (
                lpx_engine_register_peft_source(null_mut(), c"/x".as_ptr(), 0),
                "e",
            ),
            (lpx_engine_register_peft_source(e, null(), 0), "dir"),
            (lpx_engine_refresh(null_mut()), "e"),
            (lpx_engine_cancel(null_mut(), 1), "e"),
        ] {
            let (c, m) = take_err(err);
            assert_eq!(c, INVALID, "{name}: {m}");
            assert!(m.contains(&format!("argument {name} is NULL")), "{m}");
        }
        assert_eq!(id, SENTINEL_ID);

        let mut s = sentinel_ptr::<c_char>();
        for f in [
            lpx_engine_models_json,
            lpx_engine_stats_json,
            lpx_engine_metrics_text,
        ] {
            assert_eq!(take_err(f(null_mut(), &mut s)).0, INVALID);
            assert_eq!(take_err(f(e, null_mut())).0, INVALID);
            assert_eq!(s, sentinel_ptr());
        }
        let mut o = sentinel_ptr::<lpx_output>();
        assert_eq!(
            take_err(lpx_engine_poll(null_mut(), 1, 0, &mut o)).0,
            INVALID
        );
        assert_eq!(take_err(lpx_engine_poll(e, 1, 0, null_mut())).0, INVALID);
        assert_eq!(o, sentinel_ptr());
        assert_eq!(take_err(lpx_output_json(null(), &mut s)).0, INVALID);
        assert_eq!(s, sentinel_ptr());

        // NULL-tolerant accessors and frees.
        assert_eq!(lpx_error_code(null()) as u32, INVALID);
        assert!(!lpx_error_message(null()).is_null());
        assert_eq!(CStr::from_ptr(lpx_output_text(null())).to_bytes(), b"");
        let mut len = 7usize;
        assert!(lpx_output_token_ids(null(), &mut len).is_null());
        assert_eq!(len, 0);
        assert_eq!(lpx_output_finish_reason(null()), lpx_finish_reason::None);
        assert!(lpx_output_error(null()).is_null());
        assert_eq!(lpx_output_usage(null()), lpx_usage::default());
        lpx_error_free(null_mut());
        lpx_output_free(null_mut());
        lpx_string_free(null_mut());
        lpx_engine_free(null_mut());
        lpx_engine_config_init(null_mut());
        lpx_request_init(null_mut());
    }
}

#[test]
fn panic_comes_back_as_panic_error_with_its_text() {
    let (c, m) = take_err(unsafe { lpx_debug_panic(c"boom at the boundary".as_ptr()) });
    assert_eq!(c, 12);
    assert!(m.contains("boom at the boundary"), "{m}");
    assert_eq!(take_err(unsafe { lpx_debug_panic(null()) }).0, INVALID);
}

#[test]
fn struct_size_is_checked() {
    let t = tiny_engine(64);
    let toks = [1u32, 2, 3];
    let mut id = SENTINEL_ID;
    for bad in [
        0u32,
        3,
        0xFFFF_FFFF,
        std::mem::size_of::<lpx_request>() as u32 + 8,
    ] {
        let mut r = request(&toks, 2);
        r.struct_size = bad;
        let (c, m) = take_err(unsafe { lpx_engine_submit(t.engine, &r, &mut id) });
        assert_eq!(c, INVALID, "{m}");
        assert!(m.contains("struct_size"), "{m}");
        assert_eq!(id, SENTINEL_ID);
    }
    unsafe {
        let mut cfg = std::mem::zeroed::<lpx_engine_config>();
        lpx_engine_config_init(&mut cfg);
        assert_eq!(
            cfg.struct_size as usize,
            std::mem::size_of::<lpx_engine_config>()
        );
        cfg.struct_size = 12;
        cfg.model = c"/nonexistent".as_ptr();
        let mut e = sentinel_ptr::<lpx_engine>();
        let (c, m) = take_err(lpx_engine_create(&cfg, &mut e));
        assert_eq!(c, INVALID, "{m}");
        assert!(m.contains("cfg->struct_size = 12"), "{m}");
        assert_eq!(e, sentinel_ptr());
    }
}

#[test]
fn invalid_utf8_names_the_field() {
    let t = tiny_engine(64);
    let bad = [b'h', 0xff, b'i', 0];
    let bad = bad.as_ptr() as *const c_char;
    let mut id = SENTINEL_ID;
    unsafe {
        let mut r = request(&[], 2);
        r.prompt = bad;
        let (c, m) = take_err(lpx_engine_submit(t.engine, &r, &mut id));
        assert_eq!(c, INVALID);
        assert!(m.contains("req->prompt") && m.contains("UTF-8"), "{m}");
        let mut r = request(&[1, 2], 2);
        let stops = [c"ok".as_ptr(), bad];
        r.stop = stops.as_ptr();
        r.stop_len = 2;
        let (c, m) = take_err(lpx_engine_submit(t.engine, &r, &mut id));
        assert_eq!(c, INVALID);
        assert!(m.contains("req->stop[1]"), "{m}");
        let msgs = [lpx_message {
            role: c"user".as_ptr(),
            content: bad,
        }];
        let mut r = request(&[], 2);
        r.messages = msgs.as_ptr();
        r.messages_len = 1;
        let (c, m) = take_err(lpx_engine_submit(t.engine, &r, &mut id));
        assert_eq!(c, INVALID);
        assert!(m.contains("req->messages[0].content"), "{m}");
        let (c, m) = take_err(lpx_engine_submit_json(t.engine, bad, &mut id));
        assert_eq!(c, INVALID);
        assert!(m.contains("openai_body"), "{m}");
        // Two prompt kinds at once.
        let mut r = request(&[1, 2], 2);
        r.prompt = c"x".as_ptr();
        let (c, m) = take_err(lpx_engine_submit(t.engine, &r, &mut id));
        assert_eq!(c, INVALID);
        assert!(m.contains("exactly one"), "{m}");
        // A NULL array with a length.
        let mut r = request(&[1, 2], 2);
        r.stop_token_ids_len = 3;
        let (c, m) = take_err(lpx_engine_submit(t.engine, &r, &mut id));
        assert_eq!(c, INVALID);
        assert!(m.contains("req->stop_token_ids"), "{m}");
    }
    assert_eq!(id, SENTINEL_ID);
}

#[test]
fn submit_poll_json_and_unknown_ids() {
    let t = tiny_engine(64);
    let e = t.engine;
    unsafe {
        let r = request(&[5, 6, 7], 4);
        let mut id = 0;
        ok(lpx_engine_submit(e, &r, &mut id));
        assert_ne!(id, 0);
        let (fr, n, _) = drain(e, id);
        assert_eq!((fr, n), (lpx_finish_reason::Length, 4));
        // The id is forgotten after its terminal output.
        let mut o = sentinel_ptr::<lpx_output>();
        assert_eq!(take_err(lpx_engine_poll(e, id, 0, &mut o)).0, 2);
        assert_eq!(o, sentinel_ptr());
        ok(lpx_engine_cancel(e, id));
        ok(lpx_engine_cancel(e, 987_654));

        // A non-streamed chat body: one complete output.
        let body = c"{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":3,\"temperature\":0,\"ignore_eos\":true,\"logprobs\":true,\"top_logprobs\":2}";
        ok(lpx_engine_submit_json(e, body.as_ptr(), &mut id));
        let mut o: *mut lpx_output = null_mut();
        while o.is_null() {
            ok(lpx_engine_poll(e, id, 1000, &mut o));
        }
        assert!(lpx_output_is_final(o));
        let u = lpx_output_usage(o);
        assert_eq!(u.completion_tokens, 3);
        let mut n = 0;
        let lp = lpx_output_logprobs(o, &mut n);
        assert_eq!(n, 3);
        assert_eq!((*lp).top_len, 2);
        let mut s = null_mut();
        ok(lpx_output_json(o, &mut s));
        let v: serde_json::Value =
            serde_json::from_str(CStr::from_ptr(s).to_str().unwrap()).unwrap();
        lpx_string_free(s);
        lpx_output_free(o);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["usage"]["completion_tokens"], 3);
        assert_eq!(v["choices"][0]["finish_reason"], "length");

        // Errors from the engine keep their code: unknown adapter → NOT_FOUND.
        let mut r = request(&[1], 2);
        r.model = c"no-such-adapter".as_ptr();
        let (c, m) = take_err(lpx_engine_submit(e, &r, &mut id));
        assert_eq!(c, 2, "{m}");
        let mut s = null_mut();
        ok(lpx_engine_models_json(e, &mut s));
        let v: serde_json::Value =
            serde_json::from_str(CStr::from_ptr(s).to_str().unwrap()).unwrap();
        lpx_string_free(s);
        assert_eq!(v["object"], "list");
        ok(lpx_engine_metrics_text(e, &mut s));
        assert!(CStr::from_ptr(s)
            .to_str()
            .unwrap()
            .contains("vllm:num_requests_running"));
        lpx_string_free(s);
    }
}

#[test]
fn config_from_env_reads_nim_variables() {
    // Only this test touches these variables.
    std::env::set_var("NIM_MAX_CPU_LORAS", "33");
    std::env::set_var("NIM_PEFT_SOURCE", "/a/loras:/b/loras");
    unsafe {
        let mut cfg = std::mem::zeroed::<lpx_engine_config>();
        lpx_engine_config_init(&mut cfg);
        ok(lpx_engine_config_from_env(&mut cfg));
        assert_eq!(cfg.max_cpu_loras, 33);
        assert_eq!(
            CStr::from_ptr(cfg.peft_source).to_str().unwrap(),
            "/a/loras:/b/loras"
        );
        std::env::set_var("NIM_MAX_CPU_LORAS", "lots");
        let before = cfg.max_cpu_loras;
        let (c, m) = take_err(lpx_engine_config_from_env(&mut cfg));
        assert_eq!(c, INVALID);
        assert!(m.contains("NIM_MAX_CPU_LORAS"), "{m}");
        assert_eq!(cfg.max_cpu_loras, before);
    }
    std::env::remove_var("NIM_MAX_CPU_LORAS");
    std::env::remove_var("NIM_PEFT_SOURCE");
}

/// The engine's stats JSON.
fn stats(e: *mut lpx_engine) -> serde_json::Value {
    let mut s = null_mut();
    ok(unsafe { lpx_engine_stats_json(e, &mut s) });
    let v = serde_json::from_str(unsafe { CStr::from_ptr(s) }.to_str().unwrap()).unwrap();
    unsafe { lpx_string_free(s) };
    v
}

#[test]
fn free_with_requests_in_flight() {
    // One sequence at a time: 8 requests of ~500 tokens each take thousands of steps, so most
    // are still waiting when the engine is freed.
    let t = tiny_engine_with(|c| c.max_num_seqs = 1);
    let toks = [1u32, 2, 3, 4];
    let mut ids = Vec::new();
    for _ in 0..8 {
        let r = request(&toks, 100_000);
        let mut id = 0;
        ok(unsafe { lpx_engine_submit(t.engine, &r, &mut id) });
        ids.push(id);
    }
    // The first request's first output, kept across the free.
    let mut first: *mut lpx_output = null_mut();
    while first.is_null() {
        ok(unsafe { lpx_engine_poll(t.engine, ids[0], 1000, &mut first) });
    }
    // The worker publishes its request counts after the step that sent the first output: wait
    // (bounded) for them. The requests are thousands of steps long, so they are still in flight.
    let in_flight = |s: &serde_json::Value| {
        s["requests"]["running"].as_u64().unwrap() + s["requests"]["waiting"].as_u64().unwrap()
    };
    let mut s = stats(t.engine);
    for _ in 0..500 {
        if in_flight(&s) >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        s = stats(t.engine);
    }
    assert!(
        in_flight(&s) >= 2,
        "requests were not in flight when freed: {s}"
    );
    drop(t); // lpx_engine_free cancels the requests, joins the worker and returns.
             // Outputs already returned stay valid after the engine is gone.
    unsafe {
        assert_eq!(lpx_output_request_id(first), ids[0]);
        let mut n = 0usize;
        let p = lpx_output_token_ids(first, &mut n);
        assert!(n >= 1 && !p.is_null());
        assert_eq!(std::slice::from_raw_parts(p, n).len(), n);
        let text = CStr::from_ptr(lpx_output_text(first)).to_bytes().len();
        let mut len = 0usize;
        lpx_output_text_len(first, &mut len);
        assert_eq!(text, len);
        let mut j = null_mut();
        ok(lpx_output_json(first, &mut j));
        let v: serde_json::Value =
            serde_json::from_str(CStr::from_ptr(j).to_str().unwrap()).unwrap();
        assert_eq!(v["id"], format!("cmpl-{}", ids[0]));
        lpx_string_free(j);
        lpx_output_free(first);
    }
}

#[test]
fn queue_full_names_the_in_flight_count_and_the_limit() {
    let t = tiny_engine_with(|c| {
        c.max_queue = 3;
        c.max_num_seqs = 1;
    });
    let toks = [1u32, 2, 3];
    let mut id = 0;
    for _ in 0..3 {
        ok(unsafe { lpx_engine_submit(t.engine, &request(&toks, 100_000), &mut id) });
    }
    let (c, m) = take_err(unsafe { lpx_engine_submit(t.engine, &request(&toks, 4), &mut id) });
    assert_eq!(c, 6, "{m}");
    // The three long requests are still in flight (each takes hundreds of steps).
    assert!(
        m.contains("3 requests in flight") && m.contains("max_queue 3"),
        "{m}"
    );
}

/// Parses one Prometheus sample line `name{l="v",...} value` (text exposition format 0.0.4):
/// returns the metric name and the decoded label values, or None when the line is malformed.
fn parse_sample(line: &str) -> Option<(String, Vec<(String, String)>)> {
    let (name, rest) = line.split_once('{')?;
    let mut labels = Vec::new();
    let mut chars = rest.chars();
    loop {
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    _ => return None,
                },
                c => value.push(c),
            }
        }
        labels.push((key, value));
        match chars.next()? {
            ',' => continue,
            '}' => break,
            _ => return None,
        }
    }
    let value: String = chars.collect();
    value.strip_prefix(' ')?.parse::<f64>().ok()?;
    Some((name.to_string(), labels))
}

#[test]
fn metrics_escape_label_values() {
    let dir = tempfile::tempdir().unwrap();
    let evil = "ev\"il\\lora\nname";
    common::export_tiny_adapter(&dir.path().join(evil), 5);
    let peft = CString::new(dir.path().to_str().unwrap()).unwrap();
    let served = "base \"quoted\" \\ and\nnewline";
    let served_c = CString::new(served).unwrap();
    let t = tiny_engine_with(|c| {
        c.peft_source = peft.as_ptr();
        c.served_model_name = served_c.as_ptr();
    });
    let evil_c = CString::new(evil).unwrap();
    let mut r = request(&[1, 2, 3], 3);
    r.model = evil_c.as_ptr();
    let mut id = 0;
    ok(unsafe { lpx_engine_submit(t.engine, &r, &mut id) });
    let (fr, _, _) = drain(t.engine, id);
    assert_eq!(fr, lpx_finish_reason::Length);
    let mut s = null_mut();
    ok(unsafe { lpx_engine_metrics_text(t.engine, &mut s) });
    let text = unsafe { CStr::from_ptr(s) }.to_str().unwrap().to_string();
    unsafe { lpx_string_free(s) };
    let mut seen_model = false;
    let mut seen_adapter = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, labels) =
            parse_sample(line).unwrap_or_else(|| panic!("malformed sample {line:?} in\n{text}"));
        for (k, v) in labels {
            match k.as_str() {
                "model_name" => {
                    assert_eq!(v, served);
                    seen_model = true;
                }
                "adapter" => {
                    assert_eq!(v, evil);
                    seen_adapter = true;
                }
                _ => {}
            }
        }
    }
    assert!(seen_model && seen_adapter, "{text}");
}

#[test]
fn negative_and_unknown_openai_fields_are_refused_through_the_c_abi() {
    let t = tiny_engine(64);
    let mut id = SENTINEL_ID;
    for (body, field) in [
        (c"{\"prompt\":\"a\",\"seed\":-1}", "seed"),
        (
            c"{\"prompt\":\"a\",\"response_format\":{\"type\":\"json_object\"}}",
            "response_format",
        ),
        (
            c"{\"prompt\":\"a\",\"tools\":[{\"type\":\"function\"}]}",
            "tools",
        ),
    ] {
        let (c, m) = take_err(unsafe { lpx_engine_submit_json(t.engine, body.as_ptr(), &mut id) });
        assert_eq!(c, INVALID, "{m}");
        assert!(m.contains(field), "{m}");
    }
    assert_eq!(id, SENTINEL_ID);
    // include_usage: the final output gives the usage chunk, earlier ones none.
    let body = c"{\"prompt\":\"a\",\"max_tokens\":3,\"ignore_eos\":true,\"stream\":true,\"stream_options\":{\"include_usage\":true}}";
    ok(unsafe { lpx_engine_submit_json(t.engine, body.as_ptr(), &mut id) });
    loop {
        let mut o = null_mut();
        ok(unsafe { lpx_engine_poll(t.engine, id, 200, &mut o) });
        if o.is_null() {
            continue;
        }
        let mut u = sentinel_ptr::<c_char>();
        ok(unsafe { lpx_output_usage_json(o, &mut u) });
        let last = unsafe { lpx_output_is_final(o) };
        unsafe { lpx_output_free(o) };
        if !last {
            assert!(u.is_null());
            continue;
        }
        assert!(!u.is_null());
        let v: serde_json::Value =
            serde_json::from_str(unsafe { CStr::from_ptr(u) }.to_str().unwrap()).unwrap();
        unsafe { lpx_string_free(u) };
        assert_eq!(v["choices"], serde_json::json!([]));
        assert_eq!(v["usage"]["completion_tokens"], 3);
        break;
    }
}

#[test]
fn sixteen_threads_2000_requests_each_end_exactly_once() {
    let t = tiny_engine(4096);
    let e = t.engine as usize;
    let terminal = AtomicUsize::new(0);
    let cancelled = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for th in 0..16u32 {
            let terminal = &terminal;
            let cancelled = &cancelled;
            s.spawn(move || {
                let e = e as *mut lpx_engine;
                let mut ids = Vec::new();
                for i in 0..125u32 {
                    let toks = [1 + th, 2 + i % 200, 3];
                    let r = request(&toks, 1 + i % 3);
                    let mut id = 0;
                    ok(unsafe { lpx_engine_submit(e, &r, &mut id) });
                    if i % 4 == 0 {
                        ok(unsafe { lpx_engine_cancel(e, id) });
                    }
                    ids.push(id);
                }
                for id in ids {
                    let (fr, _, _) = drain(e, id);
                    assert_ne!(fr, lpx_finish_reason::Error);
                    if fr == lpx_finish_reason::Cancelled {
                        cancelled.fetch_add(1, Ordering::Relaxed);
                    }
                    terminal.fetch_add(1, Ordering::Relaxed);
                    // Exactly one terminal output: the id is now unknown.
                    let mut o = sentinel_ptr::<lpx_output>();
                    assert_eq!(take_err(unsafe { lpx_engine_poll(e, id, 0, &mut o) }).0, 2);
                }
            });
        }
    });
    assert_eq!(terminal.load(Ordering::Relaxed), 2000);
    eprintln!("cancelled: {}", cancelled.load(Ordering::Relaxed));
}
