#!/usr/bin/env bash
# Installs libclang from PyPI (for bindgen) into a cache folder and prints the
# value LIBCLANG_PATH needs.
#
#   scripts/install-libclang.sh [DIR]  (default: .cache/libclang)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$root/.cache/libclang}"
if [[ ! -d "$dir/clang/native" ]]; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --no-deps \
        --target "$dir" libclang==18.1.1 >&2
fi
echo "$dir/clang/native"
