#!/usr/bin/env bash
# make-venv.sh DIR PACKAGE...: a Python virtual environment at DIR with the (pinned) packages
# installed, for the test tools that come from PyPI (vllm-router, the manifest schema checker).
# Idempotent: an existing DIR whose pip already has every package is left as it is. Where the
# venv module is missing (Debian's python3-venv), installs it with apt-get when run as root.
# Exits non-zero, naming what failed, when the environment cannot be made.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: make-venv.sh DIR PACKAGE..." >&2; exit 2; }
dir=$1
shift
PY=${PYTHON:-python3}
if [ -x "$dir/bin/python" ] && "$dir/bin/python" -m pip show --quiet "${@%%[=<>]*}" >/dev/null 2>&1; then
    want=$(printf '%s\n' "$@" | grep '==' || true)
    have=$("$dir/bin/python" -m pip freeze 2>/dev/null)
    missing=$(comm -23 <(sort <<<"$want") <(sort <<<"$have") | grep . || true)
    [ -z "$missing" ] && exit 0
fi
if ! "$PY" -m venv --help >/dev/null 2>&1 || ! "$PY" -c 'import ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "make-venv: installing python3-venv with apt-get" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
        echo "make-venv: $PY has no working venv module; install python3-venv" >&2
        exit 1
    fi
fi
rm -rf "$dir"
"$PY" -m venv "$dir" || { echo "make-venv: could not create a venv at $dir" >&2; exit 1; }
"$dir/bin/python" -m pip install --quiet "$@" || { echo "make-venv: could not install $* into $dir" >&2; exit 1; }
