//! The C ABI contract, exercised through the `extern "C"` functions themselves: NULL handling
//! with untouched out-params, panics as PANIC errors, struct_size checks, invalid UTF-8, and a
//! 16-thread submit/poll/cancel storm on a tiny model.

mod common;

use common::c_errors::{ok, take_err};

use std::ffi::{c_char, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};

use loraplex::ffi::*;

const SENTINEL_ID: u64 = 0xDEAD_BEEF;

fn sentinel_ptr<T>() -> *mut T {
    0x1234usize as *mut T
}

const INVALID: u32 = 1;

/// The current layout's defaults, as C compiled against the header gets them (its
/// `lpx_engine_config_init(cfg)` macro is `lpx_engine_config_init_sized(cfg, sizeof *cfg)`; the
/// unsized symbol initialises only the first layout).
fn init_config(cfg: &mut lpx_engine_config) {
    ok(unsafe { lpx_engine_config_init_sized(cfg, std::mem::size_of::<lpx_engine_config>()) });
}

/// As [`init_config`], for `lpx_request`.
fn init_request(r: &mut lpx_request) {
    ok(unsafe { lpx_request_init_sized(r, std::mem::size_of::<lpx_request>()) });
}

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
        init_config(&mut cfg);
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
        init_request(&mut r);
        r.prompt_tokens = tokens.as_ptr();
        r.prompt_tokens_len = tokens.len();
        r.max_tokens = max_tokens;
        r.temperature = 0.0;
        r.ignore_eos = true;
        r
    }
}

/// Polls `id` (one choice) to its last output; returns (finish reason, tokens, concatenated
/// text).
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
            let done = lpx_output_is_done(o);
            assert_eq!(lpx_output_index(o), 0);
            // One choice: its last output is the request's.
            assert_eq!(done, fr != lpx_finish_reason::None);
            lpx_output_free(o);
            if done {
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
        init_config(&mut cfg);
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
        assert!(!lpx_output_is_done(null()));
        assert_eq!(lpx_output_index(null()), 0);
        assert_eq!(lpx_output_cumulative_logprob(null()), 0.0);
        let mut len = 7usize;
        assert!(lpx_output_prompt_text(null(), &mut len).is_null());
        assert_eq!(len, 0);
        let mut len = 7usize;
        assert!(lpx_output_prompt_token_ids(null(), &mut len).is_null());
        assert_eq!(len, 0);
        let mut len = 7usize;
        assert!(lpx_output_prompt_logprobs(null(), &mut len).is_null());
        assert_eq!(len, 0);
        assert!(lpx_output_error(null()).is_null());
        assert_eq!(lpx_output_usage(null()), lpx_usage::default());
        lpx_error_free(null_mut());
        lpx_output_free(null_mut());
        lpx_string_free(null_mut());
        lpx_engine_free(null_mut());
        lpx_engine_config_init(null_mut());
        lpx_request_init(null_mut());
        let (c, m) = take_err(lpx_engine_config_init_sized(null_mut(), 4096));
        assert_eq!(c, INVALID);
        assert!(m.contains("argument cfg is NULL"), "{m}");
        let (c, m) = take_err(lpx_request_init_sized(null_mut(), 4096));
        assert_eq!(c, INVALID);
        assert!(m.contains("argument req is NULL"), "{m}");
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
        init_config(&mut cfg);
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
        init_config(&mut cfg);
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
        // Generated text may hold NUL bytes (a random model), so the C string may end early;
        // `lpx_output_text_len` gives the whole text, NUL-terminated after it.
        let text = CStr::from_ptr(lpx_output_text(first)).to_bytes().len();
        let mut len = 0usize;
        let full = lpx_output_text_len(first, &mut len);
        assert!(text <= len);
        assert_eq!(*full.add(len), 0);
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
    let e = unsafe { lpx_engine_submit(t.engine, &request(&toks, 4), &mut id) };
    assert!(!e.is_null());
    // The limit and the wait are read before the error is freed.
    let (limit, after_ms) = unsafe {
        let l = lpx_error_limit(e);
        assert!(!l.is_null(), "a queue-full error names its limit");
        (
            CStr::from_ptr(l).to_str().unwrap().to_string(),
            lpx_error_retry_after_ms(e),
        )
    };
    let (c, m) = take_err(e);
    assert_eq!(c, 6, "{m}");
    assert_eq!(limit, "max_queue");
    assert!((1000..=600_000).contains(&after_ms), "{after_ms}");
    // The three long requests are still in flight (each takes hundreds of steps).
    assert!(
        m.contains("limit max_queue (3) reached: 3 sequences in flight"),
        "{m}"
    );
    // Other errors, and NULL, carry neither.
    let (limit, after_ms) = unsafe {
        (
            lpx_error_limit(std::ptr::null()),
            lpx_error_retry_after_ms(std::ptr::null()),
        )
    };
    assert!(limit.is_null() && after_ms == 0);
    let bad = unsafe { lpx_engine_submit(t.engine, std::ptr::null(), &mut id) };
    unsafe {
        assert!(lpx_error_limit(bad).is_null() && lpx_error_retry_after_ms(bad) == 0);
        lpx_error_free(bad);
    }
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
            c"{\"prompt\":\"a\",\"response_format\":{\"type\":\"yaml\"}}",
            "response_format.type",
        ),
        (c"{\"prompt\":\"a\",\"n\":0}", "\"n\""),
        (c"{\"prompt\":\"a\",\"logit_bias\":{\"x\":1}}", "logit_bias"),
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
        let last = unsafe { lpx_output_is_done(o) };
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

