#!/usr/bin/env bash
# The iso-quality size ratio (issue 26): for an imx file of size S and mean KLD k, the size llama-quantize needs for
# the same k, interpolated on its own ladder (Q2_K Q3_K_S Q3_K_M Q4_K_S Q4_K_M Q5_K_S; log KLD linear in bytes);
# ratio = S / that size. Below 1: imx reaches the same quality in fewer bytes. Ladder steps that are larger and
# no better than a smaller step are left out (the least size that reaches a KLD).
# Fitted on the first 2/3 of calibration.txt (imx collect for llama-quantize's imatrix — the sums llama-imatrix
# writes, with no tensor dropped — and imx's own one-command collection); evaluated against the F16 base on the
# held-out last third and on WikiText-2. imx files, each at llama-quantize's Q2_K, Q3_K_S and Q3_K_M sizes:
#   hessian      imx quantize -f FIT --target-size S --method hessian                (one command, no sequential pass)
#   sequential   imx quantize -f FIT --target-size S --method hessian --sequential   (one command, all levers on)
#   bench/iso_quality.sh [--chunks N] [--threads T] [--sizes Q2_K,Q3_K_S,Q3_K_M] [MODEL ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${IMX_BUILD:-$root/build}
chunks=40; threads=$(nproc); sizes=Q2_K,Q3_K_S,Q3_K_M; models=()
ladder="Q2_K Q3_K_S Q3_K_M Q4_K_S Q4_K_M Q5_K_S"
while [ $# -gt 0 ]; do
  case "$1" in
    --chunks) chunks=$2; shift ;;
    --threads) threads=$2; shift ;;
    --sizes) sizes=$2; shift ;;
    *) models+=("$(realpath "$1")") ;;
  esac
  shift
done
tmp=${IMX_BENCH_DIR:-$(mktemp -d)}; mkdir -p "$tmp"
. "$root/bench/lib.sh"

echo "# iso-quality size ratio, fitted on 2/3 of calibration.txt, $chunks eval chunks of 512, -t $threads, $(date -u +%F), imx $(git -C "$root" rev-parse --short HEAD)"
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "| model | eval text | at size of | MiB | KLD llama-quantize there | imx variant | KLD imx | llama-quantize's size for that KLD (MiB) | ratio |"
echo "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: |"
for model in "${models[@]}"; do
  name=$(basename "$model" .gguf)
  dir=$tmp/$name; mkdir -p "$dir"
  im=$dir/imatrix.gguf
  [ -f "$im" ] || "$build/imx" collect -m "$model" -f "$tmp/fit.txt" -c 512 -t "$threads" -o "$im" 2>"$dir/collect.log"
  files=()
  for t in $ladder; do
    [ -f "$dir/up-$t.gguf" ] || "$build/upstream/llama-quantize" --imatrix "$im" "$model" "$dir/up-$t.gguf" "$t" "$threads" \
      >"$dir/up-$t.log" 2>&1 || { echo "bench: llama-quantize $t failed"; tail "$dir/up-$t.log"; exit 1; }
    files+=("$dir/up-$t.gguf")
  done
  for t in ${sizes//,/ }; do
    mib=$(python3 -c "import os; print(repr(os.path.getsize('$dir/up-$t.gguf') / 1048576))")
    for v in hessian sequential; do
      out=$dir/imx-$v-$t.gguf
      extra=(); [ $v = sequential ] && extra=(--sequential)
      [ -f "$out" ] || "$build/imx" quantize -m "$model" -f "$tmp/fit.txt" -o "$out" --target-size "$mib" \
        --method hessian "${extra[@]}" -t "$threads" --cache-dir "$tmp/cache" >"$out.log" 2>&1 ||
        { echo "bench: $out failed:"; tail -5 "$out.log"; exit 1; }
      files+=("$out")
    done
  done
  for text in held wiki; do
    f=$tmp/held.txt; [ $text = wiki ] && f=$wiki
    "$build/imx" eval --base "$model" "${files[@]}" -f "$f" -c 512 --chunks "$chunks" -t "$threads" \
      --cache-dir "$tmp/cache" --json 2>/dev/null >"$dir/eval-$text.json"
    python3 - "$dir/eval-$text.json" "$name" "$text" "$ladder" "$sizes" "${files[@]}" <<'PY'
import json, math, os, sys
ev, name, text, ladder, sizes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(), sys.argv[5].split(",")
paths = sys.argv[6:]
kld = {}
for m in json.load(open(ev))["models"]:
    kld[os.path.realpath(m["path"])] = m["kld_mean"]["value"]
def k(p): return kld[os.path.realpath(p)]
def mib(p): return os.path.getsize(p) / 1048576
# llama-quantize's frontier: a ladder step that is larger and no better than a smaller one (Q4_K_M against Q4_K_S
# on a small model) is left out, so that "the size it needs" is the least size that reaches the KLD
up = []
for s, lk in sorted(((mib(p), math.log(k(p))) for p in paths[:len(ladder)])):
    if not up or lk < up[-1][1]:
        up.append((s, lk))
def size_for(kv):
    lk = math.log(kv)
    # the ladder's segment whose log KLD brackets lk (extrapolated from the end segments outside it)
    for (s0, l0), (s1, l1) in zip(up, up[1:]):
        if min(l0, l1) <= lk <= max(l0, l1) and l0 != l1:
            return s0 + (lk - l0) / (l1 - l0) * (s1 - s0), ""
    (s0, l0), (s1, l1) = (up[0], up[1]) if lk > up[0][1] else (up[-2], up[-1])
    return s0 + (lk - l0) / (l1 - l0) * (s1 - s0), " (extrapolated)"
for t in sizes:
    ref = [p for p in paths if p.endswith(f"/up-{t}.gguf")][0]
    for v in ("hessian", "sequential"):
        p = [q for q in paths if q.endswith(f"/imx-{v}-{t}.gguf")][0]
        s, note = size_for(k(p))
        print(f"| {name} | {text} | {t} | {mib(p):.2f} | {k(ref):.5f} | {v} | {k(p):.5f} | {s:.2f}{note} | "
              f"**{mib(p) / s:.3f}** |")
PY
  done
done
