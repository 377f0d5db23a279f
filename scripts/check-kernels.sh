#!/usr/bin/env bash
# check-kernels.sh: compiles every kernels/*.cu to PTX for compute_80 and compute_90 (as build.rs
# does for the `cuda` feature) and assembles each PTX with ptxas for sm_80 and sm_90, failing on
# any compiler warning or error and on any register spill (a kernel that spills is too slow to
# keep), then checks that the kernels the PTX exports have exactly the parameters kernels/README.md
# gives (scripts/kernel_signatures.py: the contract backend/cuda launches by). Prints one line per
# kernel and architecture: registers, shared memory, spills. No GPU needed; the compiler comes from
# scripts/install-cuda-tools.sh (or LPX_NVCC).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
nvcc=${LPX_NVCC:-$(bash "$root/scripts/install-cuda-tools.sh" | tail -n 1)}
ptxas=$(dirname "$nvcc")/ptxas
shopt -s nullglob
files=("$root"/kernels/*.cu)
[ ${#files[@]} -gt 0 ] || { echo "check-kernels: no kernels/*.cu" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
for f in "${files[@]}"; do
    stem=$(basename "$f" .cu)
    for arch in 80 90; do
        ptx=$tmp/$stem.$arch.ptx
        if ! "$nvcc" --ptx -O3 -arch=compute_$arch -Werror all-warnings -o "$ptx" "$f" 2>"$tmp/err"; then
            echo "FAIL $stem.cu compute_$arch: nvcc:" >&2; cat "$tmp/err" >&2; fail=1; continue
        fi
        if ! "$ptxas" -arch=sm_$arch -O3 -v --warn-on-spills --warning-as-error "$ptx" -o "$tmp/$stem.$arch.cubin" 2>"$tmp/info"; then
            echo "FAIL $stem.cu sm_$arch: ptxas:" >&2; cat "$tmp/info" >&2; fail=1; continue
        fi
        # ptxas -v: "Compiling entry function 'NAME' for 'sm_XX'", then "N bytes stack frame,
        # S bytes spill stores, L bytes spill loads" and "Used R registers, ...".
        awk -v file="$stem.cu" -v arch="sm_$arch" '
            /Compiling entry function/ { match($0, /'"'"'[^'"'"']*'"'"'/); fn = substr($0, RSTART + 1, RLENGTH - 2) }
            /spill stores/ { split($0, a, ","); st = a[2] + 0; ld = a[3] + 0; sub(/.*: */, "", a[1]); frame = a[1] + 0
                             if (st > 0 || ld > 0) { spill = spill " " fn } }
            /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
                             smem = ""; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH)
                             printf "%-16s %-6s %-28s %4s regs  %s  stack %d  spill %d/%d\n", file, arch, fn, regs, smem, frame, st, ld }
            END { if (spill != "") { print "FAIL " file " " arch ": register spills in" spill > "/dev/stderr"; exit 1 } }
        ' "$tmp/info" || fail=1
    done
done
python3 "$root/scripts/kernel_signatures.py" "$root/kernels/README.md" "$tmp"/*.80.ptx || fail=1
[ $fail -eq 0 ] && echo "check-kernels: ${#files[@]} files, every kernel compiled for sm_80 and sm_90 without warnings or spills"
exit $fail
