#!/usr/bin/env python3
"""End-to-end checks of examples/go/openai-server with the official `openai` Python client.

Usage: test_openai.py --url http://127.0.0.1:PORT/v1 --base NAME --adapters A,B
                      [--capacity-url http://127.0.0.1:PORT2/v1] [--counts FILE]

--capacity-url is a second server whose host adapter cache holds one adapter; it is used for
the 429 check. Prints one line per check and `N passed, M failed`; exits 1 on any failure.
"""
import argparse
import json
import sys
import time
import traceback
import urllib.request

import openai

PASSED, FAILED = [], []


def check(name):
    def wrap(fn):
        def run(*a, **kw):
            t0 = time.time()
            try:
                fn(*a, **kw)
                PASSED.append(name)
                print(f"PASS {name} ({time.time() - t0:.2f}s)", flush=True)
            except Exception as e:  # noqa: BLE001 - report every failure, keep going
                FAILED.append(name)
                print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
                traceback.print_exc(limit=3)
        return run
    return wrap


def expect_error(exc_type, status, fn, code=None):
    try:
        fn()
    except exc_type as e:
        assert e.status_code == status, f"status {e.status_code}, want {status}"
        body = e.response.json()
        err = body.get("error") or {}
        for k in ("message", "type", "param", "code"):
            assert k in err, f"error body {body} lacks {k}"
        assert err["message"], f"empty message in {body}"
        if code is not None:
            assert err["code"] == code, f"code {err['code']}, want {code}"
        return e
    raise AssertionError(f"no {exc_type.__name__} raised")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapters", required=True)
    ap.add_argument("--capacity-url")
    ap.add_argument("--counts")
    args = ap.parse_args()
    a, b = args.adapters.split(",")
    client = openai.OpenAI(base_url=args.url, api_key="x", max_retries=0, timeout=60)

    @check("models.list has the base and both adapters (parent = base)")
    def _():
        ids = {m.id: m for m in client.models.list().data}
        assert args.base in ids, f"{args.base} not in {list(ids)}"
        for name in (a, b):
            assert name in ids, f"adapter {name} not in {list(ids)}"
            assert getattr(ids[name], "parent", None) == args.base, f"{name}.parent = {getattr(ids[name], 'parent', None)}"
    _()

    def completion(model, **kw):
        r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=6,
                                      temperature=0, **kw)
        assert r.object == "text_completion", r
        assert len(r.choices) == 1 and isinstance(r.choices[0].text, str), r
        assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason
        assert 1 <= r.usage.completion_tokens <= 6 and r.usage.prompt_tokens > 0, r.usage
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        return r

    results = {}

    @check("completion on the base model")
    def _():
        results["base"] = completion(args.base, logprobs=1)
    _()

    @check(f"completion on adapter {a} (differs from the base)")
    def _():
        r = completion(a, logprobs=1)
        base = results["base"]
        assert r.model == a, f"response model {r.model}, want {a}"
        lp_a = r.choices[0].logprobs.token_logprobs
        lp_b = base.choices[0].logprobs.token_logprobs
        assert r.choices[0].text != base.choices[0].text or abs(lp_a[0] - lp_b[0]) > 1e-6, \
            f"adapter output equals the base output: {r.choices[0].text!r}, {lp_a[0]}"
    _()

    def chat(model, **kw):
        return client.chat.completions.create(
            model=model, messages=[{"role": "system", "content": "You are terse."},
                                   {"role": "user", "content": "Name a color."}],
            max_tokens=8, temperature=0, **kw)

    @check("chat on the base model")
    def _():
        r = chat(args.base)
        assert r.object == "chat.completion", r
        m = r.choices[0].message
        assert m.role == "assistant" and isinstance(m.content, str), m
        assert r.usage.completion_tokens >= 1, r.usage
        results["chat_base"] = r
    _()

    @check(f"chat on adapter {b}")
    def _():
        r = chat(b)
        assert r.object == "chat.completion" and r.model == b, r
        assert r.usage.completion_tokens >= 1
    _()

    @check("streamed chat: chunks concatenate to the non-streamed answer, then usage")
    def _():
        chunks = list(chat(args.base, stream=True))
        assert len(chunks) >= 1, "no chunks"
        assert all(c.object == "chat.completion.chunk" for c in chunks), [c.object for c in chunks]
        assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].choices[0].finish_reason in ("stop", "length"), chunks[-1]
        assert all(c.choices[0].finish_reason is None for c in chunks[:-1]), "finish_reason before the end"
        want = results["chat_base"].choices[0].message.content
        assert text == want, f"streamed {text!r} != non-streamed {want!r}"
    _()

    @check("streamed completion on an adapter")
    def _():
        chunks = list(client.completions.create(model=a, prompt="Once", max_tokens=5, temperature=0, stream=True))
        assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length"), chunks
        assert sum(len(c.choices[0].text) > 0 for c in chunks) >= 1
    _()

    @check("unknown model -> 404 NotFoundError")
    def _():
        expect_error(openai.NotFoundError, 404, lambda: chat("no-such-adapter"), code="model_not_found")
    _()

    @check("temperature = -1 -> 400 BadRequestError")
    def _():
        expect_error(openai.BadRequestError, 400, lambda: chat(args.base, extra_body={"temperature": -1}))
    _()

    @check("n = 2 -> 400 BadRequestError")
    def _():
        e = expect_error(openai.BadRequestError, 400, lambda: completion(args.base, n=2))
        assert "n" in e.response.json()["error"]["message"]
    _()

    @check("JSON mode (response_format) -> 400 naming the field, not free text")
    def _():
        e = expect_error(openai.BadRequestError, 400,
                         lambda: chat(args.base, response_format={"type": "json_object"}))
        assert "response_format" in e.response.json()["error"]["message"], e.response.json()
    _()

    @check("tools, logit_bias, negative seed -> 400 naming each")
    def _():
        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        for field, call in [
            ("tools", lambda: chat(args.base, tools=[tool])),
            ("logit_bias", lambda: completion(args.base, logit_bias={"1": 5})),
            ("seed", lambda: completion(args.base, seed=-1)),
        ]:
            e = expect_error(openai.BadRequestError, 400, call)
            assert field in e.response.json()["error"]["message"], (field, e.response.json())
    _()

    @check("harmless fields (user, metadata) are accepted")
    def _():
        r = completion(args.base, user="end-user-1", extra_body={"metadata": {"k": "v"}})
        assert r.choices[0].text is not None
    _()

    @check("stream_options.include_usage: a final chunk with usage and no choices")
    def _():
        chunks = list(chat(args.base, stream=True, stream_options={"include_usage": True}))
        last = chunks[-1]
        assert last.choices == [] and last.usage is not None, last
        assert last.usage.completion_tokens == results["chat_base"].usage.completion_tokens, last.usage
        assert all(c.usage is None for c in chunks[:-1]), [c.usage for c in chunks[:-1]]
        assert chunks[-2].choices[0].finish_reason in ("stop", "length"), chunks[-2]
    _()

    if args.capacity_url:
        cap = openai.OpenAI(base_url=args.capacity_url, api_key="x", max_retries=0, timeout=60)

        @check("429 + Retry-After when the host cache is full of active adapters; freed on disconnect")
        def _():
            hold = cap.chat.completions.create(
                model=a, messages=[{"role": "user", "content": "Talk forever."}],
                max_tokens=100000, temperature=0, stream=True, extra_body={"ignore_eos": True})
            it = iter(hold)
            first = next(it)
            assert first.object == "chat.completion.chunk"
            e = expect_error(openai.RateLimitError, 429,
                             lambda: cap.completions.create(model=b, prompt="x", max_tokens=2))
            assert e.response.headers.get("retry-after") == "1", dict(e.response.headers)
            hold.close()  # client disconnect: the server cancels the holding request
            deadline = time.time() + 20
            while True:
                try:
                    r = cap.completions.create(model=b, prompt="x", max_tokens=2)
                    assert r.model == b
                    break
                except openai.RateLimitError:
                    assert time.time() < deadline, "adapter slot not freed 20 s after the client disconnected"
                    time.sleep(0.2)
        _()

    print(f"{len(PASSED)} passed, {len(FAILED)} failed")
    if args.counts:
        with open(args.counts, "w") as f:
            f.write(f"{len(PASSED)} {len(FAILED)}\n")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
