#!/usr/bin/env bash
# Offline check of the cluster packaging (`make manifests`, part of `make test`): deploy/k8s
# against the Kubernetes OpenAPI schemas (strict) and deploy/schema (Inference Extension kinds),
# cross-checked with the server's sources and deploy/Dockerfile, the capacity plan of the
# ConfigMap's configuration, then a self-test proving that broken copies are rejected. Needs no
# cluster, no Docker daemon and no network once the venv exists; see scripts/check_manifests.py
# for the list of checks.
#
# Pins (installed into .cache/manifests-venv by scripts/make-venv.sh, from PyPI):
#   kubernetes-validate==1.37.0 (ships the Kubernetes 1.25-1.37 JSON schemas), jsonschema==4.26.0,
#   PyYAML==6.0.3.
# Under CI=true a missing Python or a failed install is a failure; elsewhere it skips, saying so.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
PY=${PYTHON:-python3}
PINS="kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.3"
VENV=.cache/manifests-venv

skip_or_fail() {
    case "${CI:-}" in
        1|true|TRUE|True) echo "check-manifests: $* (CI=true: failing)" >&2; exit 1 ;;
    esac
    echo "check-manifests: skipping: $*" >&2
    exit 0
}

command -v "$PY" >/dev/null 2>&1 || skip_or_fail "$PY not found"
# shellcheck disable=SC2086
bash scripts/make-venv.sh "$VENV" $PINS || skip_or_fail "cannot install $PINS into $VENV"

# The capacity plan of the ConfigMap's configuration (`openai-server -plan` on the model under
# models/, `make model`) needs the server built against target/release/libloraplex.so: `make
# test` has built the library by now; elsewhere the step is skipped when it is missing.
PLAN=()
WORK=$(mktemp -d "${TMPDIR:-/tmp}/loraplex-manifests.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
is_ci() { case "${CI:-}" in 1|true|TRUE|True) return 0 ;; esac; return 1; }
if [ ! -f target/release/libloraplex.so ] && is_ci; then
    ${CARGO:-cargo} build --release --lib || { echo "check-manifests: cargo build failed" >&2; exit 1; }
fi
command -v go >/dev/null 2>&1 || ! is_ci || bash scripts/install-go.sh >&2 || exit 1
if [ -f target/release/libloraplex.so ] && command -v go >/dev/null 2>&1; then
    (cd examples/go/openai-server && go build -o "$WORK/openai-server" .) \
        || { echo "check-manifests: go build of the server failed" >&2; exit 1; }
    PLAN=(--plan-server "$WORK/openai-server")
elif is_ci; then
    echo "check-manifests: no libloraplex.so or no go (CI=true: failing)" >&2; exit 1
else
    echo "check-manifests: skipping the capacity plan: build the library (cargo build --release --lib) and install Go" >&2
fi
"$VENV/bin/python" scripts/check_manifests.py --self-test "${PLAN[@]}"
