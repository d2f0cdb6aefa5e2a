#!/usr/bin/env bash
# Opens a `w2s report` page in headless Chromium, as a reader would from disk, and checks that
#   - the page logs no console error and no failed resource load,
#   - every <figure> holds an SVG that is laid out (width and height > 50 px) and non-empty
#     (at least 5 drawn shapes and 3 text labels),
#   - every PNG the page links to exists and is a PNG.
# Usage: scripts/check-report.sh REPORT_DIR/index.html [--screenshot FILE.png]
# Exit: 0 ok, 1 a check failed, 2 usage, 3 no Chromium on this machine (Debian: apt-get install chromium).
# tests/cli/report.rs runs it on the tiny-model chain's report when Chromium is installed.
set -euo pipefail

page="${1:-}"
shot=""
if [[ "${2:-}" == "--screenshot" ]]; then shot="${3:?--screenshot needs a file}"; fi
if [[ -z "$page" || ! -f "$page" ]]; then
  echo "usage: $0 REPORT_DIR/index.html [--screenshot FILE.png] (got '${page}')" >&2
  exit 2
fi
chrome=""
for c in chromium chromium-browser google-chrome; do
  if command -v "$c" >/dev/null 2>&1; then chrome="$c"; break; fi
done
if [[ -z "$chrome" ]]; then
  echo "check-report: no Chromium found (apt-get install chromium)" >&2
  exit 3
fi

dir="$(cd "$(dirname "$page")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$dir"/* "$work"/

# The checker runs inside the page: it records console errors and failed loads from the start
# and, at load, measures every figure, then writes its findings into the DOM that Chromium dumps.
checker='<script>(function(){var errors=[];var oe=console.error;console.error=function(){errors.push("console.error: "+Array.prototype.join.call(arguments," "));oe.apply(console,arguments);};window.addEventListener("error",function(e){var t=e.target;errors.push("error: "+(e.message||(t&&(t.src||t.href))||"resource"));},true);window.addEventListener("load",function(){var figs=document.querySelectorAll("figure");var lines=[];var bad=0;figs.forEach(function(f){var svg=f.querySelector("svg");var r=svg?svg.getBoundingClientRect():{width:0,height:0};var marks=svg?svg.querySelectorAll("rect,path,polyline,polygon,circle,line").length:0;var texts=svg?svg.querySelectorAll("text").length:0;var ok=!!svg&&r.width>50&&r.height>50&&marks>=5&&texts>=3;if(!ok)bad++;lines.push((ok?"ok ":"EMPTY ")+f.id+" "+Math.round(r.width)+"x"+Math.round(r.height)+" shapes="+marks+" texts="+texts);});var pre=document.createElement("pre");pre.id="w2s-check";pre.textContent="W2S-CHECK FIGURES "+figs.length+" BAD "+bad+" ERRORS "+errors.length+"\n"+lines.join("\n")+"\n"+errors.join("\n")+"\nW2S-CHECK-END";document.body.appendChild(pre);});})();</script>'
python3 - "$work/index.html" "$checker" <<'EOF'
import sys
path, checker = sys.argv[1], sys.argv[2]
html = open(path, encoding="utf-8").read()
i = html.find("<head>")
if i < 0:
    sys.exit("check-report: the page has no <head>")
open(path, "w", encoding="utf-8").write(html[: i + 6] + checker + html[i + 6 :])
EOF

flags=(--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run
       --allow-file-access-from-files --enable-logging=stderr --v=0 --window-size=1280,2000)
dom="$work/dom.html"
log="$work/chromium.log"
if ! timeout 120 "$chrome" "${flags[@]}" --dump-dom "file://$work/index.html" >"$dom" 2>"$log"; then
  echo "check-report: Chromium failed on $page" >&2
  tail -20 "$log" >&2
  exit 1
fi
if [[ -n "$shot" ]]; then
  timeout 120 "$chrome" "${flags[@]}" --hide-scrollbars --screenshot="$shot" \
    "file://$dir/index.html" >/dev/null 2>>"$log" || echo "check-report: screenshot failed" >&2
fi

status=0
report="$(python3 - "$dom" <<'EOF'
import html, re, sys
dom = open(sys.argv[1], encoding="utf-8").read()
m = re.search(r'<pre id="w2s-check">(.*?)</pre>', dom, re.S)
print(html.unescape(m.group(1)) if m else "W2S-CHECK MISSING: the page did not finish loading")
EOF
)"
echo "$report"
if ! grep -q "^W2S-CHECK FIGURES [1-9][0-9]* BAD 0 ERRORS 0$" <<<"$report"; then
  echo "check-report: FAILED (figures missing or empty, or errors above)" >&2
  status=1
fi
# Chromium's own log: console messages of level error and uncaught exceptions.
if grep -E "CONSOLE\([0-9]+\)\].*(Uncaught|Error)|:ERROR:CONSOLE" "$log" >&2; then
  echo "check-report: console errors in Chromium's log" >&2
  status=1
fi
for png in $(grep -o 'href="[^"]*\.png"' "$dir/index.html" | sed 's/href="//; s/"$//'); do
  if ! head -c 8 "$dir/$png" 2>/dev/null | od -An -tx1 | grep -q "89 50 4e 47 0d 0a 1a 0a"; then
    echo "check-report: linked PNG $png is missing or not a PNG" >&2
    status=1
  else
    echo "ok $png ($(stat -c %s "$dir/$png") bytes)"
  fi
done
[[ $status -eq 0 ]] && echo "check-report: $page OK"
exit $status
