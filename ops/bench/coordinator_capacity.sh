#!/usr/bin/env bash
#! Coordinator benchmarks (issue #4), with SYNTHETIC workers: no data fetch, no decode, no model; they
#! return pseudo-logits (1000 classes, top-5 records), so the numbers measure the coordinator and the
#! protocol, never accuracy.
#!  1. capacity: samples/s accounted by one coordinator with W unthrottled synthetic workers;
#!  2. scaling: 1..32 simulated workers, each throttled to a fixed speed (a sleep per batch standing in
#!     for a GPU forward), efficiency = measured rate / (workers x one worker's rate).
#!  3. modes: per-sample against counts-only, headlined by the wall time of the whole command with the
#!     coordinator's window beside it, at shard 256 (the default) and 4096, in alternating rounds
#!     (min / median / max, load average noted per run); with TRESNET_BIN_DIRS="before=DIR after=DIR"
#!     several builds alternate in the same rounds.
#! Usage: ops/bench/coordinator_capacity.sh [capacity_samples=400000] [capacity_workers=4]
#!        ops/bench/coordinator_capacity.sh modes [samples=1281167] [workers=4] [rounds=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
source ops/env.sh
# TRESNET_BIN_DIR: benchmark binaries built elsewhere (e.g. copied from another machine) as they are.
if [ -z "${TRESNET_BIN_DIR:-}" ] && [ -z "${TRESNET_BIN_DIRS:-}" ]; then
  # The throttled workers sleep through the worker's test hook (TRESNET_DEBUG_BATCH_DELAY_MS).
  cargo build -q --release -p tresnet-coordinator -p tresnet-worker --features tresnet-worker/test-hooks
fi
bin="${TRESNET_BIN_DIR:-$CARGO_TARGET_DIR/release}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ "${1:-}" = modes ]; then
  exec python - "$work" "${2:-1281167}" "${3:-4}" "${4:-3}" "${TRESNET_BIN_DIRS:-this=$bin}" <<'PY'
import datetime, json, os, statistics, subprocess, sys, time
work, n, workers, rounds, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
builds = [tuple(d.split("=", 1)) for d in dirs.split()]
data = os.path.join(work, "data")
os.makedirs(data)
with open(os.path.join(data, "manifest.csv"), "w") as f:
    f.write("path,label\n")
    f.writelines(f"img/{i:08d}.jpg,{i % 1000}\n" for i in range(n))
la = lambda: " ".join(f"{x:.2f}" for x in os.getloadavg())
print(f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; "
      f"{os.cpu_count()} CPUs; {n} synthetic samples (1000 classes, top-5), {workers} synthetic workers, "
      f"batch 256; builds: {dirs}; load average at start: {la()}", flush=True)
configs = [(b, mode, shard) for shard in (256, 4096) for b in builds for mode in ("per-sample", "counts-only")]
res = {c: [] for c in configs}
for r in range(rounds):
    for shard in (256, 4096):
        group = [c for c in configs if c[2] == shard]
        k = r % len(group)
        for c in group[k:] + group[:k]:
            (label, d), mode, shard = c
            out = os.path.join(work, "run")
            subprocess.run(["rm", "-rf", out], check=True)
            before = la()
            t = time.perf_counter()
            subprocess.run([os.path.join(d, "tresnet-coordinator"), "run", "--synthetic", "--model", "tresnet_m",
                            "--data", data, "--format", "manifest", "--num-classes", "1000",
                            "--local-workers", str(workers), "--shard-size", str(shard), "--batch-size", "256",
                            "--worker-threads", "1", "--out", out] + (["--counts-only"] if mode == "counts-only" else []),
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t
            window = json.load(open(os.path.join(out, "summary.json")))["eval_seconds"]
            res[c].append((wall, window))
            print(f"round {r + 1}: {label:<8} {mode:<12} shard {shard:>5}: wall {wall:6.2f} s, window {window:6.2f} s "
                  f"({n / window:9.0f} samples/s in the window); load {before} -> {la()}", flush=True)
print("\nwall of the whole command, min / median / max s (window beside it):")
for c in configs:
    (label, _), mode, shard = c
    w = [x[0] for x in res[c]]
    v = [x[1] for x in res[c]]
    print(f"  {label:<8} {mode:<12} shard {shard:>5}: wall {min(w):6.2f} / {statistics.median(w):6.2f} / {max(w):6.2f}; "
          f"window {min(v):6.2f} / {statistics.median(v):6.2f} / {max(v):6.2f} "
          f"(median {n / statistics.median(v):.0f} samples/s)")
print(f"load average at end: {la()}")
PY
fi
cap_n="${1:-400000}"
cap_w="${2:-4}"
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
  TRESNET_DEBUG_BATCH_DELAY_MS="$5" "$bin/tresnet-coordinator" run --synthetic --model tresnet_m \
    --data "$1" --format manifest --num-classes 1000 --local-workers "$2" --shard-size "$3" \
    --batch-size "$4" --out "$work/run" --worker-threads 1 >/dev/null
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
