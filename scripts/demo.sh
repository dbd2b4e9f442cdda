#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, and collect an importance matrix.
#   scripts/demo.sh [MODEL.gguf [TEXT]]   (defaults: the shared qwen3moe-tiny model and calibration text)
# Writes build/demo/imatrix.gguf and prints the expert coverage summary.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model=$(realpath -m "${1:-$root/../shared/models/qwen3moe-tiny.gguf}")
text=$(realpath -m "${2:-$root/../shared/data/calibration.txt}")
cd "$root"
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target imx
mkdir -p build/demo
./build/imx collect -m "$model" -f "$text" -o build/demo/imatrix.gguf -c 512
./build/imx inspect build/demo/imatrix.gguf | head -8
