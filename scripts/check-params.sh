#!/usr/bin/env bash
# Regenerates the Rust parameter structs from kernels/params.h with bindgen
# and fails when they differ from the committed src/op/kernels/params.rs, so
# that host and device can never disagree on a layout.
#
#   scripts/check-params.sh           check (exit 1 on drift)
#   scripts/check-params.sh --write   rewrite src/op/kernels/params.rs
#
# libclang comes from LIBCLANG_PATH, or from the PyPI wheel that
# scripts/install-libclang.sh puts in .cache/libclang. The generator builds in
# target/params-bindgen (about a minute the first time, cached after).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
committed="$root/src/op/kernels/params.rs"
export LIBCLANG_PATH="${LIBCLANG_PATH:-$("$root/scripts/install-libclang.sh")}"

generated="$(mktemp)"
trap 'rm -f "$generated"' EXIT
cargo run --quiet --release \
    --manifest-path "$root/tools/params-bindgen/Cargo.toml" \
    --target-dir "$root/target/params-bindgen" \
    -- "$root/kernels/params.h" > "$generated"
# Formatted as `cargo fmt` formats the committed file.
rustfmt --edition 2024 --config-path "$root/rustfmt.toml" "$generated"

if [[ "${1:-}" == "--write" ]]; then
    cp "$generated" "$committed"
    echo "wrote $committed"
elif ! diff -u "$committed" "$generated"; then
    echo "src/op/kernels/params.rs is out of date with kernels/params.h;" >&2
    echo "run scripts/check-params.sh --write and commit the result" >&2
    exit 1
else
    echo "params.rs matches kernels/params.h"
fi
