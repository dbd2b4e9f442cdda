#!/usr/bin/env bash
# Quantization time, side by side in one run: imx quantize vs upstream llama-quantize with the same model, type,
# imatrix and threads (W = 0, so both write the same bytes — checked). Rounds alternate the tools; the table
# gives the median wall time of each and the ratio.
#   bench/quantize_speed.sh [--rounds R] [--threads T] [--types Q2_K,IQ2_XXS] [MODEL ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${IMX_BUILD:-$root/build}
rounds=3; threads=$(nproc); types=Q2_K,IQ2_XXS; models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift ;;
    --threads) threads=$2; shift ;;
    --types) types=$2; shift ;;
    *) models+=("$(realpath "$1")") ;;
  esac
  shift
done
[ ${#models[@]} -gt 0 ] || models=("$root/../shared/models/qwen3moe-tiny.gguf" "$root/../shared/models/deepseek3-tiny.gguf")
calib=$root/../shared/data/calibration.txt
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
timed() {  # timed NAME CMD...: appends the wall time to $tmp/NAME.times
  local name=$1; shift
  local t0; t0=$(now)
  "$@" >"$tmp/$name.log" 2>&1 || { echo "bench: $name failed:"; tail -20 "$tmp/$name.log"; exit 1; }
  awk -v a="$(now)" -v b="$t0" 'BEGIN { printf "%.3f\n", a - b }' >>"$tmp/$name.times"
}

echo "# quantize speed: -t $threads, $rounds rounds, $(date -u +%F), imx $(git -C "$root" rev-parse --short HEAD)"
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "| model | type | llama-quantize s | imx quantize s | imx / llama-quantize | same bytes |"
echo "| --- | --- | --- | --- | --- | --- |"
for model in "${models[@]}"; do
  name=$(basename "$model" .gguf)
  "$build/imx" collect -m "$model" -f "$calib" -c 512 --chunks 20 -t "$threads" -o "$tmp/im.gguf" 2>/dev/null
  for t in ${types//,/ }; do
    rm -f "$tmp"/*.times
    for _ in $(seq "$rounds"); do
      (cd "$tmp" && timed up "$build/upstream/llama-quantize" --imatrix im.gguf "$model" up.gguf "$t" "$threads")
      (cd "$tmp" && timed imx "$build/imx" quantize -m "$model" --imatrix im.gguf -o imx.gguf "$t" -t "$threads")
    done
    same=no; cmp -s "$tmp/up.gguf" "$tmp/imx.gguf" && same=yes
    up=$(median <"$tmp/up.times"); mine=$(median <"$tmp/imx.times")
    printf "| %s | %s | %.2f | %.2f | %.3f | %s |\n" "$name" "$t" "$up" "$mine" "$(echo "$mine / $up" | bc -l)" "$same"
  done
done
