//! Fuzz the OpenAI request body parser (`/v1/completions`, `/v1/chat/completions` bodies from
//! HTTP clients): any body must give Ok or Err, never a panic, and an accepted body must carry
//! sampling parameters the engine accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loraplex::openai::request_from_openai;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(req) = request_from_openai(body, "served-model") {
        assert!(
            req.sampling.validate().is_ok(),
            "accepted body has invalid sampling: {body}"
        );
    }
});
