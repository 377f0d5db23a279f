#!/usr/bin/env bash
# gpu-bundle.sh: builds what scripts/gpu-check.sh runs on a GPU machine (which has no Rust
# toolchain and no network) and packs it into gpu-bundle/loraplex-gpu-bundle.tar.xz (≤ 64 MiB).
#
#   bash scripts/gpu-bundle.sh            (or `make gpu-bundle`)
#
# Contents (under loraplex-gpu-bundle/):
#   bin/       the test executables of the device conformance (device_ops, device_engine,
#              reference_models, reference_adapters, lora_model, engine), found with
#              `cargo test --release --no-run --message-format=json`, and examples/gpu_bench;
#              all stripped
#   lib/       libloraplex.so (stripped)
#   shared/    the tiny-llama fixture files those tests read (model, adapters, adapter formats,
#              PEFT logits, reference JSON) from $LORAPLEX_SHARED (default ../shared), and an
#              empty reference/ (the tests' marker of a shared directory)
#   scripts/   gpu-check.sh and scripts/gpu/*.py
#   manifest.json   git commit, features, sizes
#
# Built with `--features cuda` when Cargo.toml declares that feature (override with FEATURES=...;
# FEATURES= builds without it); a bundle built without it says so in its manifest and
# gpu-check.sh reports the CUDA phases as failed (the device "cuda:0" is UNSUPPORTED there).
# Exits non-zero, naming the cause, when a build fails, a needed file is missing or the archive
# exceeds the limit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
CARGO=${CARGO:-cargo}
LIMIT=$((64 * 1024 * 1024))
SHARED=${LORAPLEX_SHARED:-$root/../shared}
FIX=$SHARED/fixtures/tiny-llama
TESTS=(device_ops device_engine reference_models reference_adapters lora_model engine)
if [ -z "${FEATURES+set}" ]; then
    if grep -Eq '^[[:space:]]*cuda[[:space:]]*=' <(sed -n '/^\[features\]/,/^\[/p' Cargo.toml); then
        FEATURES=cuda
    else
        FEATURES=
        echo "gpu-bundle: Cargo.toml has no \"cuda\" feature: building WITHOUT it (cpu-only bundle)" >&2
    fi
fi
feat=()
[ -n "$FEATURES" ] && feat=(--features "$FEATURES")

[ -d "$FIX/model" ] || { echo "gpu-bundle: $FIX/model is missing (set LORAPLEX_SHARED)" >&2; exit 1; }
command -v strip >/dev/null || { echo "gpu-bundle: strip (binutils) is missing" >&2; exit 1; }
command -v xz >/dev/null || { echo "gpu-bundle: xz is missing" >&2; exit 1; }

out=$root/gpu-bundle
stage=$out/loraplex-gpu-bundle
rm -rf "$stage" "$out/loraplex-gpu-bundle.tar.xz"
mkdir -p "$stage/bin" "$stage/lib" "$stage/scripts/gpu" "$stage/shared/reference" "$stage/shared/fixtures/tiny-llama"

test_args=()
for t in "${TESTS[@]}"; do test_args+=(--test "$t"); done
echo "gpu-bundle: building tests ${TESTS[*]}, gpu_bench and the library (features: ${FEATURES:-none})" >&2
json=$("$CARGO" test --release "${feat[@]}" "${test_args[@]}" --no-run --message-format=json) ||
    { echo "gpu-bundle: cargo test --no-run failed" >&2; exit 1; }
"$CARGO" build --release "${feat[@]}" --lib --example gpu_bench ||
    { echo "gpu-bundle: cargo build of the library / gpu_bench failed" >&2; exit 1; }
target=$("$CARGO" metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

# The executable of each test target, from cargo's JSON messages.
for t in "${TESTS[@]}"; do
    exe=$(python3 -c '
import json, sys
want = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == want \
            and "test" in m["target"]["kind"]:
        print(m["executable"])
' "$t" <<<"$json" | tail -n 1)
    if [ -z "$exe" ] || [ ! -x "$exe" ]; then
        echo "gpu-bundle: no executable for test $t" >&2
        exit 1
    fi
    strip -o "$stage/bin/$t" "$exe"
done
strip -o "$stage/bin/gpu_bench" "$target/release/examples/gpu_bench"
strip -o "$stage/lib/libloraplex.so" "$target/release/libloraplex.so"

# Fixtures: exactly the files the tests read.
for f in model adapters adapters-formats logits logits-formats reference.json reference-formats.json; do
    [ -e "$FIX/$f" ] || { echo "gpu-bundle: $FIX/$f is missing" >&2; exit 1; }
    cp -r "$FIX/$f" "$stage/shared/fixtures/tiny-llama/"
done
chmod -R u+w "$stage/shared"
cp scripts/gpu-check.sh "$stage/scripts/"
cp scripts/gpu/*.py "$stage/scripts/gpu/"

python3 - "$stage" "$FEATURES" <<'EOF'
import json, os, re, subprocess, sys
stage, features = sys.argv[1], sys.argv[2]
def rev():
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return None
def glibc_needed():
    """The newest GLIBC_x.y symbol version the binaries need (the GPU machine's glibc must be it
    or newer), or None without objdump."""
    best = None
    for d in ("bin", "lib"):
        for f in os.listdir(os.path.join(stage, d)):
            try:
                out = subprocess.run(["objdump", "-T", os.path.join(stage, d, f)],
                                     capture_output=True, text=True, check=True).stdout
            except Exception:
                return None
            for v in re.findall(r"GLIBC_(\d+(?:\.\d+)*)", out):
                t = tuple(int(x) for x in v.split("."))
                best = max(best or t, t)
    return ".".join(map(str, best)) if best else None
files = {}
for d, _, fs in os.walk(stage):
    for f in fs:
        p = os.path.join(d, f)
        files[os.path.relpath(p, stage)] = os.path.getsize(p)
json.dump({"git": rev(), "features": features.split(",") if features else [],
           "cuda_feature": "cuda" in features.split(","), "binaries": sorted(
               os.listdir(os.path.join(stage, "bin"))),
           "glibc_needed": glibc_needed(), "bytes": sum(files.values()), "files": len(files)},
          open(os.path.join(stage, "manifest.json"), "w"), indent=1)
EOF

tar -C "$out" -cf - loraplex-gpu-bundle | xz -T0 -6 > "$out/loraplex-gpu-bundle.tar.xz"
size=$(stat -c %s "$out/loraplex-gpu-bundle.tar.xz")
raw=$(du -sb "$stage" | cut -f1)
echo "gpu-bundle: $out/loraplex-gpu-bundle.tar.xz: $size bytes ($raw unpacked; limit $LIMIT)" >&2
if [ "$size" -gt "$LIMIT" ]; then
    echo "gpu-bundle: the archive exceeds 64 MiB ($size bytes): drop a test binary or fixture" >&2
    exit 1
fi
