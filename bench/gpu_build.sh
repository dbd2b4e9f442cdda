# Sourced by the GPU benchmarks: parses --llama-source/--vocab-from/--text (plus the options in $extra_opts,
# stored in variables of the same name without dashes), then builds llama.cpp with CUDA and imx into $build.
# An offline GPU machine cannot fetch llama.cpp: --llama-source names a copy of the pinned tree.
src=""; vocab=""; text=""
while [ $# -gt 0 ]; do
  case "$1" in
    --llama-source) src=$2; shift ;;
    --vocab-from) vocab=$2; shift ;;
    --text) text=$2; shift ;;
    *) opt=${1#--}
       if [[ " ${extra_opts:-} " == *" $opt "* ]]; then printf -v "$opt" '%s' "$2"; shift
       else echo "$(basename "$0"): unknown option $1" >&2; exit 2; fi ;;
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
imx=$build/imx
