#!/usr/bin/env bash
#! Regenerates docs/report.png, the README's picture of report.html: runs ops/demo.sh (the signal-carrying
#! demo weights on the held-out crops) and renders its report.html with headless Chromium.
# Usage: bash ops/report_picture.sh [RUN_DIR]  (an existing demo run directory skips the demo run)
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/env.sh
source ops/report_tools.sh
run="${1:-}"
if [ -z "$run" ]; then
  bash ops/demo.sh runs/demo
  run=runs/demo/run
fi
[ -f "$run/report.html" ] || { echo "no report.html in $run" >&2; exit 2; }
# A fixed window: the picture's size does not depend on the screen; the page is a single column, so
# the top 1800 px hold the headline, the per-class chart, the reliability diagram and the confusions.
"$TRESNET_CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
  --window-size=1100,1800 --screenshot="$PWD/docs/report.png" "file://$(cd "$run" && pwd)/report.html" \
  2>/dev/null
echo "wrote docs/report.png from $run/report.html"
