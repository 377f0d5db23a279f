#!/usr/bin/env bash
# Three loraplex replicas (Go OpenAI server) on loopback ports behind vllm-router (PyPI, pinned
# below; installed into .cache/router-venv), driven by the official `openai` client with mixed
# adapters and streaming: every answer through the router equals the same request sent to one
# replica directly (greedy), and with consistent hashing keyed on the model name (the client sends
# it as X-Session-ID) each adapter is resident on fewer replicas than with round robin, read from
# each replica's /metrics (loraplex:adapter_device_resident). Then faults under load (consistent
# hashing, the router's retries on, /v1/health/ready as its health check): SIGKILL of the busiest
# replica loses no request the router could retry (only a streamed answer already under way on it
# may be cut), and SIGTERM drains it without any client error (requests in flight finish, new ones
# get 503 and go elsewhere; it exits 0). Prints the residency numbers and the fault results.
#
# Model: the shared tiny-llama fixture ($LORAPLEX_SHARED or ../shared) and four of its PEFT
# adapters. Part of `make test` (`make router-test` alone; about a minute, loopback only).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
CARGO=${CARGO:-cargo}
PY=${PYTHON:-python3}
ROUTER_PIN="vllm-router==0.1.17"
CLIENT_PIN="openai==3.63.0"
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
bash scripts/make-venv.sh "$VENV" "$ROUTER_PIN" "$CLIENT_PIN" || die "could not install $ROUTER_PIN"
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
            -listen "127.0.0.1:$port" -threads 1 -max-model-len 512 -max-gpu-loras 16 -max-cpu-loras 16 -drain-timeout 10s \
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

# router LOG POLICY [ARGS...]: starts vllm-router over REPLICAS with POLICY (and ARGS), logging
# to $WORK/router-LOG.log; sets ROUTER to its URL once it answers.
router() {
    local log=$1 policy=$2 rport
    shift 2
    rport=$(free_port)
    "$VENV/bin/vllm-router" --host 127.0.0.1 --port "$rport" --policy "$policy" \
        --prometheus-host 127.0.0.1 --prometheus-port "$(free_port)" "$@" \
        --worker-urls "${REPLICAS[@]}" >"$WORK/router-$log.log" 2>&1 &
    PIDS+=($!)
    ROUTER="http://127.0.0.1:$rport"
    wait_http "$ROUTER/health"
}

