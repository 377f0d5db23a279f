#!/usr/bin/env python3
"""End-to-end checks of examples/go/openai-server with the official `openai` Python client.

Usage: test_openai.py --url http://127.0.0.1:PORT/v1 --base NAME --adapters A,B
                      [--capacity-url http://127.0.0.1:PORT2/v1] [--counts FILE] [--toy-model]

--capacity-url is a second server whose host adapter cache holds one adapter; it is used for
the 429 check. --toy-model (a random-weight model) skips the checks that need a trained model.
Prints one line per check and `N passed, M failed`; exits 1 on any failure.
"""
import argparse
import json
import math
import re
import sys
import time
import traceback
import urllib.request

import jsonschema
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


# A schema with a nested object, an array with maxItems, an enum, integers with bounds,
# required and optional fields and strings with maxLength: every output of it is finite.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"type": "string", "enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 24},
                "zip": {"type": "integer", "minimum": 10000, "maximum": 99999},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
        "nickname": {"type": "string", "maxLength": 12},
    },
    "required": ["name", "age", "color", "tags", "address"],
    "additionalProperties": False,
}


def valid_json(text, schema=None):
    v = json.loads(text)
    if schema is not None:
        jsonschema.validate(v, schema)
    return v


def structured_outputs(client, args, adapter, check, chat):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    msgs = [{"role": "user", "content": "Describe a person living in Zürich as JSON."}]

    for model in (args.base, adapter):
        @check(f"json_schema on {model}: the content parses and validates, finish_reason stop")
        def _():
            r = client.chat.completions.create(model=model, messages=msgs, max_tokens=400,
                                               temperature=0, response_format=fmt)
            c = r.choices[0]
            assert c.finish_reason == "stop", (c.finish_reason, c.message.content)
            valid_json(c.message.content, PERSON)
        _()

        @check(f"json_schema on {model}, streamed (n = 2, sampled): every choice validates")
        def _():
            chunks = list(client.chat.completions.create(
                model=model, messages=msgs, max_tokens=400, temperature=0.8, seed=5, n=2,
                response_format=fmt, stream=True))
            text, finish = {}, {}
            for ch in chunks:
                for c in ch.choices:
                    text[c.index] = text.get(c.index, "") + (c.delta.content or "")
                    if c.finish_reason:
                        finish[c.index] = c.finish_reason
            assert sorted(text) == [0, 1] and finish == {0: "stop", 1: "stop"}, (finish, text)
            for t in text.values():
                valid_json(t, PERSON)
        _()

    @check("json_schema on /v1/completions (response_format in the body)")
    def _():
        r = client.completions.create(model=args.base, prompt="A person as JSON: ", max_tokens=400,
                                      temperature=0, extra_body={"response_format": fmt})
        assert r.choices[0].finish_reason == "stop", r.choices[0]
        valid_json(r.choices[0].text, PERSON)
    _()

    @check("guided_json (vLLM) on an adapter")
    def _():
        r = client.chat.completions.create(model=adapter, messages=msgs, max_tokens=400, temperature=0,
                                           extra_body={"guided_json": PERSON})
        assert r.choices[0].finish_reason == "stop", r.choices[0]
        valid_json(r.choices[0].message.content, PERSON)
    _()

    if not args.toy_model:
        @check("json_object mode: a JSON object, finish_reason stop")
        def _():
            r = client.chat.completions.create(
                model=args.base, max_tokens=200, temperature=0, response_format={"type": "json_object"},
                messages=[{"role": "user", "content":
                           'Return a JSON object with the keys "name" and "age" for a person named Bob who is 30.'}])
            c = r.choices[0]
            assert c.finish_reason == "stop", (c.finish_reason, c.message.content)
            assert isinstance(valid_json(c.message.content), dict), c.message.content
        _()
    else:
        print("SKIP json_object mode (a random-weight model does not reliably close JSON objects)")

    @check("guided_choice via extra_body (chat and completions)")
    def _():
        choices = ["sunny", "rainy", "cloudy"]
        r = chat(args.base, extra_body={"guided_choice": choices})
        assert r.choices[0].message.content in choices and r.choices[0].finish_reason == "stop", r.choices[0]
        r = client.completions.create(model=adapter, prompt="Weather:", max_tokens=10, temperature=0,
                                      extra_body={"guided_choice": choices})
        assert r.choices[0].text in choices and r.choices[0].finish_reason == "stop", r.choices[0]
    _()

    @check("guided_regex via extra_body")
    def _():
        pattern = r"[0-9]{3}-[A-Z]{2}"
        r = client.completions.create(model=args.base, prompt="Code:", max_tokens=20, temperature=0,
                                      extra_body={"guided_regex": pattern})
        assert re.fullmatch(pattern, r.choices[0].text), r.choices[0].text
        assert r.choices[0].finish_reason == "stop", r.choices[0]
    _()


