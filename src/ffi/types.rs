//! The C-visible plain-data types: enums with explicit values and the versioned parameter
//! structs (`struct_size` first, fields only ever appended).

use std::ffi::c_char;

/// Stable error codes (the type of `lpx_error_code()`); the numbers equal `loraplex::ErrorCode`
/// and are never reused.
///
/// cbindgen:prefix-with-name=false
/// cbindgen:rename-all=None
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)]
pub enum lpx_error_code_t {
    /// A caller-supplied argument is invalid (NULL pointer, bad UTF-8, out-of-range value).
    LPX_ERROR_CODE_INVALID_ARGUMENT = 1,
    /// Unknown model or adapter name, or unknown request id.
    LPX_ERROR_CODE_NOT_FOUND = 2,
    /// The base model could not be loaded.
    LPX_ERROR_CODE_INVALID_MODEL = 3,
    /// An adapter was refused.
    LPX_ERROR_CODE_INVALID_ADAPTER = 4,
    /// The host adapter cache is full of adapters used by active requests (HTTP 429).
    LPX_ERROR_CODE_CAPACITY = 5,
    /// The request queue is full (HTTP 429/503).
    LPX_ERROR_CODE_QUEUE_FULL = 6,
    /// An I/O error.
    LPX_ERROR_CODE_IO = 7,
    /// A device (accelerator) error.
    LPX_ERROR_CODE_DEVICE = 8,
    /// The feature is not compiled in or not supported (e.g. CUDA in a CPU build).
    LPX_ERROR_CODE_UNSUPPORTED = 9,
    /// The request was cancelled.
    LPX_ERROR_CODE_CANCELLED = 10,
    /// The engine's worker failed; the engine no longer serves.
    LPX_ERROR_CODE_ENGINE_FAILED = 11,
    /// A panic was caught at the API boundary.
    LPX_ERROR_CODE_PANIC = 12,
    /// A bug in loraplex.
    LPX_ERROR_CODE_INTERNAL = 13,
}

/// Why a request ended; `LPX_FINISH_REASON_NONE` while it is still running.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum lpx_finish_reason {
    /// Not finished: more outputs will follow.
    None = 0,
    /// End of sequence, a stop token id or a stop string.
    Stop = 1,
    /// `max_tokens` or the context length was reached.
    Length = 2,
    /// Cancelled by `lpx_engine_cancel` or by `lpx_engine_free`.
    Cancelled = 3,
    /// Failed: `lpx_output_error` tells why.
    Error = 4,
}

/// How base weights are stored (`lpx_engine_config.weight_dtype`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum lpx_weight_dtype {
    /// 32-bit floats (default).
    F32 = 0,
    /// bfloat16: half the bytes.
    Bf16 = 1,
    /// ggml Q8_0, quantized at load from a dense checkpoint (quantized checkpoints are kept as
    /// stored).
    Q8_0 = 2,
    /// llama.cpp's Q4_K_M mix (Q4_K, Q6_K head and some v/down projections, legacy fallbacks
    /// for widths that are not whole super-blocks), quantized at load from a dense checkpoint
    /// (quantized checkpoints are kept as stored).
    Q4_K = 3,
}

