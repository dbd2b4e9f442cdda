#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, collect an importance matrix, then show what
# it is for: Q2_K quants without it, with it (llama.cpp's encoder), with its covariance (imx's Hessian encoder,
# then also layer by layer on the quantized layers' inputs: --sequential), and at the same file size with every tensor's type chosen by measurement (imx quantize --target-size),
# measured against the original model on held-out text.
#   scripts/demo.sh [MODEL.gguf [TEXT [HELDOUT]]]
# (defaults: the shared qwen3moe-tiny model, calibration text and wiki.test.raw). Writes build/demo/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model=$(realpath -m "${1:-$root/../shared/models/qwen3moe-tiny.gguf}")
text=$(realpath -m "${2:-$root/../shared/data/calibration.txt}")
heldout=$(realpath -m "${3:-$root/../shared/data/wiki.test.raw}")
cd "$root"
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target imx
mkdir -p build/demo
./build/imx collect -m "$model" -f "$text" -o build/demo/imatrix.gguf -c 512 --covariance
./build/imx inspect build/demo/imatrix.gguf | head -8
./build/imx quantize -m "$model" -o build/demo/model-Q2_K-plain.gguf Q2_K
./build/imx quantize -m "$model" --imatrix build/demo/imatrix.gguf -o build/demo/model-Q2_K-imatrix.gguf Q2_K
./build/imx quantize -m "$model" --imatrix build/demo/imatrix.gguf -o build/demo/model-Q2_K-hessian.gguf Q2_K \
  --method hessian
./build/imx quantize -m "$model" --imatrix build/demo/imatrix.gguf -o build/demo/model-Q2_K-sequential.gguf Q2_K \
  --method hessian --sequential -f "$text"
# the Q2_K file's size, every tensor's type chosen by measurement (the llama-quantize recipe: build/demo/mix.txt)
mib=$(stat -c %s build/demo/model-Q2_K-imatrix.gguf | awk '{ printf "%.6f", $1 / 1048576 }')
./build/imx quantize -m "$model" --imatrix build/demo/imatrix.gguf -f "$text" -o build/demo/model-Q2_K-size-mix.gguf \
  --target-size "$mib" --recipe build/demo/mix.txt --html build/demo/mix.html >/dev/null
if [ -f "$heldout" ]; then
  ./build/imx eval --base "$model" build/demo/model-Q2_K-plain.gguf build/demo/model-Q2_K-imatrix.gguf \
    build/demo/model-Q2_K-hessian.gguf build/demo/model-Q2_K-sequential.gguf build/demo/model-Q2_K-size-mix.gguf \
    -f "$heldout" -c 512 --chunks 20
fi
