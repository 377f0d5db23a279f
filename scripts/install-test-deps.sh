#!/usr/bin/env bash
# Installs what the end-to-end test (tests/e2e) needs besides Rust and Go: the official `openai`
# Python client and curl. Idempotent: does nothing when both are already present.
set -euo pipefail

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || { echo "install-test-deps: $PY not found; install Python 3" >&2; exit 1; }
if ! command -v curl >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
    else
        echo "install-test-deps: curl not found; install it" >&2; exit 1
    fi
fi
if ! "$PY" -c 'import openai' >/dev/null 2>&1; then
    echo "install-test-deps: installing the openai Python client" >&2
    "$PY" -m pip install --quiet openai 2>/dev/null \
        || "$PY" -m pip install --quiet --break-system-packages openai \
        || "$PY" -m pip install --quiet --user openai
    "$PY" -c 'import openai' || { echo "install-test-deps: could not install openai" >&2; exit 1; }
fi