/// `sizeof(lpx_request)` of the first layout (before `logit_bias`... were appended) and the end
/// of its last field.
fn v1_request_size() -> (usize, usize) {
    let end = std::mem::offset_of!(lpx_request, frequency_penalty) + std::mem::size_of::<f32>();
    (
        end.next_multiple_of(std::mem::align_of::<lpx_request>()),
        end,
    )
}

#[test]
fn an_old_size_request_gets_the_defaults_of_the_appended_fields() {
    let t = tiny_engine(64);
    let (size, end) = v1_request_size();
    assert!(size < std::mem::size_of::<lpx_request>());
    // An old caller's struct: exactly `size` bytes, its tail padding garbage.
    let toks = [1u32, 2, 3];
    let r = request(&toks, 3);
    let mut old = vec![0xFFu8; size];
    unsafe {
        std::ptr::copy_nonoverlapping(&r as *const lpx_request as *const u8, old.as_mut_ptr(), end);
    }
    old[..4].copy_from_slice(&(size as u32).to_ne_bytes());
    let mut id = 0;
    ok(unsafe { lpx_engine_submit(t.engine, old.as_ptr() as *const lpx_request, &mut id) });
    // One choice, no echo: one stream of index 0 ending at done.
    let (fr, n, _) = drain(t.engine, id);
    assert_eq!((fr, n), (lpx_finish_reason::Length, 3));
    // Sizes between the known layouts are refused.
    let mut r = request(&toks, 3);
    r.struct_size = (size + 8) as u32;
    let (c, m) = take_err(unsafe { lpx_engine_submit(t.engine, &r, &mut id) });
    assert_eq!(c, INVALID, "{m}");
    assert!(m.contains("struct_size"), "{m}");
}

/// A canary-filled, 8-aligned buffer of `len` bytes (room for a struct and a tail after it).
fn canary_buffer(len: usize) -> Vec<u64> {
    vec![CANARY_WORD; len.div_ceil(8)]
}

const CANARY: u8 = 0xA5;
const CANARY_WORD: u64 = u64::from_ne_bytes([CANARY; 8]);

fn bytes_of(buf: &[u64]) -> &[u8] {
    // SAFETY: u64s are plain bytes; the length is the vector's byte size.
    unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, buf.len() * 8) }
}

/// The first `n` bytes of a struct at `p` over the full defaults of `T`'s current layout (as
/// the library reads an old-size struct): a whole, valid value to compare fields with.
unsafe fn prefix_over<T: Copy>(defaults: T, p: *const T, n: usize) -> T {
    let mut out = defaults;
    // SAFETY: `n` ≤ size_of::<T>() bytes of `p` are initialised (the caller's contract).
    unsafe { std::ptr::copy_nonoverlapping(p as *const u8, &mut out as *mut T as *mut u8, n) };
    out
}