/// Engine configuration, a versioned struct ("Versioned structs" at the end of loraplex.h).
/// Fill with `lpx_engine_config_init` (defaults), optionally `lpx_engine_config_from_env`, then
/// set fields. Strings are borrowed for the duration of `lpx_engine_create` only. Zero in a
/// numeric field means "the default" where noted.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lpx_engine_config {
    /// `sizeof(lpx_engine_config)` as compiled by the caller; set by `lpx_engine_config_init`
    /// (`lpx_engine_config_init_sized`).
    pub struct_size: u32,
    /// Base model: a HuggingFace model directory or a `.gguf` file (required, UTF-8).
    pub model: *const c_char,
    /// Name clients use for the base model; NULL = the model file/directory stem.
    pub served_model_name: *const c_char,
    /// "cpu" (default) or "cuda:N" (UNSUPPORTED in builds without CUDA). NULL = "cpu".
    pub device: *const c_char,
    /// Compute threads (0 = all cores).
    pub threads: u32,
    /// One of `lpx_weight_dtype`.
    pub weight_dtype: u32,
    /// Most sequences in one step (default 64).
    pub max_num_seqs: u32,
    /// Most tokens in one step (default 512).
    pub max_batch_tokens: u32,
    /// Longest prompt + completion in tokens (0 = the model's limit, capped at 8192).
    pub max_model_len: u32,
    /// Token positions per KV block (default 16).
    pub kv_block_size: u32,
    /// Bytes for the KV cache (0 = sized from max_num_seqs × max_model_len).
    pub kv_cache_bytes: u64,
    /// Most requests in flight before submit answers QUEUE_FULL (default 4096).
    pub max_queue: u32,
    /// PEFT source directories separated by ':' (NIM_PEFT_SOURCE); NULL or "" = none.
    pub peft_source: *const c_char,
    /// PEFT source rescan interval in milliseconds (0 = never).
    pub peft_refresh_interval_ms: u64,
    /// Host adapter cache capacity (NIM_MAX_CPU_LORAS, default 16).
    pub max_cpu_loras: u32,
    /// Device adapter slots (NIM_MAX_GPU_LORAS, default 8).
    pub max_gpu_loras: u32,
    /// Largest accepted LoRA rank (NIM_MAX_LORA_RANK, default 64).
    pub max_lora_rank: u32,
    /// Total bytes for weights, adapter caches, activations and KV cache (0 = no budget); with
    /// kv_cache_bytes = 0 the KV cache gets what is left (LPX_MEMORY_BUDGET_BYTES). Added in
    /// ABI 1 after max_lora_rank: callers built before it pass the shorter struct_size.
    pub memory_budget_bytes: u64,
    /// Reuse the KV blocks of earlier requests whose tokens (and adapter generation) start the
    /// same way (LPX_PREFIX_CACHING; outputs are the same bits either way). Default true; callers
    /// built before this field get the default.
    pub prefix_caching: bool,
    /// Admission weights by tenant, "name=weight,..." (an adapter's name or the served base
    /// model name; weight >= 1, absent = 1): while both wait, a tenant of weight w is admitted w
    /// times as often as one of weight 1 (LPX_ADAPTER_WEIGHTS). NULL or "" = all 1.
    pub adapter_weights: *const c_char,
    /// Most sequences of one adapter running at once; further ones wait while other tenants run
    /// (LPX_MAX_RUNNING_PER_ADAPTER). 0 = no cap.
    pub max_running_per_adapter: u32,
    /// Running caps by tenant, "name=cap,..." overriding max_running_per_adapter (0 = no cap;
    /// LPX_ADAPTER_MAX_RUNNING). NULL or "" = none.
    pub adapter_max_running: *const c_char,
}

/// One chat message for `lpx_request.messages`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lpx_message {
    /// "system", "user", "assistant", ... (UTF-8, required).
    pub role: *const c_char,
    /// The text (UTF-8, required).
    pub content: *const c_char,
}

