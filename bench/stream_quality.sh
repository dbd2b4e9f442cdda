#!/usr/bin/env bash
# Block by block against the two-step path, side by side in one run: for each model and type,
#   two-step:  imx collect --covariance, then imx quantize --imatrix --method hessian [--sequential]
#   streaming: imx quantize -f TEXT --method hessian [--sequential] (collection and encoding block by block)
# fitted on the first 2/3 of calibration.txt, then imx eval of all four against the F16 base on held-out text —
# the last third of calibration.txt and WikiText-2 — with paired ΔKLD of each streaming quant against its
# two-step twin (95% intervals), and the time and peak memory of each path.
#   bench/stream_quality.sh [--chunks N] [--threads T] [--types Q2_K,...] [MODEL ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${IMX_BUILD:-$root/build}
chunks=40; threads=$(nproc); types=Q2_K,IQ2_XXS; models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --chunks) chunks=$2; shift ;;
    --threads) threads=$2; shift ;;
    --types) types=$2; shift ;;
    *) models+=("$(realpath "$1")") ;;
  esac
  shift
done
tmp=${IMX_BENCH_DIR:-$(mktemp -d)}; mkdir -p "$tmp"
. "$root/bench/lib.sh"

measured() {  # NAME CMD...: "seconds peak_MiB" in $tmp/NAME.cost
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$tmp/$name.time" "$@" >"$tmp/$name.log" 2>&1 ||
    { echo "bench: $name failed:"; tail -20 "$tmp/$name.log"; exit 1; }
  awk '{ printf "%.1f s, %.0f MiB", $1, $2 / 1024 }' "$tmp/$name.time" >"$tmp/$name.cost"
}

echo "# block by block vs two-step, fitted on 2/3 of calibration.txt, $chunks eval chunks, -t $threads, $(date -u +%F), imx $(git -C "$root" rev-parse --short HEAD)"
echo
echo "| model | type | path | eval text | KLD two-step | KLD streaming | ΔKLD streaming − two-step [95%] | two-step cost | streaming cost |"
echo "| --- | --- | --- | --- | ---: | ---: | --- | --- | --- |"
for model in "${models[@]}"; do
  name=$(basename "$model" .gguf)
  measured collect "$build/imx" collect -m "$model" -f "$tmp/fit.txt" -t "$threads" --covariance -o "$tmp/$name-cov.gguf"
  for t in ${types//,/ }; do
    for seq in "" "--sequential"; do
      measured two "$build/imx" quantize -m "$model" --imatrix "$tmp/$name-cov.gguf" -o "$tmp/two.gguf" "$t" -t "$threads" \
        --method hessian ${seq:+$seq -f "$tmp/fit.txt"}
      measured stream "$build/imx" quantize -m "$model" -f "$tmp/fit.txt" -o "$tmp/stream.gguf" "$t" -t "$threads" \
        --method hessian $seq
      two_cost="$(cat "$tmp/two.cost") + collect $(cat "$tmp/collect.cost")"
      for text in held wiki; do
        f=$tmp/held.txt; [ $text = wiki ] && f=$wiki
        "$build/imx" eval --base "$model" "$tmp/two.gguf" "$tmp/stream.gguf" -f "$f" -c 512 --chunks "$chunks" \
          -t "$threads" --json 2>/dev/null >"$tmp/eval.json"
        python3 - "$tmp/eval.json" "$name" "$t" "${seq:-hessian}" "$text" "$two_cost" "$(cat "$tmp/stream.cost")" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1])); m = j["models"]
two, st = m[1], m[2]
d = st["kld_minus_reference"]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {sys.argv[5]} | {two['kld_mean']['value']:.5f} | "
      f"{st['kld_mean']['value']:.5f} | {d['value']:+.5f} [{d['lo']:+.5f}, {d['hi']:+.5f}] | {sys.argv[6]} | {sys.argv[7]} |")
EOF
      done
    done
  done
done
