#!/usr/bin/env bash
# Covariance collection with GPU offload: on random-weight models (imx synth), XᵀX collected with -ngl 99 (the
# inputs are copied to the host) against the same run on the CPU (-ngl 0), and a Hessian quant made from the
# GPU file. For an offline GPU machine:
#   bench/gpu_covariance.sh --llama-source DIR --vocab-from MODEL.gguf --text FILE
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/gpu_build.sh"
m=$build/cov-models; mkdir -p "$m"
"$imx" synth --arch qwen3 --vocab-from "$vocab" -o "$m/dense.gguf" --layers 4 --embd 512 --ff 1024 --heads 8 --kv-heads 4 --head-dim 64
"$imx" synth --arch qwen3moe --vocab-from "$vocab" -o "$m/moe.gguf" --layers 4 --embd 512 --heads 8 --kv-heads 4 --head-dim 64 \
  --experts 16 --experts-used 2 --expert-ff 256
for name in dense moe; do
  for ngl in 99 0; do
    /usr/bin/time -f "%e s" "$imx" collect -m "$m/$name.gguf" -f "$text" -o "$m/$name-ngl$ngl.gguf" --chunks 8 \
      --n-gpu-layers $ngl --covariance 2>&1 | grep -E "covariance:| s$" | sed "s/^/# $name -ngl $ngl: /"
  done
  echo "# $name: GPU (-ngl 99) against CPU (-ngl 0) collection"
  "$imx" diff "$m/$name-ngl99.gguf" "$m/$name-ngl0.gguf" --tolerance 1e-3 | tail -3 || true
  "$imx" quantize -m "$m/$name.gguf" --imatrix "$m/$name-ngl99.gguf" -o "$m/$name-Q2_K.gguf" Q2_K --method hessian 2>&1 |
    grep "hessian:" | grep -v ETA
done
