#!/usr/bin/env bash
# Collection speed, side by side in one run on the same tokens: imx collect vs upstream llama-imatrix vs
# upstream llama-perplexity (the forward pass, our lower bound). Rounds alternate the tools so that drift of
# the machine hits all three alike; the table reports the median wall time of each and the ratios.
#   bench/collect_speed.sh [--chunks N] [--rounds R] [--threads T] [--ngl N] [MODEL ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${IMX_BUILD:-$root/build}
chunks=100; rounds=3; threads=$(nproc); ngl=0; models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --chunks) chunks=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --threads) threads=$2; shift ;;
    --ngl) ngl=$2; shift ;;
    *) models+=("$1") ;;
  esac
  shift
done
[ ${#models[@]} -gt 0 ] || models=("$root/../shared/models/qwen3moe-tiny.gguf" "$root/../shared/models/deepseek3-tiny.gguf")
text=${IMX_BENCH_TEXT:-$root/../shared/data/calibration.txt}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
timed() {  # timed NAME CMD...: appends the wall time to $tmp/NAME
  local name=$1; shift
  local t0; t0=$(now)
  "$@" >"$tmp/$name.log" 2>&1 || { echo "bench: $name failed:"; tail -20 "$tmp/$name.log"; exit 1; }
  awk -v a="$(now)" -v b="$t0" 'BEGIN { printf "%.3f\n", a - b }' >>"$tmp/$name.times"
}

echo "# collect speed: $chunks chunks x 512 tokens, -t $threads, -ngl $ngl, $rounds rounds, $(date -u +%F)"
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "| model | llama-perplexity s | llama-imatrix s | imx collect s | imx / perplexity | imx / llama-imatrix |"
echo "| --- | --- | --- | --- | --- | --- |"
for model in "${models[@]}"; do
  rm -f "$tmp"/*.times
  common=(-m "$model" -f "$text" -c 512 --chunks "$chunks" -t "$threads")
  for ((r = 0; r < rounds; r++)); do
    timed ppl "$build/upstream/llama-perplexity" "${common[@]}" -ngl "$ngl"
    timed imatrix "$build/upstream/llama-imatrix" "${common[@]}" -ngl "$ngl" -o "$tmp/up.gguf"
    timed imx "$build/imx" collect "${common[@]}" --n-gpu-layers "$ngl" -o "$tmp/imx.gguf"
  done
  p=$(median <"$tmp/ppl.times"); u=$(median <"$tmp/imatrix.times"); x=$(median <"$tmp/imx.times")
  awk -v m="$(basename "$model")" -v p="$p" -v u="$u" -v x="$x" \
    'BEGIN { printf "| %s | %.2f | %.2f | %.2f | %.3f | %.3f |\n", m, p, u, x, x / p, x / u }'
done
