#!/usr/bin/env bash
# gpu-check.sh: verifies the CUDA backend on a machine with an NVIDIA GPU, its driver and python
# with torch/transformers/peft, but no Rust toolchain and no network, from the bundle that
# scripts/gpu-bundle.sh (`make gpu-bundle`) builds beforehand. Writes ONE JSON report.
#
#   bash scripts/gpu-check.sh [BUNDLE] [--out gpu-check-report.json] [--work DIR]
#        [--device cuda:0] [--budget 540] [--layers 32] [--adapters 64] [--skip-8b] [--small]
#
# BUNDLE: gpu-bundle/loraplex-gpu-bundle.tar.xz (default) or its unpacked directory.
# Phases, in order, each bounded by `timeout` (its own limit, and never past the overall
# --budget seconds, default 540 = 9 minutes; a phase left with under 5 s is recorded as
# skipped):
#   unpack     the bundle into WORK/bundle
#   env        nvidia-smi, nvcc, glibc, python package versions, libloraplex.so loads (ctypes)
#   ops        bin/device_ops with LORAPLEX_TEST_DEVICE=DEVICE (every Backend op vs reference)
#   engine-*   bin/{device_engine,reference_models,reference_adapters,lora_model,engine} on
#              DEVICE: tiny-llama vs transformers/PEFT (every adapter variant and format, the
#              8-row mixed batch), batch invariance, CPU = DEVICE
#   copy       device copy bandwidth (scripts/gpu/hf_bench.py --skip-peft)
#   gen-8b     scripts/gpu/make_8b_shape.py: Llama-3-8B-shape bf16 model + 64 rank-16 PEFT
#              adapters in WORK/8b (generated on the GPU; local disk, ~20 GB)
#   hf-ref     scripts/gpu/hf_reference.py run: HF PEFT, base + 8 adapters, each row alone
#   lpx-ref    bin/gpu_bench --requests: the same rows as ONE mixed batch on DEVICE (f32 weights
#              holding the bf16 values, so only the bf16 KV cache differs from HF's float32)
#   compare    hf_reference.py compare (logits within 5e-2 x std, greedy tokens)
#   bench      bin/gpu_bench: decode tok/s at batch 1/32/128 x {base, one, 64 distinct
#              adapters}, 2,048-token prefill, adapter upload (bf16 weights)
#   hf-bench   scripts/gpu/hf_bench.py: HF PEFT at batch 32 over 32 adapters (bf16)
# The report (--out, default WORK/gpu-check-report.json, also printed) has every phase's status
# (ok / failed / timeout / skipped), rc, seconds, test counts and failing tests, the tail of the
# log of any phase not ok, the raw numbers and the issue-13 ratios with their targets:
#   batch1_decode_over_hbm_floor   batch-1 tok/s x weight bytes / copy bandwidth   >= 0.7
#   distinct64_over_base_batch128  64 distinct adapters vs all-base at batch 128  >= 0.8
#   loraplex_over_hf_peft_32x32    batch 32 over 32 distinct adapters             >= 10
#   adapter_upload_ms              rank-16 all-module adapter host -> device      <= 2
# --skip-8b stops after the tiny-model phases; --small runs the 8B phases on a tiny model of the
# same structure with small batches (a smoke test of this script, e.g. with --device cpu on a
# machine without a GPU, where the copy phase fails: no CUDA). The report is written even
# when phases fail (trap on exit). Exit status: 0 when every phase is ok,
# 1 otherwise. PYTHON selects the python (default python3).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BUNDLE=""
OUT=""
WORK=${TMPDIR:-/tmp}/loraplex-gpu-check
DEVICE=cuda:0
BUDGET=540
LAYERS=32
NADAPTERS=64
SKIP_8B=0
SMALL=0
PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
    case $1 in
        --out) OUT=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --device) DEVICE=$2; shift 2 ;;
        --budget) BUDGET=$2; shift 2 ;;
        --layers) LAYERS=$2; shift 2 ;;
        --adapters) NADAPTERS=$2; shift 2 ;;
        --skip-8b) SKIP_8B=1; shift ;;
        --small) SMALL=1; shift ;;
        -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
        -*) echo "gpu-check: unknown flag $1" >&2; exit 2 ;;
        *) BUNDLE=$1; shift ;;
    esac
done
if [ -z "$BUNDLE" ]; then
    for c in "$here/../gpu-bundle/loraplex-gpu-bundle.tar.xz" "$here/.."; do
        if [ -f "$c" ] || [ -f "$c/manifest.json" ]; then BUNDLE=$c; break; fi
    done
