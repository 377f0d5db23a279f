// Tests of loraplex.hpp: test_loraplex MODEL. Exits non-zero on the first failed check.
#include <cassert>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "loraplex.hpp"

#define CHECK(c) do { if (!(c)) { std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #c); return 1; } } while (0)

int main(int argc, char **argv) {
    if (argc < 2) { std::fprintf(stderr, "usage: test_loraplex MODEL\n"); return 2; }
    using namespace loraplex;
    int checks = 0;
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
    std::printf("%d passed, 0 failed\n", checks);
    return 0;
}
