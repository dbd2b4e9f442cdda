#!/usr/bin/env bash
# All-experts calibration (imx collect --all-experts, quantize --prior all-experts) where it matters: a narrow
# calibration text that leaves experts unrouted or thin, and an evaluation text that routes to them.
#   calibration: the Python-documentation paragraphs of calibration.txt (those holding "()", "__", "def " or
#                ">>>"; 46 paragraphs, 21 KB, 12 chunks of 512) — on qwen3moe-tiny it leaves blk.1's experts 2
#                and 9 and blk.3's expert 0 unrouted, which WikiText-2 routes to
#   evaluation:  WikiText-2 test (held out), paired ΔKLD with 95% intervals against the all-experts quant
# Also the cost: imx collect with and without --all-experts over the first 20 chunks of calibration.txt.
# --calib-chunks N uses only the first N chunks of it (1: 13 experts of qwen3moe-tiny unrouted, 1 of deepseek3-tiny).
#   bench/all_experts.sh [--calib-chunks N] [--chunks N] [--threads T] [--types Q2_K,...] [--weights 0,16,128] [MODEL ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${IMX_BUILD:-$root/build}
calib_chunks=-1; chunks=50; threads=$(nproc); types=Q2_K,IQ2_XXS; weights=0,16,128; models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --calib-chunks) calib_chunks=$2; shift ;;
    --chunks) chunks=$2; shift ;;
    --threads) threads=$2; shift ;;
    --types) types=$2; shift ;;
    --weights) weights=$2; shift ;;
    *) models+=("$(realpath "$1")") ;;
  esac
  shift
done
[ ${#models[@]} -gt 0 ] || models=("$root/../shared/models/qwen3moe-tiny.gguf" "$root/../shared/models/deepseek3-tiny.gguf")
calib_all=$root/../shared/data/calibration.txt
wiki=$root/../shared/data/wiki.test.raw
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 - "$calib_all" "$tmp/code.txt" <<'PY'
import sys
paras = open(sys.argv[1]).read().split("\n\n")
code = [p for p in paras if ("()" in p or "__" in p or "def " in p or ">>>" in p) and "Webster]" not in p]
open(sys.argv[2], "w").write("\n\n".join(code))
PY
imx=$build/imx
echo "# all-experts calibration: code paragraphs of calibration.txt ($calib_chunks chunks; -1: all) → WikiText-2, $chunks eval chunks of 512, -t $threads, $(date -u +%F), imx $(git -C "$root" rev-parse --short HEAD)"
echo
echo "| model | collect 20 chunks | --all-experts | ratio |"
echo "| --- | --- | --- | --- |"
for model in "${models[@]}"; do
  name=$(basename "$model" .gguf)
  s0=$(date +%s.%N); "$imx" collect -m "$model" -f "$calib_all" --chunks 20 -t "$threads" -o "$tmp/t0.gguf" 2>/dev/null
  s1=$(date +%s.%N); "$imx" collect -m "$model" -f "$calib_all" --chunks 20 -t "$threads" -o "$tmp/t1.gguf" --all-experts 2>/dev/null
  s2=$(date +%s.%N)
  python3 -c "a=$s1-$s0; b=$s2-$s1; print(f'| $name | {a:.1f} s | {b:.1f} s | {b/a:.2f}× |')"
done
echo
echo "| model | type | unrouted in calibration (routed on wiki) | KLD all-experts W | KLD W=0 | − all-experts [95%] | KLD mean W | − all-experts [95%] | KLD hier W | − all-experts [95%] |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for model in "${models[@]}"; do
  name=$(basename "$model" .gguf)
  "$imx" collect -m "$model" -f "$tmp/code.txt" --chunks "$calib_chunks" -t "$threads" -o "$tmp/c.gguf" --all-experts 2>/dev/null
  "$imx" collect -m "$model" -f "$wiki" --chunks "$chunks" -t "$threads" -o "$tmp/w.gguf" 2>/dev/null
  unrouted=$(python3 - "$imx" "$tmp/c.gguf" "$tmp/w.gguf" <<'PY'
import json, subprocess, sys
cov = lambda f: {r["tensor"]: r for r in json.loads(subprocess.run([sys.argv[1], "stats", f, "--json"], capture_output=True,
                                                                    text=True).stdout)["coverage"]}
c, w = cov(sys.argv[2]), cov(sys.argv[3])
n = sum(len(r["never_routed"]) for t, r in c.items() if "down" in t)
m = sum(len(set(r["never_routed"]) - set(w[t]["never_routed"])) for t, r in c.items() if "down" in t)
thin = min(r["fewest_tokens"] for t, r in c.items() if "down" in t)
print(f"{n} ({m}); fewest tokens of a routed expert {thin}")
PY
)
  for t in ${types//,/ }; do
    for W in ${weights//,/ }; do
      q() { "$imx" quantize -m "$model" --imatrix "$tmp/c.gguf" -o "$tmp/$1.gguf" "$t" -t "$threads" "${@:2}" >/dev/null 2>&1; }
      q all --prior all-experts --prior-weight "$W"
      q w0
      q mean --prior mean --prior-weight "$W"
      q hier --prior hier --prior-weight "$W"
      "$imx" eval --base "$model" -f "$wiki" -c 512 --chunks "$chunks" -t "$threads" --json \
        "$tmp/all.gguf" "$tmp/w0.gguf" "$tmp/mean.gguf" "$tmp/hier.gguf" >"$tmp/e.json" 2>/dev/null
      python3 - "$name" "$t" "$W" "$unrouted" "$tmp/e.json" <<'PY'
import json, sys
name, t, W, unrouted, f = sys.argv[1:6]
r = {m["path"].rsplit("/", 1)[-1]: m for m in json.load(open(f))["models"] if "kld_mean" in m}
k = lambda x: "%.5f" % x["kld_mean"]["value"]
d = lambda x: "%+.5f [%+.5f, %+.5f]" % tuple(x["kld_minus_reference"][v] for v in ("value", "lo", "hi"))
print(f"| {name} | {t} | {unrouted} | {k(r['all.gguf'])} (W={W}) | {k(r['w0.gguf'])} | {d(r['w0.gguf'])} | "
      f"{k(r['mean.gguf'])} | {d(r['mean.gguf'])} | {k(r['hier.gguf'])} | {d(r['hier.gguf'])} |")
PY
    done
  done
done
