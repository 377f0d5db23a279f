#!/usr/bin/env python3
"""HF PEFT's multi-adapter throughput and the device's copy bandwidth, for the GPU check report.

Pins (the project's reference environment): torch==2.15.0 transformers==5.24.0 peft==0.21.2
safetensors numpy. On the GPU machine of scripts/gpu-check.sh (no network) the machine's own
python runs it (torch 2.11 / transformers 5.17 there); elsewhere make the environment with
`bash scripts/make-venv.sh .venv-gpu torch==2.15.0 transformers==5.24.0 peft==0.21.2 safetensors numpy`.

  hf_bench.py --model DIR --adapters DIR --out hf-bench.json [--batch 32] [--distinct 32]
              [--decode-tokens 32] [--copy-gib 2] [--skip-peft]

- copy bandwidth: a device-to-device copy of --copy-gib GiB (torch `copy_`), best of 10 timed
  with CUDA events after a warm-up; bandwidth counts the bytes read plus the bytes written
  (2 x size / time), the figure the HBM floor of batch-1 decode divides weight bytes by.
- HF PEFT decode: the model in bf16 on the GPU with --distinct adapters loaded (peft
  load_adapter), a batch of --batch 16-token prompts (row i on adapter i mod distinct, peft's
  mixed-batch `adapter_names=`), greedy, EOS ignored; tokens/s as the difference of generating
  4 + --decode-tokens and 4 tokens (cancels prefill), `batch * decode_tokens / (t_long - t_short)`,
  best of 2 (null when no pair measured a positive difference). Also the same batch with every
  row on the base model.
"""
import argparse
import json
import sys
import time


def copy_bandwidth(torch, gib):
    n = int(gib * (1 << 30))
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    src.random_(0, 255)
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b) / 1e3)
    ok = bool(torch.equal(src[: 1 << 20], dst[: 1 << 20]))
    del src, dst
    torch.cuda.empty_cache()
    return {"bytes": n, "seconds": best, "read_plus_write_GBps": 2 * n / best / 1e9,
            "copy_verified": ok}


def decode_tps(torch, model, batch, names, new_tokens, vocab, device):
    import random
    rng = random.Random(7)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(n, salt):
        ids = torch.tensor([[rng.randrange(3, vocab) for _ in range(16)] for _ in range(batch)],
                           device=device)
        kw = {}
        if names is not None:
            kw["adapter_names"] = [names[i % len(names)] for i in range(batch)]
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 eos_token_id=None, pad_token_id=0, **kw)
        sync()
        assert out.shape[1] == 16 + n, out.shape
        return time.perf_counter() - t

    timed(2, 0)  # warm-up
    best = None
    for r in range(2):
        short = timed(4, r)
        long = timed(4 + new_tokens, r + 10)
        if long > short:  # else timing noise swamped the decode steps: this pair says nothing
            best = max(best or 0.0, batch * new_tokens / (long - short))
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--adapters", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--distinct", type=int, default=32)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--copy-gib", type=float, default=2.0)
    p.add_argument("--skip-peft", action="store_true", help="only the copy bandwidth")
    p.add_argument("--device", default="cuda",
                   help="cpu: a smoke test of the PEFT part (no copy bandwidth)")
    args = p.parse_args()

    import torch
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("hf_bench: no CUDA device visible to torch", file=sys.stderr)
        return 2
    report = {"torch": torch.__version__,
              "device": torch.cuda.get_device_name(0) if dev == "cuda" else dev}
    if dev == "cuda":
        report["copy"] = copy_bandwidth(torch, args.copy_gib)
        print(f"[hf_bench] copy: {report['copy']['read_plus_write_GBps']:.0f} GB/s "
              "(read+write)", file=sys.stderr)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    if args.skip_peft:
        return 0

    import transformers
    from peft_models import load_peft
    report["transformers"] = transformers.__version__
    t0 = time.time()
    try:
        pm, names = load_peft(args.model, args.adapters, args.distinct, dev, torch.bfloat16)
    except ValueError as e:
        print(f"hf_bench: {e}", file=sys.stderr)
        return 2
    report["load_s"] = time.time() - t0
    vocab = pm.config.vocab_size
    base = decode_tps(torch, pm, args.batch, ["__base__"], args.decode_tokens, vocab, dev)
    print(f"[hf_bench] batch {args.batch} base: {base} tok/s", file=sys.stderr)
    mixed = decode_tps(torch, pm, args.batch, names, args.decode_tokens, vocab, dev)
    print(f"[hf_bench] batch {args.batch} over {len(names)} adapters: {mixed} tok/s",
          file=sys.stderr)
    report["peft"] = {"batch": args.batch, "distinct_adapters": len(names),
                      "decode_tokens": args.decode_tokens, "dtype": "bfloat16",
                      "base_tok_s": base, "distinct_tok_s": mixed}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