#[test]
fn the_exported_request_init_symbol_writes_only_the_first_layout() {
    let t = tiny_engine(64);
    let (size, end) = v1_request_size();
    #[cfg(target_pointer_width = "64")]
    assert_eq!(size, 152);
    // An old binary's 152-byte struct, inside a larger canary-filled buffer.
    let mut buf = canary_buffer(std::mem::size_of::<lpx_request>() + 64);
    let p = buf.as_mut_ptr() as *mut lpx_request;
    unsafe { lpx_request_init(p) };
    let bytes = bytes_of(&buf);
    assert_eq!(
        u32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize,
        size
    );
    // Nothing past the first layout's last field (so nothing past its 152 bytes) was written.
    assert!(
        bytes[end..].iter().all(|&b| b == CANARY),
        "{:?}",
        &bytes[end..]
    );
    // Its fields are the defaults (the appended fields' defaults are what the library uses).
    let mut full = unsafe { std::mem::zeroed::<lpx_request>() };
    init_request(&mut full);
    let got = unsafe { prefix_over(full, p, end) };
    assert_eq!(got.struct_size as usize, size);
    assert!(got.model.is_null() && got.prompt.is_null() && got.prompt_tokens.is_null());
    assert!(got.messages.is_null() && got.stop.is_null() && got.stop_token_ids.is_null());
    assert_eq!(
        (
            got.max_tokens,
            got.temperature,
            got.top_p,
            got.top_k,
            got.min_p
        ),
        (
            full.max_tokens,
            full.temperature,
            full.top_p,
            full.top_k,
            full.min_p
        )
    );
    assert_eq!(
        (got.logprobs, got.has_seed, got.ignore_eos),
        (-1, false, false)
    );
    assert_eq!(
        (
            got.repetition_penalty,
            got.presence_penalty,
            got.frequency_penalty
        ),
        (1.0, 0.0, 0.0)
    );
    // Submitting it works: the old caller sets its (first-layout) fields and submits.
    let toks = [1u32, 2, 3];
    unsafe {
        std::ptr::addr_of_mut!((*p).prompt_tokens).write(toks.as_ptr());
        std::ptr::addr_of_mut!((*p).prompt_tokens_len).write(toks.len());
        std::ptr::addr_of_mut!((*p).max_tokens).write(3);
        std::ptr::addr_of_mut!((*p).temperature).write(0.0);
        std::ptr::addr_of_mut!((*p).ignore_eos).write(true);
    }
    let mut id = 0;
    ok(unsafe { lpx_engine_submit(t.engine, p, &mut id) });
    let (fr, n, _) = drain(t.engine, id);
    assert_eq!((fr, n), (lpx_finish_reason::Length, 3));
    assert!(bytes_of(&buf)[end..].iter().all(|&b| b == CANARY));
}

#[test]
fn request_init_sized_writes_the_layout_it_is_given() {
    let cur = std::mem::size_of::<lpx_request>();
    let (v1, v1_end) = v1_request_size();
    let before_mix = std::mem::offset_of!(lpx_request, adapters);
    // The full size: the full defaults (and nothing after the struct).
    let mut buf = canary_buffer(cur + 64);
    let p = buf.as_mut_ptr() as *mut lpx_request;
    ok(unsafe { lpx_request_init_sized(p, cur) });
    assert!(bytes_of(&buf)[cur..].iter().all(|&b| b == CANARY));
    let r = unsafe { p.read() };
    assert_eq!(r.struct_size as usize, cur);
    assert_eq!(
        (r.n, r.best_of, r.prompt_logprobs, r.echo),
        (1, 0, -1, false)
    );
    assert_eq!((r.max_tokens, r.logprobs), (16, -1));
    // A larger size (a newer header): this library's layout; the newer tail is untouched.
    let mut buf = canary_buffer(cur + 64);
    let p = buf.as_mut_ptr() as *mut lpx_request;
    ok(unsafe { lpx_request_init_sized(p, cur + 40) });
    assert!(bytes_of(&buf)[cur..].iter().all(|&b| b == CANARY));
    assert_eq!(unsafe { p.read() }.struct_size as usize, cur);
    // The first layout's size: the same as the unsized symbol.
    let mut buf = canary_buffer(cur + 64);
    let mut sym = canary_buffer(cur + 64);
    ok(unsafe { lpx_request_init_sized(buf.as_mut_ptr() as *mut lpx_request, v1) });
    unsafe { lpx_request_init(sym.as_mut_ptr() as *mut lpx_request) };
    assert_eq!(bytes_of(&buf)[..4], (v1 as u32).to_ne_bytes());
    assert!(bytes_of(&buf)[v1_end..].iter().all(|&b| b == CANARY));
    let a = unsafe { prefix_over(r, buf.as_ptr() as *const lpx_request, v1_end) };
    let b = unsafe { prefix_over(r, sym.as_ptr() as *const lpx_request, v1_end) };
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    // Unknown sizes: INVALID_ARGUMENT naming the size, and not one byte written.
    for bad in [0, 3, 4, 100, v1 - 8, v1 + 8, before_mix + 8, cur - 8] {
        let mut buf = canary_buffer(cur + 64);
        let (c, m) =
            take_err(unsafe { lpx_request_init_sized(buf.as_mut_ptr() as *mut lpx_request, bad) });
        assert_eq!(c, INVALID, "{m}");
        assert!(
            m.contains(&format!("size = {bad} is not a layout of lpx_request"))
                && m.contains(&format!("{v1} or {before_mix} or {cur} bytes"))
                && m.contains("nothing was written"),
            "{m}"
        );
        assert!(bytes_of(&buf).iter().all(|&b| b == CANARY), "size {bad}");
    }
    // The layout before the adapter mixture was appended: written up to it, the rest untouched.
    let mut buf = canary_buffer(cur + 64);
    ok(unsafe { lpx_request_init_sized(buf.as_mut_ptr() as *mut lpx_request, before_mix) });
    assert_eq!(bytes_of(&buf)[..4], (before_mix as u32).to_ne_bytes());
    assert!(bytes_of(&buf)[before_mix..].iter().all(|&b| b == CANARY));
}

