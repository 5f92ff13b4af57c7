#!/usr/bin/env bash
# Does a report.html fit a window? Opens every folded part (<details>) in headless Chromium at WIDTH (default 1366)
# and prints each table or image wider than its box, or "fits". Usage: scripts/report_overflow.sh REPORT.html [WIDTH]
set -euo pipefail
html="$(realpath "${1:?usage: report_overflow.sh REPORT.html [WIDTH]}")"
width="${2:-1366}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
probe='<script>addEventListener("load",()=>{document.querySelectorAll("details").forEach(d=>d.open=true);
const r=[];document.querySelectorAll(".tw").forEach(d=>{if(d.scrollWidth>d.clientWidth+1)r.push("table "+
d.scrollWidth+"px in "+d.clientWidth+"px after: "+((d.previousElementSibling||{}).textContent||"").split(String.fromCharCode(10)).join(" ")
.slice(0,60))});
document.querySelectorAll("img").forEach(m=>{if(m.getBoundingClientRect().right>innerWidth)r.push("image "+m.alt)});
document.body.dataset.overflow=r.join(" | ")||"fits"})</script>'
sed "s#</body>#${probe//$'\n'/}</body>#" "$html" >"$tmp/probe.html"
chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking --disable-sync \
  --user-data-dir="$tmp/profile" --window-size="${width},2000" --virtual-time-budget=5000 --dump-dom \
  "file://$tmp/probe.html" 2>/dev/null | grep -o 'data-overflow="[^"]*"' | sed 's/^data-overflow="//; s/"$//'
