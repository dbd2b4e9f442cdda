#!/usr/bin/env bash
# The prior chosen per tensor by cross-fitting two halves of the calibration text (imx quantize --prior-weight
# auto --prior auto) against W = 0 (upstream's weights) and against the best single setting found by evaluating
# quants on the evaluation text itself (W=128 mean, docs/quality.md). Side by side in one run:
#   imx collect --shard 1/2 and 2/2 over the first N chunks of calibration.txt, imx merge (= one run, tested),
#   imx quantize TYPE with each prior, imx eval on held-out WikiText-2 with paired ΔKLD.
#   bench/prior_choice.sh [--calib-chunks N] [--chunks N] [--threads T] [--types Q2_K,...] [MODEL ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${IMX_BUILD:-$root/build}
calib_chunks=100; chunks=100; threads=$(nproc); types=Q2_K,IQ2_XXS; models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --calib-chunks) calib_chunks=$2; shift ;;
    --chunks) chunks=$2; shift ;;
    --threads) threads=$2; shift ;;
    --types) types=$2; shift ;;
    *) models+=("$(realpath "$1")") ;;
  esac
  shift
done
[ ${#models[@]} -gt 0 ] || models=("$root/../shared/models/qwen3moe-tiny.gguf" "$root/../shared/models/deepseek3-tiny.gguf")
calib=$root/../shared/data/calibration.txt
wiki=$root/../shared/data/wiki.test.raw
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

echo "# prior chosen by cross-fitting vs W=0 and the best single W: $calib_chunks calibration chunks in 2 parts, $chunks eval chunks of 512, -t $threads, $(date -u +%F), imx $(git -C "$root" rev-parse --short HEAD)"
echo
echo "| model | type | KLD W=0 | KLD W=128 mean | KLD auto | auto − W=0 [95%] | auto − W=128 mean [95%] | chosen W (tensors) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for model in "${models[@]}"; do
  name=$(basename "$model" .gguf)
  for i in 1 2; do
    "$build/imx" collect -m "$model" -f "$calib" -c 512 --chunks "$calib_chunks" -t "$threads" --shard "$i/2" \
      -o "$tmp/p$i.gguf" 2>/dev/null
  done
  "$build/imx" merge "$tmp/p1.gguf" "$tmp/p2.gguf" -o "$tmp/all.gguf" 2>/dev/null
  for t in ${types//,/ }; do
    "$build/imx" quantize -m "$model" --imatrix "$tmp/all.gguf" -o "$tmp/w0.gguf" "$t" -t "$threads" >/dev/null 2>&1
    "$build/imx" quantize -m "$model" --imatrix "$tmp/all.gguf" -o "$tmp/w128.gguf" "$t" -t "$threads" \
      --prior-weight 128 --prior mean >/dev/null 2>&1
    "$build/imx" quantize -m "$model" --imatrix "$tmp/p1.gguf" --imatrix "$tmp/p2.gguf" -o "$tmp/auto.gguf" "$t" \
      -t "$threads" --prior-weight auto --prior auto --json >"$tmp/auto.json" 2>/dev/null
    "$build/imx" eval --base "$model" -f "$wiki" -c 512 --chunks "$chunks" -t "$threads" --json \
      "$tmp/w0.gguf" "$tmp/auto.gguf" >"$tmp/e1.json" 2>/dev/null
    "$build/imx" eval --base "$model" -f "$wiki" -c 512 --chunks "$chunks" -t "$threads" --json \
      "$tmp/w128.gguf" "$tmp/auto.gguf" >"$tmp/e2.json" 2>/dev/null
    python3 - "$name" "$t" "$tmp" <<'PY'
import json, sys, collections
name, t, tmp = sys.argv[1:4]
def rows(f):
    return {r["path"].rsplit("/", 1)[-1]: r for r in json.load(open(f))["models"] if "kld_mean" in r}
a, b = rows(f"{tmp}/e1.json"), rows(f"{tmp}/e2.json")
e = lambda x, f="%.5f": (f % x["value"]) + " [" + (f % x["lo"]) + ", " + (f % x["hi"]) + "]"
chosen = collections.Counter()
for p in json.load(open(f"{tmp}/auto.json"))["priors"].values():
    chosen[f"{p['weight']:g} {p['target']}"] += 1
ws = ", ".join(f"{k} ×{n}" for k, n in sorted(chosen.items(), key=lambda kv: -kv[1]))
print(f"| {name} | {t} | {e(a['w0.gguf']['kld_mean'])} | {e(b['w128.gguf']['kld_mean'])} | {e(a['auto.gguf']['kld_mean'])} | "
      f"{e(a['auto.gguf']['kld_minus_reference'], '%+.5f')} | {e(b['auto.gguf']['kld_minus_reference'], '%+.5f')} | {ws} |")
PY
  done
done
