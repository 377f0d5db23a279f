// Tests of loraplex.hpp: test_loraplex MODEL PEFT_DIR (PEFT_DIR: an existing directory).
// Exits non-zero on the first failed check.
#include <cassert>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "loraplex.hpp"

#define CHECK(c) do { if (!(c)) { std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #c); return 1; } } while (0)
// For lambdas returning void: exits the process on failure.
#define CHECK_VOID(c) do { if (!(c)) { std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #c); std::exit(1); } } while (0)

int main(int argc, char **argv) {
    if (argc < 3) { std::fprintf(stderr, "usage: test_loraplex MODEL PEFT_DIR\n"); return 2; }
    using namespace loraplex;
    int checks = 0;
    // The `"config":{...}` object of an engine's stats JSON (it holds no nested object).
    auto config_of = [](Engine &e) {
        std::string st = e.stats_json();
        size_t at = st.find("\"config\":{");
        if (at == std::string::npos) return std::string();
        return st.substr(at, st.find('}', at) - at + 1);
    };

    // from_env() keeps what the environment set: c_config() must not overwrite the served name.
    setenv("LPX_SERVED_MODEL_NAME", "env-served", 1);
    setenv("LPX_MAX_QUEUE", "55", 1);
    {
        Config c(argv[1]);
        c.threads(1).from_env();
        lpx_engine_config cc = c.c_config();
        CHECK(cc.served_model_name != nullptr && std::string(cc.served_model_name) == "env-served"); checks++;
        CHECK(cc.max_queue == 55 && std::string(cc.model) == argv[1]); checks++;
        Engine e(c);
        CHECK(e.models_json().find("\"id\":\"env-served\"") != std::string::npos); checks++;
        CHECK(config_of(e).find("\"served_model_name\":\"env-served\"") != std::string::npos); checks++;
        // A setter after from_env() overrides the environment.
        c.served_name("set-after");
        CHECK(std::string(c.c_config().served_model_name) == "set-after"); checks++;
    }
    unsetenv("LPX_SERVED_MODEL_NAME");
    unsetenv("LPX_MAX_QUEUE");

    // Every field set to a non-default value reads back through the stats JSON ("cpu" is the
    // only device of a CPU build, so it is set explicitly).
    {
        Config all = Config(argv[1]).served_name("cpp-served").device("cpu").threads(2)
            .bf16_weights(true).max_num_seqs(5).max_batch_tokens(40).max_model_len(100)
            .kv_block_size(8).kv_cache_bytes(1u << 20).max_queue(77).peft_source(argv[2])
            .peft_refresh_interval(std::chrono::milliseconds(60000)).max_cpu_loras(5)
            .max_gpu_loras(3).max_lora_rank(32).memory_budget_bytes(1ull << 30);
        Engine e(all);
        std::string cfg = config_of(e);
        const std::string want[] = {
            "\"model\":\"" + std::string(argv[1]) + "\"", "\"served_model_name\":\"cpp-served\"",
            "\"device\":\"cpu\"", "\"threads\":2", "\"weight_dtype\":\"bf16\"",
            "\"max_num_seqs\":5", "\"max_batch_tokens\":40", "\"max_model_len\":100",
            "\"kv_block_size\":8", "\"kv_cache_bytes\":1048576", "\"max_queue\":77",
            "\"peft_source\":[\"" + std::string(argv[2]) + "\"]", "\"peft_refresh_interval_ms\":60000",
            "\"max_cpu_loras\":5", "\"max_gpu_loras\":3", "\"max_lora_rank\":32",
            "\"memory_budget_bytes\":1073741824",
        };
        for (const auto &w : want) {
            if (cfg.find(w) == std::string::npos) {
                std::fprintf(stderr, "stats config %s lacks %s\n", cfg.c_str(), w.c_str());
                return 1;
            }
        }
        checks++;
    }
    // Errors carry codes.
    try { Engine bad(Config("/nonexistent/model")); CHECK(false); }
    catch (const Error &e) { CHECK(e.code() == LPX_ERROR_CODE_IO || e.code() == LPX_ERROR_CODE_INVALID_MODEL); checks++; }

    Engine eng(Config(argv[1]).threads(2).max_model_len(256));
    CHECK(eng.models_json().find("\"object\":\"list\"") != std::string::npos); checks++;
    CHECK(eng.metrics_text().find("vllm:") != std::string::npos); checks++;

    // Greedy requests are deterministic and stream to `max_tokens` tokens.
    auto run = [&](Engine &e) {
        std::string text; size_t n = 0;
        uint64_t id = e.submit(Request().tokens({1, 2, 3}).max_tokens(6).temperature(0).ignore_eos(true));
        lpx_usage u = e.stream(id, [&](const Output &o) { text += o.text(); n += o.token_ids().size(); });
        return std::make_pair(text + "|" + std::to_string(n), u.completion_tokens);
    };
    auto a = run(eng), b = run(eng);
    CHECK(a == b); checks++;
    CHECK(a.second == 6); checks++;

    // Move semantics: the moved-from engine is empty, the moved-to one works.
    Engine moved = std::move(eng);
    CHECK(eng.get() == nullptr); checks++;
    CHECK(run(moved) == a); checks++;

    // Unknown adapter -> NOT_FOUND; bad JSON -> INVALID_ARGUMENT.
    try { moved.submit(Request().prompt("hi").model("nope")); CHECK(false); }
    catch (const Error &e) { CHECK(e.code() == LPX_ERROR_CODE_NOT_FOUND); checks++; }
    try { moved.submit_json("{\"prompt\": 3}"); CHECK(false); }
    catch (const Error &e) { CHECK(e.code() == LPX_ERROR_CODE_INVALID_ARGUMENT); checks++; }

    // Chat via JSON, non-streamed: one final output with an OpenAI object.
    uint64_t id = moved.submit_json("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":4,\"temperature\":0}");
    Output o = moved.poll(id, std::chrono::milliseconds(0));
    while (!o.get()) o = moved.poll(id, std::chrono::milliseconds(100));
    CHECK(o.is_final()); checks++;
    CHECK(o.json().find("\"chat.completion\"") != std::string::npos); checks++;

    // stream_options.include_usage: chunks carry "usage":null, the final output gives the
    // usage chunk (empty choices), earlier outputs none.
    {
        uint64_t uid = moved.submit_json("{\"prompt\":\"hi\",\"max_tokens\":3,\"stream\":true,"
                                         "\"ignore_eos\":true,\"stream_options\":{\"include_usage\":true}}");
        std::string usage;
        bool early_usage = false, null_usage = true;
        moved.stream(uid, [&](const Output &o) {
            null_usage = null_usage && o.json().find("\"usage\":null") != std::string::npos;
            if (o.is_final()) usage = o.usage_json(); else early_usage = early_usage || !o.usage_json().empty();
        });
        CHECK(!early_usage && null_usage); checks++;
        CHECK(usage.find("\"choices\":[]") != std::string::npos); checks++;
        CHECK(usage.find("\"completion_tokens\":3") != std::string::npos); checks++;
    }
    try { moved.submit_json("{\"prompt\":\"hi\",\"response_format\":{\"type\":\"yaml\"}}"); CHECK(false); }
    catch (const Error &e) {
        CHECK(e.code() == LPX_ERROR_CODE_INVALID_ARGUMENT && std::string(e.what()).find("response_format") != std::string::npos);
        checks++;
    }
    try { moved.submit(Request().prompt("hi").n(0)); CHECK(false); }
    catch (const Error &e) {
        CHECK(e.code() == LPX_ERROR_CODE_INVALID_ARGUMENT && std::string(e.what()).find("req->n") != std::string::npos);
        checks++;
    }
    // A mixture of an unknown adapter: NOT_FOUND naming it (the mixture reached the engine).
    try { moved.submit(Request().prompt("hi").adapter("no-such-adapter", 0.5f)); CHECK(false); }
    catch (const Error &e) {
        CHECK(e.code() == LPX_ERROR_CODE_NOT_FOUND && std::string(e.what()).find("no-such-adapter") != std::string::npos);
        checks++;
    }
    try { moved.submit(Request().prompt("hi").adapter("x", std::nanf(""))); CHECK(false); }
    catch (const Error &e) {
        CHECK(e.code() == LPX_ERROR_CODE_INVALID_ARGUMENT && std::string(e.what()).find("adapters[0].scale") != std::string::npos);
        checks++;
    }
    try { moved.submit(Request().prompt("hi").logit_bias(65, 101.0f)); CHECK(false); }
    catch (const Error &e) {
        CHECK(e.code() == LPX_ERROR_CODE_INVALID_ARGUMENT && std::string(e.what()).find("req->logit_bias[0].bias") != std::string::npos);
        checks++;
    }

    // n = 3 choices: every index, each with its tokens; the same seed gives the same choices.
    {
        Request r = Request().prompt("hi").n(3).max_tokens(4).temperature(1.0f).seed(9).ignore_eos(true);
        auto a3 = moved.generate_all(r), b3 = moved.generate_all(r);
        CHECK(a3.size() == 3); checks++;
        for (uint32_t i = 0; i < 3; i++) {
            CHECK(a3[i].index == i && a3[i].token_ids.size() == 4 && a3[i].finish_reason == LPX_FINISH_REASON_LENGTH);
            CHECK(a3[i].token_ids == b3[i].token_ids);
        }
        checks++;
        // Stream: usage sums the choices.
        uint64_t sid = moved.submit(r);
        lpx_usage total = moved.stream(sid, [](const Output &) {});
        CHECK(total.completion_tokens == 12); checks++;
    }
    // echo + prompt log-probabilities on each choice's first output.
    {
        auto c = moved.generate_all(Request().prompt("hey").n(2).max_tokens(2).temperature(0).echo(true).prompt_logprobs(3));
        CHECK(c.size() == 2); checks++;
        for (auto &ch : c) {
            CHECK(ch.prompt_text == "hey" && ch.prompt_token_ids.size() >= 3);
            CHECK(ch.prompt_logprobs.size() == ch.prompt_token_ids.size() - 1);
            for (auto &l : ch.prompt_logprobs) CHECK(l.top.size() == 3 && l.logprob <= 0.0f);
            CHECK(ch.cumulative_logprob < 0.0);
        }
        checks++;
    }
    // logit_bias forces a token; a choice constraint picks one of its strings.
    {
        auto f = moved.generate_all(Request().tokens({1, 2, 3}).max_tokens(5).temperature(0).logit_bias(65, 100.0f));
        CHECK(f.size() == 1 && f[0].text == "AAAAA"); checks++;
        auto y = moved.generate_all(Request().tokens({1, 2, 3}).max_tokens(20).temperature(0).choice("yes").choice("no"));
        CHECK(y.size() == 1 && (y[0].text == "yes" || y[0].text == "no") && y[0].finish_reason == LPX_FINISH_REASON_STOP); checks++;
        auto g = moved.generate_all(Request().tokens({1, 2, 3}).max_tokens(20).temperature(0)
                                        .response_format(LPX_RESPONSE_FORMAT_TYPE_REGEX, "[a-c]{4}"));
        CHECK(g.size() == 1 && g[0].text.size() == 4 && g[0].text.find_first_not_of("abc") == std::string::npos); checks++;
    }
    // A non-streamed JSON body with n = 2: one output, done, holding both choices.
    {
        uint64_t jid = moved.submit_json("{\"prompt\":\"hi\",\"n\":2,\"max_tokens\":2,\"ignore_eos\":true}");
        int outputs = 0;
        std::string js;
        moved.stream(jid, [&](const Output &o) { outputs++; js = o.json(); CHECK_VOID(o.is_done()); });
        CHECK(outputs == 1); checks++;
        CHECK(js.find("\"index\":1") != std::string::npos && js.find("\"completion_tokens\":4") != std::string::npos); checks++;
    }

    // Logprobs are owning copies: they stay valid after the Output is gone.
    std::vector<loraplex::TokenLogprob> lps;
    {
        uint64_t lid = moved.submit(Request().prompt("hi").max_tokens(3).temperature(0.0f).logprobs(2));
        size_t got = 0;
        while (got < 3) {
            Output lo = moved.poll(lid, std::chrono::milliseconds(100));
            if (!lo.get()) continue;
            for (auto &t : lo.logprobs()) lps.push_back(t);
            got += lo.token_ids().size();
            if (lo.is_final()) break;
        }
    }
    CHECK(lps.size() == 3); checks++;
    for (auto &t : lps) { CHECK(t.top.size() == 2 && t.top[0].token == t.token && t.logprob <= 0.0f); }
    checks++;

    // Concurrency and cancel from several threads.
    std::vector<std::thread> ts;
    std::vector<int> ok(4, 0);
    for (int t = 0; t < 4; t++) ts.emplace_back([&, t] {
        for (int i = 0; i < 10; i++) {
            uint64_t rid = moved.submit(Request().tokens({uint32_t(5 + t), uint32_t(i)}).max_tokens(50).ignore_eos(true));
            if (i % 2) moved.cancel(rid);
            moved.stream(rid, [](const Output &) {});
            ok[t]++;
        }
    });
    for (auto &t : ts) t.join();
    for (int v : ok) CHECK(v == 10);
    checks++;
    // The capacity plan's memory is what an engine with the workload's values allocates.
    {
        auto memory_of = [](const std::string &js) {
            size_t at = js.find("\"memory\":{");
            return at == std::string::npos ? std::string() : js.substr(at, js.find('}', at) - at + 1);
        };
        Config pc = Config(argv[1]).threads(1).max_cpu_loras(3).max_gpu_loras(2).max_lora_rank(8);
        std::string plan = plan_json(pc, R"({"max_num_seqs": 2, "max_model_len": 64})");
        CHECK(plan.find("\"fits\":true") != std::string::npos); checks++;
        Engine pe(pc.max_num_seqs(2).max_model_len(64));
        CHECK(!memory_of(plan).empty() && memory_of(plan) == memory_of(pe.stats_json())); checks++;
        CHECK(plan_json(pc).find("\"max_num_seqs\":2") != std::string::npos); checks++;
        bool threw = false;
        try { plan_json(pc, R"({"max_num_seqs": "x"})"); } catch (const Error &err) {
            threw = err.code() == LPX_ERROR_CODE_INVALID_ARGUMENT &&
                    std::string(err.what()).find("max_num_seqs") != std::string::npos;
        }
        CHECK(threw); checks++;
    }
    std::printf("%d passed, 0 failed\n", checks);
    return 0;
}
