#!/usr/bin/env bash
# gpu_check.sh — everything a task that is lent a GPU should run, in one call, within 8 minutes on an H100/H200:
#   1. build for this card only (nvcc for its compute capability; -j all cores)
#   2. the CUDA tests: every op against the CPU reference, the whole model against the CPU path (run_tests -k cuda)
#   3. compute-sanitizer memcheck and racecheck over the op tests
#   4. make bench-cuda: GEMV GB/s and fraction of peak, W3/W4/W4A8 vs cuBLAS FP16 (0.5B and 7B shapes), and 7B-shaped
#      decode tokens/s in FP16, W3 and W4A8 + the vision encoder for 1 and 7 crops (random-weight .mbq files cut to
#      2 and 6 layers, extrapolated: tools/bench_cuda_model.c)
# Every step has its own time limit and log; a failing step does not stop the next. Results: one folder
# (default gpu_results/; argument 1 or $OUT overrides), with summary.txt first. Copy bench_*.md into bench/ with the
# card's name when committing.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu_results}}
mkdir -p "$OUT"
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/summary.txt"; }
step() { # name limit_s command...
    local name=$1 lim=$2
    shift 2
    local t=$(date +%s)
    timeout "$lim" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    say "$name: exit $rc in $(( $(date +%s) - t )) s (limit $lim s); last line: $(tail -n 1 "$OUT/$name.txt")"
    return $rc
}

: > "$OUT/summary.txt"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || say "nvidia-smi failed (no driver?)"
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
say "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1); compute capability ${cc:-unknown}"
arch=${cc:-90}
jobs=$(nproc)

if ! step build 300 make -j"$jobs" CUDA=1 CUDA_ARCH="$arch" all build/tests/run_tests build/tools/bench_cuda \
        build/tools/bench_cuda_model; then
    say "build failed: see $OUT/build.txt"
    tail -n 40 "$OUT/build.txt"
    exit 1
fi

step tests_cuda 150 build/tests/run_tests -v -k cuda
grep -E "^(FAIL|SKIP)|passed" "$OUT/tests_cuda.txt" | head -n 40 >> "$OUT/summary.txt"

CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
step memcheck 120 "$CS" --tool memcheck --leak-check full --error-exitcode 3 build/tests/run_tests -k cuda_ops
step racecheck 120 "$CS" --tool racecheck --error-exitcode 3 build/tests/run_tests -k cuda_ops

step bench_cuda 300 env BUILD=build tools/bench_cuda.sh "$OUT"

say "done in $(( $(date +%s) - T0 )) s; results in $OUT/"
cat "$OUT/summary.txt"
