// chat: one-shot or interactive chat with a loraplex model through the C++ binding.
//   chat MODEL [MESSAGE]      (no MESSAGE: read lines from stdin; empty line or EOF ends)
//   LPX_ADAPTER=name chat ...  talks to an adapter instead of the base model.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "loraplex.hpp"

int main(int argc, char **argv) {
    if (argc < 2) { std::fprintf(stderr, "usage: chat MODEL [MESSAGE]\n"); return 2; }
    try {
        loraplex::Engine engine(loraplex::Config(argv[1]).from_env());
        const char *adapter = std::getenv("LPX_ADAPTER");
        std::vector<std::pair<std::string, std::string>> history;
        auto turn = [&](const std::string &line) {
            history.emplace_back("user", line);
            loraplex::Request req;
            if (adapter) req.model(adapter);
            for (auto &m : history) req.message(m.first, m.second);
            req.max_tokens(128).temperature(0);
            std::string answer;
            lpx_usage u = engine.stream(engine.submit(req), [&](const loraplex::Output &o) {
                std::string t = o.text();
                answer += t;
                std::cout << t << std::flush;
            });
            std::cout << "\n(" << u.prompt_tokens << " prompt tokens, " << u.completion_tokens
                      << " completion tokens)" << std::endl;
            history.emplace_back("assistant", answer);
        };
        if (argc > 2) {
            turn(argv[2]);
        } else {
            std::string line;
            while (std::cout << "> " << std::flush, std::getline(std::cin, line) && !line.empty()) turn(line);
        }
    } catch (const loraplex::Error &e) {
        std::fprintf(stderr, "error %u: %s\n", (unsigned)e.code(), e.what());
        return 1;
    }
    return 0;
}
