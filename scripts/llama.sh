#!/usr/bin/env bash
# Fetch, verify and build the pinned llama.cpp (libllama + ggml + upstream reference tools) into a cache
# outside the source tree, so every build and CI run on this machine reuses it.
#
#   scripts/llama.sh [--cuda] [--source DIR] [--print-dir]
#
# The machines reach only Debian and npm, so llama.cpp comes from the npm package node-llama-cpp, which ships
# the llama.cpp git history as llama/gitRelease.bundle. We check out the pinned commit and refuse any other.
# --source DIR builds a llama.cpp checkout of the user's instead (same API expected; their risk).
# IMX_LLAMA_CMAKE_ARGS adds options to llama.cpp's configure (e.g. -DGGML_CUDA_FA=OFF for a faster CUDA build).
# Prints the build directory on the last line of stdout.
set -euo pipefail

PIN_COMMIT=de3ff815ea7d559ee917f063901b8986f038abc6
NPM_PACKAGE=node-llama-cpp@3.22.1

cuda=OFF
source_dir=""
print_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) cuda=ON ;;
    --source) source_dir=$(cd "$2" && pwd); shift ;;
    --print-dir) print_only=1 ;;
    *) echo "llama.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

cache_root=${IMX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/imx}
variant=cpu; [ "$cuda" = ON ] && variant=cuda
if [ -n "$source_dir" ]; then
  tag=custom-$(printf '%s' "$source_dir" | sha1sum | cut -c1-8)
else
  tag=${PIN_COMMIT:0:8}
fi
build_dir="$cache_root/llama-$tag-$variant"
if [ "$print_only" = 1 ]; then echo "$build_dir"; exit 0; fi

log() { echo "llama.sh: $*" >&2; }
mkdir -p "$cache_root"

# 1. Source: the user's checkout, or the pinned commit from the npm bundle.
if [ -z "$source_dir" ]; then
  source_dir="$cache_root/llama.cpp-${PIN_COMMIT:0:8}"
  if [ ! -f "$source_dir/.imx-verified" ]; then
    command -v npm >/dev/null || { log "npm is required (apt-get install npm)"; exit 1; }
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    log "fetching $NPM_PACKAGE from npm"
    (cd "$tmp" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
    tar -xzf "$tmp"/node-llama-cpp-*.tgz -C "$tmp" package/llama/gitRelease.bundle
    rm -rf "$source_dir.partial"
    git clone --quiet "$tmp/package/llama/gitRelease.bundle" "$source_dir.partial"
    got=$(git -C "$source_dir.partial" rev-parse HEAD)
    if [ "$got" != "$PIN_COMMIT" ]; then
      git -C "$source_dir.partial" -c advice.detachedHead=false checkout --quiet "$PIN_COMMIT" 2>/dev/null || {
        log "bundle holds $got, not the pinned $PIN_COMMIT"; exit 1; }
    fi
    touch "$source_dir.partial/.imx-verified"
    rm -rf "$source_dir"; mv "$source_dir.partial" "$source_dir"
  fi
  [ "$(git -C "$source_dir" rev-parse HEAD)" = "$PIN_COMMIT" ] || { log "$source_dir is not at $PIN_COMMIT"; exit 1; }
fi

# 2. Build: static Release libraries plus the upstream tools we measure ourselves against, with ggml's RPC
# backend (imx collect --rpc, and ggml-rpc-server, upstream's rpc-server, for the machines that hold the layers),
# and llama-gguf-split (split models: the tests make them, as users get them).
# GGML_NATIVE=OFF: the binaries must run on any x86-64 machine with AVX2/FMA/F16C (x86-64-v3), not just
# the one that built them (CI and developer machines differ). ggml then enables exactly those extensions.
# .imx-built-split: a cache built before llama-gguf-split (split models in tests) was added is built again
# incrementally (a minute).
stamp="$build_dir/.imx-built-split"
if [ ! -f "$stamp" ]; then
  extra=()
  if [ "$cuda" = ON ]; then
    extra+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=${IMX_CUDA_ARCHITECTURES:-native}")
  fi
  log "configuring llama.cpp in $build_dir"
  cmake -S "$source_dir" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON \
    -DGGML_RPC=ON -DCMAKE_POSITION_INDEPENDENT_CODE=ON "${extra[@]}" ${IMX_LLAMA_CMAKE_ARGS:-} >"$build_dir.configure.log" 2>&1 \
    || { tail -30 "$build_dir.configure.log" >&2; exit 1; }
  log "building (a cold CPU build takes about 7 minutes on 2 cores)"
  cmake --build "$build_dir" -j "${IMX_JOBS:-$(nproc)}" \
    --target llama ggml llama-imatrix llama-quantize llama-perplexity llama-gguf-split ggml-rpc-server >"$build_dir.build.log" 2>&1 \
    || { tail -30 "$build_dir.build.log" >&2; exit 1; }
  echo "$source_dir" > "$build_dir/.imx-source"
  touch "$stamp"
fi
echo "$build_dir"