#[test]
fn config_init_symbol_writes_the_last_unversioned_layout_and_the_sized_one_the_given_layout() {
    let cur = std::mem::size_of::<lpx_engine_config>();
    let v1 = std::mem::offset_of!(lpx_engine_config, memory_budget_bytes);
    assert!(v1 < cur);
    let mut full = unsafe { std::mem::zeroed::<lpx_engine_config>() };
    init_config(&mut full);
    assert_eq!(full.struct_size as usize, cur);
    assert_eq!(full.memory_budget_bytes, 0);
    // The symbol: the layout of the last header without the init macros (up to
    // memory_budget_bytes), nothing after it; prefix_caching is not written.
    let legacy = std::mem::offset_of!(lpx_engine_config, prefix_caching);
    assert!(legacy < cur);
    let mut buf = canary_buffer(cur + 64);
    let p0 = buf.as_mut_ptr() as *mut lpx_engine_config;
    unsafe { lpx_engine_config_init(p0) };
    assert_eq!(bytes_of(&buf)[..4], (legacy as u32).to_ne_bytes());
    assert!(bytes_of(&buf)[legacy..].iter().all(|&b| b == CANARY));
    let got = unsafe { prefix_over(full, p0, legacy) };
    assert_eq!(got.memory_budget_bytes, 0);
    assert!(full.prefix_caching, "on by default");
    // The first layout (before memory_budget_bytes) through the sized function.
    let mut buf = canary_buffer(cur + 64);
    let p = buf.as_mut_ptr() as *mut lpx_engine_config;
    ok(unsafe { lpx_engine_config_init_sized(p, v1) });
    assert_eq!(bytes_of(&buf)[..4], (v1 as u32).to_ne_bytes());
    assert!(bytes_of(&buf)[v1..].iter().all(|&b| b == CANARY));
    let got = unsafe { prefix_over(full, p, v1) };
    assert_eq!(
        (
            got.max_num_seqs,
            got.max_queue,
            got.max_lora_rank,
            got.device
        ),
        (
            full.max_num_seqs,
            full.max_queue,
            full.max_lora_rank,
            full.device
        )
    );
    // An old caller's config of that size creates an engine.
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_model(dir.path(), common::TinySpec::default());
    let path = CString::new(dir.path().to_str().unwrap()).unwrap();
    unsafe {
        std::ptr::addr_of_mut!((*p).model).write(path.as_ptr());
        std::ptr::addr_of_mut!((*p).threads).write(1);
        let mut e = null_mut();
        ok(lpx_engine_create(p, &mut e));
        assert!(!e.is_null());
        lpx_engine_free(e);
    }
    // Sized: the first layout, the current one (and a newer header's size), unknown sizes.
    let mut buf = canary_buffer(cur + 64);
    let p = buf.as_mut_ptr() as *mut lpx_engine_config;
    ok(unsafe { lpx_engine_config_init_sized(p, v1) });
    assert_eq!(bytes_of(&buf)[..4], (v1 as u32).to_ne_bytes());
    assert!(bytes_of(&buf)[v1..].iter().all(|&b| b == CANARY));
    for size in [cur, cur + 24] {
        let mut buf = canary_buffer(cur + 64);
        let p = buf.as_mut_ptr() as *mut lpx_engine_config;
        ok(unsafe { lpx_engine_config_init_sized(p, size) });
        assert!(bytes_of(&buf)[cur..].iter().all(|&b| b == CANARY));
        let c = unsafe { p.read() };
        assert_eq!(c.struct_size as usize, cur);
        assert_eq!(format!("{c:?}"), format!("{full:?}"));
    }
    for bad in [0, 2, 12, v1 - 8, v1 + 4, cur - 4] {
        let mut buf = canary_buffer(cur + 64);
        let (c, m) = take_err(unsafe {
            lpx_engine_config_init_sized(buf.as_mut_ptr() as *mut lpx_engine_config, bad)
        });
        assert_eq!(c, INVALID, "{m}");
        assert!(
            m.contains(&format!(
                "size = {bad} is not a layout of lpx_engine_config"
            )) && m.contains("nothing was written"),
            "{m}"
        );
        assert!(bytes_of(&buf).iter().all(|&b| b == CANARY), "size {bad}");
    }
}

