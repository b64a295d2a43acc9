#!/usr/bin/env bash
# eval.sh — `make eval`: quantize one model with every method vlmconvert has (RTN, AWQ, MBQ at W3 g128; RTN,
# SmoothQuant, AWQ, MBQ at W4A8) and measure each against the float32 model with vlmeval (mean / max KL over the
# prompt positions, top-1 agreement, greedy common prefix) on the eval cases. Writes bench/eval.md.
# Defaults: the tiny_q fixture (random weights: it proves the pipeline, not the methods' benefit) with the test
# tokenizer and the calibration fixture. Override: MODEL=dir CALIB=data.json N_SAMPLES=n CASES=file BUILD=dir.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD:-build}
MODEL=${MODEL:-tests/data/models/tiny_q}
CALIB=${CALIB:-tests/data/calib/good.json}
N=${N_SAMPLES:-3}
CASES=${CASES:-tests/data/eval_cases.txt}
OUT=${OUT:-bench/eval.md}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/model"
cp "$MODEL"/* "$tmp/model/"
# the fixture model has no tokenizer: calibration needs one whose ids fit its 1024 rows
[ -f "$tmp/model/tokenizer.json" ] || [ -f "$tmp/model/tokenizer.model" ] ||
    cp tests/data/calib/tiny_tokenizer.json "$tmp/model/tokenizer.json"

{
    echo "# Quantization methods vs the float32 model (vlmeval)"
    echo
    echo "- model: \`$MODEL\`; calibration: \`$CALIB\`, $N samples, seed 42; cases: \`$CASES\`"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "- KL(P_fp32 || P_quantized) per prompt position, mean and max; top-1 agreement over positions; greedy"
    echo "  continuations' common prefix. The fixture model has random weights, so absolute values mean little."
    echo
    echo "| weights | method | mean KL | max KL | top-1 agree | greedy common prefix |"
    echo "|---|---|---:|---:|---:|---:|"
} > "$OUT"
run() { # label method args...
    local label=$1 method=$2
    shift 2
    local calib=()
    [ "$method" = rtn ] || calib=(--calib "$CALIB" --n-samples "$N")
    "$B/vlmconvert" --model "$tmp/model" --out "$tmp/q.mbq" --method "$method" "$@" "${calib[@]}" --quiet
    local line
    line=$("$B/vlmeval" --ref "$MODEL" --model "$tmp/q.mbq" --cases "$CASES" 2>/dev/null | tail -1)
    # "| all | 5 cases | 523 | mean | max | top1 % | a / b |"
    echo "$line" | awk -F'|' -v l="$label" -v m="$method" \
        '{ gsub(/ /, "", $5); gsub(/ /, "", $6); gsub(/^ +| +$/, "", $7); gsub(/^ +| +$/, "", $8);
           printf "| %s | %s | %s | %s | %s | %s |\n", l, m, $5, $6, $7, $8 }' >> "$OUT"
}
run "W3 g128" rtn --wbits 3
run "W3 g128" awq --wbits 3
run "W3 g128" mbq --wbits 3
run "W4A8" rtn --wbits 4 --abits 8
run "W4A8" smoothquant --wbits 4 --abits 8
run "W4A8" awq --wbits 4 --abits 8
run "W4A8" mbq --wbits 4 --abits 8
cat "$OUT"
