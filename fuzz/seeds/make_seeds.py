#!/usr/bin/env python3
"""Writes the committed seed corpus of every fuzz target (fuzz/seeds/<target>/).

Standard library only (no numpy, no torch): each seed is a small valid (or nearly valid) input
of the format its target parses, so the fuzzer starts past the magic numbers and headers.
Run from anywhere: python3 fuzz/seeds/make_seeds.py
"""
import collections
import gzip
import io
import json
import os
import pickle
import struct
import sys
import tarfile
import types
import zipfile

ROOT = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# --- GGUF ---------------------------------------------------------------------------------
def gguf_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_kv(key, ty, val):
    out = gguf_str(key) + struct.pack("<I", ty)
    if ty == 4:
        out += struct.pack("<I", val)
    elif ty == 6:
        out += struct.pack("<f", val)
    elif ty == 7:
        out += struct.pack("<B", val)
    elif ty == 8:
        out += gguf_str(val)
    elif ty == 9:
        ety, items = val
        out += struct.pack("<IQ", ety, len(items))
        for it in items:
            out += gguf_str(it) if ety == 8 else struct.pack("<i", it)
    return out


def q8_0(n):
    # Blocks of f16 scale 0.01 and 32 small int8 values.
    blk = struct.pack("<e", 0.01) + bytes((i * 7) % 256 for i in range(32))
    return blk * (n // 32)


def gguf_file(with_tensors, chat_template):
    hidden, ffn, heads, kv_heads = 32, 64, 2, 1
    head_dim = hidden // heads
    vocab = ["a", "b", "c", "ab", "bc", "<s>", "</s>", "Ġ"] + [chr(0x61 + i) * 2 for i in range(3, 24)]
    vocab = list(dict.fromkeys(vocab))[:32]
    kvs = [
        ("general.architecture", 8, "llama"),
        ("general.alignment", 4, 32),
        ("llama.context_length", 4, 64),
        ("llama.embedding_length", 4, hidden),
        ("llama.block_count", 4, 1),
        ("llama.feed_forward_length", 4, ffn),
        ("llama.attention.head_count", 4, heads),
        ("llama.attention.head_count_kv", 4, kv_heads),
        ("llama.rope.freq_base", 6, 10000.0),
        ("llama.attention.layer_norm_rms_epsilon", 6, 1e-5),
        ("tokenizer.ggml.model", 8, "gpt2"),
        ("tokenizer.ggml.pre", 8, "smollm"),
        ("tokenizer.ggml.tokens", 9, (8, vocab)),
        ("tokenizer.ggml.token_type", 9, (5, [1] * len(vocab))),
        ("tokenizer.ggml.merges", 9, (8, ["a b", "b c"])),
        ("tokenizer.ggml.bos_token_id", 4, 5),
        ("tokenizer.ggml.eos_token_id", 4, 6),
        ("tokenizer.ggml.add_bos_token", 7, 0),
        ("tokenizer.chat_template", 8, chat_template),
    ]
    # (name, ggml dims (inner first), type id)
    F32, Q8 = 0, 8
    tensors = [
        ("token_embd.weight", [hidden, len(vocab)], Q8),
        ("output_norm.weight", [hidden], F32),
        ("blk.0.attn_norm.weight", [hidden], F32),
        ("blk.0.attn_q.weight", [hidden, hidden], Q8),
        ("blk.0.attn_k.weight", [hidden, kv_heads * head_dim], Q8),
        ("blk.0.attn_v.weight", [hidden, kv_heads * head_dim], Q8),
        ("blk.0.attn_output.weight", [hidden, hidden], Q8),
        ("blk.0.ffn_norm.weight", [hidden], F32),
        ("blk.0.ffn_gate.weight", [hidden, ffn], Q8),
        ("blk.0.ffn_up.weight", [hidden, ffn], Q8),
        ("blk.0.ffn_down.weight", [ffn, hidden], Q8),
    ] if with_tensors else []
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for k, ty, v in kvs:
        head += gguf_kv(k, ty, v)
    data = b""
    infos = b""
    for name, dims, ty in tensors:
        n = 1
        for d in dims:
            n *= d
        blob = struct.pack("<%df" % n, *([1.0] * n)) if ty == F32 else q8_0(n)
        data += b"\0" * (-len(data) % 32)
        infos += gguf_str(name) + struct.pack("<I", len(dims))
        infos += b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ty, len(data))
        data += blob
    head += infos
    head += b"\0" * (-len(head) % 32)
    return head + data


SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] not in ['system', "
    "'user', 'assistant'] %}{{ raise_exception('unknown role ' ~ message['role']) }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}"
    "{%- endif %}{{- bos_token }}{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('roles must alternate') }}{%- endif %}"
    "{%- if message['role'] == 'user' %}{{- '[INST] ' + message['content'].strip() + ' [/INST]' }}"
    "{%- else %}{{- ' ' + message['content'] + eos_token }}{%- endif %}{%- endfor %}"
)


def gen_gguf():
    write("gguf", "tiny-llama-q8.gguf", gguf_file(True, SMOL_TEMPLATE))
    write("gguf", "metadata-only.gguf", gguf_file(False, LLAMA3_TEMPLATE))


# --- OpenAI bodies --------------------------------------------------------------------------
def gen_openai():
    bodies = {
        "completion.json": {"model": "served-model", "prompt": "Hello", "max_tokens": 8,
                            "temperature": 0.7, "top_p": 0.9, "seed": 3, "stop": ["\n", "."]},
        "chat.json": {"model": "served-model", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"}], "max_tokens": 16, "stream": True,
            "stream_options": {"include_usage": True}},
        "chat-parts.json": {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]}],
            "logprobs": True, "top_logprobs": 2, "n": 1},
        "completion-logprobs.json": {"prompt": ["only one"], "logprobs": 3, "echo": False,
                                     "frequency_penalty": 0.5, "presence_penalty": -0.5,
                                     "repetition_penalty": 1.1, "top_k": 40, "min_p": 0.05},
        "adapter.json": {"model": "my-adapter", "prompt": "x", "max_tokens": 1,
                         "stop_token_ids": [2, 3], "ignore_eos": True, "user": "u1"},
        "unknown-field.json": {"prompt": "x", "response_format": {"type": "json_object"}},
    }
    for name, b in bodies.items():
        write("openai_body", name, json.dumps(b))
    write("openai_body", "truncated.json", '{"prompt": "x", "max_tokens": 1')


# --- chat templates -------------------------------------------------------------------------
def chat_seed(flags, template, msgs):
    out = bytes([flags]) + template.encode()
    for role, content in msgs:
        out += b"\0" + role.encode() + b"\0" + content.encode()
    return out


def gen_chat():
    msgs = [("system", "sys"), ("user", "Hi there"), ("assistant", "Hello!"), ("user", "Bye")]
    write("chat_template", "smollm2.bin", chat_seed(1, SMOL_TEMPLATE, msgs))
    write("chat_template", "llama3.bin", chat_seed(1, LLAMA3_TEMPLATE, msgs))
    write("chat_template", "mistral.bin", chat_seed(0, MISTRAL_TEMPLATE, msgs[1:]))
    write("chat_template", "filters.bin", chat_seed(3,
        "{% for m in messages %}{{ loop.index }}:{{ m.role | upper }}={{ m.content | tojson }}"
        "{% if not loop.last %},{% endif %}{% endfor %}{{ messages | length }}"
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
        "{% endfor %}{{ ns.n }}{{ eos_token if add_generation_prompt else '' }}", msgs))


