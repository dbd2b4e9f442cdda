#!/usr/bin/env bash
# imx quantize --target-size against llama-quantize's stock mixes at their own sizes, side by side in one run.
# For each model: one imatrix with covariances (imx collect --covariance on calibration.txt; its sums are the
# ones llama-imatrix writes), then for each stock type T:
#   up      llama-quantize --imatrix IM MODEL T                       (the reference; its size S is the target)
#   diag    imx quantize --target-size S                              (type allocation, llama.cpp's encoders)
#   hstock  imx quantize --method hessian T                           (Hessian encoder, stock mix)
#   halloc  imx quantize --method hessian --target-size S             (both)
# and imx eval of all four against the F16 base on held-out WikiText-2: mean KLD with 95% intervals, the
# ratio to llama-quantize's, paired ΔKLD of halloc against hstock. Also the search's own prediction and its
# time (the first target of a model measures; later ones reuse the cache).
#   bench/target_size.sh [--chunks N] [--threads T] [--types Q2_K,...] [--imatrix-dir D] [MODEL ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${IMX_BUILD:-$root/build}
chunks=50; threads=$(nproc); types=Q2_K,Q3_K_S,Q3_K_M,Q4_K_M; imdir=""; models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --chunks) chunks=$2; shift ;;
    --threads) threads=$2; shift ;;
    --types) types=$2; shift ;;
    --imatrix-dir) imdir=$(realpath "$2"); shift ;;
    *) models+=("$(realpath "$1")") ;;
  esac
  shift
done
[ ${#models[@]} -gt 0 ] || models=("$root/../shared/models/qwen3moe-tiny.gguf" "$root/../shared/models/deepseek3-tiny.gguf")
calib=$root/../shared/data/calibration.txt
wiki=$root/../shared/data/wiki.test.raw
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cache=$tmp/cache

echo "# type allocation vs llama-quantize + imatrix at the stock mixes' sizes: $chunks eval chunks of 512 (WikiText-2), -t $threads, $(date -u +%F), imx $(git -C "$root" rev-parse --short HEAD)"
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "| model | size of | MiB up / diag / hstock / halloc | KLD llama-quantize | KLD imx alloc (diagonal) | ratio | KLD imx hessian, stock mix | KLD imx hessian + alloc | ratio | ΔKLD halloc − hstock [95%] | predicted KLD diag / halloc (calib) | search s diag / halloc |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for model in "${models[@]}"; do
  name=$(basename "$model" .gguf)
  im=$tmp/$name-cov.gguf
  if [ -n "$imdir" ]; then
    im=$imdir/$name-cov.gguf
  else
    "$build/imx" collect -m "$model" -f "$calib" -c 512 -t "$threads" --covariance -o "$im" 2>/dev/null
  fi
  for t in ${types//,/ }; do
    "$build/upstream/llama-quantize" --imatrix "$im" "$model" "$tmp/up.gguf" "$t" "$threads" >"$tmp/up.log" 2>&1 ||
      { echo "bench: llama-quantize $t failed"; tail "$tmp/up.log"; exit 1; }
    mib=$(python3 -c "import os; print(repr(os.path.getsize('$tmp/up.gguf') / 1048576))")
    common=(-m "$model" --imatrix "$im" -f "$calib" -t "$threads" --cache-dir "$cache" --json)
    "$build/imx" quantize "${common[@]}" -o "$tmp/diag.gguf" --target-size "$mib" >"$tmp/diag.json" 2>"$tmp/diag.log" ||
      { echo "bench: imx --target-size failed"; tail "$tmp/diag.log"; exit 1; }
    "$build/imx" quantize -m "$model" --imatrix "$im" -o "$tmp/hstock.gguf" "$t" -t "$threads" --method hessian \
      >/dev/null 2>&1
    "$build/imx" quantize "${common[@]}" -o "$tmp/halloc.gguf" --target-size "$mib" --method hessian \
      >"$tmp/halloc.json" 2>"$tmp/halloc.log" || { echo "bench: imx hessian --target-size failed"; tail "$tmp/halloc.log"; exit 1; }
    "$build/imx" eval --base "$model" -f "$wiki" -c 512 --chunks "$chunks" -t "$threads" --cache-dir "$cache" --json \
      "$tmp/up.gguf" "$tmp/diag.gguf" "$tmp/halloc.gguf" >"$tmp/eval.json" 2>/dev/null
    "$build/imx" eval --base "$model" -f "$wiki" -c 512 --chunks "$chunks" -t "$threads" --cache-dir "$cache" --json \
      "$tmp/hstock.gguf" "$tmp/halloc.gguf" >"$tmp/eval2.json" 2>/dev/null
    python3 - "$name" "$t" "$tmp" <<'PY'
import json, sys
name, t, tmp = sys.argv[1:4]
def rows(f):
    return {r["path"].rsplit("/", 1)[-1]: r for r in json.load(open(f))["models"] if "kld_mean" in r}
a, b = rows(f"{tmp}/eval.json"), rows(f"{tmp}/eval2.json")
up, diag, halloc, hstock = a["up.gguf"], a["diag.gguf"], a["halloc.gguf"], b["hstock.gguf"]
e = lambda x, f="%.5f": (f % x["value"]) + " [" + (f % x["lo"]) + ", " + (f % x["hi"]) + "]"
k = lambda r: r["kld_mean"]["value"]
d = b["halloc.gguf"]["kld_minus_reference"]
jd, jh = json.load(open(f"{tmp}/diag.json")), json.load(open(f"{tmp}/halloc.json"))
mib = lambda r: f"{r['bytes'] / 1048576:.3f}"
print(f"| {name} | {t} | {mib(up)} / {mib(diag)} / {mib(hstock)} / {mib(halloc)} | {e(up['kld_mean'])} | "
      f"{e(diag['kld_mean'])} | {k(diag) / k(up):.3f} | {e(hstock['kld_mean'])} | {e(halloc['kld_mean'])} | "
      f"{k(halloc) / k(up):.3f} | {e(d, '%+.5f')} | {jd['predicted_kld']:.4f} / {jh['predicted_kld']:.4f} | "
      f"{jd['seconds']['total']:.0f} / {jh['seconds']['total']:.0f} |")
PY
  done
done
