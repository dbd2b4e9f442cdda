#!/usr/bin/env bash
# Whole models of real shape, block by block against upstream and today's paths, one after the other in one run
# (wall time and peak RSS of each, /usr/bin/time):
#   llama-imatrix + llama-quantize        the upstream pipeline
#   imx quantize -f TEXT --method hessian [--sequential]      block by block: collection and encoding in one run
#   imx collect --covariance + imx quantize --imatrix --method hessian [--sequential]   today's two-step path
#   imx quantize -f TEXT --target-size S --method hessian      the first type search at llama-quantize's size
#
#   bench/stream_scale.sh [--shape qwen3-1.7b|llama3-8b] [--chunks N] [--threads T] [--type Q2_K]
#                         [--steps upstream,stream,stream-seq,two-step,two-step-seq,target] [--dir DIR] [--drop-caches]
# Models come from imx synth (random weights, the shape's widths, all blocks); DIR keeps them between runs.
# --drop-caches (root): the page cache emptied before every step, so each reads the model from disk as a first run
# does — without it the model written or read by the step before is in memory for the next (only ratios of one
# run are comparable either way: this machine's speed moves up to 2× between days).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${IMX_BUILD:-$root/build}
shape=qwen3-1.7b; chunks=16; threads=$(nproc); type=Q2_K; steps=upstream,stream,stream-seq,two-step; dir=${IMX_BENCH_DIR:-/tmp/imx-stream-scale}; drop=0
while [ $# -gt 0 ]; do
  case "$1" in
    --shape) shape=$2; shift ;;
    --chunks) chunks=$2; shift ;;
    --threads) threads=$2; shift ;;
    --type) type=$2; shift ;;
    --steps) steps=$2; shift ;;
    --dir) dir=$2; shift ;;
    --drop-caches) drop=1 ;;
    *) echo "stream_scale.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$dir"
vocab=$root/../shared/models/qwen3moe-tiny.gguf
calib=$root/../shared/data/calibration.txt
case "$shape" in
  qwen3-1.7b) args=(--arch qwen3 --layers 28 --embd 2048 --ff 6144 --heads 16 --kv-heads 8 --head-dim 128) ;;
  llama3-8b) args=(--arch qwen3 --layers 32 --embd 4096 --ff 14336 --heads 32 --kv-heads 8 --head-dim 128) ;;
  *) echo "stream_scale.sh: unknown shape $shape" >&2; exit 2 ;;
esac
model=$dir/$shape.gguf
[ -f "$model" ] || "$build/imx" synth "${args[@]}" --vocab-from "$vocab" -o "$model" >/dev/null

if [ "$drop" = 1 ] && [ ! -w /proc/sys/vm/drop_caches ]; then
  echo "stream_scale.sh: --drop-caches needs root (writes /proc/sys/vm/drop_caches)" >&2; exit 2
fi

run() {  # NAME CMD...: prints a table row with wall time and peak RSS
  local name=$1; shift
  if [ "$drop" = 1 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
  /usr/bin/time -f "%e %M" -o "$dir/$name.time" "$@" >"$dir/$name.log" 2>&1 ||
    { echo "bench: $name failed:"; tail -20 "$dir/$name.log"; exit 1; }
  read -r secs kb <"$dir/$name.time"
  printf '| %s | %s | %.1f | %.0f |\n' "$shape" "$name" "$secs" "$((kb / 1024))"
}

echo "# $shape ($(du -h "$model" | cut -f1) F16), $chunks chunks of 512 of calibration.txt, $type, -t $threads, $(date -u +%F), imx $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "(not a checkout)")$([ "$drop" = 1 ] && echo ", page cache dropped before each step")"
# imx's OpenBLAS kernels move its times by 12-20% (OPENBLAS_CORETYPE, docs/scale.md); upstream does not use OpenBLAS
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB, $("$build/imx" --version | grep -o 'OpenBLAS kernels: [A-Za-z0-9]*')"
echo
echo "| shape | step | wall s | peak RSS MiB |"
echo "| --- | --- | ---: | ---: |"
for step in ${steps//,/ }; do
  case "$step" in
    upstream)
      run llama-imatrix "$build/upstream/llama-imatrix" -m "$model" -f "$calib" -o "$dir/up-imatrix.gguf" -c 512 \
        --chunks "$chunks" -t "$threads"
      run llama-quantize "$build/upstream/llama-quantize" --imatrix "$dir/up-imatrix.gguf" "$model" "$dir/up.gguf" "$type" "$threads" ;;
    stream)
      run "imx quantize -f (hessian, block by block)" "$build/imx" quantize -m "$model" -f "$calib" --chunks "$chunks" \
        -o "$dir/stream.gguf" "$type" --method hessian -t "$threads" --json ;;
    stream-seq)
      run "imx quantize -f --sequential (block by block)" "$build/imx" quantize -m "$model" -f "$calib" --chunks "$chunks" \
        -o "$dir/stream-seq.gguf" "$type" --method hessian --sequential -t "$threads" --json ;;
    two-step)
      run "imx collect --covariance" "$build/imx" collect -m "$model" -f "$calib" --chunks "$chunks" -t "$threads" \
        --covariance -o "$dir/cov.gguf"
      run "imx quantize --imatrix (hessian)" "$build/imx" quantize -m "$model" --imatrix "$dir/cov.gguf" -o "$dir/two.gguf" \
        "$type" --method hessian -t "$threads" ;;
    two-step-seq)
      run "imx quantize --imatrix --sequential" "$build/imx" quantize -m "$model" --imatrix "$dir/cov.gguf" \
        -o "$dir/two-seq.gguf" "$type" --method hessian --sequential -f "$calib" --sequential-chunks "$chunks" -t "$threads" ;;
    target)  # issue 26's allocation at whole-model size: the first --target-size search (fresh cache) at the size of
             # llama-quantize's $type file (of imx's own where upstream did not run), collection included
      size=$(stat -c %s "$dir/up.gguf" 2>/dev/null || stat -c %s "$dir/stream.gguf")
      rm -rf "$dir/target-cache"
      run "imx quantize -f --target-size (hessian, first search)" "$build/imx" quantize -m "$model" -f "$calib" \
        --chunks "$chunks" -o "$dir/target.gguf" --target-size "$(awk -v b="$size" 'BEGIN {printf "%.4f", b / 1048576}')" \
        --method hessian -t "$threads" --cache-dir "$dir/target-cache" --json
      python3 -c "import json,sys; t=open(sys.argv[1]).read(); j=json.loads(t[t.index('{\\n'):]); s=j['seconds']; print('#   search: errors %.1f s (%d types of %d tensors, %d rows a matrix), sensitivity %.1f s (%d probes), total %.1f s; predicted KLD %.5f, measured %.5f, %d bytes' % (s['errors'], j['error_types'], j['error_tensors'], j['error_rows'], s['sensitivity'], j['probes'], s['total'], j['predicted_kld'], j['measured_kld'], j['output_bytes']))" \
        "$dir/imx quantize -f --target-size (hessian, first search).log" ;;
    *) echo "stream_scale.sh: unknown step $step" >&2; exit 2 ;;
  esac
done
