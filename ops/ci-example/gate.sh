#!/usr/bin/env bash
# A plain CI step: evaluate a checkpoint, then gate the run against a checked-in baseline.
# Exit status: 0 within bounds, 1 accuracy regression (the violations are printed as a table),
# 2 bad input (missing/invalid baseline, baseline of another model or dataset, incomplete run).
#
# With no environment set it runs the repository's demo (ops/demo.sh: the seeded TResNet-M backbone with
# a head fitted on training crops, 60 held-out crops of six photos at 224 px, top-1 83.3%) against
# ops/ci-example/baseline-demo.json (written by `gate --write-baseline` from such a run). For a real
# gate set, e.g.:
#   MODEL=tresnet_m WEIGHTS=/weights/tresnet_m.pth DATA=/data/imagenet/val FORMAT=imagenet \
#   RESOLUTION=224 DEVICES=cuda:0 BASELINE=ci/baseline-tresnet_m-in1k-224.json \
#   GATE_ARGS="--max-top1-drop 0.1 --max-top5-drop 0.1 --max-class-drop 10 --min-class-support 50 --require-samples 50000" \
#   bash ops/ci-example/gate.sh
# and make the baseline once from a trusted run:
#   tresnet-coordinator gate --run runs/trusted --baseline ci/baseline-tresnet_m-in1k-224.json --write-baseline
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
source ops/env.sh
BIN="${BIN:-$CARGO_TARGET_DIR/debug}"
if [ ! -x "$BIN/tresnet-coordinator" ] || [ ! -x "$BIN/tresnet-worker" ]; then
  cargo build -p tresnet-coordinator -p tresnet-worker --bins
fi
if [ -z "${WEIGHTS:-}" ]; then
  TRESNET_FIXTURE_SETS=demo source ops/fixtures.sh
  WEIGHTS="$TRESNET_DEMO/weights/miil.pth"
  DATA="$TRESNET_DEMO/val"
  FORMAT=imagefolder RESOLUTION=224
  BASELINE="${BASELINE:-ops/ci-example/baseline-demo.json}"
fi
: "${DATA:?set DATA to the dataset path or URL}" "${BASELINE:?set BASELINE to the baseline JSON}"
OUT="${OUT:-$(mktemp -d)/run}"
"$BIN/tresnet-coordinator" run --model "${MODEL:-tresnet_m}" --weights "$WEIGHTS" --data "$DATA" \
  --format "${FORMAT:-imagefolder}" --resolution "${RESOLUTION:-224}" \
  ${NUM_CLASSES:+--num-classes "$NUM_CLASSES"} --local-workers "${LOCAL_WORKERS:-1}" \
  --devices "${DEVICES:-cpu}" --out "$OUT"
# shellcheck disable=SC2086 # GATE_ARGS is a list of flags
exec "$BIN/tresnet-coordinator" gate --run "$OUT" --baseline "$BASELINE" \
  ${GATE_ARGS:---max-top1-drop 0.5 --max-top5-drop 0.5 --max-class-drop 25 --min-class-support 10}
