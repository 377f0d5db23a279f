// loraplex.hpp: header-only C++17 RAII wrapper over the loraplex C API (include/loraplex.h).
//
// Move-only owners (Engine, Output) free their handle exactly once; every failing call throws
// loraplex::Error (a std::runtime_error with the stable code). Engine methods may be called from
// several threads at once, as the C API allows; destroy the Engine after they all returned.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "loraplex.h"

namespace loraplex {

/// A loraplex failure: the message names what is at fault; code() is an LPX_ERROR_CODE_* value.
/// A request refused under load (QUEUE_FULL, CAPACITY) also names the limit hit (limit(), e.g.
/// "max_queue") and a suggested wait (retry_after_ms(), at least 1000); otherwise "" and 0.
class Error : public std::runtime_error {
public:
    Error(lpx_error_code_t code, const std::string &msg, std::string limit = "",
          uint64_t retry_after_ms = 0)
        : std::runtime_error(msg), code_(code), limit_(std::move(limit)),
          retry_after_ms_(retry_after_ms) {}
    /// Copies a C error (owned or borrowed); does not free it.
    explicit Error(const lpx_error *e)
        : Error(lpx_error_code(e), lpx_error_message(e),
                lpx_error_limit(e) ? lpx_error_limit(e) : "", lpx_error_retry_after_ms(e)) {}
    lpx_error_code_t code() const noexcept { return code_; }
    const std::string &limit() const noexcept { return limit_; }
    uint64_t retry_after_ms() const noexcept { return retry_after_ms_; }

private:
    lpx_error_code_t code_;
    std::string limit_;
    uint64_t retry_after_ms_;
};

namespace detail {
/// Converts and frees a C error; does nothing for NULL.
inline void check(lpx_error *e) {
    if (e == nullptr) return;
    Error err(e);
    lpx_error_free(e);
    throw err;
}
/// Takes ownership of a char* from loraplex.
inline std::string take(char *s) {
    std::string out = s ? s : "";
    lpx_string_free(s);
    return out;
}
}  // namespace detail

/// Engine configuration builder over every field of lpx_engine_config (defaults from
/// lpx_engine_config_init). Strings are copied.
class Config {
public:
    explicit Config(std::string model) {
        detail::check(lpx_engine_config_init_sized(&c_, sizeof c_));
        take_strings(c_);
        model_ = std::move(model);
    }
    /// Applies LPX_* / NIM_* environment variables (lpx_engine_config_from_env): a variable that
    /// is set overrides what was set before this call (setters called after it override the
    /// environment), except LPX_MODEL, which is used only when the model given to the
    /// constructor is empty.
    Config &from_env() {
        lpx_engine_config c = c_config();
        detail::check(lpx_engine_config_from_env(&c));
        std::string model = model_;
        take_strings(c);
        if (!model.empty()) model_ = std::move(model);
        return *this;
    }
    Config &served_name(std::string v) { served_ = std::move(v); return *this; }
    Config &device(std::string v) { device_ = std::move(v); return *this; }
    Config &threads(uint32_t v) { c_.threads = v; return *this; }
    // LPX_WEIGHT_DTYPE_F32, _BF16, or _Q8_0 / _Q4_K (dense checkpoints quantized at load).
    Config &weight_dtype(lpx_weight_dtype v) { c_.weight_dtype = static_cast<uint32_t>(v); return *this; }
    Config &bf16_weights(bool on) { return weight_dtype(on ? LPX_WEIGHT_DTYPE_BF16 : LPX_WEIGHT_DTYPE_F32); }
    Config &max_num_seqs(uint32_t v) { c_.max_num_seqs = v; return *this; }
    Config &max_batch_tokens(uint32_t v) { c_.max_batch_tokens = v; return *this; }
    Config &max_model_len(uint32_t v) { c_.max_model_len = v; return *this; }
    Config &kv_block_size(uint32_t v) { c_.kv_block_size = v; return *this; }
    Config &kv_cache_bytes(uint64_t v) { c_.kv_cache_bytes = v; return *this; }
    Config &max_queue(uint32_t v) { c_.max_queue = v; return *this; }
    /// ':'-separated PEFT source directories.
    Config &peft_source(std::string v) { peft_ = std::move(v); return *this; }
    Config &peft_refresh_interval(std::chrono::milliseconds v) { c_.peft_refresh_interval_ms = static_cast<uint64_t>(v.count()); return *this; }
    Config &max_cpu_loras(uint32_t v) { c_.max_cpu_loras = v; return *this; }
    Config &max_gpu_loras(uint32_t v) { c_.max_gpu_loras = v; return *this; }
    Config &max_lora_rank(uint32_t v) { c_.max_lora_rank = v; return *this; }
    /// Total bytes for weights, adapter caches, activations and KV cache (0 = no budget).
    Config &memory_budget_bytes(uint64_t v) { c_.memory_budget_bytes = v; return *this; }
    /// Reuse KV blocks of earlier requests with the same leading tokens (default true).
    Config &prefix_caching(bool v) { c_.prefix_caching = v; return *this; }
    /// Admission weights by tenant, "name=weight,..." (adapter or served base model name).
    Config &adapter_weights(std::string v) { weights_ = std::move(v); return *this; }
    /// Most sequences of one adapter running at once (0 = no cap).
    Config &max_running_per_adapter(uint32_t v) { c_.max_running_per_adapter = v; return *this; }
    /// Running caps by tenant, "name=cap,..." overriding max_running_per_adapter.
    Config &adapter_max_running(std::string v) { caps_ = std::move(v); return *this; }

