#!/usr/bin/env bash
#! The README's run command: set up (cached venv, build), then on the CPU: a distributed evaluation
#! (a coordinator and two local worker processes on loopback) of TResNet-M weights that carry real signal,
#! a gate against a baseline written from that run, a second run at another resolution and a compare.
#! The weights: the seeded random TResNet-M backbone with a 6-class head fitted on training crops of six
#! photos, evaluated on crops from held-out regions of them (ops/reference/make_demo_fixture.py).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/demo}"
step() { printf '\n== %s\n' "$*" >&2; }

step "1/6 Python venv with libtorch, timm, scikit-learn (cached in ~/.cache/tresnet-eval/venv; cold: a few minutes, ~2.7 GB)"
source ops/env.sh
step "2/6 demo weights and photos (cached; cold: a few minutes: timm features of 288 training crops, then a logistic-regression head)"
TRESNET_FIXTURE_SETS=demo source ops/fixtures.sh
meta="$TRESNET_DEMO/meta.json"
step "3/6 building tresnet-coordinator and tresnet-worker (cold: 5-10 minutes, cargo prints each crate)"
cargo build -p tresnet-coordinator -p tresnet-worker --bins
C="$CARGO_TARGET_DIR/debug/tresnet-coordinator"

step "4/6 run: TResNet-M on $(python -c "import json;print(json.load(open('$meta'))['val_samples'])") held-out crops, coordinator + 2 local workers (seconds to a minute on a CPU)"
mkdir -p "$out"
rm -rf "$out/run" "$out/run-160"
# No --num-classes: the checkpoint's head has the dataset's 6 classes. No --shard-size: chosen from the
# dataset size and the worker count (shards of 8 here, recorded in job.json), so both workers get shards.
"$C" run --model tresnet_m --weights "$TRESNET_DEMO/weights/miil.pth" --data "$TRESNET_DEMO/val" \
  --format imagefolder --local-workers 2 --out "$out/run"
python - "$meta" "$out/run/summary.json" <<'PY'
import json, sys
meta, summary = (json.load(open(p)) for p in sys.argv[1:])
print(f"""
What this top-1 means: {summary['top1']:.1f}% of {meta['val_samples']} crops from held-out regions of six photos were
classified right (chance {meta['chance_top1']:.1f}%; timm measured {meta['val_top1']:.1f}% on the same files).
The weights: a seeded, never-trained TResNet-M backbone with only its 6-class head fitted (logistic
regression on {meta['train_samples']} training crops from the left 60% of each photo; the test crops come from
the rest). The pipeline carries signal from pixels to the report; this is not an ImageNet number.""")
PY

step "5/6 gate: write a baseline from this run, then check the run against it (exit 0 = within bounds)"
"$C" gate --run "$out/run" --baseline "$out/baseline.json" --write-baseline
"$C" gate --run "$out/run" --baseline "$out/baseline.json" --max-top1-drop 1 --max-class-drop 10 \
  --require-samples "$(python -c "import json;print(json.load(open('$meta'))['val_samples'])")"

step "6/6 compare: the same run at 160 px (the head was fitted at 224), then B - A per class with McNemar's test"
"$C" run --model tresnet_m --weights "$TRESNET_DEMO/weights/miil.pth" --data "$TRESNET_DEMO/val" \
  --format imagefolder --local-workers 2 --resolution 160 --out "$out/run-160"
"$C" compare "$out/run" "$out/run-160"

echo
echo "report:        $(cd "$out/run" && pwd)/report.html   (open it in a browser; docs/report.png is a picture of one)"
echo "run directory: $out/run (summary.json, per_class.csv/.parquet, confusion.parquet, predictions.parquet, journal/)"
echo "               $out/run-160, $out/baseline.json"
echo "Real numbers: point --weights at a real checkpoint (timm model.safetensors / pytorch_model.bin, or the"
echo "official MIIL tresnet_m.pth) and --data at a real dataset; see the README."
