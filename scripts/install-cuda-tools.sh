#!/usr/bin/env bash
# install-cuda-tools.sh: the CUDA compiler for the `cuda` feature, from PyPI wheels (no CUDA
# toolkit, no GPU needed): nvcc, ptxas, cicc (NVVM), the CUDA runtime and CCCL headers, all
# CUDA 13.0, pinned. Installs them into .cache/cuda-venv and links .cache/cuda to the toolkit
# folder (bin/nvcc, bin/ptxas, include/), where build.rs and scripts/check-kernels.sh look.
# Idempotent. Prints the nvcc path on its last line. PTX from CUDA 13.0 needs an NVIDIA driver
# of release 580 or newer on the GPU machine (the driver JIT-compiles it at engine start).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.cache/cuda-venv
bash "$root/scripts/make-venv.sh" "$venv" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 >&2
cu=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
[ -x "$cu/bin/nvcc" ] || { echo "install-cuda-tools: no nvcc in $cu/bin after installing the wheels" >&2; exit 1; }
ln -sfn "$cu" "$root/.cache/cuda"
"$root/.cache/cuda/bin/nvcc" --version >/dev/null || { echo "install-cuda-tools: $root/.cache/cuda/bin/nvcc does not run" >&2; exit 1; }
echo "$root/.cache/cuda/bin/nvcc"
