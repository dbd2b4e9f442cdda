#!/usr/bin/env bash
# GPU collection speed (issue 5), side by side with upstream in one run, on random-weight models of the
# shapes in ../shared/docs/anchors.md (1.43B dense Qwen3, 2.60B Qwen3-MoE 32 experts top-8), plus a check that
# GPU sums equal CPU sums.
#   bench/gpu_collect.sh --llama-source DIR --vocab-from MODEL.gguf --text FILE [--chunks N] [--rounds R]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
chunks=200; rounds=1; extra_opts="chunks rounds"
source "$root/bench/gpu_build.sh"

models=$build/models; mkdir -p "$models"
[ -f "$models/dense-1.4b.gguf" ] || "$imx" synth --arch qwen3 --vocab-from "$vocab" -o "$models/dense-1.4b.gguf" --layers 28 --embd 2048 --ff 6144 \
  --heads 16 --kv-heads 8 --head-dim 128
[ -f "$models/moe-2.6b.gguf" ] || "$imx" synth --arch qwen3moe --vocab-from "$vocab" -o "$models/moe-2.6b.gguf" --layers 16 --embd 2048 \
  --heads 16 --kv-heads 8 --head-dim 128 --experts 32 --experts-used 8 --expert-ff 768

# Same GPU forward pass, sums made on the device vs on the host (and by upstream, which copies to the host).
# (Against a CPU run the routing itself differs: GPU kernels round differently and near-tied router logits flip.)
for m in ${IMX_DIFF_MODELS:-moe-2.6b dense-1.4b}; do
  echo "# $m: device sums vs host sums vs llama-imatrix, same GPU forward pass (4 chunks)"
  "$imx" collect -m "$models/$m.gguf" -f "$text" -o "$build/dev.gguf" --chunks 4 --n-gpu-layers 99 2>/dev/null
  "$imx" collect -m "$models/$m.gguf" -f "$text" -o "$build/host.gguf" --chunks 4 --n-gpu-layers 99 --host-sums 2>/dev/null
  "$imx" diff "$build/dev.gguf" "$build/host.gguf" --tolerance 1e-5 | tail -3 || true
  if [ -z "${IMX_QUICK:-}" ]; then
    "$build/upstream/llama-imatrix" -m "$models/$m.gguf" -f "$text" -o "$build/up.gguf" -c 512 -b 512 --chunks 4 \
      -ngl 99 >/dev/null 2>&1
    "$imx" diff "$build/dev.gguf" "$build/up.gguf" --tolerance 1e-4 | tail -3 || true
  fi
done

IMX_BUILD=$build IMX_BENCH_TEXT=$text bash "$root/bench/collect_speed.sh" --chunks "$chunks" --rounds "$rounds" \
  --ngl 99 "$models/dense-1.4b.gguf" "$models/moe-2.6b.gguf"
