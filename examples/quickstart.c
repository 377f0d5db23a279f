/*
 * loraplex quickstart: serve one base model plus every LoRA adapter of a PEFT source, and stream
 * a chat answer from each of them plus a text completion from the base model, all concurrently
 * (they share batches). The base model's chat answer is streamed live; the others are printed
 * as they finish.
 *
 *   quickstart [MODEL] [PEFT_SOURCE]
 *
 * MODEL defaults to $LPX_MODEL, then models/SmolLM2-135M-Instruct.Q4_1.gguf; PEFT_SOURCE to
 * $NIM_PEFT_SOURCE (optional). Other LPX_* / NIM_* variables are applied too.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loraplex.h"

#define MAX_MODELS 64

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Prints and frees err; returns 1 if there was one. */
static int failed(lpx_error *err, const char *what) {
    if (err == NULL) return 0;
    fprintf(stderr, "%s failed: [code %u] %s\n", what, (unsigned)lpx_error_code(err),
            lpx_error_message(err));
    lpx_error_free(err);
    return 1;
}

/* Collects the "id" values of a /v1/models body (a minimal scan: ids are plain JSON strings
 * without escapes, which holds for model and adapter directory names). */
static size_t model_ids(const char *json, char *ids[], size_t max) {
    size_t n = 0;
    const char *p = json;
    while (n < max && (p = strstr(p, "\"id\"")) != NULL) {
        p += 4;
        while (*p == ' ' || *p == ':') p++;
        if (*p != '"') continue;
        const char *start = ++p;
        while (*p && *p != '"') p++;
        size_t len = (size_t)(p - start);
        ids[n] = malloc(len + 1);
        if (ids[n] == NULL) break;
        memcpy(ids[n], start, len);
        ids[n][len] = '\0';
        n++;
    }
    return n;
}

