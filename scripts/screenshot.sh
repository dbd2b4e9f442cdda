#!/usr/bin/env bash
# Renders a local HTML page in headless Chromium (Debian's package) and saves a PNG.
#   scripts/screenshot.sh PAGE.html OUT.png [WIDTH HEIGHT]
# Prints the page's console messages (lines with CONSOLE), if any; exits non-zero if Chromium fails.
set -euo pipefail
page=$(realpath "$1"); out=$(realpath -m "$2"); width=${3:-1150}; height=${4:-2600}
profile=$(mktemp -d); trap 'rm -rf "$profile"' EXIT
# the flags keep Chromium off the network (this machine has none) and out of the user's profile
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile/user" --hide-scrollbars \
  --window-size="$width,$height" --enable-logging=stderr --v=0 --screenshot="$out" "file://$page" \
  2>"$profile/log" || { cat "$profile/log" >&2; exit 1; }
grep -E "CONSOLE|Uncaught" "$profile/log" || true
[ -s "$out" ] || { echo "screenshot.sh: no image written" >&2; exit 1; }
