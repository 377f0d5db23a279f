#!/usr/bin/env bash
# Builds the llama.cpp tools that `make bench` compares loraplex against, from the PyPI sdist of
# llama-cpp-python (its vendored `vendor/llama.cpp`), CPU only, Release, GGML_NATIVE=ON, no curl.
#
#   scripts/llama-cpp.sh            builds (once) and prints the bin dir on stdout's last line
#   scripts/llama-cpp.sh --source   only downloads and extracts the source (once) and prints its
#                                   dir (tests read its models/ggml-vocab-* tokenizer vocabularies)
#
# Pin: llama-cpp-python==0.3.36 (the newest on PyPI when this script was written). The build goes
# to <repo>/.cache/llama.cpp/<version>/ (gitignored); a finished build (marked by a `.built` file
# listing the tools) is reused, so the script is idempotent. Needs python3 with pip, a C/C++
# compiler and make; cmake (pin: cmake==4.4.5) is installed with pip into the cache dir when it is
# not on PATH.
# Tools built: llama-bench, llama-batched-bench, llama-quantize.
# AMX: on a CPU with AMX, GGML_NATIVE compiles ggml's AMX matmul, whose worker threads crash
# with SIGILL at their first tile instruction in this version (tile permission requested on the
# main thread only and a tile config the compiler drops: upstream PR ggml-org/llama.cpp#26954),
# so there the build passes -mno-amx-tile -mno-amx-int8 -mno-amx-bf16 and llama.cpp runs its
# AVX-512 kernels (VNNI, BF16, repacked K-quants). The `.built` file records the flags; a build
# with other flags is redone.
# Env: LLAMA_CPP_JOBS (parallel compile jobs, default: nproc); LLAMA_CPP_SDIST (a local copy of
# the pinned sdist, skips the download).
set -euo pipefail

VERSION="0.3.36"
CMAKE_PIN="cmake==4.4.5"
PKG="llama-cpp-python==$VERSION"
TOOLS=(llama-bench llama-batched-bench llama-quantize)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$repo_root/.cache/llama.cpp/$VERSION"
bin="$cache/build/bin"
stamp="$cache/.built"

log() { echo "llama-cpp: $*" >&2; }
mode=build
case "${1:-}" in
    "") ;;
    --source) mode=source ;;
    *) log "error: unknown argument '$1' (usage: llama-cpp.sh [--source])"; exit 2 ;;
esac

# See the header (AMX).
extra_flags=""
if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
    extra_flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
stamp_text="$(printf '%s\n' "${TOOLS[@]}"; echo "flags: ${extra_flags:-none}")"

if [[ $mode == build && -f "$stamp" && "$(cat "$stamp")" == "$stamp_text" ]]; then
    ok=1
    for t in "${TOOLS[@]}"; do [[ -x "$bin/$t" ]] || ok=0; done
    if [[ $ok == 1 ]]; then
        log "llama.cpp from $PKG already built"
        echo "$bin"
        exit 0
    fi
fi

needed=(python3 cc c++ make)
[[ $mode == source ]] && needed=(python3)
for tool in "${needed[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "error: '$tool' is required to build llama.cpp and is not on PATH"
        exit 1
    fi
done
if ! python3 -m pip --version >/dev/null 2>&1; then
    log "error: pip is not available for python3 (install python3-pip or run 'python3 -m ensurepip')"
    exit 1
fi

mkdir -p "$cache"
CMAKE="$(command -v cmake || true)"
if [[ $mode == build && -z "$CMAKE" ]]; then
    if [[ ! -x "$cache/cmake-venv/bin/cmake" ]]; then
        log "cmake not found; installing it with pip into $cache/cmake-venv"
        python3 -m venv "$cache/cmake-venv"
        "$cache/cmake-venv/bin/python" -m pip install --quiet "$CMAKE_PIN"
    fi
    CMAKE="$cache/cmake-venv/bin/cmake"
fi

src="$cache/src"
if [[ ! -f "$src/CMakeLists.txt" ]]; then
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/llama-cpp.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    if [[ -n "${LLAMA_CPP_SDIST:-}" ]]; then
        cp "$LLAMA_CPP_SDIST" "$tmp/"
    else
        log "downloading the sdist of $PKG from PyPI"
        # --no-binary for this package only: with :all: pip would also compile its build
        # backend (scikit-build-core, cmake) from source just to read the sdist's metadata.
        python3 -m pip download --quiet --no-binary llama-cpp-python --no-deps "$PKG" -d "$tmp"
    fi
    sdist="$(ls "$tmp"/llama_cpp_python-"$VERSION".tar.gz "$tmp"/llama-cpp-python-"$VERSION".tar.gz 2>/dev/null | head -n 1 || true)"
    if [[ -z "$sdist" ]]; then
        log "error: pip did not produce the $PKG sdist in $tmp: $(ls "$tmp")"
        exit 1
    fi
    log "extracting vendor/llama.cpp from $(basename "$sdist")"
    tar -xzf "$sdist" -C "$tmp"
    vendor="$(ls -d "$tmp"/*/vendor/llama.cpp 2>/dev/null | head -n 1 || true)"
    if [[ -z "$vendor" || ! -f "$vendor/CMakeLists.txt" ]]; then
        log "error: $(basename "$sdist") has no vendor/llama.cpp/CMakeLists.txt"
        exit 1
    fi
    rm -rf "$src"
    mv "$vendor" "$src"
fi
if [[ $mode == source ]]; then
    echo "$src"
    exit 0
fi

jobs="${LLAMA_CPP_JOBS:-$(nproc 2>/dev/null || echo 2)}"
log "configuring (Release, CPU only, GGML_NATIVE=ON, no curl, extra flags: ${extra_flags:-none})"
"$CMAKE" -S "$src" -B "$cache/build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_FLAGS="$extra_flags" -DCMAKE_CXX_FLAGS="$extra_flags" \
    -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENCL=OFF \
    -DGGML_BLAS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF >&2
log "building ${TOOLS[*]} with $jobs jobs"
"$CMAKE" --build "$cache/build" --config Release -j "$jobs" --target "${TOOLS[@]}" >&2

for t in "${TOOLS[@]}"; do
    if [[ ! -x "$bin/$t" ]]; then
        log "error: the build finished but $bin/$t is missing"
        exit 1
    fi
done
printf '%s\n' "$stamp_text" >"$stamp"
log "built ${TOOLS[*]} in $bin"
echo "$bin"