fi
mkdir -p "$WORK/logs"
WORK=$(cd "$WORK" && pwd)
OUT=${OUT:-$WORK/gpu-check-report.json}
PHASES=$WORK/phases.tsv
: > "$PHASES"
START=$(date +%s)
DEADLINE=$((START + BUDGET))
RESERVE=15
B=$WORK/bundle/loraplex-gpu-bundle

# phase NAME MAX_SECONDS CMD...: runs CMD under timeout, logging to WORK/logs/NAME.log, and
# appends "name status rc seconds limit" to the phase table.
phase() {
    local name=$1 max=$2
    shift 2
    local now left limit t0 rc status
    now=$(date +%s)
    left=$((DEADLINE - RESERVE - now))
    limit=$(( max < left ? max : left ))
    if [ "$limit" -lt 5 ]; then
        printf '%s\tskipped\t-1\t0\t%s\n' "$name" "$limit" >> "$PHASES"
        echo "gpu-check: $name skipped (no time left in the ${BUDGET}s budget)" >&2
        return 1
    fi
    echo "gpu-check: $name (limit ${limit}s)" >&2
    t0=$(date +%s)
    # Through bash -c so that CMD may be one of the exported functions below.
    timeout --kill-after=5 "$limit" bash -c '"$@"' _ "$@" > "$WORK/logs/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status=timeout ;;
        *) status=failed ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))" "$limit" >> "$PHASES"
    echo "gpu-check: $name $status (rc $rc, $(( $(date +%s) - t0 ))s)" >&2
    [ "$rc" -eq 0 ]
}

# ok NAME: true when phase NAME ended ok.
ok() { grep -q "^$1"$'\t'"ok"$'\t' "$PHASES"; }

# skip NAME WHY: records a phase that could not run because an earlier one failed.
skip() {
    printf '%s\tskipped\t-1\t0\t0\n' "$1" >> "$PHASES"
    echo "skipped: $2" > "$WORK/logs/$1.log"
    echo "gpu-check: $1 skipped ($2)" >&2
}

