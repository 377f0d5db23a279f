#!/usr/bin/env bash
# Makes sure a Go toolchain (with cgo) is available for bindings/go and examples/go.
# Idempotent: does nothing when `go` is already on PATH. As root it installs Debian/Ubuntu's
# golang-go package with apt; otherwise it explains what to install and exits 1.
set -euo pipefail

if command -v go >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-go: installing golang-go with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
    command -v go >/dev/null 2>&1 || { echo "install-go: golang-go installed but 'go' is not on PATH" >&2; exit 1; }
    go version >&2
    exit 0
fi
cat >&2 <<'MSG'
install-go: no 'go' on PATH and cannot install it automatically (needs root and apt-get).
Install Go >= 1.19 (https://go.dev/dl/ or your package manager, e.g. `sudo apt-get install golang-go`),
make sure `go` is on PATH and a C compiler is available for cgo, then re-run.
MSG
exit 1