# --- .npy -----------------------------------------------------------------------------------
def npy(descr, shape, data):
    dims = ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
    d = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (descr, dims)
    total = (10 + len(d) + 1 + 63) // 64 * 64
    d = d + " " * (total - 10 - len(d) - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode() + data


def gen_npy():
    write("npy", "config-i32.npy", npy("<i4", [1, 2, 3], struct.pack("<6i", 1, 0, 2, 3, 1, 2)))
    write("npy", "weights-f32.npy", npy("<f4", [1, 2, 4], struct.pack("<8f", *range(8))))
    write("npy", "weights-bf16.npy", npy("|V2", [2, 2], struct.pack("<4H", 0x3F80, 0, 0xC000, 1)))
    write("npy", "scalar-i8.npy", npy("<i8", [], struct.pack("<q", 5)))


# --- safetensors ----------------------------------------------------------------------------
def safetensors(tensors):
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, dtype, shape, blob in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def gen_safetensors():
    p = "base_model.model.model.layers.0.self_attn.q_proj."
    write("safetensors_header", "lora-f32.safetensors", safetensors([
        (p + "lora_A.weight", "F32", [8, 2], struct.pack("<16f", *range(16))),
        (p + "lora_B.weight", "F32", [2, 8], struct.pack("<16f", *range(16))),
    ]))
    write("safetensors_header", "mixed-f16-bf16.safetensors", safetensors([
        ("a", "F16", [2], struct.pack("<2e", 1.0, -2.0)),
        ("b", "BF16", [1, 2], struct.pack("<2H", 0x3F80, 0xC000)),
    ]))


# --- tar / .nemo ----------------------------------------------------------------------------
def gen_tar():
    yaml = b"peft:\n  peft_scheme: lora\n  lora_tuning:\n    adapter_dim: 2\n    alpha: 4\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in [("./model_config.yaml", yaml), ("./model_weights.ckpt", b"PK\x03\x04x")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    plain = buf.getvalue()
    write("tar", "nemo-plain.tar", plain)
    write("tar", "nemo.tar.gz", gzip.compress(plain, mtime=0))


# --- torch zip pickle -----------------------------------------------------------------------
def gen_pickle():
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    class HalfStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise RuntimeError("never called")

    FloatStorage.__module__ = HalfStorage.__module__ = "torch"
    FloatStorage.__qualname__, HalfStorage.__qualname__ = "FloatStorage", "HalfStorage"
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    torch.FloatStorage, torch.HalfStorage, utils._rebuild_tensor_v2 = FloatStorage, HalfStorage, _rebuild_tensor_v2
    torch._utils = utils
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils

    class Storage:
        def __init__(self, kind, key, numel):
            self.kind, self.key, self.numel = kind, key, numel

    class Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return (_rebuild_tensor_v2, self.args)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", obj.kind, obj.key, "cpu", obj.numel)
            return None

    s0, s1 = Storage(FloatStorage, "0", 16), Storage(HalfStorage, "1", 4)
    p = "base_model.model.model.layers.0.self_attn.q_proj."
    state = collections.OrderedDict([
        (p + "lora_A.weight", Tensor(s0, 0, (2, 8), (8, 1))),
        (p + "lora_B.weight", Tensor(s0, 0, (8, 2), (1, 8))),  # a transposed view
        ("half", Tensor(s1, 1, (3,), (1,))),
        ("meta", 7),
    ])
    pkl = io.BytesIO()
    Pickler(pkl, protocol=2).dump(state)
    raw = pkl.getvalue()
    write("pickle", "data.pkl", raw)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", raw)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", struct.pack("<16f", *range(16)))
        z.writestr("archive/data/1", struct.pack("<4e", 1, 2, 3, 4))
        z.writestr("archive/version", "3\n")
    write("pickle", "adapter_model.bin", buf.getvalue())


if __name__ == "__main__":
    gen_gguf()
    gen_openai()
    gen_chat()
    gen_npy()
    gen_safetensors()
    gen_tar()
    gen_pickle()