FAIL=0
# run POLICY: replicas + router, the client's checks, then residency.
run() {
    local policy=$1
    replicas
    router "$policy" "$policy"
    "$VENV/bin/python" - "$policy" "$ROUTER/v1" "$REFERENCE/v1" "${NAMES[@]}" <<'PYEOF' || FAIL=$((FAIL + 1))
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

# under_fault SIGNAL: replicas behind the router (consistent hashing, retries on, readiness as its
# health check), 48 requests from 6 client threads (mixed adapters, half streamed); after 8 have
# completed, SIGNAL goes to the replica that serves the most adapters. KILL: every request the
# router could retry is answered (only a streamed answer already under way on the killed replica
# may fail); TERM: no client error at all, and the replica exits 0 within its drain timeout. Every
# answer equals the reference replica's.
under_fault() {
    local sig=$1
    replicas
    # The router's retries must outlast the time its health check takes to drop a replica that
    # is gone or draining (consistent hashing retries on the same replica until then): 8 retries
    # backing off to 1 s span ~4.5 s against a 1 s check. With 4 retries over 0.75 s, 1 run in 6
    # lost a request to a replica that had drained and closed its port.
    router "$sig" consistent_hash \
        --retry-max-retries 8 --retry-initial-backoff-ms 100 --retry-max-backoff-ms 1000 \
        --health-check-endpoint /v1/health/ready --health-check-interval-secs 1 \
        --health-failure-threshold 1
    local victims=()
    for i in 0 1 2; do victims+=("${REPLICAS[$i]}=${PIDS[$i]}"); done
    "$VENV/bin/python" - "$sig" "$ROUTER/v1" "$REFERENCE/v1" "${victims[*]}" \
        "$WORK" "${NAMES[@]}" <<'PYEOF' || FAIL=$((FAIL + 1))
import concurrent.futures as cf
import os, re, signal, sys, threading, time, urllib.request
import openai
sig, router, direct, victims, work, names = sys.argv[1], sys.argv[2], sys.argv[3], \
    sys.argv[4].split(), sys.argv[5], sys.argv[6:]
victims = [v.split("=") for v in victims]
via = openai.OpenAI(base_url=router, api_key="x", max_retries=0, timeout=60)
one = openai.OpenAI(base_url=direct, api_key="x", max_retries=0, timeout=60)
jobs = [(i, names[i % len(names)], f"Tell me {i}", i % 2 == 1) for i in range(48)]
long = {"ignore_eos": True}  # every answer runs its 48 tokens: requests overlap the signal
want = {i: one.completions.create(model=n, prompt=p, max_tokens=48, temperature=0, extra_body=long)
        .choices[0].text for i, n, p, _ in jobs}
state = {"done": 0, "fired": None}
lock = threading.Lock()
started = {}

def load(url):
    body = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    running = re.search(r"^vllm:num_requests_running(?:\{[^}]*\})? (\S+)$", body, re.M)
    resident = re.findall(r"^loraplex:adapter_device_resident\{.*\} 1$", body, re.M)
    return (float(running.group(1)) if running else 0.0, len(resident))

def fire():
    # The replica running the most requests now (then: holding the most adapters), so that its
    # loss or drain is felt.
    url, pid = max(victims, key=lambda v: load(v[0]))
    os.kill(int(pid), signal.SIGKILL if sig == "KILL" else signal.SIGTERM)
    state["fired"] = (url, int(pid), time.time())
    open(os.path.join(work, "victim"), "w").write(f"{pid} {url.rsplit(':', 1)[1]}\n")

def one_job(job):
    i, name, prompt, stream = job
    hdr = {"X-Session-ID": name}
    got_data = False
    try:
        if stream:
            text = ""
            answer = via.completions.create(model=name, prompt=prompt, max_tokens=48,
                                            temperature=0, stream=True, extra_headers=hdr,
                                            extra_body=long)
            # create() returns once the response's status and headers have arrived: from then
            # on the router has committed this answer to the replica and cannot retry it, even
            # if no token had been sent yet when the replica died.
            got_data = True
            for c in answer:
                text += c.choices[0].text or ""
        else:
            text = via.completions.create(model=name, prompt=prompt, max_tokens=48,
                                          temperature=0, extra_headers=hdr,
                                          extra_body=long).choices[0].text
        err = None if text == want[i] else f"answer {text!r} != replica {want[i]!r}"
    except Exception as e:  # the client error a user would see
        err = f"{type(e).__name__}: {e}"
    with lock:
        state["done"] += 1
        if state["done"] == 8 and state["fired"] is None:
            fire()
    return i, stream, got_data, err

with cf.ThreadPoolExecutor(6) as pool:
    results = list(pool.map(one_job, jobs))
errors = [(i, s, g, e) for i, s, g, e in results if e]
# A streamed answer whose response had started on the killed replica cannot be retried by a
# router.
lost = [r for r in errors if not (sig == "KILL" and r[1] and r[2] and not r[3].startswith("answer"))]
for i, s, g, e in errors:
    print(f"  {sig} request {i} ({'stream' if s else 'plain'}{', under way' if g else ''}): {e}")
print(f"{sig}: {len(jobs)} requests, {len(jobs) - len(errors)} answered correctly, "
      f"{len(errors) - len(lost)} streams cut mid-answer, {len(lost)} lost; "
      f"signal sent to {state['fired'][0] if state['fired'] else 'nobody'}")
sys.exit(1 if lost or state["fired"] is None else 0)
PYEOF
    if [ "$sig" = TERM ] && [ -f "$WORK/victim" ]; then
        local vpid vport; read -r vpid vport <"$WORK/victim"
        local rc=none t0=$SECONDS
        while [ $((SECONDS - t0)) -lt 15 ]; do
            # exited: gone, or a zombie waiting to be reaped
            if [ "$(ps -o stat= -p "$vpid" | cut -c1)" != S ] && [ "$(ps -o stat= -p "$vpid" | cut -c1)" != R ]; then
                wait "$vpid"; rc=$?; break
            fi
            sleep 0.2
        done
        # "drained: N requests in flight at the signal, M new requests refused with 503"
        local report; report=$(grep -o 'drained: .*' "$WORK/replica-$vport.log")
        echo "TERM: the drained replica exited with status $rc after $((SECONDS - t0)) s; $report"
        local inflight; inflight=$(sed -n 's/^drained: \([0-9]*\) requests in flight.*/\1/p' <<<"$report")
        # The drain must have had work to finish for the check to mean anything.
        [ "$rc" = 0 ] && [ "${inflight:-0}" -ge 1 ] || FAIL=$((FAIL + 1))
    fi
    rm -f "$WORK/victim"
    stop_all
}

run round_robin
run consistent_hash
under_fault KILL
under_fault TERM
RR=$(cat "$WORK/res-round_robin" 2>/dev/null || echo 0)
CH=$(cat "$WORK/res-consistent_hash" 2>/dev/null || echo 0)
if [ "$CH" -ge "$RR" ] || [ "$CH" -lt "${#NAMES[@]}" ]; then
    echo "FAIL residency: consistent_hash $CH vs round_robin $RR"
    FAIL=$((FAIL + 1))
fi
echo "router_e2e: $FAIL failed"
[ "$FAIL" -eq 0 ]
