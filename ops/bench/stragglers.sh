#!/usr/bin/env bash
#! Straggler benchmark (issue #5), with SYNTHETIC workers (no data, no model; a sleep per batch stands in
#! for a forward pass, so the numbers measure scheduling only, never accuracy).
#! Three normal workers plus one 5x slower; makespan (the coordinator's own window, first lease to last
#! accepted result) is compared with the ideal run with the SAME worker count: the same job on four normal
#! workers (the fourth started exactly as the slow one is, outside the coordinator). The pool's capacity
#! with the straggler (3 + 1/5 workers' worth, so 4 / 3.2 = 1.25 x the ideal) is the bound no scheduler can
#! beat. Goal: with speculation (the default) makespan <= 1.1 x that bound; without it, for contrast. (An
#! earlier version compared with three normal workers alone, one worker fewer than the measured pool, which
#! let a run look faster than "ideal".) The three
#! configurations alternate for `rounds` rounds (order rotated); min / median / max.
#! Usage: ops/bench/stragglers.sh [fast_ms_per_batch=40] [samples=11520] [debug|release] [shard=256] [rounds=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
source ops/env.sh >/dev/null
fast_ms="${1:-40}"
n="${2:-11520}"
profile="${3:-debug}"
shard="${4:-256}"
rounds="${5:-3}"
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
run() { # name slow_worker(0|1: the fourth worker is normal or 5x slower) extra-coordinator-args... -> prints eval_seconds
  local name="$1" slow="$2"; shift 2
  local port; port=$(free_port)
  TRESNET_DEBUG_BATCH_DELAY_MS="$fast_ms" "$bin/tresnet-coordinator" run --synthetic --model tresnet_m --data "$work/data" --format manifest \
    --num-classes 1000 --local-workers 3 --shard-size "$shard" --batch-size 16 --out "$work/$name" \
    --listen "127.0.0.1:$port" --worker-threads 1 \
    "$@" >/dev/null 2>"$work/$name.log" &
  local coord=$!
  pids+=("$coord")
  local fourth_ms="$fast_ms"
  [ "$slow" = 1 ] && fourth_ms="$slow_ms"
  sleep 0.5
  TRESNET_WORKER_BIN= TRESNET_DEBUG_BATCH_DELAY_MS="$fourth_ms" "$bin/tresnet-worker" --coordinator "http://127.0.0.1:$port" --devices cpu \
    --worker-id fourth --threads 1 >/dev/null 2>"$work/$name.fourth.log" &
  pids+=("$!")
  wait "$coord"
  python - "$work/$name/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
sc = s["scheduling"]
print(f"{s['eval_seconds']:.3f} {sc['speculative_leases']}/{sc['duplicates_dropped']}")
PY
}
echo "host: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $profile build, $(date -u +%FT%TZ); synthetic workers: 3 at ${fast_ms} ms/batch + a fourth at ${fast_ms} (ideal) or ${slow_ms} ms/batch (straggler); $n samples, shard $shard, batch 16; load average $(cut -d' ' -f1-3 /proc/loadavg)"
configs=(ideal spec nospec)
results="$work/results.txt"
: >"$results"
for r in $(seq 0 $((rounds - 1))); do
  for k in 0 1 2; do
    c="${configs[$(( (k + r) % 3 ))]}"
    case "$c" in
      ideal) read -r secs dups < <(run "ideal$r" 0) ;;
      spec) read -r secs dups < <(run "spec$r" 1) ;;
      nospec) read -r secs dups < <(run "nospec$r" 1 --no-speculation) ;;
    esac
    echo "$c $secs $dups" >>"$results"
    echo "round $((r + 1)): $c ${secs}s (speculative leases/duplicates dropped $dups); load $(cut -d' ' -f1 /proc/loadavg)"
  done
done
python - "$results" <<'PY'
import statistics, sys
res = {}
for line in open(sys.argv[1]):
    c, secs, _ = line.split()
    res.setdefault(c, []).append(float(secs))
mmm = lambda xs: f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f} s"
ideal = statistics.median(res["ideal"])
print(f"ideal (4 normal workers, no straggler):  {mmm(res['ideal'])}")
print(f"capacity bound with the straggler (3 + 1/5 workers' worth): {ideal * 4 / 3.2:.2f} s = {4 / 3.2:.3f} x ideal")
bound = ideal * 4 / 3.2
for c, what in (("spec", "speculation on "), ("nospec", "speculation off")):
    m = statistics.median(res[c])
    print(f"with the 5x straggler, {what}: {mmm(res[c])}; median = {m / ideal:.3f} x ideal = "
          f"{m / bound:.3f} x the capacity bound (goal <= 1.1 x the bound with speculation on)")
PY
