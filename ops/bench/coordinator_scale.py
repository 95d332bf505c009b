#!/usr/bin/env python3
"""How the coordinator's cost grows with the dataset, and how it scales near its own capacity (SYNTHETIC workers).

Synthetic workers fetch nothing, decode nothing and run no model: they return pseudo-logits (1000 classes,
top-5 records), so every figure here measures the coordinator and the protocol, never accuracy.

  scale     50,000 / 1,281,167 / 10,000,000 samples, per-sample and counts-only, at the default shard size:
            the wall time of the whole command (listing, worker start, evaluation, report) as the headline,
            the coordinator's evaluation window (first lease to last accepted result) beside it, and the
            coordinator process alone: its peak RSS (VmHWM) and its CPU seconds (utime + stime of the
            coordinator's own threads; the local workers are other processes), per sample.
  near      the pool's rate against the sum of its workers' rates when that sum approaches the coordinator's
            capacity: first the capacity C (unthrottled workers), then W = 1, 2, 4, 8, 16 workers each held
            to C * --fill / 16 samples/s (a sleep per batch), so the largest pool asks for --fill x C.
            On a 2-core machine the synthetic workers share the cores with the coordinator: what is measured
            is this machine's limit, workers included.

Configurations alternate per round (order rotated); each figure is min / median / max over --rounds runs.
The machine, load average per run, date and command line are printed (and written with --json FILE).
Usage (release binaries from $TRESNET_BIN_DIR or $CARGO_TARGET_DIR/release; `near` throttles workers with
the worker's test hook, so build it with `cargo build --release -p tresnet-coordinator -p tresnet-worker
--features tresnet-worker/test-hooks`):
    source ops/env.sh
    python ops/bench/coordinator_scale.py scale [--sizes 50000,1281167,10000000] [--rounds 3]
    python ops/bench/coordinator_scale.py near [--rounds 3] [--fill 0.8]
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import cpu_model, load_avg  # noqa: E402 (ops/bench/benchlib.py, beside this script)

POLL_S = 0.02  # /proc sampling period of the coordinator's RSS and CPU time
CLK_TCK = os.sysconf("SC_CLK_TCK")




def write_manifest(d, n):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "manifest.csv"), "w") as f:
        f.write("path,label\n")
        for start in range(0, n, 100_000):
            f.writelines(f"img/{i:08d}.jpg,{i % 1000}\n" for i in range(start, min(n, start + 100_000)))


def proc_sample(pid):
    """(peak RSS bytes, CPU seconds) of one process from /proc, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return hwm, (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    except (OSError, StopIteration, IndexError, ValueError):
        return None


def run_coordinator(bin_dir, data, out, workers, extra, env=None):
    """Runs one `tresnet-coordinator run --synthetic`; returns wall s, window s, peak RSS, CPU s."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [os.path.join(bin_dir, "tresnet-coordinator"), "run", "--synthetic", "--model", "tresnet_m",
           "--data", data, "--format", "manifest", "--num-classes", "1000", "--local-workers", str(workers),
           "--worker-threads", "1", "--out", out] + extra
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    last = None
    while p.poll() is None:
        s = proc_sample(p.pid)
        if s:
            last = s
        time.sleep(POLL_S)
    wall = time.perf_counter() - t
    err = p.stderr.read().decode(errors="replace")
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {p.returncode}:\n{err[-3000:]}")
    summary = json.load(open(os.path.join(out, "summary.json")))
    rss, cpu = last if last else (float("nan"), float("nan"))
    return {"wall_s": wall, "window_s": summary["eval_seconds"], "peak_rss_bytes": rss, "cpu_s": cpu,
            "samples": summary.get("samples")}


def mmm(xs, fmt="{:.2f}"):
    return " / ".join(fmt.format(x) for x in (min(xs), statistics.median(xs), max(xs)))


def scale(args, bin_dir, work, meta):
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = ["per-sample", "counts-only"]
    for n in sizes:
        write_manifest(os.path.join(work, f"d{n}"), n)
    res = {(n, m): [] for n in sizes for m in modes}
    for r in range(args.rounds):
        for n in sizes:
            order = modes[r % 2:] + modes[:r % 2]
            for m in order:
                before = load_avg()
                x = run_coordinator(bin_dir, os.path.join(work, f"d{n}"), os.path.join(work, "run"), args.workers,
                                    ["--counts-only"] if m == "counts-only" else [])
                x["load_before"], x["load_after"] = before, load_avg()
                res[(n, m)].append(x)
                print(f"round {r + 1}: {n:>9} samples {m:<11}: wall {x['wall_s']:7.2f} s, window {x['window_s']:7.2f} s, "
                      f"coordinator {x['cpu_s']:6.1f} CPU s, peak RSS {x['peak_rss_bytes'] / 2**20:7.0f} MiB; "
                      f"load {before} -> {x['load_after']}", flush=True)
    print(f"\nmin / median / max over {args.rounds} rounds, default shard size, {args.workers} synthetic workers:")
    print(f"{'samples':>10} {'mode':<11} {'wall s':>22} {'window s':>22} {'coord. CPU us/sample':>22} {'coord. peak RSS MiB':>22}")
    summary = {}
    for (n, m), xs in res.items():
        wall = [x["wall_s"] for x in xs]
        win = [x["window_s"] for x in xs]
        cpu = [x["cpu_s"] / n * 1e6 for x in xs]
        rss = [x["peak_rss_bytes"] / 2**20 for x in xs]
        summary[f"{n}/{m}"] = {"wall_s": [min(wall), statistics.median(wall), max(wall)],
                               "window_s": [min(win), statistics.median(win), max(win)],
                               "coordinator_cpu_us_per_sample": [min(cpu), statistics.median(cpu), max(cpu)],
                               "coordinator_peak_rss_mib": [min(rss), statistics.median(rss), max(rss)],
                               "window_samples_per_s_median": n / statistics.median(win),
                               "wall_samples_per_s_median": n / statistics.median(wall)}
        print(f"{n:>10} {m:<11} {mmm(wall):>22} {mmm(win):>22} {mmm(cpu):>22} {mmm(rss, '{:.0f}'):>22}")
    return {"rounds": {f"{n}/{m}": xs for (n, m), xs in res.items()}, "summary": summary}


def near(args, bin_dir, work, meta):
    n_cap = 1_281_167
    write_manifest(os.path.join(work, "cap"), n_cap)
    caps = []
    for r in range(args.rounds):
        x = run_coordinator(bin_dir, os.path.join(work, "cap"), os.path.join(work, "run"), args.workers,
                            ["--shard-size", "4096", "--batch-size", "1024"])
        caps.append(n_cap / x["window_s"])
        print(f"capacity round {r + 1}: {caps[-1]:.0f} samples/s in the window ({args.workers} unthrottled workers, "
              f"shard 4096); load {load_avg()}", flush=True)
    cap = statistics.median(caps)
    batch = 1024
    per_worker = cap * args.fill / 16
    delay_ms = max(1, round(batch / per_worker * 1000))
    per_worker = batch / (delay_ms / 1000)
    print(f"capacity C = {cap:.0f} samples/s (median); each worker held to {batch} samples per {delay_ms} ms = "
          f"{per_worker:.0f} samples/s; 16 workers ask for {16 * per_worker / cap:.0%} of C", flush=True)
    pools = [1, 2, 4, 8, 16]
    res = {w: [] for w in pools}
    for r in range(args.rounds):
        for w in pools[r % len(pools):] + pools[:r % len(pools)]:
            n = int(w * per_worker * args.seconds)
            d = os.path.join(work, f"n{w}")
            if not os.path.exists(d):
                write_manifest(d, n)
            x = run_coordinator(bin_dir, d, os.path.join(work, "run"), w,
                                ["--shard-size", "4096", "--batch-size", str(batch)],
                                env={"TRESNET_DEBUG_BATCH_DELAY_MS": str(delay_ms)})
            eff = n / x["window_s"] / (w * per_worker)
            res[w].append(eff)
            print(f"round {r + 1}: {w:>2} workers asking {w * per_worker:9.0f} samples/s: {n / x['window_s']:9.0f} "
                  f"in the window = {eff:.1%} of asked; load {load_avg()}", flush=True)
    print(f"\nefficiency (pool rate / sum of worker rates), min / median / max over {args.rounds} rounds:")
    for w in pools:
        print(f"  {w:>2} workers ({w * per_worker / cap:5.0%} of capacity): {mmm([e * 100 for e in res[w]], '{:.1f}%')}")
    return {"capacity_samples_per_s": caps, "per_worker_samples_per_s": per_worker,
            "efficiency": {str(w): res[w] for w in pools}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["scale", "near"])
    ap.add_argument("--sizes", default="50000,1281167,10000000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4, help="unthrottled synthetic workers (scale, capacity)")
    ap.add_argument("--fill", type=float, default=0.8, help="near: the largest pool asks for this share of C")
    ap.add_argument("--seconds", type=float, default=20.0, help="near: evaluation seconds per run")
    ap.add_argument("--json")
    args = ap.parse_args()
    bin_dir = os.environ.get("TRESNET_BIN_DIR") or os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release")
    meta = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]), "bin_dir": bin_dir,
            "load_at_start": load_avg()}
    print(f"{meta['date_utc']}  {meta['machine']}  load {meta['load_at_start']}\n$ {meta['command']}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        out = (scale if args.what == "scale" else near)(args, bin_dir, work, meta)
    meta["load_at_end"] = load_avg()
    print(f"load average at end: {meta['load_at_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, **out}, f, indent=1)


if __name__ == "__main__":
    main()