report() {
    "$PY" - "$WORK" "$OUT" "$PHASES" "$B" "$DEVICE" "$START" "$BUDGET" <<'EOF' || {
import json, os, re, sys, time
work, out, phases_tsv, bundle, device, start, budget = sys.argv[1:8]

def load(p):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def tail(p, n=40):
    try:
        with open(p, errors="replace") as f:
            return f.read().splitlines()[-n:]
    except OSError:
        return []

phases = []
for line in open(phases_tsv):
    name, status, rc, secs, limit = line.rstrip("\n").split("\t")
    ph = {"name": name, "status": status, "rc": int(rc), "seconds": int(secs),
          "limit_s": int(limit), "log": os.path.join(work, "logs", name + ".log")}
    lines = tail(ph["log"], 100000)
    results = [l for l in lines if l.startswith("test result:")]
    if results:
        passed = sum(int(m.group(1)) for l in results for m in [re.search(r"(\d+) passed", l)] if m)
        failed = sum(int(m.group(1)) for l in results for m in [re.search(r"(\d+) failed", l)] if m)
        ph["tests"] = {"passed": passed, "failed": failed,
                       "failing": sorted({m.group(1) for l in lines
                                          for m in [re.match(r"test (\S+) \.\.\. FAILED", l)] if m})}
    if status != "ok":
        ph["tail"] = lines[-40:]
    phases.append(ph)

env = load(os.path.join(work, "env.json")) or {}
bench = load(os.path.join(work, "bench.json"))
hfb = load(os.path.join(work, "hf-bench.json")) or load(os.path.join(work, "copy.json"))
cmp_ = load(os.path.join(work, "compare.json"))
shape = load(os.path.join(work, "8b", "shape.json"))
manifest = load(os.path.join(bundle, "manifest.json"))

def ratio(name, value, target, op):
    met = None if value is None else (value >= target if op == ">=" else value <= target)
    return {"value": value, "target": f"{op} {target}", "met": met}

ratios = {}
copy_bps = None
if hfb and hfb.get("copy"):
    copy_bps = hfb["copy"]["read_plus_write_GBps"] * 1e9
def decode_at(b):
    for row in (bench or {}).get("decode", []):
        if row.get("batch") == b:
            return row
    return None
b1 = decode_at(1)
wb = (bench or {}).get("weight_bytes")
v = None
if b1 and b1.get("base_tok_s") and wb and copy_bps:
    floor_tok_s = copy_bps / wb
    v = b1["base_tok_s"] / floor_tok_s
ratios["batch1_decode_over_hbm_floor"] = ratio("", v, 0.7, ">=")
if v is not None:
    ratios["batch1_decode_over_hbm_floor"]["floor_tok_s"] = copy_bps / wb
# At the largest batch measured (128 in the full run) and at HF's batch (32): the batch and
# adapter counts are recorded with each ratio (a --small run measures smaller ones).
big = max((bench or {}).get("decode", []), key=lambda r: r.get("batch", 0), default=None)
v = None
if big and big.get("base_tok_s") and big.get("distinct_tok_s") is not None:
    v = big["distinct_tok_s"] / big["base_tok_s"]
ratios["distinct64_over_base_batch128"] = ratio("", v, 0.8, ">=")
if big:
    ratios["distinct64_over_base_batch128"].update(
        batch=big["batch"], distinct_adapters=big.get("distinct_adapters"))
v = None
peft = (hfb or {}).get("peft") or {}
at = decode_at(peft.get("batch"))
if at and at.get("distinct_tok_s") and peft.get("distinct_tok_s"):
    v = at["distinct_tok_s"] / peft["distinct_tok_s"]
ratios["loraplex_over_hf_peft_32x32"] = ratio("", v, 10.0, ">=")
if peft:
    ratios["loraplex_over_hf_peft_32x32"].update(
        batch=peft.get("batch"), distinct_adapters=peft.get("distinct_adapters"),
        loraplex_tok_s=at and at.get("distinct_tok_s"), hf_peft_tok_s=peft.get("distinct_tok_s"))
up = ((bench or {}).get("upload") or {}).get("upload_ms")
ratios["adapter_upload_ms"] = ratio("", up, 2.0, "<=")

doc = {
    "schema": "loraplex-gpu-check/1",
    "device": device,
    "started_unix": int(start),
    "seconds": int(time.time()) - int(start),
    "budget_s": int(budget),
    "ok": all(p["status"] == "ok" for p in phases),
    "env": env,
    "bundle": manifest,
    "phases": phases,
    "hf_peft_8b_comparison": cmp_,
    "model_8b": shape,
    "loraplex_bench": bench,
    "hf_bench": hfb,
    "ratios": ratios,
}
with open(out, "w") as f:
    json.dump(doc, f, indent=1)
print(json.dumps(doc, indent=1))
EOF
        # python itself failed: the phase table as a minimal report.
        {
            printf '{"schema": "loraplex-gpu-check/1", "ok": false, "report_error": "python report writer failed", "phases": ['
            awk -F'\t' 'BEGIN{s=""} {printf "%s{\"name\":\"%s\",\"status\":\"%s\",\"rc\":%s,\"seconds\":%s}", s, $1, $2, $3, $4; s=","}' "$PHASES"
            printf ']}\n'
        } > "$OUT"
        cat "$OUT"
    }
}

finish() {
    local rc=$?
    trap - EXIT
    report
    echo "gpu-check: report in $OUT" >&2
    if grep -qv $'\tok\t' "$PHASES" 2>/dev/null || [ ! -s "$PHASES" ]; then exit 1; fi
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

# --- env ---------------------------------------------------------------------------------------
env_probe() {
    local lib="$B/lib/libloraplex.so"
    "$PY" - "$lib" "$WORK/env.json" <<'EOF'
import ctypes, json, subprocess, sys
lib, out = sys.argv[1], sys.argv[2]
env = {}
try:
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                        "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    env["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
except Exception as e:
    env["nvidia_smi"] = f"error: {e}"
try:
    q = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=20)
    env["nvcc"] = q.stdout.strip().splitlines()[-1] if q.stdout else q.stderr.strip()
except Exception as e:
    env["nvcc"] = f"error: {e}"
try:
    import platform
    env["glibc"] = "-".join(platform.libc_ver())
except Exception as e:
    env["glibc"] = f"error: {e}"
for m in ("torch", "transformers", "peft", "safetensors", "numpy"):
    try:
        env[m] = __import__(m).__version__
    except Exception as e:
        env[m] = f"missing: {e}"
try:
    ctypes.CDLL(lib)
    env["libloraplex"] = "loads"
except OSError as e:
    env["libloraplex"] = f"does not load: {e}"
json.dump(env, open(out, "w"), indent=1)
print(json.dumps(env, indent=1))
sys.exit(0 if env["libloraplex"] == "loads" and not env["torch"].startswith("missing") else 1)
EOF
}