#[test]
fn request_init_sized_with_the_full_size_writes_the_new_defaults() {
    unsafe {
        let mut r = std::mem::zeroed::<lpx_request>();
        init_request(&mut r);
        assert_eq!(r.struct_size as usize, std::mem::size_of::<lpx_request>());
        assert_eq!((r.n, r.best_of), (1, 0));
        assert!(r.logit_bias.is_null() && r.logit_bias_len == 0);
        assert_eq!(r.response_format, lpx_response_format_type::Text as u32);
        assert!(r.response_format_value.is_null() && r.response_format_choices.is_null());
        assert_eq!(r.prompt_logprobs, -1);
        assert!(!r.echo);
    }
}

#[test]
fn new_request_fields_name_the_field_at_fault() {
    let t = tiny_engine(64);
    let toks = [1u32, 2, 3];
    let bad_utf8 = [b'h', 0xff, 0];
    let biases = |v: &[(u32, f32)]| -> Vec<lpx_logit_bias> {
        v.iter()
            .map(|&(token, bias)| lpx_logit_bias { token, bias })
            .collect()
    };
    let over = biases(&[(1, 5.0), (2, 100.5)]);
    let twice = biases(&[(1, 5.0), (1, -5.0)]);
    let nan = biases(&[(3, f32::NAN)]);
    let outside = biases(&[(100_000, 1.0)]);
    let choices_bad = [c"yes".as_ptr(), bad_utf8.as_ptr() as *const c_char];
    let choices_ok = [c"yes".as_ptr()];
    type Set = Box<dyn Fn(&mut lpx_request)>;
    let cases: Vec<(Set, &str)> = vec![
        (Box::new(|r| r.n = 0), "req->n = 0"),
        (Box::new(|r| r.n = 65), "req->n = 65"),
        (
            Box::new(|r| {
                r.n = 3;
                r.best_of = 2;
            }),
            "req->best_of = 2",
        ),
        (Box::new(|r| r.best_of = 65), "req->best_of = 65"),
        (
            Box::new(move |r| {
                r.logit_bias = over.as_ptr();
                r.logit_bias_len = 2;
            }),
            "req->logit_bias[1].bias",
        ),
        (
            Box::new(move |r| {
                r.logit_bias = twice.as_ptr();
                r.logit_bias_len = 2;
            }),
            "req->logit_bias[1].token",
        ),
        (
            Box::new(move |r| {
                r.logit_bias = nan.as_ptr();
                r.logit_bias_len = 1;
            }),
            "req->logit_bias[0].bias",
        ),
        (Box::new(|r| r.logit_bias_len = 2), "req->logit_bias"),
        (
            Box::new(move |r| {
                r.logit_bias = outside.as_ptr();
                r.logit_bias_len = 1;
            }),
            "logit_bias",
        ),
        (
            Box::new(|r| r.response_format = 6),
            "req->response_format = 6",
        ),
        (
            Box::new(|r| r.response_format = lpx_response_format_type::JsonSchema as u32),
            "req->response_format_value",
        ),
        (
            Box::new(|r| {
                r.response_format = lpx_response_format_type::JsonSchema as u32;
                r.response_format_value = c"{not json".as_ptr();
            }),
            "req->response_format_value",
        ),
        (
            Box::new(|r| r.response_format = lpx_response_format_type::Regex as u32),
            "req->response_format_value",
        ),
        (
            Box::new(|r| r.response_format = lpx_response_format_type::Choice as u32),
            "req->response_format_choices",
        ),
        (
            Box::new(move |r| {
                r.response_format = lpx_response_format_type::Choice as u32;
                r.response_format_choices = choices_bad.as_ptr();
                r.response_format_choices_len = 2;
            }),
            "req->response_format_choices[1]",
        ),
        (
            Box::new(|r| r.response_format_value = c"[0-9]+".as_ptr()),
            "req->response_format_value",
        ),
        (
            Box::new(move |r| {
                r.response_format = lpx_response_format_type::Regex as u32;
                r.response_format_value = c"a".as_ptr();
                r.response_format_choices = choices_ok.as_ptr();
                r.response_format_choices_len = 1;
            }),
            "req->response_format_choices",
        ),
        (
            Box::new(|r| r.prompt_logprobs = 21),
            "req->prompt_logprobs = 21",
        ),
        (
            Box::new(|r| r.prompt_logprobs = -2),
            "req->prompt_logprobs = -2",
        ),
    ];
    for (set, needle) in cases {
        let mut r = request(&toks, 2);
        set(&mut r);
        let mut id = SENTINEL_ID;
        let (c, m) = take_err(unsafe { lpx_engine_submit(t.engine, &r, &mut id) });
        assert_eq!(c, INVALID, "{needle}: {m}");
        assert!(m.contains(needle), "{needle}: {m}");
        assert_eq!(id, SENTINEL_ID);
    }
    // A regular expression that does not compile is refused at submit by the engine.
    let mut r = request(&toks, 2);
    r.response_format = lpx_response_format_type::Regex as u32;
    r.response_format_value = c"(unclosed".as_ptr();
    let mut id = SENTINEL_ID;
    let (c, m) = take_err(unsafe { lpx_engine_submit(t.engine, &r, &mut id) });
    assert_eq!(c, INVALID, "{m}");
    assert_eq!(id, SENTINEL_ID);
}

