#!/usr/bin/env python3
"""Whole-model oracle for quantized GGUFs: HF transformers on the files loraplex's quantizer writes.

Pins: torch==2.15.0 transformers==5.24.0 peft==0.21.2 gguf==0.17.1 numpy (CPU, float32).

For each scheme (Q8_0, Q4_0, Q4_K_M, Q5_K_M, Q6_K) this
1. writes SmolLM2-135M-Instruct re-quantized from the PyPI Q4_1 file with
   `cargo run --release --example quantize` (loraplex's own quantizers; deterministic),
2. loads that GGUF with transformers (`gguf_file=`: gguf-py dequantizes every tensor to float32,
   q/k un-permuted), alone and with the PEFT adapter `hf-qv-r16-bin` from ../shared/reference,
3. records for the 5 reference prompts: 24 greedy tokens (EOS does not stop), each step's
   top1-top2 margin, and the last prompt position's logits (std of the row and its top 32).

Output: tests/fixtures/quant-models/<scheme>.json with the sha256 of the GGUF it describes
(tests/quantized_models.rs re-quantizes in process and checks the hash before comparing).

Usage: python3 scripts/quant-model-reference.py [--shared ../shared] [--model models/...Q4_1.gguf]
When not run from the pinned environment it creates .cache/quant-ref-venv and re-runs itself there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

PINS = ["torch==2.15.0", "transformers==5.24.0", "peft==0.21.2", "gguf==0.17.1", "numpy"]
SCHEMES = ["Q8_0", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K"]
ROOT = Path(__file__).resolve().parent.parent


def ensure_env() -> None:
    try:
        import torch, transformers, peft, gguf  # noqa: F401

        if torch.__version__.split("+")[0] == "2.15.0" and transformers.__version__ == "5.24.0":
            return
    except ImportError:
        pass
    venv = ROOT / ".cache" / "quant-ref-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
        subprocess.check_call([str(py), "-m", "pip", "install", "--quiet", *PINS])
    os.execv(str(py), [str(py), *sys.argv])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_variant(model, prompts, torch):
    out = []
    for p in prompts:
        ids = torch.tensor([p["token_ids"]])
        new, margins = [], []
        last = None
        with torch.no_grad():
            for step in range(24):
                logits = model(input_ids=ids).logits[0, -1].float()
                if step == 0:
                    last = logits.clone()
                top2 = torch.topk(logits, 2)
                margins.append(float(top2.values[0] - top2.values[1]))
                tok = int(top2.indices[0])
                new.append(tok)
                ids = torch.cat([ids, torch.tensor([[tok]])], dim=1)
        top = torch.topk(last, 32)
        out.append(
            {
                "prompt": p["index"],
                "new_token_ids": new,
                "step_top1_minus_top2": margins,
                "last_logits_std": float(last.std()),
                "last_logits_top32": [[int(i), float(v)] for v, i in zip(top.values, top.indices)],
            }
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--work", default=str(ROOT / ".cache" / "quant-models"))
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "quant-models"))
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    args = ap.parse_args()
    ensure_env()
    import torch
    import transformers
    import peft
    from transformers import AutoModelForCausalLM
    from peft import PeftModel

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ref_dir = Path(args.shared) / "reference" / "smollm2-135m-instruct"
    prompts = json.loads((ref_dir / "reference.json").read_text())["prompts"]
    adapter = ref_dir / "adapters" / "hf-qv-r16-bin"
    work, out_dir = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    for scheme in args.schemes.split(","):
        gguf_path = work / f"SmolLM2-135M-Instruct.{scheme}.gguf"
        subprocess.check_call(
            ["cargo", "run", "--release", "--quiet", "--example", "quantize", "--",
             args.model, str(gguf_path), scheme],
            cwd=ROOT,
        )
        base = AutoModelForCausalLM.from_pretrained(
            str(work), gguf_file=gguf_path.name, dtype=torch.float32
        ).eval()
        variants = {"__base__": run_variant(base, prompts, torch)}
        lora = PeftModel.from_pretrained(base, str(adapter)).eval()
        variants["hf-qv-r16-bin"] = run_variant(lora, prompts, torch)
        doc = {
            "scheme": scheme,
            "source": Path(args.model).name,
            "gguf_sha256": sha256(gguf_path),
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            },
            "note": "HF transformers loading the GGUF (dequantized to float32); prompts are "
            "../shared/reference/smollm2-135m-instruct/reference.json's; 24 greedy tokens, "
            "EOS does not stop; last_logits_* are at the last prompt position.",
            "variants": variants,
        }
        (out_dir / f"{scheme}.json").write_text(json.dumps(doc, indent=1) + "\n")
        print(f"{scheme}: wrote {out_dir / (scheme + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