    /// The C struct, pointing into this object's strings (valid while it lives, unmodified).
    lpx_engine_config c_config() const {
        lpx_engine_config c = c_;
        c.model = opt(model_);
        c.served_model_name = opt(served_);
        c.device = opt(device_);
        c.peft_source = opt(peft_);
        c.adapter_weights = opt(weights_);
        c.adapter_max_running = opt(caps_);
        return c;
    }

private:
    static const char *opt(const std::string &s) { return s.empty() ? nullptr : s.c_str(); }
    /// Copies every field of c: its strings into this object's own.
    void take_strings(const lpx_engine_config &c) {
        auto str = [](const char *p) { return std::string(p ? p : ""); };
        std::string model = str(c.model), served = str(c.served_model_name),
                    device = str(c.device), peft = str(c.peft_source),
                    weights = str(c.adapter_weights), caps = str(c.adapter_max_running);
        c_ = c;
        c_.model = c_.served_model_name = c_.device = c_.peft_source = nullptr;
        c_.adapter_weights = c_.adapter_max_running = nullptr;
        model_ = std::move(model);
        served_ = std::move(served);
        device_ = std::move(device);
        peft_ = std::move(peft);
        weights_ = std::move(weights);
        caps_ = std::move(caps);
    }

    lpx_engine_config c_{};
    std::string model_, served_, device_, peft_, weights_, caps_;
};

/// Request builder: exactly one of prompt(), tokens() or message()s. Strings are copied.
/// n() > 1 asks for several choices (outputs carry Output::index(); use Engine::generate_all or
/// stream until Output::is_done()); response_format()/choice() constrain the output.
class Request {
public:
    Request() { detail::check(lpx_request_init_sized(&r_, sizeof r_)); }
    Request &model(std::string v) { model_ = std::move(v); return *this; }
    Request &prompt(std::string v) { prompt_ = std::move(v); has_prompt_ = true; return *this; }
    Request &tokens(std::vector<uint32_t> v) { tokens_ = std::move(v); return *this; }
    Request &message(std::string role, std::string content) {
        msgs_.emplace_back(std::move(role), std::move(content));
        return *this;
    }
    Request &max_tokens(uint32_t v) { r_.max_tokens = v; return *this; }
    Request &temperature(float v) { r_.temperature = v; return *this; }
    Request &top_p(float v) { r_.top_p = v; return *this; }
    Request &top_k(uint32_t v) { r_.top_k = v; return *this; }
    Request &min_p(float v) { r_.min_p = v; return *this; }
    Request &seed(uint64_t v) { r_.seed = v; r_.has_seed = true; return *this; }
    Request &stop(std::string s) { stops_.push_back(std::move(s)); return *this; }
    Request &stop_token(uint32_t t) { stop_ids_.push_back(t); return *this; }
    Request &logprobs(int32_t n) { r_.logprobs = n; return *this; }
    Request &ignore_eos(bool v) { r_.ignore_eos = v; return *this; }
    Request &repetition_penalty(float v) { r_.repetition_penalty = v; return *this; }
    Request &presence_penalty(float v) { r_.presence_penalty = v; return *this; }
    Request &frequency_penalty(float v) { r_.frequency_penalty = v; return *this; }
    /// Choices to return (1..=64).
    Request &n(uint32_t v) { r_.n = v; return *this; }
    /// Choices to generate, the n best returned (>= n, <= 64; 0 = n).
    Request &best_of(uint32_t v) { r_.best_of = v; return *this; }
    /// Adds bias (in [-100, 100]) to token's logit (OpenAI logit_bias).
    Request &logit_bias(uint32_t token, float bias) { biases_.push_back(lpx_logit_bias{token, bias}); return *this; }
    /// Constrains the output: LPX_RESPONSE_FORMAT_TYPE_JSON_OBJECT (no value),
    /// _JSON_SCHEMA (value: the schema as JSON text), _REGEX (a regular expression), _GRAMMAR
    /// (a Lark grammar), or _TEXT (free text, the default). For _CHOICE use choice().
    Request &response_format(lpx_response_format_type type, std::string value = std::string()) {
        r_.response_format = static_cast<uint32_t>(type);
        format_value_ = std::move(value);
        choices_.clear();
        return *this;
    }
    /// Adds one allowed output string (response format _CHOICE: the output is one of them).
    Request &choice(std::string v) {
        r_.response_format = static_cast<uint32_t>(LPX_RESPONSE_FORMAT_TYPE_CHOICE);
        format_value_.clear();
        choices_.push_back(std::move(v));
        return *this;
    }
    /// Each choice's first output carries the prompt (Output::prompt_text(), prompt_token_ids()).
    Request &echo(bool v) { r_.echo = v; return *this; }
    /// Log-probabilities of the prompt tokens with n alternatives each (0..20; -1 = none).
    Request &prompt_logprobs(int32_t n) { r_.prompt_logprobs = n; return *this; }
    /// Adds an adapter to the request's mixture (W + Σ scaleᵢ·Bᵢ·Aᵢ over 1..4 adapters; model()
    /// must then be unset or the base model's name).
    Request &adapter(std::string name, float scale = 1.0f) {
        mix_.emplace_back(std::move(name), scale);
        return *this;
    }

