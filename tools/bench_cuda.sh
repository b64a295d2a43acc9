#!/usr/bin/env bash
# bench_cuda.sh — `make bench-cuda`: the GPU benchmarks, results as markdown in DIR (default bench/), named after
# the card: cuda_gemv_<card>.md (tools/bench_cuda.c: every decoder GEMV of the 0.5B and 7B shapes, GB/s and fraction
# of peak, W3/W4/W4A8 vs the cuBLAS FP16 GEMV in the same run) and cuda_model_<card>.md (tools/bench_cuda_model.c:
# 7B-shaped decode tokens/s in FP16, W3 g128 and W4A8, prefill, the vision encoder for 1 and 7 crops). The 7B
# models are random-weight .mbq files (vlmconvert --random 7b) cut to 2 and 6 decoder layers and extrapolated to 28
# (writing and loading 28 layers in three formats takes longer than a lent GPU's 15 minutes); removed afterwards.
set -uo pipefail
cd "$(dirname "$0")/.."
B=${BUILD:-build}
DIR=${1:-bench}
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr -c 'A-Za-z0-9\n' '_' | tr -s '_')
if [ -z "$card" ]; then
    echo "bench_cuda: no NVIDIA GPU (nvidia-smi found none); nothing measured"
    exit 0
fi
mkdir -p "$DIR"
rc=0
"$B/tools/bench_cuda" > "$DIR/cuda_gemv_$card.md" || rc=1
cat "$DIR/cuda_gemv_$card.md"
M=$(mktemp -d)
trap 'rm -rf "$M"' EXIT
mk() { "$B/vlmconvert" --random 7b --out "$M/$1.mbq" --layers "$2" --vision-layers "$3" --quiet "${@:4}"; }
t=$(date +%s)
for L in 2 6; do
    mk "f16_$L" "$L" 1 --method f16 && mk "w3_$L" "$L" 26 --wbits 3 && mk "w4a8_$L" "$L" 1 --wbits 4 --abits 8 || rc=1
done
echo "bench_cuda: random 7B files written in $(( $(date +%s) - t )) s ($(du -sh "$M" | cut -f1))"
"$B/tools/bench_cuda_model" --out "$DIR/cuda_model_$card.md" "FP16:$M/f16_2.mbq:$M/f16_6.mbq" \
    "W3 g128:$M/w3_2.mbq:$M/w3_6.mbq" "W4A8:$M/w4a8_2.mbq:$M/w4a8_6.mbq" || rc=1
cat "$DIR/cuda_model_$card.md" 2>/dev/null
exit $rc
