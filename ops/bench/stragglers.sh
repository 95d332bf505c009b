#!/usr/bin/env bash
#! Straggler benchmark (issue #5), with SYNTHETIC workers (no data, no model; a sleep per batch stands in
#! for a forward pass, so the numbers measure scheduling only, never accuracy).
#! Three normal workers plus one 5x slower; makespan (the coordinator's own window, first lease to last
#! accepted result) is compared with the ideal: the same job on the three normal workers alone.
#! Goal: with speculation (the default) makespan <= 1.1 x ideal; without it, for contrast.
#! Usage: ops/bench/stragglers.sh [fast_ms_per_batch=40] [samples=11520] [debug|release] [shard=256]
set -euo pipefail
cd "$(dirname "$0")/../.."
source ops/env.sh >/dev/null
fast_ms="${1:-40}"
n="${2:-11520}"
profile="${3:-debug}"
shard="${4:-256}"
slow_ms=$(( fast_ms * 5 ))
# The per-batch sleep is the worker's test hook (TRESNET_DEBUG_BATCH_DELAY_MS, feature test-hooks).
if [ "$profile" = release ]; then
  cargo build -q --release -p tresnet-coordinator -p tresnet-worker --features tresnet-worker/test-hooks
else
  cargo build -q -p tresnet-coordinator -p tresnet-worker --features tresnet-worker/test-hooks
fi
bin="$CARGO_TARGET_DIR/$profile"
work="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
python - "$work/data" "$n" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
with open(os.path.join(d, "manifest.csv"), "w") as f:
    f.write("path,label\n")
    f.writelines(f"img/{i:08d}.jpg,{i % 1000}\n" for i in range(n))
PY
free_port() { python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
run() { # name slow_worker(0|1) extra-coordinator-args... -> prints eval_seconds
  local name="$1" slow="$2"; shift 2
  local port; port=$(free_port)
  TRESNET_DEBUG_BATCH_DELAY_MS="$fast_ms" "$bin/tresnet-coordinator" run --synthetic --model tresnet_m --data "$work/data" --format manifest \
    --num-classes 1000 --local-workers 3 --shard-size "$shard" --batch-size 16 --out "$work/$name" \
    --listen "127.0.0.1:$port" --worker-threads 1 \
    "$@" >/dev/null 2>"$work/$name.log" &
  local coord=$!
  pids+=("$coord")
  if [ "$slow" = 1 ]; then
    sleep 0.5
    TRESNET_WORKER_BIN= TRESNET_DEBUG_BATCH_DELAY_MS="$slow_ms" "$bin/tresnet-worker" --coordinator "http://127.0.0.1:$port" --devices cpu \
      --worker-id slow --threads 1 >/dev/null 2>"$work/$name.slow.log" &
    pids+=("$!")
  fi
  wait "$coord"
  python - "$work/$name/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
sc = s["scheduling"]
print(f"{s['eval_seconds']:.3f} {sc['speculative_leases']}/{sc['duplicates_dropped']}")
PY
}
echo "host: $(nproc) cores, $profile build; synthetic workers: 3 at ${fast_ms} ms/batch, 1 at ${slow_ms} ms/batch; $n samples, shard $shard, batch 16"
read -r ideal _ < <(run ideal 0)
read -r spec dups < <(run spec 1)
read -r nospec _ < <(run nospec 1 --no-speculation)
python - "$ideal" "$spec" "$nospec" "$dups" <<'PY'
import sys
ideal, spec, nospec = map(float, sys.argv[1:4])
print(f"ideal (3 normal workers, no straggler): {ideal:8.2f} s")
print(f"with the 5x straggler, speculation on:  {spec:8.2f} s = {spec/ideal:.3f} x ideal (goal <= 1.1); speculative leases/duplicates dropped: {sys.argv[4]}")
print(f"with the 5x straggler, speculation off: {nospec:8.2f} s = {nospec/ideal:.3f} x ideal")
PY