    /// Calls f(const lpx_request&) with a C view of this request (valid during the call).
    template <class F> auto with_c(F &&f) const {
        lpx_request r = r_;
        std::vector<lpx_message> msgs;
        for (auto &m : msgs_) msgs.push_back(lpx_message{m.first.c_str(), m.second.c_str()});
        std::vector<const char *> stops;
        for (auto &s : stops_) stops.push_back(s.c_str());
        r.model = model_.empty() ? nullptr : model_.c_str();
        r.prompt = has_prompt_ ? prompt_.c_str() : nullptr;
        r.prompt_tokens = tokens_.empty() ? nullptr : tokens_.data();
        r.prompt_tokens_len = tokens_.size();
        r.messages = msgs.empty() ? nullptr : msgs.data();
        r.messages_len = msgs.size();
        r.stop = stops.empty() ? nullptr : stops.data();
        r.stop_len = stops.size();
        r.stop_token_ids = stop_ids_.empty() ? nullptr : stop_ids_.data();
        r.stop_token_ids_len = stop_ids_.size();
        r.logit_bias = biases_.empty() ? nullptr : biases_.data();
        r.logit_bias_len = biases_.size();
        r.response_format_value = format_value_.empty() ? nullptr : format_value_.c_str();
        std::vector<const char *> choices;
        for (auto &c : choices_) choices.push_back(c.c_str());
        r.response_format_choices = choices.empty() ? nullptr : choices.data();
        r.response_format_choices_len = choices.size();
        std::vector<lpx_adapter_mix> mix;
        for (auto &m : mix_) mix.push_back(lpx_adapter_mix{m.first.c_str(), m.second});
        r.adapters = mix.empty() ? nullptr : mix.data();
        r.adapters_len = mix.size();
        return f(r);
    }

private:
    lpx_request r_{};
    std::string model_, prompt_;
    bool has_prompt_ = false;
    std::vector<uint32_t> tokens_;
    std::vector<std::pair<std::string, std::string>> msgs_;
    std::vector<std::string> stops_;
    std::vector<uint32_t> stop_ids_;
    std::vector<lpx_logit_bias> biases_;
    std::string format_value_;
    std::vector<std::string> choices_;
    std::vector<std::pair<std::string, float>> mix_;
};

/// A generated token's log-probability and its top alternatives (owning copy).
struct TokenLogprob {
    uint32_t token;
    float logprob;
    std::vector<lpx_top_logprob> top;
};

namespace detail {
inline std::vector<TokenLogprob> copy_logprobs(const lpx_token_logprob *p, size_t n) {
    std::vector<TokenLogprob> out;
    if (p == nullptr) return out;
    out.reserve(n);
    for (size_t i = 0; i < n; i++) {
        TokenLogprob t{p[i].token, p[i].logprob, {}};
        if (p[i].top != nullptr) t.top.assign(p[i].top, p[i].top + p[i].top_len);
        out.push_back(std::move(t));
    }
    return out;
}
}  // namespace detail

/// One streamed delta of one choice of a request (move-only owner of an lpx_output).
class Output {
public:
    explicit Output(lpx_output *o) noexcept : o_(o) {}
    Output(Output &&other) noexcept : o_(std::exchange(other.o_, nullptr)) {}
    Output &operator=(Output &&other) noexcept {
        if (this != &other) { lpx_output_free(o_); o_ = std::exchange(other.o_, nullptr); }
        return *this;
    }
    Output(const Output &) = delete;
    Output &operator=(const Output &) = delete;
    ~Output() { lpx_output_free(o_); }

