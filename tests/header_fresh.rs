//! The committed include/loraplex.h must equal what cbindgen generates from src/ffi now
//! (build.rs writes the fresh one to $OUT_DIR; `make header` updates the committed copy).

use std::path::Path;

#[test]
fn committed_header_matches_cbindgen_output() {
    let fresh = std::fs::read_to_string(env!("LPX_GENERATED_HEADER")).unwrap();
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/loraplex.h"))
            .unwrap();
    assert!(
        fresh == committed,
        "include/loraplex.h is stale: run `make header` and commit it"
    );
}

#[test]
fn header_declares_the_contract_surface() {
    let h = std::fs::read_to_string(env!("LPX_GENERATED_HEADER")).unwrap();
    for name in [
        "lpx_abi_version(void)",
        "lpx_version(void)",
        "lpx_engine_config_init(",
        "lpx_engine_config_from_env(",
        "lpx_engine_create(",
        "lpx_engine_free(",
        "lpx_engine_register_peft_source(",
        "lpx_engine_refresh(",
        "lpx_engine_models_json(",
        "lpx_engine_plan_json(",
        "lpx_engine_stats_json(",
        "lpx_engine_metrics_text(",
        "lpx_request_init(",
        "lpx_engine_submit(",
        "lpx_engine_submit_json(",
        "lpx_engine_poll(",
        "lpx_engine_cancel(",
        "lpx_output_json(",
        "lpx_output_usage_json(",
        "lpx_output_index(",
        "lpx_output_is_done(",
        "lpx_output_prompt_text(",
        "lpx_output_prompt_token_ids(",
        "lpx_output_prompt_logprobs(",
        "lpx_output_cumulative_logprob(",
        "LPX_RESPONSE_FORMAT_TYPE_GRAMMAR = 5",
        "} lpx_logit_bias;",
        "lpx_output_free(",
        "lpx_string_free(",
        "lpx_error_code(",
        "lpx_error_message(",
        "lpx_error_free(",
        "#define LPX_ABI_VERSION ",
        "#define LPX_VERSION_MAJOR ",
        "LPX_ERROR_CODE_CAPACITY = 5",
        "LPX_ERROR_CODE_INTERNAL = 13",
        "typedef struct lpx_engine lpx_engine;",
    ] {
        assert!(h.contains(name), "header lacks {name}");
    }
    assert!(
        !h.contains("lpx_debug_panic"),
        "test hook leaked into the header"
    );
    // Only language-mode conditionals (C vs C++, C23 enums) and the include guard.
    for line in h.lines().filter(|l| l.starts_with("#if")) {
        assert!(
            line.contains("__cplusplus")
                || line.contains("__STDC_VERSION__")
                || line.contains("LORAPLEX_H"),
            "header depends on a configuration: {line}"
        );
    }
}
