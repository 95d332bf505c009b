#!/usr/bin/env bash
#! The README's run command: set up, build, make seeded TResNet-M weights and a sample batch, run
#! `tresnet-worker infer` on the CPU and print the top-5 classes per image. Real accuracy needs real
#! weights: pass --weights to tresnet-worker as the README explains.
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/env.sh
out="${1:-runs/demo}"
mkdir -p "$out"
if [ ! -f "$out/tresnet_m_224/COMPLETE" ]; then
  rm -rf "$out/tresnet_m_224"
  python ops/reference/gen_model_fixtures.py --out "$out" --cases tresnet_m_224
  touch "$out/tresnet_m_224/COMPLETE"
fi
cargo build -q -p tresnet-worker
"$CARGO_TARGET_DIR/debug/tresnet-worker" infer --model tresnet_m \
  --weights "$out/tresnet_m_224/miil.pth" --input "$out/tresnet_m_224/input.npy" \
  --output "$out/logits.npy"
python - "$out" <<'PY'
import sys, numpy as np
out = sys.argv[1]
got = np.load(f"{out}/logits.npy"); ref = np.load(f"{out}/tresnet_m_224/logits.npy")
for i, row in enumerate(got):
    top5 = np.argsort(-row, kind="stable")[:5]
    print(f"image {i}: top-5 classes {top5.tolist()}  logits {np.round(row[top5], 3).tolist()}")
print(f"max |rust - timm| = {np.abs(got - ref).max():.2e} over {got.size} logits "
      f"(between-image logit std {((ref - ref.mean(0)) ** 2).mean() ** 0.5:.3f})")
print(f"logits written to {out}/logits.npy")
PY
