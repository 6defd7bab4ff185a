#!/usr/bin/env bash
# One prepared check of the CUDA backend on a lent H200 (no internet there):
# the kernel tests against the CPU reference, then a short bench of the fused
# kernels against the unfused baseline (the criterion bench's quick sweep)
# and PyTorch's scaled_dot_product_attention at the same shapes.
# Everything is logged under $OUT (default: /tmp/lwpf-gpu-out); under 8 minutes (each
# step has a timeout, 465 s in all past the build; eight files come back: the log, three test logs, two
# sanitizer logs and the two bench tables).
#
#   scripts/gpu-check.sh prepare   here, before the device run: builds the
#                                  test and bench binaries with --features
#                                  cuda into .gpu-bin/ (about 20 MB), for a
#                                  machine that has no Rust toolchain
#   scripts/gpu-check.sh [run]     on the GPU machine: builds with cargo if
#                                  it is there (NVCC from $NVCC, PATH or
#                                  /usr/local/cuda), else runs .gpu-bin/
#
# The device run, with the tool that lends the machine:
#   echo /.gpu-bin/ >> .git/info/exclude; scripts/gpu-check.sh prepare
#   run(command="scripts/gpu-check.sh", carry=[".gpu-bin"], timeout_s=540)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mode="${1:-run}"
bin="$root/.gpu-bin"
tests=(kernels_cuda kernels_cuda_backward kernels_cuda_unfused)

# nvcc: $NVCC, then PATH, then /usr/local/cuda, then scripts/install-nvcc.sh's.
find_nvcc() {
    if [[ -n "${NVCC:-}" && -x "$NVCC" ]]; then echo "$NVCC"; return; fi
    if command -v nvcc >/dev/null 2>&1; then command -v nvcc; return; fi
    for p in /usr/local/cuda/bin/nvcc "$root/.cache/nvcc/nvidia/cu13/bin/nvcc"; do
        if [[ -x "$p" ]]; then echo "$p"; return; fi
    done
    return 1
}

# Executables of a cargo build, from its JSON messages.
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])
'
}

# Builds the test binaries and the bench into $1 (name -> path list in $1/list).
build_into() {
    local dest="$1"
    mkdir -p "$dest"
    NVCC="$(find_nvcc)" || {
        echo "gpu-check: no nvcc (set NVCC, or run scripts/install-nvcc.sh)" >&2
        exit 1
    }
    export NVCC
    echo "gpu-check: nvcc $NVCC"
    local args=()
    for t in "${tests[@]}"; do args+=(--test "$t"); done
    cargo test --features cuda --no-run --message-format=json "${args[@]}" | executables \
        >"$dest/list.tmp"
    cargo bench --features cuda --bench attention --no-run --message-format=json \
        | executables >>"$dest/list.tmp"
    : >"$dest/list"
    while read -r name path; do
        # Only the test binaries and the bench (not the crate's CLI).
        case " ${tests[*]} attention " in
            *" $name "*) ;;
            *) continue ;;
        esac
        cp "$path" "$dest/$name"
        # Debug info would pass the 64 MiB that travels to the device.
        if command -v strip >/dev/null 2>&1; then strip --strip-debug "$dest/$name"; fi
        echo "$name" >>"$dest/list"
    done <"$dest/list.tmp"
    rm -f "$dest/list.tmp"
    # The kernels' register and shared-memory report, for the log.
    local report
    report="$(ls -t "$root"/target/*/build/lwpf-*/out/ptxas.txt 2>/dev/null | head -1)"
    if [[ -n "$report" ]]; then
        grep -E "Compiling|Used|spill" "$report" >"$dest/ptxas.txt" || true
    fi
}

if [[ "$mode" == "prepare" ]]; then
    rm -rf "$bin"
    build_into "$bin"
    ls -la "$bin"
    exit 0
fi

OUT="${OUT:-${TMPDIR:-/tmp}/lwpf-gpu-out}"
mkdir -p "$OUT"
log="$OUT/gpu-check.log"
exec > >(tee "$log") 2>&1
start=$(date +%s)
status=0
step() { echo; echo "=== $* ($(($(date +%s) - start)) s)"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true

step "build"
if command -v cargo >/dev/null 2>&1 || [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
    # Offline: the device machine reaches no registry.
    export CARGO_NET_OFFLINE=true
    bin="$root/target/gpu-bin"
    build_into "$bin"
elif [[ -f "$bin/list" ]]; then
    echo "gpu-check: no cargo here; running the binaries of 'gpu-check.sh prepare'"
else
    echo "gpu-check: neither cargo nor .gpu-bin/ (run 'scripts/gpu-check.sh prepare' first)"
    exit 1
fi
cat "$bin/ptxas.txt" 2>/dev/null || true

for t in "${tests[@]}"; do
    step "test $t"
    if ! timeout 75 "$bin/$t" --nocapture 2>&1 | tee "$OUT/test-$t.log"; then
        echo "gpu-check: $t FAILED"
        status=1
    fi
    # On the GPU machine a skipped test is a failure: the backend must run.
    if grep -q "skipped, no GPU backend" "$OUT/test-$t.log"; then
        echo "gpu-check: $t skipped tests: the CUDA backend did not run"
        status=1
    fi
done

# Races between real warps and out-of-bounds accesses: only a GPU shows
# them (the emulation runs one block at a time). Small shapes, so that the
# sanitizer's slowdown stays within its timeout.
sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
for tool in racecheck memcheck; do
    step "compute-sanitizer $tool"
    if [[ ! -x "$sanitizer" ]]; then
        echo "gpu-check: compute-sanitizer not found, $tool skipped"
        continue
    fi
    if ! timeout 35 "$sanitizer" --tool "$tool" --error-exitcode 3 \
        "$bin/kernels_cuda_backward" --test-threads=1 --exact \
        on_gpu::deterministic_dq_is_bit_identical \
        on_gpu::wide_deterministic_dq_is_bit_identical \
        on_gpu::backward_rows_with_every_key_forgotten 2>&1 | tee "$OUT/sanitizer-$tool.log"
    then
        echo "gpu-check: compute-sanitizer $tool FAILED (or timed out)"
        status=1
    fi
done

step "bench: fused kernels against the unfused baseline (criterion, quick sweep)"
# The table is rewritten after every shape: a step cut short keeps what it
# measured. A bench that skipped (no GPU backend) or measured nothing
# leaves no row in it: a failure.
rm -f "$OUT/bench-lwpf.md"
LWPF_BENCH_QUICK=1 LWPF_BENCH_TABLE="$OUT/bench-lwpf.md" timeout 130 "$bin/attention" --bench \
    --noplot '^cuda/' || status=1
if ! grep -qE '^\| [0-9]+ \| [0-9]+ \|' "$OUT/bench-lwpf.md" 2>/dev/null; then
    echo "gpu-check: the CUDA bench measured nothing"
    status=1
fi

step "bench: PyTorch SDPA"
PYTHONUNBUFFERED=1 timeout 40 python3 scripts/sdpa_bench.py --quick \
    | tee "$OUT/bench-sdpa.md" || status=1

step "done, status $status"
exit "$status"
