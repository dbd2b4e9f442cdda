#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (separate build tree) and runs each reader for a while.
#   scripts/fuzz.sh [--seconds N] [--build DIR]
# The corpus grows in DIR/corpus; a crash leaves its input in DIR and fails this script.
set -euo pipefail
seconds=60
build=$(dirname "$0")/../build-fuzz
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift ;;
    --build) build=$2; shift ;;
    *) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
src=$(cd "$(dirname "$0")/.." && pwd)
cmake -S "$src" -B "$build" -DIMX_FUZZ=ON -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j "$(nproc)" --target fuzz_gguf_reader fuzz_legacy_reader fuzz_make_seeds >/dev/null
mkdir -p "$build/corpus/gguf" "$build/corpus/legacy"
"$build/tests/fuzz/fuzz_make_seeds" "$build/corpus"
cd "$build"
for target in gguf legacy; do
  echo "fuzz.sh: fuzz_${target}_reader for ${seconds}s"
  rc=0
  "./tests/fuzz/fuzz_${target}_reader" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 \
    "corpus/$target" >"fuzz_${target}.log" 2>&1 || rc=$?
  grep -E "stat::number_of_executed_units|ERROR|SUMMARY" "fuzz_${target}.log" || true
  if [ "$rc" != 0 ]; then
    tail -40 "fuzz_${target}.log"
    echo "fuzz.sh: fuzz_${target}_reader found a crash (input saved in $build)"
    exit 1
  fi
done
echo "fuzz.sh: no crash"
