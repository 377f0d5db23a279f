#!/usr/bin/env bash
# Installs what `make test` needs besides Rust and Go: gcc, g++ and valgrind (C/C++ ABI checks),
# curl, the official `openai` Python client and `jsonschema` (tests/e2e validates structured
# outputs with it; pin below). Idempotent: does nothing when all are present. As root it
# installs Debian packages with apt; otherwise it says what is missing.
set -euo pipefail

missing=()
for tool in gcc g++ valgrind curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "install-test-deps: installing ${missing[*]} with apt-get" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "install-test-deps: missing ${missing[*]}; install them (e.g. sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || { echo "install-test-deps: $PY not found; install Python 3" >&2; exit 1; }
if ! command -v curl >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
    else
        echo "install-test-deps: curl not found; install it" >&2; exit 1
    fi
fi
JSONSCHEMA_PIN="jsonschema==4.26.0"
if ! "$PY" -c 'import jsonschema' >/dev/null 2>&1; then
    echo "install-test-deps: installing $JSONSCHEMA_PIN" >&2
    "$PY" -m pip install --quiet "$JSONSCHEMA_PIN" 2>/dev/null \
        || "$PY" -m pip install --quiet --break-system-packages "$JSONSCHEMA_PIN" \
        || "$PY" -m pip install --quiet --user "$JSONSCHEMA_PIN"
    "$PY" -c 'import jsonschema' || { echo "install-test-deps: could not install jsonschema" >&2; exit 1; }
fi
if ! "$PY" -c 'import openai' >/dev/null 2>&1; then
    echo "install-test-deps: installing the openai Python client" >&2
    "$PY" -m pip install --quiet openai 2>/dev/null \
        || "$PY" -m pip install --quiet --break-system-packages openai \
        || "$PY" -m pip install --quiet --user openai
    "$PY" -c 'import openai' || { echo "install-test-deps: could not install openai" >&2; exit 1; }
fi