    uint64_t request_id() const noexcept { return lpx_output_request_id(o_); }
    std::string text() const {
        size_t len = 0;
        const char *p = lpx_output_text_len(o_, &len);
        return std::string(p, len);
    }
    std::vector<uint32_t> token_ids() const {
        size_t n = 0;
        const uint32_t *p = lpx_output_token_ids(o_, &n);
        return p ? std::vector<uint32_t>(p, p + n) : std::vector<uint32_t>{};
    }
    /// Copies of the log-probabilities (owning: they outlive this Output, unlike the C
    /// structs, whose `top` pointers borrow from the lpx_output).
    std::vector<TokenLogprob> logprobs() const {
        size_t n = 0;
        const lpx_token_logprob *p = lpx_output_logprobs(o_, &n);
        return detail::copy_logprobs(p, n);
    }
    lpx_finish_reason finish_reason() const noexcept { return lpx_output_finish_reason(o_); }
    /// This output's choice ended (finish_reason() set); other choices may follow.
    bool is_final() const noexcept { return lpx_output_is_final(o_); }
    /// The request's last output: every choice ended; the engine forgot the id.
    bool is_done() const noexcept { return lpx_output_is_done(o_); }
    /// The choice (0..n) this delta belongs to.
    uint32_t index() const noexcept { return lpx_output_index(o_); }
    /// Token counts of this output's choice (prompt tokens and its generated tokens).
    lpx_usage usage() const noexcept { return lpx_output_usage(o_); }
    /// Whether this output carries the prompt (each choice's first output, with echo or
    /// prompt_logprobs).
    bool has_prompt() const noexcept { return lpx_output_prompt_text(o_, nullptr) != nullptr; }
    /// The prompt text ("" when this output carries no prompt).
    std::string prompt_text() const {
        size_t len = 0;
        const char *p = lpx_output_prompt_text(o_, &len);
        return p ? std::string(p, len) : std::string();
    }
    std::vector<uint32_t> prompt_token_ids() const {
        size_t n = 0;
        const uint32_t *p = lpx_output_prompt_token_ids(o_, &n);
        return p ? std::vector<uint32_t>(p, p + n) : std::vector<uint32_t>{};
    }
    /// Log-probabilities of prompt_token_ids()[1..] (with prompt_logprobs; owning copies).
    std::vector<TokenLogprob> prompt_logprobs() const {
        size_t n = 0;
        const lpx_token_logprob *p = lpx_output_prompt_logprobs(o_, &n);
        return detail::copy_logprobs(p, n);
    }
    /// Sum of the log-probabilities of this choice's generated tokens so far.
    double cumulative_logprob() const noexcept { return lpx_output_cumulative_logprob(o_); }
    /// Throws the request's failure as an Error (when finish_reason() is ERROR).
    void rethrow_if_failed() const {
        if (const lpx_error *e = lpx_output_error(o_)) throw Error(e);
    }
    /// OpenAI-shaped chunk or final object.
    std::string json() const {
        char *s = nullptr;
        detail::check(lpx_output_json(o_, &s));
        return detail::take(s);
    }
    /// The usage chunk to stream after json() when the body asked for
    /// stream_options.include_usage (the request's last output only, is_done()); "" otherwise.
    std::string usage_json() const {
        char *s = nullptr;
        detail::check(lpx_output_usage_json(o_, &s));
        return detail::take(s);
    }
    const lpx_output *get() const noexcept { return o_; }

private:
    lpx_output *o_;
};

/// A running engine (move-only owner of an lpx_engine).
class Engine {
public:
    /// Checks the library's ABI against this header, then creates the engine.
    explicit Engine(const Config &cfg) {
        if (lpx_abi_version() != LPX_ABI_VERSION)
            throw Error(LPX_ERROR_CODE_UNSUPPORTED,
                        "libloraplex ABI " + std::to_string(lpx_abi_version()) +
                            " does not match loraplex.h's " + std::to_string(LPX_ABI_VERSION));
        lpx_engine_config c = cfg.c_config();
        detail::check(lpx_engine_create(&c, &e_));
    }
    Engine(Engine &&other) noexcept : e_(std::exchange(other.e_, nullptr)) {}
    Engine &operator=(Engine &&other) noexcept {
        if (this != &other) { lpx_engine_free(e_); e_ = std::exchange(other.e_, nullptr); }
        return *this;
    }
    Engine(const Engine &) = delete;
    Engine &operator=(const Engine &) = delete;
    ~Engine() { lpx_engine_free(e_); }