/// A generation request, a versioned struct ("Versioned structs" at the end of loraplex.h).
/// Fill with `lpx_request_init`, then set exactly one of `prompt`, `prompt_tokens` or
/// `messages`. Everything is borrowed for the duration of `lpx_engine_submit` only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lpx_request {
    /// `sizeof(lpx_request)` as compiled by the caller; set by `lpx_request_init`
    /// (`lpx_request_init_sized`).
    pub struct_size: u32,
    /// The base model's served name or an adapter name; NULL or "" = base model.
    pub model: *const c_char,
    /// UTF-8 prompt (tokenised with the model's tokenizer), or NULL.
    pub prompt: *const c_char,
    /// Prompt token ids, or NULL.
    pub prompt_tokens: *const u32,
    /// Number of `prompt_tokens`.
    pub prompt_tokens_len: usize,
    /// Chat messages rendered with the model's chat template, or NULL.
    pub messages: *const lpx_message,
    /// Number of `messages`.
    pub messages_len: usize,
    /// Most tokens to generate (default 16, ≥ 1).
    pub max_tokens: u32,
    /// Softmax temperature (0 = greedy; default 1).
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1] (default 1 = off).
    pub top_p: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: u32,
    /// Min-p filter in [0, 1] (0 = off).
    pub min_p: f32,
    /// Random seed, used when `has_seed` is true.
    pub seed: u64,
    /// Whether `seed` is set (otherwise the engine picks one).
    pub has_seed: bool,
    /// Stop strings (UTF-8, non-empty), or NULL.
    pub stop: *const *const c_char,
    /// Number of `stop` strings.
    pub stop_len: usize,
    /// Token ids that end generation, or NULL.
    pub stop_token_ids: *const u32,
    /// Number of `stop_token_ids`.
    pub stop_token_ids_len: usize,
    /// Alternatives per generated token to return with log-probabilities (0..=20); -1 = no
    /// log-probabilities (default).
    pub logprobs: i32,
    /// Keep generating after the end-of-sequence token.
    pub ignore_eos: bool,
    /// Multiplicative repetition penalty (> 0, 1 = off).
    pub repetition_penalty: f32,
    /// OpenAI presence penalty in [-2, 2].
    pub presence_penalty: f32,
    /// OpenAI frequency penalty in [-2, 2].
    pub frequency_penalty: f32,
    // ---- Appended in ABI 1 after `frequency_penalty`: callers built before pass the shorter
    // `struct_size` and get the defaults below (one choice, no bias, free text, no echo).
    /// Token biases (OpenAI `logit_bias`), or NULL: each bias in [-100, 100] is added to its
    /// token's logit before sampling (-100 in effect bans the token, 100 forces it); each token
    /// id at most once and inside the vocabulary.
    pub logit_bias: *const lpx_logit_bias,
    /// Number of `logit_bias` entries.
    pub logit_bias_len: usize,
    /// The constraint's text for `response_format` `JSON_SCHEMA` (the schema as JSON text),
    /// `REGEX` (the regular expression the whole output must match) and `GRAMMAR` (a Lark
    /// grammar whose start rule is `start`); NULL for the other types (UTF-8).
    pub response_format_value: *const c_char,
    /// The strings of `response_format` `CHOICE` (the output is exactly one of them; UTF-8),
    /// NULL for the other types.
    pub response_format_choices: *const *const c_char,
    /// Number of `response_format_choices` (≥ 1 for `CHOICE`).
    pub response_format_choices_len: usize,
    /// Choices to return (OpenAI `n`, 1..=64; default 1). The choices share the prompt (it is
    /// computed once) and each draws from its own random stream; outputs carry their choice's
    /// `lpx_output_index`.
    pub n: u32,
    /// Choices to generate (OpenAI `best_of`, ≥ `n`, ≤ 64; 0 = `n`, the default): the `n` with
    /// the highest mean token log-probability are returned, after all have finished.
    pub best_of: u32,
    /// One of `lpx_response_format_type` (default `LPX_RESPONSE_FORMAT_TYPE_TEXT`: free text).
    /// A constrained choice ends with `LPX_FINISH_REASON_STOP` when its constraint is complete.
    pub response_format: u32,
    /// Alternatives per prompt token to return with the prompt tokens' log-probabilities
    /// (0..=20; `lpx_output_prompt_logprobs`); -1 = none (default).
    pub prompt_logprobs: i32,
    /// Each choice's first output carries the prompt (`lpx_output_prompt_text`,
    /// `lpx_output_prompt_token_ids`), as OpenAI's `echo`.
    pub echo: bool,
    /// An adapter mixture: the request runs on `W + Σ scaleᵢ·Bᵢ·Aᵢ` over these adapters (1..=4
    /// distinct names, at most max_gpu_loras), in the same batch as every other request; `model`
    /// must then be NULL, "" or the base model's name. NULL / 0 = none (`model` says the
    /// adapter). Callers built before this field get none.
    pub adapters: *const lpx_adapter_mix,
    /// Entries of `adapters`.
    pub adapters_len: usize,
}

/// One adapter of `lpx_request.adapters`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lpx_adapter_mix {
    /// Adapter name (UTF-8, required).
    pub name: *const c_char,
    /// Its scale in the mixture (finite; on top of the adapter's own alpha / r).
    pub scale: f32,
}

/// One token bias of `lpx_request.logit_bias`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct lpx_logit_bias {
    /// Token id (inside the vocabulary).
    pub token: u32,
    /// Added to the token's logit, in [-100, 100].
    pub bias: f32,
}

/// What shape the output must have (`lpx_request.response_format`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum lpx_response_format_type {
    /// Free text (default).
    Text = 0,
    /// Any JSON object (OpenAI `{"type": "json_object"}`).
    JsonObject = 1,
    /// JSON valid against the JSON Schema in `response_format_value`.
    JsonSchema = 2,
    /// Text matching the regular expression in `response_format_value` in full.
    Regex = 3,
    /// Exactly one of `response_format_choices`.
    Choice = 4,
    /// Text of the Lark grammar in `response_format_value`.
    Grammar = 5,
}

/// Token counts of a request so far.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct lpx_usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
}

/// One alternative token with its log-probability.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct lpx_top_logprob {
    /// Token id.
    pub token: u32,
    /// Natural-log probability.
    pub logprob: f32,
}

/// Log-probability of a generated token and its most likely alternatives. Borrowed from its
/// `lpx_output`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lpx_token_logprob {
    /// The generated token id.
    pub token: u32,
    /// Its natural-log probability.
    pub logprob: f32,
    /// The alternatives, most likely first (`top_len` entries; NULL when 0).
    pub top: *const lpx_top_logprob,
    /// Number of `top` entries.
    pub top_len: usize,
}