/// Every output of request `id` until done: (index, finish reason, token ids, text, prompt
/// token ids and prompt logprob count when carried, cumulative logprob, done).
struct Piece {
    index: u32,
    finish: lpx_finish_reason,
    tokens: Vec<u32>,
    text: String,
    prompt: Option<(String, Vec<u32>, Vec<usize>)>,
    cumulative: f64,
    done: bool,
    json: serde_json::Value,
    usage_json: Option<serde_json::Value>,
}

fn pieces(e: *mut lpx_engine, id: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    loop {
        let mut o = null_mut();
        ok(unsafe { lpx_engine_poll(e, id, 200, &mut o) });
        if o.is_null() {
            continue;
        }
        unsafe {
            let mut n = 0usize;
            let p = lpx_output_token_ids(o, &mut n);
            let tokens = if p.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(p, n).to_vec()
            };
            let mut len = 0usize;
            let t = lpx_output_text_len(o, &mut len);
            let text =
                String::from_utf8_lossy(std::slice::from_raw_parts(t as *const u8, len)).into();
            let mut plen = 0usize;
            let pt = lpx_output_prompt_text(o, &mut plen);
            let prompt = (!pt.is_null()).then(|| {
                let text =
                    String::from_utf8_lossy(std::slice::from_raw_parts(pt as *const u8, plen))
                        .into_owned();
                let mut k = 0usize;
                let ids = lpx_output_prompt_token_ids(o, &mut k);
                let ids = std::slice::from_raw_parts(ids, k).to_vec();
                let mut m = 0usize;
                let lps = lpx_output_prompt_logprobs(o, &mut m);
                let tops = if lps.is_null() {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(lps, m)
                        .iter()
                        .map(|l| {
                            assert!(l.logprob <= 0.0 && l.logprob.is_finite());
                            l.top_len
                        })
                        .collect()
                };
                (text, ids, tops)
            });
            let mut s = null_mut();
            ok(lpx_output_json(o, &mut s));
            let json = serde_json::from_str(CStr::from_ptr(s).to_str().unwrap()).unwrap();
            lpx_string_free(s);
            let mut u = sentinel_ptr::<c_char>();
            ok(lpx_output_usage_json(o, &mut u));
            let usage_json = (!u.is_null()).then(|| {
                let v = serde_json::from_str(CStr::from_ptr(u).to_str().unwrap()).unwrap();
                lpx_string_free(u);
                v
            });
            let piece = Piece {
                index: lpx_output_index(o),
                finish: lpx_output_finish_reason(o),
                tokens,
                text,
                prompt,
                cumulative: lpx_output_cumulative_logprob(o),
                done: lpx_output_is_done(o),
                json,
                usage_json,
            };
            lpx_output_free(o);
            let done = piece.done;
            out.push(piece);
            if done {
                return out;
            }
        }
    }
}

