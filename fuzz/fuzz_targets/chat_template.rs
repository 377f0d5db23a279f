//! Fuzz the chat-template renderer (templates come from model files, messages from clients):
//! any template and messages must render or give Err, never a panic, a hang or unbounded memory.
//!
//! Input layout: byte 0 bit 0 = `add_generation_prompt`; then the template up to the first NUL;
//! then NUL-separated `role`, `content`, `role`, `content`, ... (lossy UTF-8).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use loraplex::tokenizer::{ChatMessage, SpecialTokens, Tokenizer};

/// A one-token word-level vocabulary: rendering never touches the vocabulary.
const TOKENIZER_JSON: &str = r#"{"version":"1.0","truncation":null,"padding":null,
"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"<unk>":0},"unk_token":"<unk>"}}"#;

fn inner() -> &'static tokenizers::Tokenizer {
    static T: OnceLock<tokenizers::Tokenizer> = OnceLock::new();
    T.get_or_init(|| TOKENIZER_JSON.parse().expect("fuzz tokenizer JSON"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|&b| b == 0);
    let template = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let fields: Vec<String> = parts
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let messages: Vec<ChatMessage> = fields
        .chunks(2)
        .map(|c| ChatMessage {
            role: c[0].clone(),
            content: c.get(1).cloned().unwrap_or_default(),
        })
        .collect();
    let special = SpecialTokens {
        bos: Some(("<s>".into(), 1)),
        eos: Some(("</s>".into(), 2)),
        add_bos: flags & 2 != 0,
    };
    let tok = Tokenizer::from_parts(inner().clone(), Some(template), special);
    let _ = tok.apply_chat_template(&messages, flags & 1 != 0);
});
