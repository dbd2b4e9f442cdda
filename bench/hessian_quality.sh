#!/usr/bin/env bash
# The Hessian encoder against upstream, side by side in one run: for each model and type, llama-quantize with
# the imatrix (its sums; upstream ignores the covariance tensors) and imx quantize --method hessian with the same
# file, then imx eval of both against the F16 base on held-out WikiText-2 (paired ΔKLD with a 95% interval),
# llama-perplexity on the Hessian file (it must load, and its PPL must equal imx eval's), and the time and peak
# memory of both quantizers.
#   bench/hessian_quality.sh [--chunks N] [--calib-chunks N] [--threads T] [--types Q2_K,...] [--imatrix-dir D]
#                            [--sequential] [MODEL ...]
# --imatrix-dir reuses D/<model>-cov.gguf (made by imx collect --covariance) instead of collecting it.
# --sequential: imx quantize --method hessian --sequential on the calibration text (layer by layer through the
# quantized layers; docs/hessian.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${IMX_BUILD:-$root/build}
chunks=100; calib_chunks=-1; threads=$(nproc); types=Q2_K,Q3_K_S,IQ2_XXS,IQ3_XXS,Q4_K_M; imdir=""; models=()
sequential=()
while [ $# -gt 0 ]; do
  case "$1" in
    --chunks) chunks=$2; shift ;;
    --calib-chunks) calib_chunks=$2; shift ;;
    --threads) threads=$2; shift ;;
    --types) types=$2; shift ;;
    --imatrix-dir) imdir=$(realpath "$2"); shift ;;
    --sequential) sequential=(--sequential) ;;
    *) models+=("$(realpath "$1")") ;;
  esac
  shift
done
[ ${#models[@]} -gt 0 ] || models=("$root/../shared/models/qwen3moe-tiny.gguf" "$root/../shared/models/deepseek3-tiny.gguf")
calib=$root/../shared/data/calibration.txt
[ ${#sequential[@]} -eq 0 ] || sequential+=(-f "$calib" --sequential-chunks "$calib_chunks")
wiki=$root/../shared/data/wiki.test.raw
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# measured NAME CMD...: runs CMD, appends "seconds peak_MiB" to $tmp/NAME.cost
measured() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$tmp/$name.time" "$@" >"$tmp/$name.log" 2>&1 ||
    { echo "bench: $name failed:"; tail -20 "$tmp/$name.log"; exit 1; }
  awk '{ printf "%.2f %.0f\n", $1, $2 / 1024 }' "$tmp/$name.time" >"$tmp/$name.cost"
}

echo "# hessian encoder ${sequential[0]:-} vs llama-quantize + imatrix: $chunks eval chunks of 512, -t $threads, $(date -u +%F), imx $(git -C "$root" rev-parse --short HEAD)"
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "| model | type | MiB (both) | KLD llama-quantize [95%] | KLD imx hessian [95%] | ΔKLD [95%] | change | PPL llama-quantize / imx hessian [95%] | PPL ratio, paired [95%] | PPL llama-perplexity / imx eval (10 chunks) | quantize s up / imx | peak MiB up / imx |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for model in "${models[@]}"; do
  name=$(basename "$model" .gguf)
  im=$tmp/$name-cov.gguf
  if [ -n "$imdir" ]; then
    im=$imdir/$name-cov.gguf
  else
    "$build/imx" collect -m "$model" -f "$calib" -c 512 --chunks "$calib_chunks" -t "$threads" --covariance -o "$im" 2>/dev/null
  fi
  for t in ${types//,/ }; do
    (cd "$tmp" && measured up "$build/upstream/llama-quantize" --imatrix "$im" "$model" up.gguf "$t" "$threads")
    (cd "$tmp" && measured imx "$build/imx" quantize -m "$model" --imatrix "$im" -o hess.gguf "$t" -t "$threads" --method hessian ${sequential[@]+"${sequential[@]}"})
    [ "$(stat -c %s "$tmp/up.gguf")" = "$(stat -c %s "$tmp/hess.gguf")" ] || { echo "bench: sizes differ for $t"; exit 1; }
    "$build/imx" eval --base "$model" -f "$wiki" -c 512 --chunks "$chunks" -t "$threads" --json \
      "$tmp/up.gguf" "$tmp/hess.gguf" >"$tmp/eval.json" 2>/dev/null
    "$build/imx" eval --base "$model" -f "$wiki" -c 512 --chunks 10 -t "$threads" --json "$tmp/hess.gguf" \
      >"$tmp/eval10.json" 2>/dev/null
    "$build/upstream/llama-perplexity" -m "$tmp/hess.gguf" -f "$wiki" -c 512 -b 512 --chunks 10 -t "$threads" \
      >"$tmp/ppl.log" 2>&1 || { echo "bench: llama-perplexity cannot load the $t file"; tail "$tmp/ppl.log"; exit 1; }
    python3 - "$name" "$t" "$tmp" <<'PY'
import json, re, sys
name, t, tmp = sys.argv[1:4]
rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.load(open(f"{tmp}/eval.json"))["models"] if "kld_mean" in r}
up, h = rows["up.gguf"], rows["hess.gguf"]
e = lambda x, f="%.5f": (f % x["value"]) + " [" + (f % x["lo"]) + ", " + (f % x["hi"]) + "]"
d = h["kld_minus_reference"]
ppl_imx = [r for r in json.load(open(f"{tmp}/eval10.json"))["models"] if r["path"].endswith("hess.gguf")][0]["ppl"]["value"]
log = open(f"{tmp}/ppl.log").read()
# llama-perplexity's last log line can be lost at exit (its logger is asynchronous): the running value after
# the last chunk is the same number
final = re.search(r"Final estimate: PPL = ([0-9.]+)", log)
ppl_up = float(final.group(1) if final else re.findall(r"\[\d+\]([0-9.]+),", log)[-1])
cu, ci = open(f"{tmp}/up.cost").read().split(), open(f"{tmp}/imx.cost").read().split()
print(f"| {name} | {t} | {up['bytes'] / 1048576:.2f} | {e(up['kld_mean'])} | {e(h['kld_mean'])} | {e(d, '%+.5f')} | "
      f"{100 * (h['kld_mean']['value'] / up['kld_mean']['value'] - 1):+.1f}% | {e(up['ppl'], '%.1f')} / {e(h['ppl'], '%.1f')} | "
      f"{e(h['ppl_ratio_to_reference'], '%.4f')} | "
      f"{ppl_up:.4f} / {ppl_imx:.4f} | "
      f"{cu[0]} / {ci[0]} | {cu[1]} / {ci[1]} |")
PY
  done
done