int main(int argc, char **argv) {
    int rc = 1;
    lpx_engine *engine = NULL;
    char *models = NULL;
    char *ids[MAX_MODELS];
    size_t n_ids = 0, n_req = 0;
    uint64_t req_ids[MAX_MODELS + 1];
    int done[MAX_MODELS + 1];
    double first_token[MAX_MODELS + 1];
    lpx_usage usage[MAX_MODELS + 1];
    char *answer[MAX_MODELS + 1] = {0};
    size_t answer_len[MAX_MODELS + 1] = {0};

    if (lpx_abi_version() != LPX_ABI_VERSION) {
        fprintf(stderr, "libloraplex ABI %u does not match the header's %u\n",
                (unsigned)lpx_abi_version(), (unsigned)LPX_ABI_VERSION);
        return 1;
    }
    printf("loraplex %s (header %s)\n", lpx_version(), LPX_VERSION_STRING);

    lpx_engine_config cfg;
    lpx_engine_config_init(&cfg);
    if (failed(lpx_engine_config_from_env(&cfg), "lpx_engine_config_from_env")) return 1;
    if (argc > 1) cfg.model = argv[1];
    if (cfg.model == NULL) cfg.model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (argc > 2) cfg.peft_source = argv[2];
    cfg.max_num_seqs = 16;
    cfg.max_model_len = 512;

    double t0 = now_s();
    if (failed(lpx_engine_create(&cfg, &engine), "lpx_engine_create")) return 1;
    printf("engine ready in %.2f s (model %s, adapters from %s)\n", now_s() - t0, cfg.model,
           cfg.peft_source ? cfg.peft_source : "(none)");

    if (failed(lpx_engine_models_json(engine, &models), "lpx_engine_models_json")) goto out;
    printf("models: %s\n", models);
    n_ids = model_ids(models, ids, MAX_MODELS);
    if (n_ids == 0) {
        fprintf(stderr, "no models listed\n");
        goto out;
    }

    /* Submit one chat request per model (base first, then every adapter) and a plain text
     * completion on the base model, all at once. */
    lpx_message msgs[2] = {
        {"system", "You are a concise assistant."},
        {"user", "In one sentence, what is a LoRA adapter?"},
    };
    double t_submit = now_s();
    n_req = n_ids + 1;
    for (size_t i = 0; i < n_req; i++) {
        lpx_request req;
        lpx_request_init(&req);
        if (i < n_ids) {
            req.model = ids[i];
            req.messages = msgs;
            req.messages_len = 2;
        } else {
            req.model = ids[0];
            req.prompt = "The three primary colors are";
        }
        req.max_tokens = 32;
        req.temperature = 0.0f;
        done[i] = 0;
        first_token[i] = 0.0;
        memset(&usage[i], 0, sizeof usage[i]);
        if (failed(lpx_engine_submit(engine, &req, &req_ids[i]), i < n_ids ? ids[i] : "completion")) {
            n_req = i;
            goto out;
        }
    }

    /* Stream: poll every request in turn. The base chat's deltas are printed as they arrive;
     * the other answers are collected and printed when they finish. */
    printf("\n[%s] ", ids[0]);
    fflush(stdout);
    size_t remaining = n_req;
    while (remaining > 0) {
        for (size_t i = 0; i < n_req; i++) {
            if (done[i]) continue;
            lpx_output *o = NULL;
            if (failed(lpx_engine_poll(engine, req_ids[i], 20, &o), "lpx_engine_poll")) goto out;
            if (o == NULL) continue;
            size_t len = 0;
            const char *text = lpx_output_text_len(o, &len);
            if (len > 0) {
                if (first_token[i] == 0.0) first_token[i] = now_s() - t_submit;
                if (i == 0) {
                    fwrite(text, 1, len, stdout);
                    fflush(stdout);
                } else {
                    char *grown = realloc(answer[i], answer_len[i] + len + 1);
                    if (grown == NULL) {
                        lpx_output_free(o);
                        goto out;
                    }
                    memcpy(grown + answer_len[i], text, len);
                    answer_len[i] += len;
                    grown[answer_len[i]] = '\0';
                    answer[i] = grown;
                }
            }
            usage[i] = lpx_output_usage(o);
            lpx_finish_reason fr = lpx_output_finish_reason(o);
            if (fr != LPX_FINISH_REASON_NONE) {
                const lpx_error *e = lpx_output_error(o);
                const char *label = i < n_ids ? ids[i] : "completion";
                if (i == 0) printf("\n");
                else printf("[%s] %s%s\n", label, i == n_ids ? "The three primary colors are" : "",
                            answer[i] ? answer[i] : "");
                printf("[%s] finished: %s%s%s\n", label,
                       fr == LPX_FINISH_REASON_STOP     ? "stop"
                       : fr == LPX_FINISH_REASON_LENGTH ? "length"
                       : fr == LPX_FINISH_REASON_CANCELLED ? "cancelled"
                                                          : "error",
                       e ? ": " : "", e ? lpx_error_message(e) : "");
                done[i] = 1;
                remaining--;
            }
            lpx_output_free(o);
        }
    }
    double elapsed = now_s() - t_submit;
    uint64_t total = 0;
    printf("\n");
    for (size_t i = 0; i < n_req; i++) {
        printf("%-32s prompt %3llu  completion %3llu  first token %.3f s\n",
               i < n_ids ? ids[i] : "completion (base)",
               (unsigned long long)usage[i].prompt_tokens,
               (unsigned long long)usage[i].completion_tokens, first_token[i]);
        total += usage[i].completion_tokens;
    }
    printf("%zu requests over %zu adapters, %llu tokens in %.2f s (%.1f tok/s)\n", n_req, n_ids - 1,
           (unsigned long long)total,
           elapsed, elapsed > 0 ? (double)total / elapsed : 0.0);
    rc = 0;

out:
    for (size_t i = 0; i < n_ids; i++) free(ids[i]);
    for (size_t i = 0; i <= MAX_MODELS; i++) free(answer[i]);
    lpx_string_free(models);
    lpx_engine_free(engine);
    return rc;
}
