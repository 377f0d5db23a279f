#!/usr/bin/env python3
# Reference fixtures for the model zoo (tests/zoo_models.rs): tiny RANDOM Qwen2, Qwen3, Mistral
# (sliding window) and Llama-3.1 (llama3 rope scaling) models written by HuggingFace transformers,
# one PEFT LoRA adapter each, the same models as GGUF files (gguf-py, following llama.cpp's
# convert_hf_to_gguf.py conventions), and greedy tokens + last-position logits from transformers.
#
# Pinned versions (the outputs are what exactly these produce, float32 on CPU):
#   torch==2.15.0 transformers==5.24.0 peft==0.21.2 gguf==0.17.1 numpy
# Run:  python3 scripts/zoo-reference.py [OUT_DIR]      (default tests/fixtures/zoo)
# Without the pins importable, the script creates .venv-zoo/ next to itself, installs them there
# (pip, CPU torch) and re-runs itself with that interpreter.
#
# Tokenizer: the SmolLM2 tokenizer (../shared/fixtures/tiny-llama/model, or LORAPLEX_SHARED)
# cut to its first VOCAB ids: the 17 special tokens, the 256-symbol byte alphabet and the first
# merges, keeping exactly the merges whose two parts and result are inside the cut vocabulary.
# That is still a complete byte-level BPE (every text encodes; it only takes more tokens), and it
# keeps the embeddings at VOCAB x 64 instead of 49152 x 64 (12 MB per f32 matrix).
#
# Weights: drawn at random and rounded to float16, stored as float16 safetensors (HF) and as F16
# (2-D) / F32 (1-D) GGUF tensors, so both files hold the same values and transformers computes
# on them in float32. Norm weights and biases are random too (not 1 / 0), so a loader that
# skipped them would fail.
import json
import os
import subprocess
import sys
from pathlib import Path

PINS = ["torch==2.15.0", "transformers==5.24.0", "peft==0.21.2", "gguf==0.17.1", "numpy"]


def ensure_pins():
    try:
        import gguf  # noqa: F401
        import peft
        import torch
        import transformers

        ok = (torch.__version__.split("+")[0] == "2.15.0" and transformers.__version__ == "5.24.0"
              and peft.__version__ == "0.21.2")
    except ImportError:
        ok = False
    if ok:
        return
    venv = Path(__file__).resolve().parent / ".venv-zoo"
    py = venv / "bin" / "python"
    if os.environ.get("ZOO_REF_IN_VENV"):
        sys.exit("zoo-reference: the pinned packages are still missing inside " + str(venv))
    if not py.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
        subprocess.check_call([str(py), "-m", "pip", "install", "--quiet",
                               "--extra-index-url", "https://download.pytorch.org/whl/cpu", *PINS])
    os.environ["ZOO_REF_IN_VENV"] = "1"
    os.execv(str(py), [str(py), *sys.argv])


ensure_pins()

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers import (LlamaConfig, MistralConfig, Qwen2Config,  # noqa: E402
                          Qwen3Config)

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests/fixtures/zoo"
SHARED = Path(os.environ.get("LORAPLEX_SHARED", ROOT.parent / "shared"))
SMOL = SHARED / "fixtures/tiny-llama/model"
VOCAB = 512
NEW_TOKENS = 16
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

PROMPTS = [
    {"text": "The quick brown fox jumps over the lazy dog because it"},
    {"text": "Zürich café: 3 crème brûlées cost 27.50 CHF, so one costs"},
    {"text": "def fib(n):\n    if n < 2:\n        return n\n    return"},
    {"messages": [{"role": "user", "content": "Name two colours of the sky."}]},
]


def cut_tokenizer(out_dir: Path):
    """Writes the cut SmolLM2 tokenizer files to out_dir (see the header)."""
    t = json.loads((SMOL / "tokenizer.json").read_text())
    vocab = {k: v for k, v in t["model"]["vocab"].items() if v < VOCAB}
    merges = [m for m in t["model"]["merges"]
              if m[0] in vocab and m[1] in vocab and (m[0] + m[1]) in vocab]
    t["model"]["vocab"] = vocab
    t["model"]["merges"] = merges
    t["added_tokens"] = [a for a in t["added_tokens"] if a["id"] < VOCAB]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(json.dumps(t, ensure_ascii=False, indent=1))
    for f in ["tokenizer_config.json", "chat_template.jinja"]:
        if (SMOL / f).exists():
            (out_dir / f).write_bytes((SMOL / f).read_bytes())