def several_choices(client, args, check):
    msgs = [{"role": "user", "content": "Name a fruit."}]

    @check("n = 3 on chat and completions: indices 0..2, seeded sampling reproducible, usage summed")
    def _():
        def run_chat():
            return client.chat.completions.create(model=args.base, messages=msgs, max_tokens=8,
                                                  temperature=0.9, seed=42, n=3)

        def run_completion():
            return client.completions.create(model=args.base, prompt="Once upon a time", max_tokens=8,
                                             temperature=0.9, seed=42, n=3)
        for run, text in [(run_chat, lambda c: c.message.content), (run_completion, lambda c: c.text)]:
            r1, r2 = run(), run()
            assert [c.index for c in r1.choices] == [0, 1, 2], r1.choices
            assert [text(c) for c in r1.choices] == [text(c) for c in r2.choices], (r1, r2)
            assert all(c.finish_reason in ("stop", "length") for c in r1.choices), r1.choices
            assert r1.usage.completion_tokens >= 3 and r1.usage.completion_tokens <= 24, r1.usage
    _()

    @check("streamed n = 2: chunks interleaved, every index gets a finish_reason, one usage chunk")
    def _():
        chunks = list(client.completions.create(
            model=args.base, prompt="Once upon a time", max_tokens=8, temperature=0.9, seed=1, n=2,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
        order = [c.choices[0].index for c in chunks if c.choices]
        assert all(len(c.choices) == 1 for c in chunks[:-1]), chunks
        assert set(order) == {0, 1}, order
        # Interleaved: after the first switch of index, an earlier index comes back.
        switches = sum(1 for x, y in zip(order, order[1:]) if x != y)
        assert switches >= 2, f"chunks not interleaved: {order}"
        finish = {c.choices[0].index: c.choices[0].finish_reason for c in chunks
                  if c.choices and c.choices[0].finish_reason}
        assert finish == {0: "length", 1: "length"}, finish
        last = chunks[-1]
        assert last.choices == [] and last.usage.completion_tokens == 16, last
    _()

    @check("best_of = 3, n = 1 on completions")
    def _():
        r = client.completions.create(model=args.base, prompt="Once upon a time", max_tokens=6,
                                      temperature=0.9, seed=3, best_of=3, n=1)
        assert len(r.choices) == 1 and r.choices[0].index == 0, r.choices
        assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0]
    _()


def biases_and_echo(client, args, check):
    def token_ids(**kw):
        r = client.completions.create(model=args.base, prompt="The capital of France is", max_tokens=6,
                                      temperature=0, logprobs=0,
                                      extra_body={"return_tokens_as_token_ids": True, "ignore_eos": True}, **kw)
        toks = r.choices[0].logprobs.tokens
        assert all(t.startswith("token_id:") for t in toks), toks
        return [int(t.split(":")[1]) for t in toks]

    @check("logit_bias: +100 forces a token (every generated token), -100 bans one")
    def _():
        greedy = token_ids()
        assert len(greedy) == 6, greedy
        forced = 1000 if greedy[0] != 1000 else 1001
        assert token_ids(logit_bias={str(forced): 100}) == [forced] * 6
        banned = greedy[0]
        got = token_ids(logit_bias={str(banned): -100})
        assert banned not in got, (banned, got)
    _()

    prompt = "The capital of France is"

    @check("echo with logprobs: prompt tokens first, token_logprobs[0] None, the rest finite")
    def _():
        r = client.completions.create(model=args.base, prompt=prompt, max_tokens=4, temperature=0,
                                      echo=True, logprobs=2)
        c = r.choices[0]
        assert c.text.startswith(prompt) and len(c.text) > len(prompt), c.text
        lp = c.logprobs
        n = r.usage.prompt_tokens + r.usage.completion_tokens
        assert len(lp.tokens) == n == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset), lp
        assert "".join(lp.tokens[:r.usage.prompt_tokens]).endswith(prompt), lp.tokens
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, lp
        assert all(x is not None and math.isfinite(x) and x <= 0 for x in lp.token_logprobs[1:]), lp.token_logprobs
        assert all(isinstance(t, dict) and len(t) >= 1 for t in lp.top_logprobs[1:]), lp.top_logprobs
        for i in range(n - 1):
            assert lp.text_offset[i + 1] - lp.text_offset[i] == len(lp.tokens[i]), (i, lp.text_offset, lp.tokens)
    _()

    @check("echo without logprobs: the text starts with the prompt")
    def _():
        r = client.completions.create(model=args.base, prompt=prompt, max_tokens=4, temperature=0, echo=True)
        plain = client.completions.create(model=args.base, prompt=prompt, max_tokens=4, temperature=0)
        assert r.choices[0].text == prompt + plain.choices[0].text, (r.choices[0].text, plain.choices[0].text)
        assert r.choices[0].logprobs is None
    _()

    @check("echo streamed: the first chunk starts with the prompt")
    def _():
        chunks = list(client.completions.create(model=args.base, prompt=prompt, max_tokens=4, temperature=0,
                                                echo=True, stream=True))
        assert chunks[0].choices[0].text.startswith(prompt), chunks[0]
        assert not any(c.choices[0].text.startswith(prompt) for c in chunks[1:]), chunks
    _()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapters", required=True)
    ap.add_argument("--capacity-url")
    ap.add_argument("--counts")
    ap.add_argument("--toy-model", action="store_true")
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

    @check("tools, tool_choice, invalid schema, logit_bias out of range, n = 0, negative seed, "
           "streamed best_of, unknown response_format -> 400 naming each")
    def _():
        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}
        for field, call in [
            ("tools", lambda: chat(args.base, tools=[tool])),
            ("tool_choice", lambda: chat(args.base, tool_choice="auto")),
            ("nonsense", lambda: chat(args.base, response_format=bad_schema)),
            ("logit_bias", lambda: completion(args.base, logit_bias={"1": 150})),
            ("logit_bias", lambda: completion(args.base, logit_bias={"one": 1})),
            ('"n"', lambda: completion(args.base, n=0)),
            ("seed", lambda: completion(args.base, seed=-1)),
            ("best_of", lambda: list(client.completions.create(
                model=args.base, prompt="x", max_tokens=2, best_of=2, stream=True))),
            ("response_format.type", lambda: chat(args.base, response_format={"type": "yaml"})),
            ("guided_choice", lambda: chat(args.base, extra_body={"guided_regex": "a", "guided_choice": ["b"]})),
        ]:
            e = expect_error(openai.BadRequestError, 400, call)
            assert field in e.response.json()["error"]["message"], (field, e.response.json())
    _()

    structured_outputs(client, args, a, check, chat)
    several_choices(client, args, check)
    biases_and_echo(client, args, check)

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
