#!/usr/bin/env bash
# The type search's two sample sizes — rows a matrix for the candidate errors (--error-rows, default 64) and
# calibration chunks a probe (--sensitivity-chunks, default 8 with a probe per tensor as on the shared models, 4
# with probes by role) — against half of each, side by side: the
# one-command search (imx quantize -m MODEL -f FIT --target-size S --method hessian, FIT the first 2/3 of
# calibration.txt, S llama-quantize's Q2_K size, a fresh cache each) with both settings at once on one thread
# each, then imx eval of both files against the F16 base on held-out text (the last third of calibration.txt, and
# WikiText-2): paired ΔKLD (halved − defaults, 95% interval), and the searches' own times. --variant FLAGS
# measures other settings against the defaults instead (e.g. "--error-rows 32" alone); --reference FLAGS adds
# flags to both sides (e.g. "--probe-groups role": probes by role, 8 chunks against 4).
#   bench/search_samples.sh [--chunks N] [--type Q2_K] [--variant FLAGS] [--reference FLAGS] [MODEL ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${IMX_BUILD:-$root/build}
chunks=40; type=Q2_K; variant="--error-rows 32 --sensitivity-chunks 4"; reference=""; models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --chunks) chunks=$2; shift ;;
    --type) type=$2; shift ;;
    --variant) variant=$2; shift ;;
    --reference) reference=$2; shift ;;
    *) models+=("$(realpath "$1")") ;;
  esac
  shift
done
tmp=${IMX_BENCH_DIR:-$(mktemp -d)}; mkdir -p "$tmp"
. "$root/bench/lib.sh"

echo "# type search sample sizes: defaults${reference:+ with $reference} against $variant${reference:+ $reference}, fitted on 2/3 of calibration.txt, target llama-quantize's $type size, $chunks eval chunks, $(date -u +%F), imx $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '(not a checkout)')"
echo
echo "| model | search wall s defaults / halved (errors, sensitivity) | eval text | KLD defaults | KLD halved | ΔKLD halved − defaults [95%] |"
echo "| --- | --- | --- | ---: | ---: | --- |"
for model in "${models[@]}"; do
  name=$(basename "$model" .gguf)
  "$build/upstream/llama-quantize" "$model" "$tmp/$name-up.gguf" "$type" 1 >"$tmp/$name-up.log" 2>&1
  size=$(awk -v b="$(stat -c %s "$tmp/$name-up.gguf")" 'BEGIN {printf "%.4f", b / 1048576}')
  pids=()
  for v in defaults halved; do
    extra=$reference; [ $v = halved ] && extra="$variant $reference"
    rm -rf "$tmp/$name-$v-cache"
    /usr/bin/time -f %e -o "$tmp/$name-$v.time" "$build/imx" quantize -m "$model" -f "$tmp/fit.txt" -o "$tmp/$name-$v.gguf" --target-size "$size" --method hessian \
      -t 1 --cache-dir "$tmp/$name-$v-cache" --json $extra >"$tmp/$name-$v.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { echo "bench: a search of $name failed:"; tail -5 "$tmp/$name"-*.log; exit 1; }; done
  secs=$(python3 - "$tmp/$name-defaults" "$tmp/$name-halved" <<'PY'
import json, sys
out = []
for p in sys.argv[1:]:
    t = open(p + ".log").read(); s = json.loads(t[t.index('{\n'):])["seconds"]
    wall = float(open(p + ".time").read().split()[-1])
    out.append(f"{wall:.0f} ({s['errors']:.0f}, {s['sensitivity']:.0f})")
print(" / ".join(out))
PY
)
  for text in held wiki; do
    f=$tmp/held.txt; [ $text = wiki ] && f=$wiki
    "$build/imx" eval --base "$model" "$tmp/$name-defaults.gguf" "$tmp/$name-halved.gguf" -f "$f" -c 512 --chunks "$chunks" \
      -t 2 --json 2>/dev/null >"$tmp/$name-$text.json"
    python3 - "$tmp/$name-$text.json" "$name" "$text" "$secs" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["models"]
d = m[2]["kld_minus_reference"]
print(f"| {sys.argv[2]} | {sys.argv[4]} | {sys.argv[3]} | {m[1]['kld_mean']['value']:.5f} | {m[2]['kld_mean']['value']:.5f} | "
      f"{d['value']:+.5f} [{d['lo']:+.5f}, {d['hi']:+.5f}] |")
PY
  done
done
