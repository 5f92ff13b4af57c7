#!/usr/bin/env bash
# Render a report.html in headless Chromium (Debian package `chromium`) and save a full-page PNG, to look at the
# report as a reader would. Usage: scripts/screenshot_report.sh RUN_DIR/report.html OUT.png [WIDTH]
set -euo pipefail
html="$(realpath "${1:?usage: screenshot_report.sh REPORT.html OUT.png [WIDTH]}")"
out="$(realpath -m "${2:?usage: screenshot_report.sh REPORT.html OUT.png [WIDTH]}")"
width="${3:-1366}"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
# tall window = the whole page; flags keep Chromium off the network (this machine has none but the registries)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$profile" \
  --window-size="${width},${HEIGHT:-4000}" --screenshot="$out" "file://$html" 2>/dev/null
echo "$out"
