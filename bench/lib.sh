# Sourced by the quality benches after they set $root and $tmp: the shared texts, the shared models when none
# are named, and the one fit/held-out split every held-out figure in docs/ uses.
calib=$root/../shared/data/calibration.txt
wiki=$root/../shared/data/wiki.test.raw
# $tmp/fit.txt: the first 2/3 of calibration.txt (what the files are fitted on); $tmp/held.txt: the rest.
bytes=$(stat -c %s "$calib")
head -c $((bytes * 2 / 3)) "$calib" >"$tmp/fit.txt"
tail -c +$((bytes * 2 / 3 + 1)) "$calib" >"$tmp/held.txt"
[ ${#models[@]} -gt 0 ] || models=("$root/../shared/models/qwen3moe-tiny.gguf" "$root/../shared/models/deepseek3-tiny.gguf")