#[test]
fn n_choices_with_echo_and_prompt_logprobs() {
    let t = tiny_engine(64);
    let mut r = request(&[], 4);
    r.prompt = c"abc".as_ptr();
    r.prompt_tokens = std::ptr::null();
    r.temperature = 1.0;
    r.seed = 11;
    r.has_seed = true;
    r.n = 3;
    r.echo = true;
    r.prompt_logprobs = 2;
    let mut id = 0;
    ok(unsafe { lpx_engine_submit(t.engine, &r, &mut id) });
    let ps = pieces(t.engine, id);
    // Only the last output is done; every choice 0..3 ends once with 4 tokens.
    assert!(ps[..ps.len() - 1].iter().all(|p| !p.done));
    for i in 0..3u32 {
        let mine: Vec<&Piece> = ps.iter().filter(|p| p.index == i).collect();
        assert!(!mine.is_empty(), "choice {i} has no output");
        let finals: Vec<_> = mine
            .iter()
            .filter(|p| p.finish != lpx_finish_reason::None)
            .collect();
        assert_eq!(finals.len(), 1, "choice {i}");
        assert_eq!(finals[0].finish, lpx_finish_reason::Length);
        let n: usize = mine.iter().map(|p| p.tokens.len()).sum();
        assert_eq!(n, 4, "choice {i}");
        // The prompt on the choice's first output only.
        let (text, ids, tops) = mine[0]
            .prompt
            .clone()
            .expect("first output carries the prompt");
        assert_eq!(text, "abc");
        assert!(
            ids.ends_with(&[b'a' as u32, b'b' as u32, b'c' as u32]),
            "{ids:?}"
        );
        assert_eq!(tops.len(), ids.len() - 1);
        assert!(tops.iter().all(|&k| k == 2), "{tops:?}");
        assert!(mine[1..].iter().all(|p| p.prompt.is_none()));
        let last = mine.last().unwrap();
        assert!(last.cumulative.is_finite() && last.cumulative < 0.0);
        // The chunk names the choice and starts with the prompt (echo).
        assert_eq!(mine[0].json["choices"][0]["index"], i);
        let first_text = mine[0].json["choices"][0]["text"].as_str().unwrap();
        assert!(first_text.starts_with("abc"), "{first_text}");
        assert_eq!(&first_text[3..], mine[0].text);
    }
    // The same seed gives the same choices.
    let mut id2 = 0;
    ok(unsafe { lpx_engine_submit(t.engine, &r, &mut id2) });
    let again = pieces(t.engine, id2);
    for i in 0..3u32 {
        let toks = |ps: &[Piece]| -> Vec<u32> {
            ps.iter()
                .filter(|p| p.index == i)
                .flat_map(|p| p.tokens.clone())
                .collect()
        };
        assert_eq!(toks(&ps), toks(&again), "choice {i}");
    }
}

#[test]
fn logit_bias_forces_and_bans_tokens() {
    let t = tiny_engine(64);
    let toks = [10u32, 20, 30];
    let forced = [lpx_logit_bias {
        token: b'A' as u32,
        bias: 100.0,
    }];
    let mut r = request(&toks, 6);
    r.logit_bias = forced.as_ptr();
    r.logit_bias_len = 1;
    let mut id = 0;
    ok(unsafe { lpx_engine_submit(t.engine, &r, &mut id) });
    let ps = pieces(t.engine, id);
    let got: Vec<u32> = ps.iter().flat_map(|p| p.tokens.clone()).collect();
    assert_eq!(got, vec![b'A' as u32; 6]);
    // Ban every token greedy picks: none of them comes back.
    let mut banned: Vec<lpx_logit_bias> = Vec::new();
    let plain = request(&toks, 6);
    ok(unsafe { lpx_engine_submit(t.engine, &plain, &mut id) });
    let greedy: Vec<u32> = pieces(t.engine, id)
        .iter()
        .flat_map(|p| p.tokens.clone())
        .collect();
    for &g in &greedy {
        if !banned.iter().any(|b| b.token == g) {
            banned.push(lpx_logit_bias {
                token: g,
                bias: -100.0,
            });
        }
    }
    let mut r = request(&toks, 6);
    r.logit_bias = banned.as_ptr();
    r.logit_bias_len = banned.len();
    ok(unsafe { lpx_engine_submit(t.engine, &r, &mut id) });
    let got: Vec<u32> = pieces(t.engine, id)
        .iter()
        .flat_map(|p| p.tokens.clone())
        .collect();
    assert_eq!(got.len(), 6);
    assert!(
        got.iter().all(|g| !greedy.contains(g)),
        "{got:?} vs banned {greedy:?}"
    );
}

