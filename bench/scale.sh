#!/usr/bin/env bash
# The product at real layer shapes: random-weight models written by `imx synth` with one and two layers of a
# real model's width, and every step measured side by side in one run: llama-perplexity (the forward pass),
# llama-imatrix, imx collect, imx collect --covariance, then llama-quantize with the imatrix and
# imx quantize --method hessian per type. Wall time and peak RSS (GNU time) of each.
#
# Per-layer cost = (2-layer run) − (1-layer run): it removes what a run pays once (loading, tokenizing, the
# output head) and the last-layer effect of llama-perplexity (it computes the last layer's attention output
# and FFN only for the half of each chunk it scores, so on a 1-layer model it does ~60% of a layer's work).
# llama-perplexity runs twice: as users run it (4 chunks per batch in one 2048-cell KV cache: attention over
# 4x the cells) and with -b 512 (one chunk per batch, the forward pass imx and llama-imatrix make).
# The whole-model estimate is t(1) + (L − 1) × per-layer. Quantization is per tensor: L × the 1-layer run's
# time is its (slightly high) estimate.
#
#   bench/scale.sh [--shapes "llama3-8b qwen3-30b-a3b deepseek-v3"] [--chunks 8] [--threads N] [--types "Q2_K IQ2_XXS"]
#                  [--no-quantize]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${IMX_BUILD:-$root/build}
shapes="llama3-8b qwen3-30b-a3b"; chunks=8; threads=$(nproc); types="Q2_K IQ2_XXS"; quantize=1
while [ $# -gt 0 ]; do
  case "$1" in
    --shapes) shapes=$2; shift ;;
    --chunks) chunks=$2; shift ;;
    --threads) threads=$2; shift ;;
    --types) types=$2; shift ;;
    --no-quantize) quantize=0 ;;
    *) echo "scale.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
text=${IMX_BENCH_TEXT:-$root/../shared/data/calibration.txt}
vocab=$root/../shared/models/qwen3moe-tiny.gguf
tmp=${IMX_BENCH_DIR:-$(mktemp -d)}; [ -n "${IMX_BENCH_DIR:-}" ] || trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"

# shape name → imx synth arguments and the real model's layer count
synth_args() {
  case "$1" in
    llama3-8b) echo "--arch qwen3 --embd 4096 --ff 14336 --heads 32 --kv-heads 8 --head-dim 128" ;;
    qwen3-30b-a3b) echo "--arch qwen3moe --embd 2048 --heads 32 --kv-heads 4 --head-dim 128 --experts 128 --experts-used 8 --expert-ff 768" ;;
    # one DeepSeek-V3 MoE layer per block (MLA, 256 routed experts top-8 + 1 shared); Q4_0 weights: in F16 one
    # such layer is 22 GB, more than a 24 GB machine can run from; collection only (quantizing needs F16)
    deepseek-v3) echo "--arch deepseek2 --embd 7168 --heads 128 --head-dim 128 --rope-dim 64 --q-lora 1536 --kv-lora 512 --experts 256 --experts-used 8 --expert-ff 2048 --shared-experts 1 --weight-type q4_0" ;;
    *) echo "scale.sh: unknown shape $1" >&2; exit 2 ;;
  esac
}
model_layers() { case "$1" in llama3-8b) echo 32 ;; qwen3-30b-a3b) echo 48 ;; deepseek-v3) echo 61 ;; esac; }

# measure NAME CMD...: "wall_s peak_MiB" into $tmp/NAME.m, output into $tmp/NAME.log
measure() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$tmp/$name.time" "$@" >"$tmp/$name.log" 2>&1 \
    || { echo "scale.sh: $name failed:" >&2; tail -20 "$tmp/$name.log" >&2; exit 1; }
  awk '{ printf "%.2f %.0f\n", $1, $2 / 1024 }' "$tmp/$name.time" >"$tmp/$name.m"
}
wall() { cut -d' ' -f1 "$tmp/$1.m"; }
rss() { cut -d' ' -f2 "$tmp/$1.m"; }

