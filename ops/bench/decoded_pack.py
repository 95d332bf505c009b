#!/usr/bin/env python3
"""Decode once, evaluate many (issue #16): end-to-end img/s of `tresnet-coordinator run` over the JPEGs,
over their decoded pack (`pack --decoded`), and the model alone (`tresnet-worker bench`), in alternating
rounds (the order rotates each round), min / median / max, with the machine, load average, date and
every command printed. End to end = samples / wall time of the whole `run` command; the run's own
evaluation window and its workers' decode seconds are printed beside it.

Release binaries from $TRESNET_BIN_DIR or $CARGO_TARGET_DIR/release (this script builds nothing).
Usage (after `source ops/env.sh && source ops/fixtures.sh`):
  python ops/bench/decoded_pack.py [--data DIR] [--repeat K] [--resolution 224] [--rounds 3]
      [--batch-size 16] [--threads 2] [--bench-seconds 6]
--data is an ImageFolder of JPEGs (default: the sample photos, $TRESNET_SAMPLE_DATA/images); --repeat K
copies it K times (distinct file names) so that a run lasts long enough to time.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


from benchlib import cpu_model  # noqa: E402 (ops/bench/benchlib.py, beside this script)
from benchlib import load_avg as load  # noqa: E402


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def replicate(src, dst, k):
    """An ImageFolder with every image of `src` k times (copies named <stem>_r<i><ext>)."""
    n = 0
    for cls in sorted(os.listdir(src)):
        s = os.path.join(src, cls)
        if not os.path.isdir(s):
            continue
        d = os.path.join(dst, cls)
        os.makedirs(d)
        for name in sorted(os.listdir(s)):
            stem, ext = os.path.splitext(name)
            for i in range(k):
                shutil.copyfile(os.path.join(s, name), os.path.join(d, f"{stem}_r{i}{ext}"))
                n += 1
    return n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sample = os.path.join(os.environ.get("TRESNET_SAMPLE_DATA", ""), "images")
    fixtures = os.environ.get("TRESNET_FIXTURES", "")
    p.add_argument("--data", default=sample)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--weights", default=os.path.join(fixtures, "tresnet_m_224", "timm.pth"))
    p.add_argument("--model", default="tresnet_m")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="run --worker-threads and bench --threads")
    p.add_argument("--bench-seconds", type=float, default=6.0)
    a = p.parse_args()
    if a.rounds < 3:
        sys.exit("--rounds must be at least 3 (min / median / max)")
    bins = os.environ.get("TRESNET_BIN_DIR") or os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release")
    coord, worker = os.path.join(bins, "tresnet-coordinator"), os.path.join(bins, "tresnet-worker")
    for b in (coord, worker):
        if not os.access(b, os.X_OK):
            sys.exit(f"{b} is not an executable: set TRESNET_BIN_DIR or build the release binaries")

    work = tempfile.mkdtemp(prefix="decoded-bench-")
    try:
        data = os.path.join(work, "jpeg")
        n = replicate(a.data, data, a.repeat)
        pack = os.path.join(work, "pack")
        print(f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
        print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, {cpu_model()}, {platform.platform()}")
        print(f"binaries: {bins}")
        print(f"data: {n} JPEGs ({a.data} x {a.repeat}); {a.model} at {a.resolution} px, batch {a.batch_size}, "
              f"{a.threads} threads; load average at start: {load()}")

        pack_cmd = [coord, "pack", "--decoded", "--resolution", str(a.resolution), "--format", "imagefolder",
                    "--data", data, "--out", pack, "--decode-threads", str(a.threads)]
        print(f"\npack: {shlex.join(pack_cmd)}")
        t = time.perf_counter()
        out = run(pack_cmd).stdout.strip()
        wall = time.perf_counter() - t
        print(f"  {out}\n  {wall:.2f} s, {n / wall:.1f} img/s decoded into the pack")

        def run_cmd(src, fmt, out_dir):
            return [coord, "run", "--model", a.model, "--weights", a.weights, "--data", src, "--format", fmt,
                    "--num-classes", "1000", "--resolution", str(a.resolution), "--local-workers", "1",
                    "--worker-threads", str(a.threads), "--batch-size", str(a.batch_size), "--out", out_dir]

        bench_cmd = [worker, "bench", "--model", a.model, "--weights", a.weights, "--resolution", str(a.resolution),
                     "--batch-sizes", str(a.batch_size), "--seconds", str(a.bench_seconds),
                     "--threads", str(a.threads)]
        configs = {
            "run over the JPEGs": lambda out: run_cmd(data, "imagefolder", out),
            "run over the decoded pack": lambda out: run_cmd(pack, "tar", out),
            "model only (worker bench)": lambda out: bench_cmd,
        }
        print("\ncommands:")
        for name, cmd in configs.items():
            print(f"  {name}: {shlex.join(cmd(os.path.join(work, 'run')))}")
        results = {name: [] for name in configs}
        names = list(configs)
        for r in range(a.rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                out = os.path.join(work, "run")
                shutil.rmtree(out, ignore_errors=True)
                before = load()
                t = time.perf_counter()
                o = run(configs[name](out))
                wall = time.perf_counter() - t
                if name.startswith("model only"):
                    text = o.stdout
                    rate = json.loads(text[text.index("{"):])["images_per_second"]
                    detail = f"bench's own window {a.bench_seconds:.0f} s"
                else:
                    s = json.load(open(os.path.join(out, "summary.json")))
                    rate = n / wall
                    decode = sum((w.get("stages") or {}).get("decode_seconds", 0.0) for w in s.get("workers", []))
                    detail = (f"wall {wall:6.2f} s, window {s['eval_seconds']:6.2f} s "
                              f"({s['samples'] / s['eval_seconds']:.1f} img/s), decode {decode:.2f} s")
                results[name].append(rate)
                print(f"round {r + 1}: {name:<27} {rate:8.1f} img/s  ({detail}); load {before} -> {load()}",
                      flush=True)
        print("\nimg/s, min / median / max:")
        model = statistics.median(results[names[2]])
        for name in names:
            v = results[name]
            print(f"  {name:<27} {min(v):8.1f} / {statistics.median(v):8.1f} / {max(v):8.1f}"
                  f"   (median {statistics.median(v) / model:.2f}x model-only)")
        print(f"load average at end: {load()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
