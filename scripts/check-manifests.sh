#!/usr/bin/env bash
# Offline check of the cluster packaging (`make manifests`, part of `make test`): deploy/k8s
# against the Kubernetes OpenAPI schemas (strict) and deploy/schema (Inference Extension kinds),
# cross-checked with the server's sources and deploy/Dockerfile, then a self-test proving that
# broken copies are rejected. Needs no cluster, no Docker daemon and no network once the venv
# exists; see scripts/check_manifests.py for the list of checks.
#
# Pins (installed into .cache/manifests-venv on first run, from PyPI):
#   kubernetes-validate==1.37.0 (ships the Kubernetes 1.25-1.37 JSON schemas), jsonschema==4.26.0,
#   PyYAML==6.0.3.
# Under CI=true a missing Python or a failed install is a failure; elsewhere it skips, saying so.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
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
if [ "$(cat "$VENV/.pins" 2>/dev/null)" != "$PINS" ]; then
    rm -rf "$VENV"
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
        # Debian's python3 lacks ensurepip until python3-venv is installed.
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        fi
        rm -rf "$VENV"
        "$PY" -m venv "$VENV" || skip_or_fail "cannot create a virtual environment ($PY -m venv)"
    fi
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install --quiet $PINS || { rm -rf "$VENV"; skip_or_fail "cannot install $PINS"; }
    echo "$PINS" >"$VENV/.pins"
fi
exec "$VENV/bin/python" scripts/check_manifests.py --self-test