echo "# imx at real layer shapes: $chunks chunks x 512 tokens of $(basename "$text"), -t $threads, $(date -u +%F)"
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), imx $(git -C "$root" rev-parse --short HEAD)"
for shape in $shapes; do
  L=$(model_layers "$shape")
  for layers in 1 2; do
    m=$tmp/$shape-$layers.gguf
    [ -f "$m" ] || "$build/imx" synth $(synth_args "$shape") --layers $layers --vocab-from "$vocab" -o "$m" >/dev/null 2>&1
    common=(-m "$m" -f "$text" -c 512 --chunks "$chunks" -t "$threads")
    measure "$shape-$layers-ppl" "$build/upstream/llama-perplexity" "${common[@]}"
    measure "$shape-$layers-ppl1" "$build/upstream/llama-perplexity" "${common[@]}" -b 512
    measure "$shape-$layers-imatrix" "$build/upstream/llama-imatrix" "${common[@]}" -o "$tmp/up.gguf"
    measure "$shape-$layers-collect" "$build/imx" collect "${common[@]}" -o "$tmp/$shape-$layers-im.gguf"
    measure "$shape-$layers-cov" "$build/imx" collect "${common[@]}" -o "$tmp/$shape-$layers-cov.gguf" --covariance
  done
  echo
  echo "## $shape (real model: $L layers): collection"
  echo
  echo "| step | 1 layer s | 2 layers s | per layer s | per layer / perplexity | peak RSS 1 layer MiB | whole model (${L} layers) est. |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  p1=$(wall "$shape-1-ppl"); p2=$(wall "$shape-2-ppl")
  for step in ppl:llama-perplexity ppl1:"llama-perplexity -b 512" imatrix:llama-imatrix collect:"imx collect" \
              cov:"imx collect --covariance"; do
    key=${step%%:*}; label=${step#*:}
    a=$(wall "$shape-1-$key"); b=$(wall "$shape-2-$key")
    awk -v l="$label" -v a="$a" -v b="$b" -v p1="$p1" -v p2="$p2" -v r="$(rss "$shape-1-$key")" -v L="$L" \
      'BEGIN { d = b - a; printf "| %s | %.2f | %.2f | %.2f | %.2f | %d | %.0f s |\n", l, a, b, d, d / (p2 - p1), r, a + (L - 1) * d }'
  done
  grep -h "^covariance:" "$tmp/$shape-1-cov.log" | sed 's/^/covariance (1 layer): /' || true

  # Steady state: what one more chunk costs once a run is under way (a real imatrix run has 100-200 chunks,
  # where the per-layer costs paid once — allocating the accumulators, writing the file — fade). The 1-layer
  # model over 3N chunks against N: per chunk = (t(3N) − t(N)) / 2N.
  m=$tmp/$shape-1.gguf; n3=$((3 * chunks))
  three=(-m "$m" -f "$text" -c 512 --chunks "$n3" -t "$threads")
  measure "$shape-1-ppl1-3x" "$build/upstream/llama-perplexity" "${three[@]}" -b 512
  measure "$shape-1-collect-3x" "$build/imx" collect "${three[@]}" -o "$tmp/$shape-3x-im.gguf"
  measure "$shape-1-cov-3x" "$build/imx" collect "${three[@]}" -o "$tmp/$shape-3x-cov.gguf" --covariance
  echo
  echo "## $shape: steady state (1-layer model, per chunk from $chunks and $n3 chunks)"
  echo
  echo "| step | per chunk s | / llama-perplexity -b 512 | / imx collect | paid once (1 layer) s |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  per() { awk -v a="$(wall "$shape-1-$1")" -v b="$(wall "$shape-1-$1-3x")" -v n="$chunks" 'BEGIN { printf "%.4f", (b - a) / (2 * n) }'; }
  pp=$(per ppl1); pc=$(per collect)
  for step in ppl1:"llama-perplexity -b 512" collect:"imx collect" cov:"imx collect --covariance"; do
    key=${step%%:*}; label=${step#*:}; x=$(per "$key")
    awk -v l="$label" -v x="$x" -v pp="$pp" -v pc="$pc" -v a="$(wall "$shape-1-$key")" -v n="$chunks" \
      'BEGIN { printf "| %s | %.3f | %.2f | %.2f | %.1f |\n", l, x, x / pp, x / pc, a - n * x }'
  done

  [ "$quantize" = 1 ] && [ "$shape" != deepseek-v3 ] || continue
  echo
  echo "## $shape: quantization of the 1-layer model (imatrix with covariance from imx collect --covariance)"
  echo
  echo "| type | llama-quantize s | imx hessian s | ratio | llama-quantize MiB | imx hessian MiB | hessian error vs diagonal | whole model est. (x${L}) |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
  m=$tmp/$shape-1.gguf; im=$tmp/$shape-1-cov.gguf
  for type in $types; do
    measure "$shape-lq-$type" "$build/upstream/llama-quantize" --imatrix "$im" "$m" "$tmp/lq.gguf" "$type" "$threads"
    measure "$shape-hq-$type" "$build/imx" quantize -m "$m" --imatrix "$im" -o "$tmp/hq.gguf" "$type" \
      --method hessian -t "$threads" -v
    err=$(grep -o 'output error [0-9.]*% below' "$tmp/$shape-hq-$type.log" | head -1)
    a=$(wall "$shape-lq-$type"); b=$(wall "$shape-hq-$type")
    awk -v t="$type" -v a="$a" -v b="$b" -v ra="$(rss "$shape-lq-$type")" -v rb="$(rss "$shape-hq-$type")" \
        -v e="$err" -v L="$L" \
      'BEGIN { printf "| %s | %.2f | %.2f | %.2f | %d | %d | %s | %.0f s vs %.0f s |\n", t, a, b, b / a, ra, rb, e, L * b, L * a }'
    grep -E '^  blk' "$tmp/$shape-hq-$type.log" | sed 's/^/    /' >"$tmp/$shape-hq-$type.tensors" || true
  done
  for type in $types; do
    echo
    echo "imx quantize $type, per tensor (-v):"
    echo '```'
    cat "$tmp/$shape-hq-$type.tensors"
    echo '```'
  done
done
