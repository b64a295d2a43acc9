#!/usr/bin/env bash
# eval.sh — `make eval`: the VQA accuracy benchmark. Converts the bundled demo model (models/demo, trained by
# tools/train_demo.py) into every variant vlmconvert produces — FP16; W3 g128 and W4 g128 by RTN, AWQ and MBQ; W4A8
# by RTN, SmoothQuant, AWQ and MBQ — and scores each with `vlmeval --vqa` on the test split
# (tests/data/demo/test_eval.jsonl, one question per type per scene, never trained on), with the float checkpoint
# as the reference: exact-match accuracy per question type, and next to it the mean KL(P_fp || P_variant) over the
# prompt positions, top-1 agreement and the share of answers identical to FP. Writes bench/eval.md.
#
# The reference is the checkpoint converted with --method f32: its float32 numbers run on the fast kernels (the
# directory itself runs on the scalar reference path, ~10x slower); tests/test_demo.c holds the directory's answers
# to transformers' and to the accuracy floor.
# Calibration (AWQ, SmoothQuant, MBQ): the 64 training-split caption pairs of tests/data/demo/calib (never the test
# split). Overrides: MODEL=dir VQA=file.jsonl CALIB=data.json N_SAMPLES=n LIMIT=items (default 700, the first 100
# scenes: ~10 min in all on 2 cores; 3193 for the whole split) OUT=file BUILD=dir.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD:-build}
MODEL=${MODEL:-models/demo}
VQA=${VQA:-tests/data/demo/test_eval.jsonl}
CALIB=${CALIB:-tests/data/demo/calib/data.json}
N=${N_SAMPLES:-64}
LIMIT=${LIMIT:-700}
OUT=${OUT:-bench/eval.md}
for f in "$MODEL/config.json" "$VQA" "$CALIB"; do
    [ -r "$f" ] || { echo "eval.sh: error: $f: missing (see tools/make_demo_fixtures.py)" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
items=$(head -n "$LIMIT" "$VQA" | grep -c .)
rows=$tmp/rows.md
: > "$rows"
types=

# vlmeval's table: | type | items | correct | accuracy % | ref correct | ref accuracy % | mean KL | top-1 % | same % |
row() { # label method table-file ref (1: the reference's columns)
    local label=$1 method=$2 table=$3 ref=$4
    awk -F'|' -v l="$label" -v m="$method" -v types="$types" -v ref="$ref" '
        function trim(s) { gsub(/^ +| +$/, "", s); return s }
        NF > 9 { t = trim($2); acc[t] = trim(ref ? $7 : $5); kl[t] = trim($8); top[t] = trim($9); same[t] = trim($10) }
        END {
            n = split(types, ts, " "); line = "| " l " | " m " |"
            for (i = 1; i <= n; i++) line = line " " (ts[i] in acc ? acc[ts[i]] : "-") " |"
            if (ref) line = line " " acc["all"] " | 0 | 100 | 100 |"
            else line = line " " acc["all"] " | " kl["all"] " | " top["all"] " | " same["all"] " |"
            print line
        }' "$table" >> "$rows"
}
variant() { # label method args...
    local label=$1 method=$2
    shift 2
    local calib=()
    case $method in rtn | fp16) ;; *) calib=(--calib "$CALIB" --n-samples "$N") ;; esac
    echo "eval.sh: $label $method" >&2
    "$B/vlmconvert" --model "$MODEL" --out "$tmp/q.mbq" --method "$method" "$@" "${calib[@]}" --quiet
    "$B/vlmeval" --vqa "$VQA" --model "$tmp/q.mbq" --ref "$tmp/fp.mbq" --limit "$LIMIT" > "$tmp/table.md"
    if [ -z "$types" ]; then # the question types in vlmeval's first-seen order: the columns
        types=$(awk -F'|' 'NF > 9 { t = $2; gsub(/ /, "", t); if (t != "type" && t != "all" && t !~ /^[-:]+$/) print t }' \
            "$tmp/table.md" | tr '\n' ' ')
        row "FP32" "float checkpoint" "$tmp/table.md" 1
    fi
    row "$label" "$method" "$tmp/table.md" 0
}
# the reference: the checkpoint in float32 as a .mbq (the same numbers as the directory, on the fast kernels)
"$B/vlmconvert" --model "$MODEL" --out "$tmp/fp.mbq" --method f32 --quiet
variant "FP16" fp16
variant "W3 g128" rtn --wbits 3
variant "W3 g128" awq --wbits 3
variant "W3 g128" mbq --wbits 3
variant "W4 g128" rtn --wbits 4
variant "W4 g128" awq --wbits 4
variant "W4 g128" mbq --wbits 4
variant "W4A8" rtn --wbits 4 --abits 8
variant "W4A8" smoothquant --wbits 4 --abits 8
variant "W4A8" awq --wbits 4 --abits 8
variant "W4A8" mbq --wbits 4 --abits 8

{
    echo "# VQA accuracy of the demo model and its quantized variants (vlmeval --vqa)"
    echo
    echo "- model: \`$MODEL\` (reference: its float32 conversion); questions: the first $items items of \`$VQA\`"
    echo "  (the test split, one question per type per scene); exact match of the greedy answer, with the chat"
    echo "  template and stop ids \`vlmrun\` uses by default"
    echo "- calibration (AWQ, SmoothQuant, MBQ): \`$CALIB\`, $N samples"
    echo "- mean KL: KL(P_fp || P_variant) per prompt position, averaged over all items; top-1 agree: over the"
    echo "  prompt positions; same answer: share of items whose answer equals the FP model's"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo
    printf "| variant | method |"
    for t in $types; do printf " %s %% |" "$t"; done
    echo " all % | mean KL | top-1 agree % | same answer % |"
    printf "|---|---|"
    for t in $types; do printf -- "---:|"; done
    echo "---:|---:|---:|---:|"
    cat "$rows"
} > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
cat "$OUT"