def randomize(model, seed):
    """Random weights (normal, std 0.08; untied embeddings std 0.4 so that the token, not the
    constant bias terms, dominates the residual; tied ones stay at 0.08, or the head would echo
    the input token), norm weights in [0.6, 1.4], biases std 0.1; all rounded
    to float16 values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                v = 0.6 + 0.8 * torch.rand(p.shape, generator=g)
            elif name.endswith(".bias"):
                v = 0.1 * torch.randn(p.shape, generator=g)
            elif "embed_tokens" in name and not model.config.tie_word_embeddings:
                v = 0.4 * torch.randn(p.shape, generator=g)
            else:
                v = 0.08 * torch.randn(p.shape, generator=g)
            p.copy_(v.half().float())


def greedy(model, ids):
    """NEW_TOKENS greedy tokens by full recomputation (EOS does not stop), the logit margin of
    each step and the last-position logits of the prompt."""
    seq = list(ids)
    toks, margins, first = [], [], None
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(torch.tensor([seq])).logits[0, -1].float()
            if first is None:
                first = logits.numpy().copy()
            top = torch.topk(logits, 2)
            toks.append(int(top.indices[0]))
            margins.append(float(top.values[0] - top.values[1]))
            seq.append(toks[-1])
    return toks, margins, first


def cached_greedy(model, ids):
    """The same tokens through generate() with the KV cache (a cross-check of the mask)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


# ---------------------------------------------------------------------------------------- GGUF

