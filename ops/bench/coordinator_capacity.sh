#!/usr/bin/env bash
#! Coordinator benchmarks (issue #4), with SYNTHETIC workers: no data fetch, no decode, no model; they
#! return pseudo-logits (1000 classes, top-5 records), so the numbers measure the coordinator and the
#! protocol, never accuracy.
#!  1. capacity: samples/s accounted by one coordinator with W unthrottled synthetic workers;
#!  2. scaling: 1..32 simulated workers, each throttled to a fixed speed (a sleep per batch standing in
#!     for a GPU forward), efficiency = measured rate / (workers x one worker's rate).
#! Usage: ops/bench/coordinator_capacity.sh [capacity_samples=400000] [capacity_workers=4]
set -euo pipefail
cd "$(dirname "$0")/../.."
source ops/env.sh
cap_n="${1:-400000}"
cap_w="${2:-4}"
# TRESNET_BIN_DIR: benchmark binaries built elsewhere (e.g. copied from another machine) as they are.
if [ -z "${TRESNET_BIN_DIR:-}" ]; then
  cargo build -q --release -p tresnet-coordinator -p tresnet-worker
fi
bin="${TRESNET_BIN_DIR:-$CARGO_TARGET_DIR/release}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
manifest() { # dir n
  python - "$1" "$2" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
with open(os.path.join(d, "manifest.csv"), "w") as f:
    f.write("path,label\n")
    f.writelines(f"img/{i:08d}.jpg,{i % 1000}\n" for i in range(n))
PY
}
run() { # data workers shard batch delay_ms -> seconds
  rm -rf "$work/run"
  local s e
  s=$(date +%s.%N)
  "$bin/tresnet-coordinator" run --synthetic --model tresnet_m --data "$1" --format manifest \
    --num-classes 1000 --local-workers "$2" --shard-size "$3" --batch-size "$4" --out "$work/run" \
    --worker-threads 1 --worker-arg="--debug-batch-delay-ms=$5" >/dev/null
  e=$(date +%s.%N)
  # Steady-state window measured by the coordinator itself (first lease to last result).
  python -c "import json; print(json.load(open('$work/run/summary.json'))['eval_seconds'])"
}
echo "host: $(nproc) cores; release build; synthetic workers (no model, no data)"
manifest "$work/cap" "$cap_n"
secs=$(run "$work/cap" "$cap_w" 4096 1024 0)
echo "capacity: $cap_n samples with top-5 records, $cap_w workers, shard 4096: ${secs}s = $(python -c "print(f'{$cap_n/$secs:.0f}')") samples/s (first lease to last accepted result)"
# Scaling: each worker does batches of 64 in 100 ms = 640 samples/s, for ~30 s (start-up and the last
# shard are then a few % of the window, as they would be in a real run of minutes).
per_worker=640
echo
printf "%8s %10s %12s %12s %10s\n" workers seconds samples/s ideal efficiency
for w in 1 2 4 8 16 32; do
  n=$(( w * per_worker * 30 ))
  manifest "$work/s$w" "$n"
  secs=$(run "$work/s$w" "$w" 256 64 100)
  python -c "
n,w,s,p=$n,$w,$secs,$per_worker
rate=n/s; ideal=w*p
print(f'{w:8d} {s:10.2f} {rate:12.0f} {ideal:12d} {100*rate/ideal:9.1f}%')"
done
