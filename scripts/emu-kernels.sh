#!/usr/bin/env bash
# emu-kernels.sh: runs every CUDA kernel of kernels/*.cu on the CPU, in the host emulation of
# kernels/emu/ (one fiber per GPU thread; barriers, shuffles, ldmatrix, mma and cp.async
# modelled; see kernels/emu/README.md), against the host references of
# kernels/emu/test_<file>.cpp. No GPU and no CUDA toolkit needed: g++ and python3 only (a fresh
# Debian with `g++` and `python3` installed runs it). Each kernel file is rewritten by
# kernels/emu/xform.py (which fails on any inline asm it cannot replace), compiled with g++ -O1 -g
# and linked with its test. The tests (and kernels/emu/selftest.cpp, the emulator's own
# primitives) run twice: plainly, and under AddressSanitizer + UndefinedBehaviorSanitizer
# (out-of-bounds reads and writes, misaligned vector accesses, signed overflow in index
# arithmetic, bad shifts: each fatal; EMU_ASAN=0 skips that build). The plain build resumes a
# block's threads from thread 0 up, the sanitizer build from the last thread down (a missing
# barrier shows whichever side of it runs first).
# A kernel file without a test is a failure. Prints one line per kernel file and build; exits
# non-zero on any failure.
#
# Usage: scripts/emu-kernels.sh [STEM...]  (e.g. `norm attention`; default: every kernels/*.cu)
#   EMU_KERNELS=DIR  take the .cu files from DIR instead of kernels/ (kernels/emu/mutate.py runs
#                    the tests on broken copies that way)
#   EMU_TIMEOUT=S    a test running past S seconds (default 600: a kernel spinning without
#                    reaching a barrier) fails with status 124
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
emu=$root/kernels/emu
kdir=${EMU_KERNELS:-$root/kernels}
cxx=${CXX:-g++}
command -v "$cxx" >/dev/null || { echo "emu-kernels: $cxx not found (apt-get install g++)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "emu-kernels: python3 not found" >&2; exit 1; }
jobs=$(nproc 2>/dev/null || echo 2)

if [ $# -gt 0 ]; then
    stems=("$@")
else
    stems=()
    for f in "$kdir"/*.cu; do stems+=("$(basename "$f" .cu)"); done
fi
[ ${#stems[@]} -gt 0 ] || { echo "emu-kernels: no kernels/*.cu" >&2; exit 1; }
fail=0
for s in "${stems[@]}"; do
    [ -f "$kdir/$s.cu" ] || { echo "FAIL emu $s: no $kdir/$s.cu" >&2; fail=1; }
    [ -f "$emu/test_$s.cpp" ] || { echo "FAIL emu $s: kernels/$s.cu has no test (kernels/emu/test_$s.cpp)" >&2; fail=1; }
done
for t in "$emu"/test_*.cpp; do
    s=$(basename "$t" .cpp); s=${s#test_}
    [ -f "$kdir/$s.cu" ] || { echo "FAIL emu: $t tests a missing $kdir/$s.cu" >&2; fail=1; }
done
[ $fail -eq 0 ] || exit 1

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
modes=(plain)
[ "${EMU_ASAN:-1}" = 0 ] || modes+=(asan)
base=(-std=gnu++17 -O1 -g -ffp-contract=off -fno-strict-aliasing -Wall -Wno-unknown-pragmas -I"$emu")

# xform.py must refuse what it cannot emulate (unknown inline asm, dynamic shared memory).
printf '__device__ void f() {\n    asm volatile("trap;");\n}\n' >"$tmp/asm.cu"
printf '__global__ void k() {\n    extern __shared__ float d[];\n}\n' >"$tmp/dyn.cu"
for f in asm dyn; do
    if python3 "$emu/xform.py" "$tmp/$f.cu" "$tmp/$f.cpp" 2>/dev/null; then
        echo "FAIL emu: xform.py accepted $f.cu (it must refuse it)" >&2
        exit 1
    fi
done
for s in "${stems[@]}"; do
    python3 "$emu/xform.py" "$kdir/$s.cu" "$tmp/${s}_emu.cpp" || { echo "FAIL emu $s: xform.py" >&2; exit 1; }
done

# Build (in parallel): emu.o, <stem>_emu.o, test_<stem>.o, linked per stem and mode.
build_one() {  # mode stem
    local mode=$1 s=$2 d=$tmp/$1 extra=()
    [ "$mode" = asan ] && extra=(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
    if [ "$s" = _emu ]; then
        "$cxx" "${base[@]}" "${extra[@]}" -c "$emu/emu.cpp" -o "$d/emu.o"
    elif [ "$s" = selftest ]; then
        "$cxx" "${base[@]}" "${extra[@]}" -c "$emu/selftest.cpp" -o "$d/test_selftest.o"
    else
        "$cxx" "${base[@]}" "${extra[@]}" -c "$tmp/${s}_emu.cpp" -o "$d/${s}_emu.o" &&
            "$cxx" "${base[@]}" "${extra[@]}" -c "$emu/test_$s.cpp" -o "$d/test_$s.o"
    fi
}
export -f build_one
export tmp cxx emu
export base_flags="${base[*]}"
for m in "${modes[@]}"; do mkdir -p "$tmp/$m"; done
list=()
for m in "${modes[@]}"; do
    list+=("$m _emu" "$m selftest")
    for s in "${stems[@]}"; do list+=("$m $s"); done
done
t0=$(date +%s)
if ! printf '%s\n' "${list[@]}" | xargs -P "$jobs" -L 1 bash -c 'base=($base_flags); build_one "$@"' _ 2>"$tmp/build.log"; then
    cat "$tmp/build.log" >&2
    echo "FAIL emu: build" >&2
    exit 1
fi
for m in "${modes[@]}"; do
    extra=()
    [ "$m" = asan ] && extra=(-fsanitize=address,undefined)
    "$cxx" "${extra[@]}" "$tmp/$m/emu.o" "$tmp/$m/test_selftest.o" -lm -o "$tmp/$m/test_selftest"
    for s in "${stems[@]}"; do
        "$cxx" "${extra[@]}" "$tmp/$m/emu.o" "$tmp/$m/${s}_emu.o" "$tmp/$m/test_$s.o" -lm -o "$tmp/$m/test_$s"
    done
done
echo "emu-kernels: built ${#stems[@]} kernel files (${modes[*]}) in $(( $(date +%s) - t0 )) s"

# Run (in parallel), then one summary line per kernel file and mode; the whole output of a
# failing test.
export ASAN_OPTIONS=detect_leaks=0:detect_stack_use_after_return=0:abort_on_error=0
run_one() {  # mode stem (the sanitizer build also resumes threads in reverse order)
    local order=forward
    [ "$1" = asan ] && order=reverse
    EMU_ORDER=$order timeout "${EMU_TIMEOUT:-600}" "$tmp/$1/test_$2" >"$tmp/$1/$2.out" 2>&1 && echo 0 >"$tmp/$1/$2.rc" || echo $? >"$tmp/$1/$2.rc"
}
export -f run_one
runs=(selftest "${stems[@]}")
for m in "${modes[@]}"; do for s in "${runs[@]}"; do echo "$m $s"; done; done |
    xargs -P "$jobs" -L 1 bash -c 'run_one "$@"' _
for m in "${modes[@]}"; do
    for s in "${runs[@]}"; do
        if [ "$(cat "$tmp/$m/$s.rc")" = 0 ]; then
            echo "[$m] $(tail -n 1 "$tmp/$m/$s.out")"
        else
            cat "$tmp/$m/$s.out"
            echo "[$m] FAIL emu $s (exit status $(cat "$tmp/$m/$s.rc"))"
            fail=1
        fi
    done
done
echo "emu-kernels: $([ $fail -eq 0 ] && echo ok || echo FAILED), $(( $(date +%s) - t0 )) s"
exit $fail