    uint64_t submit(const Request &r) {
        return r.with_c([&](const lpx_request &c) {
            uint64_t id = 0;
            detail::check(lpx_engine_submit(e_, &c, &id));
            return id;
        });
    }
    uint64_t submit_json(const std::string &openai_body) {
        uint64_t id = 0;
        detail::check(lpx_engine_submit_json(e_, openai_body.c_str(), &id));
        return id;
    }
    /// The next delta of `id`, or an Output whose get() is NULL on timeout.
    Output poll(uint64_t id, std::chrono::milliseconds timeout) {
        lpx_output *o = nullptr;
        detail::check(lpx_engine_poll(e_, id, static_cast<uint32_t>(timeout.count()), &o));
        return Output(o);
    }
    void cancel(uint64_t id) { detail::check(lpx_engine_cancel(e_, id)); }
    /// Streams `id` to its last output (is_done()), calling on_delta(const Output&) for every
    /// delta (of every choice); returns the request's usage (the prompt tokens once, every
    /// choice's generated tokens summed). Throws the request's failure.
    template <class F> lpx_usage stream(uint64_t id, F &&on_delta) {
        std::vector<uint64_t> completion;
        uint64_t prompt = 0;
        for (;;) {
            Output o = poll(id, std::chrono::milliseconds(100));
            if (!o.get()) continue;
            on_delta(o);
            lpx_usage u = o.usage();
            if (completion.size() <= o.index()) completion.resize(o.index() + 1, 0);
            completion[o.index()] = std::max(completion[o.index()], u.completion_tokens);
            prompt = std::max(prompt, u.prompt_tokens);
            if (o.is_done()) {
                o.rethrow_if_failed();
                lpx_usage total{prompt, 0};
                for (uint64_t c : completion) total.completion_tokens += c;
                return total;
            }
        }
    }

