#!/usr/bin/env bash
# Covariance collection with GPU offload: on random-weight models (imx synth), XᵀX collected with -ngl 99 (the
# inputs are copied to the host) against the same run on the CPU (-ngl 0), and a Hessian quant made from the
# GPU file. For an offline GPU machine:
#   bench/gpu_covariance.sh --llama-source DIR --vocab-from MODEL.gguf --text FILE
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=""; vocab=""; text=""
while [ $# -gt 0 ]; do
  case "$1" in
    --llama-source) src=$2; shift ;;
    --vocab-from) vocab=$2; shift ;;
    --text) text=$2; shift ;;
    *) echo "gpu_covariance.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
build=${IMX_BUILD:-$root/build-gpu}
export IMX_CACHE_DIR=${IMX_CACHE_DIR:-$build/cache} IMX_CUDA_ARCHITECTURES=${IMX_CUDA_ARCHITECTURES:-native}
t0=$(date +%s)
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DIMX_CUDA=ON -DIMX_BUILD_TESTS=OFF \
  ${src:+-DIMX_LLAMA_SOURCE=$src} ${IMX_PREFIX:+-DCMAKE_PREFIX_PATH=$IMX_PREFIX} >"$build.configure.log" 2>&1 \
  || { tail -40 "$build.configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" --target imx >"$build.build.log" 2>&1 || { tail -40 "$build.build.log"; exit 1; }
echo "# build (llama.cpp with CUDA + imx): $(( $(date +%s) - t0 )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/# GPU: /'
imx=$build/imx; m=$build/cov-models; mkdir -p "$m"
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
