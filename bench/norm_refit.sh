#!/usr/bin/env bash
# --refit-norms against the same run without it, side by side: imx quantize -f TEXT --method hessian [--sequential]
# block by block on the first 2/3 of calibration.txt, with and without re-fitting the norms, then imx eval of both
# against the F16 base on held-out text (the last third of calibration.txt, and WikiText-2): paired ΔKLD
# (refit − without, 95% interval).
#   bench/norm_refit.sh [--chunks N] [--threads T] [--type Q2_K] [--sequential] [MODEL ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${IMX_BUILD:-$root/build}
chunks=40; threads=$(nproc); type=Q2_K; seq=""; models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --chunks) chunks=$2; shift ;;
    --threads) threads=$2; shift ;;
    --type) type=$2; shift ;;
    --sequential) seq=--sequential ;;
    *) models+=("$(realpath "$1")") ;;
  esac
  shift
done
tmp=${IMX_BENCH_DIR:-$(mktemp -d)}; mkdir -p "$tmp"
. "$root/bench/lib.sh"

echo "# --refit-norms, $type --method hessian $seq, fitted on 2/3 of calibration.txt, $chunks eval chunks, -t $threads, $(date -u +%F), imx $(git -C "$root" rev-parse --short HEAD)"
echo
echo "| model | eval text | KLD without | KLD refit | ΔKLD refit − without [95%] |"
echo "| --- | --- | ---: | ---: | --- |"
for model in "${models[@]}"; do
  name=$(basename "$model" .gguf)
  for refit in "" "--refit-norms"; do
    out=$tmp/$name${refit:+-refit}.gguf
    "$build/imx" quantize -m "$model" -f "$tmp/fit.txt" -o "$out" "$type" -t "$threads" --method hessian $seq $refit \
      >"$out.log" 2>&1 || { echo "bench: $out failed:"; tail -5 "$out.log"; exit 1; }
  done
  for text in held wiki; do
    f=$tmp/held.txt; [ $text = wiki ] && f=$wiki
    "$build/imx" eval --base "$model" "$tmp/$name.gguf" "$tmp/$name-refit.gguf" -f "$f" -c 512 --chunks "$chunks" \
      -t "$threads" --json 2>/dev/null >"$tmp/$name-$text.json"
    python3 - "$tmp/$name-$text.json" "$name" "$text" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["models"]
d = m[2]["kld_minus_reference"]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {m[1]['kld_mean']['value']:.5f} | {m[2]['kld_mean']['value']:.5f} | "
      f"{d['value']:+.5f} [{d['lo']:+.5f}, {d['hi']:+.5f}] |")
PY
  done
done
