#!/usr/bin/env bash
#! The README's run command: set up (cached venv, build), make seeded TResNet-M weights (official MIIL
#! layout) and a small ImageFolder of real photos shipped in PyPI packages, then run a complete
#! distributed evaluation on the CPU: a coordinator with two local worker processes on loopback.
#! The weights are random, so the accuracy is meaningless; see the README for real checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/env.sh
out="${1:-runs/demo}"
mkdir -p "$out"
if [ ! -f "$out/weights/tresnet_m_224/meta.json" ]; then
  python ops/reference/gen_model_fixtures.py --out "$out/weights" --cases tresnet_m_224
fi
if [ ! -d "$out/images" ]; then
  python ops/reference/make_sample_dataset.py --out "$out/images"
fi
cargo build -q -p tresnet-coordinator -p tresnet-worker
rm -rf "$out/run"
"$CARGO_TARGET_DIR/debug/tresnet-coordinator" run --model tresnet_m \
  --weights "$out/weights/tresnet_m_224/miil.pth" --data "$out/images" --format imagefolder \
  --num-classes 1000 --local-workers 2 --shard-size 4 --out "$out/run"
echo
echo "run directory: $out/run (report.html, summary.json, per_class.csv/.parquet, confusion.parquet, predictions.parquet, journal/)"
echo "NOTE: seeded random weights - the accuracy above means nothing. Point --weights at a real"
echo "      checkpoint (timm model.safetensors / pytorch_model.bin, or the official MIIL tresnet_m.pth)."
