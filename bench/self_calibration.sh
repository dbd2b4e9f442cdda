#!/usr/bin/env bash
# Calibration text (issue 26, item 4): the model's own samples against calibration.txt, side by side. For each
# model, three texts of about the same token count:
#   calib    the first 2/3 of calibration.txt (the fit part of every held-out measurement in docs/)
#   self     imx generate --sequences S -n 512 (the model's own samples; --temp 1 --top-p 0.95 --seed 1)
#   mix      the first half of calib + the first S/2 of those sequences
# each quantized in one command, `imx quantize -f TEXT TYPE` (diagonal: the imatrix llama-quantize would get)
# and `--method hessian`, then imx eval of the three against the F16 base on held-out text (the last third of
# calibration.txt) and WikiText-2: mean KLD, paired ΔKLD of self and mix against calib (95% interval).
#   bench/self_calibration.sh [--chunks N] [--threads T] [--type Q2_K] [--sequences S] [MODEL ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${IMX_BUILD:-$root/build}
chunks=40; threads=$(nproc); type=Q2_K; seqs=96; models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --chunks) chunks=$2; shift ;;
    --threads) threads=$2; shift ;;
    --type) type=$2; shift ;;
    --sequences) seqs=$2; shift ;;
    *) models+=("$(realpath "$1")") ;;
  esac
  shift
done
tmp=${IMX_BENCH_DIR:-$(mktemp -d)}; mkdir -p "$tmp"
. "$root/bench/lib.sh"

echo "# calibration text: the model's own samples ($seqs × 512 tokens, --temp 1 --top-p 0.95 --seed 1) vs 2/3 of calibration.txt, $type, $chunks eval chunks, -t $threads, $(date -u +%F), imx $(git -C "$root" rev-parse --short HEAD)"
echo
echo "| model | method | eval text | KLD calib | KLD self | KLD mix | ΔKLD self − calib [95%] | ΔKLD mix − calib [95%] |"
echo "| --- | --- | --- | ---: | ---: | ---: | --- | --- |"
for model in "${models[@]}"; do
  name=$(basename "$model" .gguf)
  dir=$tmp/$name; mkdir -p "$dir"
  [ -f "$dir/self.txt" ] || "$build/imx" generate -m "$model" -o "$dir/self.txt" --sequences "$seqs" -n 512 -t "$threads" \
    2>"$dir/generate.log"
  [ -f "$dir/half.txt" ] || "$build/imx" generate -m "$model" -o "$dir/half.txt" --sequences $((seqs / 2)) -n 512 \
    -t "$threads" 2>>"$dir/generate.log"
  fb=$(stat -c %s "$tmp/fit.txt")
  { head -c $((fb / 2)) "$tmp/fit.txt"; printf '\n\n'; cat "$dir/half.txt"; } >"$dir/mix.txt"
  cp "$tmp/fit.txt" "$dir/calib.txt"
  for method in diagonal hessian; do
    extra=(); [ $method = hessian ] && extra=(--method hessian)
    for text in calib self mix; do
      out=$dir/$method-$text.gguf
      [ -f "$out" ] || "$build/imx" quantize -m "$model" -f "$dir/$text.txt" -o "$out" "$type" -t "$threads" \
        "${extra[@]}" >"$out.log" 2>&1 || { echo "bench: $out failed:"; tail -5 "$out.log"; exit 1; }
    done
    for ev in held wiki; do
      f=$tmp/held.txt; [ $ev = wiki ] && f=$wiki
      "$build/imx" eval --base "$model" "$dir/$method-calib.gguf" "$dir/$method-self.gguf" "$dir/$method-mix.gguf" \
        -f "$f" -c 512 --chunks "$chunks" -t "$threads" --json 2>/dev/null >"$dir/$method-$ev.json"
      python3 - "$dir/$method-$ev.json" "$name" "$method" "$ev" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["models"]
def d(r):
    x = r["kld_minus_reference"]
    return f"{x['value']:+.5f} [{x['lo']:+.5f}, {x['hi']:+.5f}]"
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {m[1]['kld_mean']['value']:.5f} | {m[2]['kld_mean']['value']:.5f} | "
      f"{m[3]['kld_mean']['value']:.5f} | {d(m[2])} | {d(m[3])} |")
PY
    done
  done
done
