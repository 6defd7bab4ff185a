#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler wheels from PyPI into a cache folder
# and prints the path of nvcc. The versions match the lent machines' driver
# (580, CUDA 13.0): a newer nvcc writes PTX that driver refuses.
#
#   scripts/install-nvcc.sh [DIR]     (default: .cache/nvcc in the repository)
#
# Then build with `cargo build --features cuda`; build.rs finds nvcc in that
# folder by itself, or through the NVCC environment variable.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$root/.cache/nvcc}"
nvcc="$dir/nvidia/cu13/bin/nvcc"

if [[ ! -x "$nvcc" ]]; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --no-deps \
        --target "$dir" \
        nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-nvvm==13.0.88 >&2
fi
"$nvcc" --version >&2
echo "$nvcc"
