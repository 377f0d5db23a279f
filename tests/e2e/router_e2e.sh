#!/usr/bin/env bash
# Three loraplex replicas (Go OpenAI server) on loopback ports behind vllm-router (PyPI, pinned
# below; installed into .cache/router-venv), driven by the official `openai` client with mixed
# adapters and streaming: every answer through the router equals the same request sent to one
# replica directly (greedy), and with consistent hashing keyed on the model name (the client sends
# it as X-Session-ID) each adapter is resident on fewer replicas than with round robin, read from
# each replica's /metrics (loraplex:adapter_device_resident). Prints the residency numbers.
#
# Model: the shared tiny-llama fixture ($LORAPLEX_SHARED or ../shared) and four of its PEFT
# adapters, 6 rounds of one request each (4 adapters over 3 replicas: round robin moves each
# adapter around). Run: `make router-test` (not yet part of `make test`: failover and
# drain under the router are still to come, issue 14).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
CARGO=${CARGO:-cargo}
PY=${PYTHON:-python3}
ROUTER_PIN="vllm-router==0.1.17"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/loraplex-router.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
die() { echo "router_e2e: $*" >&2; exit 2; }

bash scripts/install-go.sh || die "Go is required"
bash scripts/install-test-deps.sh || die "python3 + openai + curl are required"
VENV=.cache/router-venv
if [ ! -x "$VENV/bin/vllm-router" ]; then
    "$PY" -m venv "$VENV" && "$VENV/bin/pip" install --quiet "$ROUTER_PIN" openai \
        || die "could not install $ROUTER_PIN"
fi
$CARGO build --release --lib || die "cargo build failed"
(cd examples/go/openai-server && go build -o "$WORK/openai-server" .) || die "go build failed"

SHARED=${LORAPLEX_SHARED:-$ROOT/../shared}
FIX="$SHARED/fixtures/tiny-llama"
[ -d "$FIX/model" ] || die "no tiny-llama fixture under $SHARED"
PEFT="$WORK/peft"
mkdir -p "$PEFT"
# Four distinct adapters (copies with the same bytes would share a device slot, and residency
# is counted per slot's content).
NAMES=(hf-all-r8 hf-rslora-r4 hf-pattern hf-qv-r16-bin)
for n in "${NAMES[@]}"; do
    cp -r "$FIX/adapters/$n" "$PEFT/$n" && chmod -R u+w "$PEFT/$n"
done

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
    for _ in $(seq 1 300); do curl -sf --max-time 2 "$1" >/dev/null && return 0; sleep 0.1; done
    die "$1 did not answer within 30 s"
}
# replicas: starts 4 servers: REPLICAS (3 URLs, behind the router) and REFERENCE (answers the
# same requests directly, outside the router, so that it does not change the residency counts).
replicas() {
    REPLICAS=()
    for _ in 1 2 3 4; do
        local port; port=$(free_port)
        "$WORK/openai-server" -model "$FIX/model" -served-model-name base -peft-source "$PEFT" \
            -listen "127.0.0.1:$port" -threads 1 -max-model-len 512 -max-gpu-loras 16 -max-cpu-loras 16 \
            >"$WORK/replica-$port.log" 2>&1 &
        PIDS+=($!)
        REPLICAS+=("http://127.0.0.1:$port")
    done
    for u in "${REPLICAS[@]}"; do wait_http "$u/v1/health/ready"; done
    REFERENCE=${REPLICAS[3]}
    unset 'REPLICAS[3]'
}
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    PIDS=()
}

FAIL=0
# run POLICY: replicas + router, the client's checks, then residency.
run() {
    local policy=$1
    replicas
    local rport; rport=$(free_port)
    "$VENV/bin/vllm-router" --host 127.0.0.1 --port "$rport" --policy "$policy" \
        --prometheus-host 127.0.0.1 --prometheus-port "$(free_port)" \
        --worker-urls "${REPLICAS[@]}" >"$WORK/router-$policy.log" 2>&1 &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$rport/health"
    "$VENV/bin/python" - "$policy" "http://127.0.0.1:$rport/v1" "$REFERENCE/v1" "${NAMES[@]}" <<'PYEOF' || FAIL=$((FAIL + 1))
import sys
import openai
policy, router, direct, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
via = openai.OpenAI(base_url=router, api_key="x", max_retries=0)
one = openai.OpenAI(base_url=direct, api_key="x", max_retries=0)
bad = 0
for rnd in range(6):
    for k, name in enumerate(names):
        prompt = f"Hello {rnd} {k}"
        hdr = {"X-Session-ID": name}
        if (rnd + k) % 2:
            text = "".join(c.choices[0].text or "" for c in via.completions.create(
                model=name, prompt=prompt, max_tokens=6, temperature=0, stream=True,
                extra_headers=hdr))
        else:
            text = via.completions.create(model=name, prompt=prompt, max_tokens=6,
                                          temperature=0, extra_headers=hdr).choices[0].text
        want = one.completions.create(model=name, prompt=prompt, max_tokens=6,
                                      temperature=0).choices[0].text
        if text != want:
            bad += 1
            print(f"FAIL {policy} {name}: router {text!r} != replica {want!r}")
print(f"{policy}: {6 * len(names)} requests through the router, {bad} differ from one replica")
sys.exit(1 if bad else 0)
PYEOF
    local total=0 line
    for u in "${REPLICAS[@]}"; do
        line=$(curl -s "$u/metrics" | grep '^loraplex:adapter_device_resident' | grep -c ' 1$')
        total=$((total + line))
    done
    echo "RESIDENCY $policy: $total adapter residencies over ${#NAMES[@]} adapters on 3 replicas"
    echo "$total" >"$WORK/res-$policy"
    stop_all
}

run round_robin
run consistent_hash
RR=$(cat "$WORK/res-round_robin" 2>/dev/null || echo 0)
CH=$(cat "$WORK/res-consistent_hash" 2>/dev/null || echo 0)
if [ "$CH" -ge "$RR" ] || [ "$CH" -lt "${#NAMES[@]}" ]; then
    echo "FAIL residency: consistent_hash $CH vs round_robin $RR"
    FAIL=$((FAIL + 1))
fi
echo "router_e2e: $FAIL failed"
[ "$FAIL" -eq 0 ]
