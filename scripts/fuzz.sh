#!/usr/bin/env bash
# `make fuzz`: runs every cargo-fuzz target (fuzz/fuzz_targets/*.rs), or those named in
# FUZZ_TARGETS (space-separated), for FUZZ_SECONDS each (default 20), starting from the committed seeds (fuzz/seeds/<target>/, copied into the
# git-ignored fuzz/corpus/<target>/), and prints the executions each reached.
# Needs a nightly toolchain (rustup) and cargo-fuzz (installed from crates.io when missing).
# A crash stops the run with cargo-fuzz's report (the input is saved under fuzz/artifacts/).
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
all=$(cd fuzz && cargo +nightly fuzz list)
if [ -z "$all" ]; then
  echo "fuzz: no targets found in fuzz/Cargo.toml" >&2
  exit 1
fi
targets="${FUZZ_TARGETS:-$all}"
for t in $targets; do
  if ! grep -qx "$t" <<<"$all"; then
    echo "fuzz: FUZZ_TARGETS names $t, which is not a target (targets: $(echo $all))" >&2
    exit 1
  fi
done
for t in $targets; do
  if [ ! -d "fuzz/seeds/$t" ]; then
    echo "fuzz: target $t has no seed corpus (fuzz/seeds/$t/)" >&2
    exit 1
  fi
done
mkdir -p target
for t in $targets; do
  echo "== fuzz target $t (${secs}s)"
  mkdir -p "fuzz/corpus/$t"
  cp -n fuzz/seeds/"$t"/* "fuzz/corpus/$t/"
  log="target/fuzz-$t.log"
  if ! (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10) >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz: target $t failed (full log: $log)" >&2
    exit 1
  fi
  # libFuzzer's last line: "Done <N> runs in <S> second(s)".
  grep -E '^Done [0-9]+ runs' "$log" | tail -1 | sed "s/^/fuzz $t: /"
done
echo "fuzz: all targets ran ${secs}s without a crash"
