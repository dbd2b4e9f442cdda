#!/usr/bin/env bash
# The quality table of docs/quality.md: for each model, the same calibration text (100 chunks of 512 of
# calibration.txt) goes through upstream's pipeline (llama-imatrix + llama-quantize) and through imx
# (collect + quantize with every prior setting); `imx sweep` evaluates every quant against the F16 base on
# held-out text (wiki.test.raw, first 100 chunks of 512) and prints one table per model.
#   bench/quality_sweep.sh [--out DIR] [--chunks N] [--eval-chunks N] [--types T1,T2] [--weights ..] [MODEL ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${IMX_BUILD:-$root/build}
imx=${IMX_BIN:-$build/imx}
out=$root/bench/results/quality; chunks=100; eval_chunks=100; threads=$(nproc)
types=Q2_K,Q3_K_S,IQ2_XXS,IQ3_XXS,Q4_K_M; weights=0,1,16,128; priors=one,mean,geomean,hier; models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift ;;
    --chunks) chunks=$2; shift ;;
    --eval-chunks) eval_chunks=$2; shift ;;
    --types) types=$2; shift ;;
    --weights) weights=$2; shift ;;
    --priors) priors=$2; shift ;;
    *) models+=("$(realpath "$1")") ;;
  esac
  shift
done
[ ${#models[@]} -gt 0 ] || models=("$root/../shared/models/qwen3moe-tiny.gguf" "$root/../shared/models/deepseek3-tiny.gguf")
calib=$root/../shared/data/calibration.txt
heldout=$root/../shared/data/wiki.test.raw
mkdir -p "$out"

for model in "${models[@]}"; do
  name=$(basename "$model" .gguf)
  work=$out/$name; mkdir -p "$work"
  echo "== $name: imatrices from $chunks chunks of $(basename "$calib")" >&2
  "$build/upstream/llama-imatrix" -m "$model" -f "$calib" -c 512 --chunks "$chunks" -t "$threads" \
    -o "$work/upstream-imatrix.gguf" >"$work/llama-imatrix.log" 2>&1
  "$imx" collect -m "$model" -f "$calib" -c 512 --chunks "$chunks" -t "$threads" -o "$work/imx-imatrix.gguf" \
    2>"$work/imx-collect.log"
  rows=()
  for t in ${types//,/ }; do
    "$build/upstream/llama-quantize" --imatrix "$work/upstream-imatrix.gguf" "$model" "$work/upstream-$t.gguf" "$t" \
      "$threads" >"$work/llama-quantize-$t.log" 2>&1
    rows+=(--row "upstream:$t=$work/upstream-$t.gguf")
  done
  echo "== $name: sweep" >&2
  "$imx" sweep -m "$model" --imatrix "$work/imx-imatrix.gguf" -f "$heldout" -c 512 --chunks "$eval_chunks" \
    -t "$threads" --types "$types" --weights "$weights" --priors "$priors" "${rows[@]}" \
    --work-dir "$work/quants" --markdown "$out/$name.md" --json "$out/$name.json" 2>"$work/sweep.log"
  rm -rf "$work/quants"
  echo "### $name"; echo; cat "$out/$name.md"; echo
done