def permute(w, n_head):
    """llama.cpp's q/k permutation (convert_hf_to_gguf.py LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf):
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{GGUF_LAYER[rest]}"


def write_gguf(path: Path, arch: str, cfg, state: dict, model_dir: Path, extra):
    """The model as a GGUF file: `arch` is llama.cpp's architecture (Mistral is "llama");
    q/k rows are permuted for "llama" only (llama.cpp's Qwen2/Qwen3 converters do not permute);
    2-D tensors F16, 1-D F32; tokenizer from the HF files the way gguf-py's SpecialVocab reads them."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(path.stem)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // cfg.num_attention_heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    extra(w)
    # Tokenizer (convert_hf_to_gguf.py _set_vocab_gpt2 with pre-tokenizer "smollm").
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    inv = {v: k for k, v in tok["model"]["vocab"].items()}
    added = {a["id"]: a for a in tok["added_tokens"]}
    tokens, types = [], []
    for i in range(cfg.vocab_size):
        tokens.append(inv[i])
        types.append(gguf.TokenType.CONTROL if i in added and added[i]["special"] else gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    # llama.cpp labels Qwen tokenizers "qwen2" (NFC, Qwen's split regex): the qwen2 file says so,
    # so its tokenizer is the one transformers' Qwen2Tokenizer builds from these files.
    w.add_tokenizer_pre("qwen2" if arch == "qwen2" else "smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    sv = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    sv.add_to_gguf(w)
    for name, t in state.items():
        a = t.float().numpy()
        if arch == "llama" and name.endswith("q_proj.weight"):
            a = permute(a, cfg.num_attention_heads)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            a = permute(a, cfg.num_key_value_heads)
        a = a.astype(np.float16) if a.ndim == 2 else a.astype(np.float32)
        w.add_tensor(gguf_name(name), a)
    if hasattr(extra, "tensors"):
        for name, a in extra.tensors:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama3_rope_factors(cfg):
    """convert_hf_to_gguf.py LlamaModel.generate_extra_tensors: llama3 `rope_freqs`."""
    import math
    rp = cfg.rope_parameters
    base, dim = rp["rope_theta"], cfg.head_dim
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, lo, hi = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
    old = rp["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / lo, old / hi
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32).numpy()


# ------------------------------------------------------------------------------------- models

def common_cfg(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    base.update(kw)
    return base


def zoo():
    """(name, config, GGUF arch or None, GGUF extras, adapter targets, seed)."""
    def mistral_extra(w):
        w.add_sliding_window(8)

    def llama3_extra(w):
        pass

    llama3_cfg = LlamaConfig(**common_cfg(num_hidden_layers=3, rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 256}))
    llama3_extra.tensors = [("rope_freqs.weight", llama3_rope_factors(llama3_cfg))]
    return [
        ("qwen2", Qwen2Config(**common_cfg(tie_word_embeddings=False, rope_parameters={
            "rope_type": "default", "rope_theta": 1000000.0})), "qwen2", lambda w: None, ALL7, 11),
        ("qwen3", Qwen3Config(**common_cfg(head_dim=32, tie_word_embeddings=False, rope_parameters={
            "rope_type": "default", "rope_theta": 1000000.0})), "qwen3", lambda w: None, ALL7, 12),
        ("mistral", MistralConfig(**common_cfg(sliding_window=8, tie_word_embeddings=False,
                                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
         "llama", mistral_extra, ["q_proj", "k_proj", "v_proj", "o_proj"], 13),
        ("llama3", llama3_cfg, "llama", llama3_extra, ALL7, 14),
    ]


def window_effect(other, prompt_ids, logits_path):
    """max |logits(other) - saved logits| over the prompts' last positions."""
    want = np.load(logits_path)
    with torch.no_grad():
        got = np.stack([other(torch.tensor([ids])).logits[0, -1].float().numpy() for ids in prompt_ids])
    return float(np.abs(got - want).max())


def run_prompts(model, tok, prompt_ids, variant_dir, logits_name):
    results, rows = [], []
    for ids in prompt_ids:
        toks, margins, first = greedy(model, ids)
        results.append({"new_token_ids": toks, "step_top1_minus_top2": margins,
                        "text": tok.decode(toks)})
        rows.append(first)
    (variant_dir / "logits").mkdir(parents=True, exist_ok=True)
    np.save(variant_dir / "logits" / logits_name, np.stack(rows).astype(np.float32))
    return results


def build(name, cfg, arch, extra, targets, seed):
    d = OUT / name
    model_dir = d / "model"
    cut_tokenizer(model_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    randomize(model, seed)
    model.half().save_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    # Token ids from tokenizer.json as written: transformers 5 loads model_type qwen2 with
    # Qwen2Tokenizer, which replaces the file's pre-tokenizer by Qwen's split regex; the fixture's
    # tokenizer is SmolLM2's (digits split, ByteLevel), so its ids come from the file itself.
    raw = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    prompts, prompt_ids = [], []
    for p in PROMPTS:
        if "messages" in p:
            text = tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
            q = {"messages": p["messages"], "text": text}
        else:
            text = p["text"]
            q = {"text": text}
        ids = raw.encode(text, add_special_tokens=False).ids
        q["token_ids"] = ids
        # What AutoTokenizer encodes (Qwen2Tokenizer for model_type qwen2, else tokenizer.json).
        q["hf_tokenizer_ids"] = tok(text, add_special_tokens=False)["input_ids"]
        prompts.append(q)
        prompt_ids.append(ids)
    ref = {"model_type": cfg.model_type, "architectures": [type(model).__name__],
           "new_tokens": NEW_TOKENS, "prompts": prompts, "variants": {}}
    ref["inv_freq"] = model.model.rotary_emb.inv_freq.float().tolist()
    base = run_prompts(model, tok, prompt_ids, d, "__base__.npy")
    cached = [cached_greedy(model, ids) for ids in prompt_ids]
    ref["generate_with_cache_agrees"] = [c == r["new_token_ids"] for c, r in zip(cached, base)]
    ref["variants"]["__base__"] = {"results": base, "logits_file": "logits/__base__.npy"}
    if getattr(cfg, "sliding_window", None) is not None:
        # The window must matter for these prompts, or the fixture would not test it.
        full = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, sliding_window=None).eval()
        ref["full_attention_max_logit_change"] = window_effect(full, prompt_ids, d / "logits/__base__.npy")
    # A rank-8 LoRA adapter with random nonzero B.
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets,
                                                  lora_dropout=0.0, init_lora_weights=True))
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    adir = d / "adapters" / "lora-r8"
    peft_model.save_pretrained(adir)
    # No machine-specific path and no boilerplate model card in the committed fixture.
    acfg = json.loads((adir / "adapter_config.json").read_text())
    acfg["base_model_name_or_path"] = f"loraplex-zoo-{name}"
    if isinstance(acfg.get("target_modules"), list):
        acfg["target_modules"] = sorted(acfg["target_modules"])  # a set in peft: fix the order
    (adir / "adapter_config.json").write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
    (adir / "README.md").unlink(missing_ok=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(model, adir).eval()
    ref["variants"]["lora-r8"] = {"results": run_prompts(peft_model, tok, prompt_ids, d, "lora-r8.npy"),
                                  "logits_file": "logits/lora-r8.npy",
                                  "adapter": {"r": 8, "lora_alpha": 16, "target_modules": targets}}
    if arch is not None:
        state = {k: v for k, v in AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32).state_dict().items()}
        if cfg.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        write_gguf(d / f"{name}.gguf", arch, cfg, state, model_dir, extra)
        ref["gguf"] = f"{name}.gguf"
    (d / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    return model_dir, prompt_ids


def qwen2_windowed(model_dir, prompt_ids):
    """The qwen2 weights with Qwen2's per-layer sliding window switched on (layers >= 
    max_window_layers use a window of 6): base outputs only, reference-swa.json."""
    # config.json stores layer_types, which then decides (it is not re-derived from
    # max_window_layers), so the override names it too.
    overrides = {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1,
                 "layer_types": ["full_attention", "sliding_attention"]}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **overrides).eval()
    assert model.config.layer_types == ["full_attention", "sliding_attention"], model.config.layer_types
    tok = AutoTokenizer.from_pretrained(model_dir)
    d = OUT / "qwen2"
    ref = json.loads((d / "reference.json").read_text())
    base = run_prompts(model, tok, prompt_ids, d, "__base__-swa.npy")
    swa = {"config_overrides": overrides,
           "prompts": ref["prompts"], "new_tokens": NEW_TOKENS,
           "generate_with_cache_agrees": [cached_greedy(model, ids) == r["new_token_ids"]
                                          for ids, r in zip(prompt_ids, base)],
           "variants": {"__base__": {"results": base, "logits_file": "logits/__base__-swa.npy"}}}
    swa["full_attention_max_logit_change"] = window_effect(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(), prompt_ids,
        d / "logits/__base__-swa.npy")
    (d / "reference-swa.json").write_text(json.dumps(swa, indent=1, ensure_ascii=False) + "\n")


def main():
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    for spec in zoo():
        model_dir, prompt_ids = build(*spec)
        if spec[0] == "qwen2":
            qwen2_windowed(model_dir, prompt_ids)
        print("wrote", OUT / spec[0], file=sys.stderr)


if __name__ == "__main__":
    main()