    /// One choice of a finished request (generate_all).
    struct Choice {
        uint32_t index = 0;
        std::string text;
        std::vector<uint32_t> token_ids;
        std::vector<TokenLogprob> logprobs;
        lpx_finish_reason finish_reason = LPX_FINISH_REASON_NONE;
        lpx_usage usage{};
        double cumulative_logprob = 0;
        std::string prompt_text;
        std::vector<uint32_t> prompt_token_ids;
        std::vector<TokenLogprob> prompt_logprobs;
    };
    /// Submits r and waits for every choice; returns them in index order. Throws the request's
    /// failure.
    std::vector<Choice> generate_all(const Request &r) {
        uint64_t id = submit(r);
        std::vector<Choice> out;
        stream(id, [&](const Output &o) {
            uint32_t i = o.index();
            if (out.size() <= i) out.resize(i + 1);
            Choice &c = out[i];
            c.index = i;
            c.text += o.text();
            for (uint32_t t : o.token_ids()) c.token_ids.push_back(t);
            for (auto &l : o.logprobs()) c.logprobs.push_back(std::move(l));
            c.usage = o.usage();
            c.cumulative_logprob = o.cumulative_logprob();
            if (o.is_final()) c.finish_reason = o.finish_reason();
            if (o.has_prompt()) {
                c.prompt_text = o.prompt_text();
                c.prompt_token_ids = o.prompt_token_ids();
                c.prompt_logprobs = o.prompt_logprobs();
            }
        });
        return out;
    }
    void register_peft_source(const std::string &dir, std::chrono::milliseconds refresh) {
        detail::check(lpx_engine_register_peft_source(e_, dir.c_str(), static_cast<uint32_t>(refresh.count())));
    }
    void refresh() { detail::check(lpx_engine_refresh(e_)); }
    std::string models_json() { char *s = nullptr; detail::check(lpx_engine_models_json(e_, &s)); return detail::take(s); }
    std::string stats_json() { char *s = nullptr; detail::check(lpx_engine_stats_json(e_, &s)); return detail::take(s); }
    std::string metrics_text() { char *s = nullptr; detail::check(lpx_engine_metrics_text(e_, &s)); return detail::take(s); }
    lpx_engine *get() const noexcept { return e_; }

private:
    lpx_engine *e_ = nullptr;
};

/// The capacity plan (lpx_engine_plan_json) for the engine `cfg` would create and a workload
/// JSON object (keys max_lora_rank, max_gpu_loras, max_cpu_loras, max_num_seqs, max_model_len,
/// max_batch_tokens, memory_budget_bytes; "" = the config's values), without loading weights.
/// Returns the plan JSON; throws Error (INVALID_ARGUMENT naming the key) for a bad workload.
inline std::string plan_json(const Config &cfg, const std::string &workload_json = "") {
    lpx_engine_config c = cfg.c_config();
    char *s = nullptr;
    detail::check(lpx_engine_plan_json(&c, workload_json.c_str(), &s));
    return detail::take(s);
}

}  // namespace loraplex
