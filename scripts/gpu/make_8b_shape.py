#!/usr/bin/env python3
"""A random-weight Llama-3-8B-shape model and random PEFT LoRA adapters for the GPU check.

Pins (the project's reference environment): torch==2.15.0 transformers==5.24.0 peft==0.21.2
safetensors numpy. On the GPU machine of scripts/gpu-check.sh (no network) the machine's own
python with torch/transformers/peft runs it (tested with torch 2.11 / transformers 5.17 too);
elsewhere make the environment with
`bash scripts/make-venv.sh .venv-gpu torch==2.15.0 transformers==5.24.0 peft==0.21.2 safetensors numpy`
and run it with .venv-gpu/bin/python.

Writes, under --out:
- model/: config.json (hidden 4096, 32 layers, 32 query / 8 KV heads of 128, intermediate 14336,
  rope theta 500000, --vocab tokens, untied head), model*.safetensors in bf16 (HF initialisation:
  normal(0, 0.02) weights, unit norms), a byte-level tokenizer.json (256 bytes + 3 specials, the
  one tests/common writes) and tokenizer_config.json.
- adapters/aNN/: --adapters PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors,
  bf16) of rank --rank over all 7 projections, alpha = 2 * rank, A ~ U(±1/sqrt(in)) and
  B ~ N(0, 0.02) (non-zero: every adapter changes the logits), via peft's save_pretrained.
- shape.json: what was written (for the report).

Weights are generated on the GPU (--device, default cuda when available) in one pass; --small
writes a tiny model of the same structure (hidden 64, 2 layers) on the CPU in seconds, which is
how the script is checked without a GPU.
"""
import argparse
import json
import os
import sys
import time


def byte_tokenizer():
    """The byte-level BPE tokenizer.json of tests/common::byte_tokenizer_json (vocab 259)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    vocab = {chr(c): b for b, c in sorted(zip(bs, cs))}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    for i, s in enumerate(specials):
        vocab[s] = 256 + i
    added = [{"id": 256 + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in enumerate(specials)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }


TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def shape(args):
    if args.small:
        return dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    return dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=args.layers,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--adapters", type=int, default=64)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--layers", type=int, default=32,
                   help="decoder layers of the 8B shape (fewer only to fit a time limit)")
    p.add_argument("--small", action="store_true", help="tiny shape, for a CPU check")
    args = p.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.time()
    torch.manual_seed(args.seed)
    dims = shape(args)
    cfg = LlamaConfig(vocab_size=args.vocab, max_position_embeddings=8192, rms_norm_eps=1e-5,
                      rope_theta=500000.0, tie_word_embeddings=False, hidden_act="silu",
                      bos_token_id=257, eos_token_id=258, attention_bias=False, mlp_bias=False,
                      initializer_range=0.02, **dims)
    model_dir = os.path.join(args.out, "model")
    ad_dir = os.path.join(args.out, "adapters")
    os.makedirs(model_dir, exist_ok=True)
    os.makedirs(ad_dir, exist_ok=True)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(prev)
    # HF's own init ran in the constructor; make it explicit and seeded (normal 0.02, unit norms)
    # so the weights do not depend on the transformers version's init order.
    g = torch.Generator(device=device).manual_seed(args.seed)
    with torch.no_grad():
        for name, t in model.named_parameters():
            if name.endswith("norm.weight"):
                t.fill_(1.0)
            else:
                t.copy_(torch.randn(t.shape, generator=g, device=device, dtype=torch.float32)
                        .mul_(0.02).to(t.dtype))
    model.config.torch_dtype = "bfloat16"
    model.save_pretrained(model_dir, safe_serialization=True)
    with open(os.path.join(model_dir, "tokenizer.json"), "w") as f:
        json.dump(byte_tokenizer(), f)
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}, f)
    t_model = time.time() - t0
    print(f"[make_8b_shape] model {dims} vocab {args.vocab} on {device}: {t_model:.1f} s",
          file=sys.stderr)

    lcfg = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGETS,
                      lora_dropout=0.0, bias="none", init_lora_weights=False,
                      task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lcfg)
    lora = [(n, t) for n, t in peft_model.named_parameters() if ".lora_" in n]
    assert len(lora) == 2 * len(TARGETS) * dims["num_hidden_layers"], len(lora)
    names = []
    with torch.no_grad():
        for i in range(args.adapters):
            for n, t in lora:
                if ".lora_A." in n:
                    bound = 1.0 / (t.shape[1] ** 0.5)
                    v = torch.rand(t.shape, generator=g, device=device).mul_(2 * bound).sub_(bound)
                else:
                    v = torch.randn(t.shape, generator=g, device=device).mul_(0.02)
                t.data = v.to(torch.bfloat16)
            name = f"a{i:02d}"
            peft_model.save_pretrained(os.path.join(ad_dir, name), safe_serialization=True)
            names.append(name)
    info = {"model_dir": model_dir, "adapters_dir": ad_dir, "adapters": names,
            "rank": args.rank, "vocab": args.vocab, "dims": dims, "device": device,
            "model_s": t_model, "total_s": time.time() - t0,
            "torch": torch.__version__}
    with open(os.path.join(args.out, "shape.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"[make_8b_shape] {len(names)} adapters rank {args.rank}: {time.time() - t0:.1f} s total",
          file=sys.stderr)


if __name__ == "__main__":
    main()
