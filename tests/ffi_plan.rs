//! `lpx_engine_plan_json` through the `extern "C"` function itself: its JSON is the Rust
//! planner's, its `memory` is what `lpx_engine_create` with the same config allocates
//! (`lpx_engine_stats_json`'s `memory`), NULL / "" workloads mean the config's values, and bad
//! input is INVALID_ARGUMENT naming the argument or key with `*out_json` untouched.

mod common;

use common::c_errors::{ok, take_err};

use std::ffi::{c_char, CStr, CString};
use std::ptr::{null, null_mut};

use loraplex::config::EngineConfig;
use loraplex::ffi::*;
use loraplex::{plan_capacity, Workload};

const INVALID: u32 = 1;

fn take_string(p: *mut c_char) -> String {
    assert!(!p.is_null());
    let s = unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string();
    unsafe { lpx_string_free(p) };
    s
}

/// A config for `model` with the current layout's defaults, 1 thread and small adapter caches.
fn config(model: &CString) -> lpx_engine_config {
    unsafe {
        let mut cfg = std::mem::zeroed::<lpx_engine_config>();
        ok(lpx_engine_config_init_sized(
            &mut cfg,
            std::mem::size_of::<lpx_engine_config>(),
        ));
        cfg.model = model.as_ptr();
        cfg.threads = 1;
        cfg.max_cpu_loras = 3;
        cfg.max_gpu_loras = 2;
        cfg.max_lora_rank = 8;
        cfg
    }
}

fn plan(
    cfg: &lpx_engine_config,
    workload: Option<&str>,
) -> Result<serde_json::Value, (u32, String)> {
    let w = workload.map(|w| CString::new(w).unwrap());
    let mut out: *mut c_char = null_mut();
    let e =
        unsafe { lpx_engine_plan_json(cfg, w.as_ref().map_or(null(), |w| w.as_ptr()), &mut out) };
    if !e.is_null() {
        assert!(out.is_null(), "*out_json written on error");
        return Err(take_err(e));
    }
    Ok(serde_json::from_str(&take_string(out)).unwrap())
}

#[test]
fn plan_json_is_the_planners_and_matches_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_model(dir.path(), common::TinySpec::default());
    let model = CString::new(dir.path().to_str().unwrap()).unwrap();
    let mut cfg = config(&model);
    cfg.weight_dtype = lpx_weight_dtype::Q8_0 as u32;
    let work = r#"{"max_num_seqs": 3, "max_model_len": 96, "max_lora_rank": 4}"#;
    let got = plan(&cfg, Some(work)).unwrap();

    // The same plan through the Rust API.
    let mut rc = EngineConfig::new(dir.path());
    rc.threads = 1;
    rc.max_cpu_loras = 3;
    rc.max_gpu_loras = 2;
    rc.max_lora_rank = 8;
    rc.weight_format = loraplex::backend::WeightFormat::Q8_0;
    let w = Workload::from_json(work).unwrap();
    let want = serde_json::to_value(plan_capacity(&rc, &w).unwrap()).unwrap();
    assert_eq!(got, want);
    assert_eq!(got["fits"], true);
    assert_eq!(got["workload"]["max_num_seqs"], 3);
    assert_eq!(got["workload"]["weight_dtype"], "q8_0");

    // An engine created with the workload's values allocates exactly the plan's memory.
    cfg.max_num_seqs = 3;
    cfg.max_model_len = 96;
    cfg.max_lora_rank = 4;
    let mut e = null_mut();
    ok(unsafe { lpx_engine_create(&cfg, &mut e) });
    let mut out = null_mut();
    ok(unsafe { lpx_engine_stats_json(e, &mut out) });
    let stats: serde_json::Value = serde_json::from_str(&take_string(out)).unwrap();
    unsafe { lpx_engine_free(e) };
    assert_eq!(stats["memory"], got["memory"]);

    // NULL and "" workloads take the config's values.
    let null_w = plan(&cfg, None).unwrap();
    assert_eq!(null_w, plan(&cfg, Some("")).unwrap());
    assert_eq!(null_w["workload"]["max_num_seqs"], 3);
    assert_eq!(null_w["memory"], got["memory"]);
}

#[test]
fn bad_arguments_name_what_is_wrong_and_leave_out_json_untouched() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_model(dir.path(), common::TinySpec::default());
    let model = CString::new(dir.path().to_str().unwrap()).unwrap();
    let cfg = config(&model);
    let sentinel = 0x1234usize as *mut c_char;

    let mut out = sentinel;
    let (code, msg) = take_err(unsafe { lpx_engine_plan_json(null(), null(), &mut out) });
    assert_eq!((code, out), (INVALID, sentinel));
    assert!(msg.contains("cfg"), "{msg}");
    let (code, msg) = take_err(unsafe { lpx_engine_plan_json(&cfg, null(), null_mut()) });
    assert_eq!(code, INVALID);
    assert!(msg.contains("out_json"), "{msg}");

    let mut bad_size = cfg;
    bad_size.struct_size = 3;
    let (code, msg) = take_err(unsafe { lpx_engine_plan_json(&bad_size, null(), &mut out) });
    assert_eq!((code, out), (INVALID, sentinel));
    assert!(msg.contains("struct_size"), "{msg}");

    let mut no_model = cfg;
    no_model.model = null();
    let (code, msg) = take_err(unsafe { lpx_engine_plan_json(&no_model, null(), &mut out) });
    assert_eq!((code, out), (INVALID, sentinel));
    assert!(msg.contains("cfg->model"), "{msg}");

    let bad_utf8 = [0xffu8, 0];
    let (code, msg) = take_err(unsafe {
        lpx_engine_plan_json(&cfg, bad_utf8.as_ptr() as *const c_char, &mut out)
    });
    assert_eq!((code, out), (INVALID, sentinel));
    assert!(msg.contains("workload_json"), "{msg}");

    for (w, needle) in [
        (r#"{"max_num_seqs": "4"}"#, "\"max_num_seqs\""),
        (r#"{"context": 4}"#, "unknown key \"context\""),
        (r#"{"max_model_len": 100000}"#, "max_position_embeddings"),
        (r#"{"max_gpu_loras": 0}"#, "max_gpu_loras must be > 0"),
        ("[]", "expected a JSON object"),
    ] {
        let (code, msg) = plan(&cfg, Some(w)).unwrap_err();
        assert_eq!(code, INVALID, "{w}: {msg}");
        assert!(msg.contains(needle), "{w}: {msg}");
    }
    // A budget too small is an answer, not an error.
    let p = plan(&cfg, Some(r#"{"memory_budget_bytes": 1000}"#)).unwrap();
    assert_eq!(p["fits"], false);
    assert!(p["reason"]
        .as_str()
        .unwrap()
        .contains("memory_budget_bytes 1000"));
    assert!(p["memory"].is_null());
}
