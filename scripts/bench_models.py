#!/usr/bin/env python3
"""Writes the unquantized GGUF files `make bench` starts from (scripts/bench-models.sh drives it).

Pins: gguf==0.17.1, numpy==2.4.6 (bench-models.sh installs them into .cache/bench-venv).

  bench_models.py dequant SRC.gguf OUT.gguf --type f16|bf16
      Every quantized 2-D tensor of SRC is dequantized with gguf-py and written as F16 or BF16;
      F32 tensors (norms) stay F32; every metadata key (hyperparameters, tokenizer, chat
      template) is copied, general.file_type is set to the new type. The values are SRC's
      dequantized weights, so quality is SRC's; only the storage format changes.

  bench_models.py random OUT.gguf --shape llama-3.2-1b|llama-3-8b --tokenizer SRC.gguf [--seed N]
      A Llama model of the named shape with random weights (normal, std 0.02; norms 1), stored
      as BF16, with SRC's vocabulary and tokenizer (tokenizer.* keys copied; vocab_size = SRC's).
      Plain RoPE (no llama3 frequency factors). Only for throughput: the outputs are noise.

Tensors are generated/converted one at a time while writing, so memory stays at one tensor.
"""

import argparse
import sys

import numpy as np
import gguf

SHAPES = {
    # hidden, layers, heads, kv heads, intermediate, tied embeddings, rope theta
    "llama-3.2-1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, inter=8192, tied=True, theta=500000.0),
    "llama-3-8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, inter=14336, tied=False, theta=500000.0),
}

FILE_TYPE = {"f16": 1, "bf16": 32}  # llama_ftype: MOSTLY_F16, MOSTLY_BF16


def f32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even f32 -> bf16, as uint16 bit patterns (inputs are finite)."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def encode(a: np.ndarray, ty: str):
    """(array to write, raw ggml type) for a float32 array stored as `ty`."""
    if ty == "f16":
        return a.astype(np.float16), gguf.GGMLQuantizationType.F16
    return f32_to_bf16_bits(a), gguf.GGMLQuantizationType.BF16


def copy_kv(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, keep) -> None:
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        if not keep(field.name):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)


def field(reader: gguf.GGUFReader, path: str, key: str):
    f = reader.get_field(key)
    if f is None:
        sys.exit(f"bench_models: {path} has no metadata key {key}")
    return f.contents()


def write(writer: gguf.GGUFWriter, tensors) -> None:
    """`tensors`: list of (name, numpy shape, numpy dtype, raw type, producer()) written in order."""
    for name, shape, dtype, raw, _ in tensors:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        writer.add_tensor_info(name, shape, np.dtype(dtype), nbytes, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, shape, dtype, _, make in tensors:
        data = make()
        if data.shape != tuple(shape) or data.dtype != np.dtype(dtype):
            sys.exit(f"bench_models: internal error: tensor {name} came out {data.shape} {data.dtype}, expected {shape} {dtype}")
        writer.write_tensor_data(data)
    writer.close()


def dequant(args) -> None:
    reader = gguf.GGUFReader(args.src)
    arch = field(reader, args.src, gguf.Keys.General.ARCHITECTURE)
    writer = gguf.GGUFWriter(args.out, arch=arch, endianess=reader.endianess)
    copy_kv(reader, writer, lambda k: k != gguf.Keys.General.FILE_TYPE)
    writer.add_file_type(FILE_TYPE[args.type])
    plan = []
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # ggml order -> numpy order
        if t.tensor_type == gguf.GGMLQuantizationType.F32 and len(shape) == 1:
            plan.append((t.name, shape, np.float32, gguf.GGMLQuantizationType.F32,
                         lambda t=t: np.asarray(t.data, dtype=np.float32).reshape(-1)))
            continue
        probe, raw = encode(np.zeros(1, np.float32), args.type)

        def make(t=t, shape=shape):
            vals = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
            return encode(vals, args.type)[0]

        plan.append((t.name, shape, probe.dtype, raw, make))
    write(writer, plan)


def random_model(args) -> None:
    s = SHAPES[args.shape]
    tok = gguf.GGUFReader(args.tokenizer)
    vocab = len(field(tok, args.tokenizer, gguf.Keys.Tokenizer.LIST))
    head_dim = s["hidden"] // s["heads"]
    writer = gguf.GGUFWriter(args.out, arch="llama")
    copy_kv(tok, writer, lambda k: k.startswith("tokenizer."))
    writer.add_name(f"random-weight {args.shape} shape (throughput only)")
    writer.add_context_length(8192)
    writer.add_embedding_length(s["hidden"])
    writer.add_block_count(s["layers"])
    writer.add_feed_forward_length(s["inter"])
    writer.add_head_count(s["heads"])
    writer.add_head_count_kv(s["kv_heads"])
    writer.add_rope_freq_base(s["theta"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(FILE_TYPE["bf16"])

    seed = [args.seed]

    def rnd(shape):
        def make():
            seed[0] += 1
            rng = np.random.default_rng(seed[0])
            return f32_to_bf16_bits(rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02))
        return make

    def ones(n):
        return lambda: np.ones(n, dtype=np.float32)

    bf16, f32 = gguf.GGMLQuantizationType.BF16, gguf.GGMLQuantizationType.F32
    h, kv = s["hidden"], s["kv_heads"] * head_dim
    plan = [("token_embd.weight", (vocab, h), np.uint16, bf16, rnd((vocab, h)))]
    for i in range(s["layers"]):
        p = f"blk.{i}."
        plan += [
            (p + "attn_norm.weight", (h,), np.float32, f32, ones(h)),
            (p + "attn_q.weight", (h, h), np.uint16, bf16, rnd((h, h))),
            (p + "attn_k.weight", (kv, h), np.uint16, bf16, rnd((kv, h))),
            (p + "attn_v.weight", (kv, h), np.uint16, bf16, rnd((kv, h))),
            (p + "attn_output.weight", (h, h), np.uint16, bf16, rnd((h, h))),
            (p + "ffn_norm.weight", (h,), np.float32, f32, ones(h)),
            (p + "ffn_gate.weight", (s["inter"], h), np.uint16, bf16, rnd((s["inter"], h))),
            (p + "ffn_up.weight", (s["inter"], h), np.uint16, bf16, rnd((s["inter"], h))),
            (p + "ffn_down.weight", (h, s["inter"]), np.uint16, bf16, rnd((h, s["inter"]))),
        ]
    plan.append(("output_norm.weight", (h,), np.float32, f32, ones(h)))
    if not s["tied"]:
        plan.append(("output.weight", (vocab, h), np.uint16, bf16, rnd((vocab, h))))
    write(writer, plan)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dequant")
    d.add_argument("src")
    d.add_argument("out")
    d.add_argument("--type", choices=sorted(FILE_TYPE), required=True)
    r = sub.add_parser("random")
    r.add_argument("out")
    r.add_argument("--shape", choices=sorted(SHAPES), required=True)
    r.add_argument("--tokenizer", required=True)
    r.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    {"dequant": dequant, "random": random_model}[args.cmd](args)


if __name__ == "__main__":
    main()