unpack() {
    if [ -z "$BUNDLE" ]; then
        echo "no bundle given and none found (run make gpu-bundle)"
        return 1
    fi
    rm -rf "$WORK/bundle"
    mkdir -p "$WORK/bundle"
    if [ -d "$BUNDLE" ]; then
        cp -a "$BUNDLE" "$B"
    else
        tar -C "$WORK/bundle" -xJf "$BUNDLE"
    fi
    cat "$B/manifest.json"
}

device_env() {
    env -u CI LORAPLEX_TEST_DEVICE="$DEVICE" LORAPLEX_SHARED="$B/shared" RUST_BACKTRACE=1 "$@"
}

export B WORK BUNDLE PY DEVICE
export -f env_probe unpack device_env
phase unpack 90 unpack
phase env 60 env_probe
if ok unpack; then
    phase ops 120 device_env "$B/bin/device_ops"
    for t in device_engine reference_models reference_adapters lora_model engine; do
        # SmolLM2 (GGUF + its reference) does not travel in the bundle.
        phase "engine-$t" 90 device_env "$B/bin/$t" --skip smollm2
    done
else
    for t in ops engine-device_engine engine-reference_models engine-reference_adapters engine-lora_model engine-engine; do
        skip "$t" "no bundle"
    done
fi
phase copy 60 "$PY" "$B/scripts/gpu/hf_bench.py" --model none --adapters none --skip-peft --out "$WORK/copy.json"

M=$WORK/8b
if [ "$SKIP_8B" = 1 ]; then
    exit 0
fi
if [ -f "$M/shape.json" ] && [ -d "$M/adapters/a$(printf '%02d' $((NADAPTERS - 1)))" ]; then
    echo "gpu-check: reusing $M" >&2
    printf 'gen-8b\tok\t0\t0\t0\n' >> "$PHASES"
    echo "reused $M" > "$WORK/logs/gen-8b.log"
else
    rm -rf "$M"
    gen_args=(--layers "$LAYERS")
    [ "$SMALL" = 1 ] && gen_args=(--small --vocab 512)
    phase gen-8b 180 "$PY" "$B/scripts/gpu/make_8b_shape.py" --out "$M" --adapters "$NADAPTERS" --rank 16 "${gen_args[@]}"
fi
if [ "$SMALL" = 1 ]; then
    bench_args=(--batches "1,4" --decode-tokens 16 --prefill 256 --kv-cache-gib 0.1 --reps 2)
    hfb_args=(--batch 4 --distinct 4 --decode-tokens 16)
    [ "$DEVICE" = cpu ] && hfb_args+=(--device cpu)
    kv_ref=0.1
else
    bench_args=(--batches "1,32,128" --decode-tokens 32 --prefill 2048 --kv-cache-gib 16 --reps 2)
    hfb_args=(--batch 32 --distinct 32 --decode-tokens 32)
    kv_ref=2
fi
if ok gen-8b; then
    phase hf-ref 150 "$PY" "$B/scripts/gpu/hf_reference.py" run --model "$M/model" --adapters "$M/adapters" --rows 8 --new-tokens 16 --out "$WORK/hf-ref.json"
    phase lpx-ref 150 "$B/bin/gpu_bench" --device "$DEVICE" --model "$M/model" --adapters "$M/adapters" --weight-dtype f32 --kv-cache-gib "$kv_ref" --requests "$WORK/hf-ref.json" --out "$WORK/lpx-ref.json"
    if ok hf-ref && ok lpx-ref; then
        phase compare 30 "$PY" "$B/scripts/gpu/hf_reference.py" compare --hf "$WORK/hf-ref.json" --lpx "$WORK/lpx-ref.json" --out "$WORK/compare.json"
    else
        skip compare "hf-ref or lpx-ref failed"
    fi
    phase bench 200 "$B/bin/gpu_bench" --device "$DEVICE" --model "$M/model" --adapters "$M/adapters" --weight-dtype bf16 --distinct "$NADAPTERS" "${bench_args[@]}" --out "$WORK/bench.json"
    phase hf-bench 150 "$PY" "$B/scripts/gpu/hf_bench.py" --model "$M/model" --adapters "$M/adapters" "${hfb_args[@]}" --out "$WORK/hf-bench.json"
else
    for p in hf-ref lpx-ref compare bench hf-bench; do skip "$p" "gen-8b failed"; done
fi
