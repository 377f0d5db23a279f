#!/usr/bin/env bash
# `make fuzz`: runs every cargo-fuzz target briefly (FUZZ_SECONDS each, default 20).
# Needs a nightly toolchain (rustup) and cargo-fuzz (installed from crates.io when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECONDS:-20}"
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "make fuzz needs a nightly Rust toolchain (rustup toolchain install nightly); none is installed" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz from crates.io ..."
  cargo install cargo-fuzz --locked
fi
mkdir -p fuzz/corpus
for t in pickle safetensors_header npy tar; do
  echo "== fuzz target $t (${secs}s)"
  mkdir -p "fuzz/corpus/$t"
  (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | tail -3)
done
echo "fuzz: all targets ran ${secs}s without a crash"