#[test]
fn response_format_choice_and_regex_through_the_c_abi() {
    let t = tiny_engine(64);
    let choices = [c"yes".as_ptr(), c"no".as_ptr(), c"maybe".as_ptr()];
    let mut r = request(&[1, 2, 3], 20);
    r.ignore_eos = false;
    r.temperature = 1.0;
    r.seed = 3;
    r.has_seed = true;
    r.response_format = lpx_response_format_type::Choice as u32;
    r.response_format_choices = choices.as_ptr();
    r.response_format_choices_len = 3;
    r.n = 4;
    let mut id = 0;
    ok(unsafe { lpx_engine_submit(t.engine, &r, &mut id) });
    let ps = pieces(t.engine, id);
    for i in 0..4u32 {
        let text: String = ps
            .iter()
            .filter(|p| p.index == i)
            .map(|p| p.text.as_str())
            .collect();
        assert!(["yes", "no", "maybe"].contains(&text.as_str()), "{text:?}");
        let fin = ps
            .iter()
            .find(|p| p.index == i && p.finish != lpx_finish_reason::None)
            .unwrap();
        assert_eq!(fin.finish, lpx_finish_reason::Stop);
    }
    let mut r = request(&[1, 2, 3], 30);
    r.ignore_eos = false;
    r.response_format = lpx_response_format_type::Regex as u32;
    r.response_format_value = c"[0-9]{3}-[a-z]{2}".as_ptr();
    ok(unsafe { lpx_engine_submit(t.engine, &r, &mut id) });
    let ps = pieces(t.engine, id);
    let text: String = ps.iter().map(|p| p.text.as_str()).collect();
    let re = regex::Regex::new("^[0-9]{3}-[a-z]{2}$").unwrap();
    assert!(re.is_match(&text), "{text:?}");
    assert_eq!(ps.last().unwrap().finish, lpx_finish_reason::Stop);
}

#[test]
fn submit_json_with_several_choices() {
    let t = tiny_engine(64);
    let e = t.engine;
    // Not streamed: one output, done, holding every choice; usage sums the choices.
    let body = c"{\"prompt\":\"hi\",\"n\":2,\"max_tokens\":3,\"ignore_eos\":true,\"seed\":5}";
    let mut id = 0;
    ok(unsafe { lpx_engine_submit_json(e, body.as_ptr(), &mut id) });
    let ps = pieces(e, id);
    assert_eq!(ps.len(), 1);
    assert!(ps[0].done);
    let v = &ps[0].json;
    assert_eq!(v["object"], "text_completion");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "{v}");
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i, "{v}");
        assert_eq!(c["finish_reason"], "length", "{v}");
    }
    assert_eq!(v["usage"]["completion_tokens"], 6, "{v}");
    // Streamed chat with include_usage: chunks of both choices, the role on each choice's
    // first chunk, "usage": null on every chunk, one usage chunk after the last output.
    let body = c"{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"n\":2,\"max_tokens\":3,\"ignore_eos\":true,\"stream\":true,\"stream_options\":{\"include_usage\":true}}";
    ok(unsafe { lpx_engine_submit_json(e, body.as_ptr(), &mut id) });
    let ps = pieces(e, id);
    let mut roles = [0, 0];
    for p in &ps {
        let c = &p.json["choices"][0];
        assert_eq!(c["index"], p.index);
        assert!(p.json["usage"].is_null() && p.json.get("usage").is_some());
        if c["delta"]["role"] == "assistant" {
            roles[p.index as usize] += 1;
        }
        assert_eq!(p.usage_json.is_some(), p.done);
    }
    assert_eq!(roles, [1, 1]);
    let u = ps.last().unwrap().usage_json.as_ref().unwrap();
    assert_eq!(u["usage"]["completion_tokens"], 6, "{u}");
    assert_eq!(u["choices"], serde_json::json!([]));
    // Without include_usage, streamed chunks carry no usage at all.
    let body = c"{\"prompt\":\"hi\",\"max_tokens\":2,\"ignore_eos\":true,\"stream\":true}";
    ok(unsafe { lpx_engine_submit_json(e, body.as_ptr(), &mut id) });
    for p in pieces(e, id) {
        assert!(p.json.get("usage").is_none(), "{}", p.json);
        assert!(p.usage_json.is_none());
    }
}
