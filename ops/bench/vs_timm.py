#!/usr/bin/env python3
"""Forward and end-to-end speed of tresnet-eval against timm on this machine, in one invocation.

Forward (synthetic batch, no data loading): `tresnet-worker bench` with its defaults (layout measured
at load) against timm eager, contiguous (timm's default) and channels_last, same seeded TResNet-M
checkpoint, batch, resolution and thread count.
End to end over the same JPEGs: `tresnet-coordinator run --local-workers 1` (the whole command: listing,
worker start, model load and layout measurement, decode, forward, report) against a plain timm loop
(PIL open, timm's eval transform, forward in batches), timed over the whole process too.

Every configuration runs once per round, in an order rotated each round, for --rounds rounds; the
summary gives min / median / max per configuration and the ratios of the medians. The machine, load
average (before and after each run), date and command line are printed and written with --json.
Run from the repository root after `source ops/env.sh && source ops/fixtures.sh` (the seeded weights and
the 16 bench JPEGs come from the fixtures); release binaries from $TRESNET_BIN_DIR or
$CARGO_TARGET_DIR/release.
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




# ---- timm sides, run as child processes so each configuration starts cold and alone ----------------

def timm_model(weights, channels_last):
    import timm
    import torch

    model = timm.create_model("tresnet_m", pretrained=False)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    model = model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def child_timm_forward(a):
    import torch

    torch.set_num_threads(a.threads)
    model = timm_model(a.weights, a.channels_last)
    x = torch.rand(a.batch_size, 3, a.resolution, a.resolution)
    if a.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(a.warmup):
            model(x)
        passes = 0
        start = time.perf_counter()
        while passes == 0 or time.perf_counter() - start < a.seconds:
            model(x)
            passes += 1
        total = time.perf_counter() - start
    print(json.dumps({"images_per_second": passes * a.batch_size / total, "passes": passes}))


def child_timm_loop(a):
    """PIL decode, timm's eval transform, forward in batches: what a user writes."""
    start = time.perf_counter()
    import timm.data
    import torch
    from PIL import Image

    torch.set_num_threads(a.threads)
    model = timm_model(a.weights, a.channels_last)
    cfg = timm.data.resolve_data_config({}, model=model)
    cfg["input_size"] = (3, a.resolution, a.resolution)
    transform = timm.data.create_transform(**cfg)
    files = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(a.data) for f in fs if f.endswith(".jpg")
    )
    loop_start = time.perf_counter()
    n = 0
    with torch.inference_mode():
        for i in range(0, len(files), a.batch_size):
            xs = [transform(Image.open(p).convert("RGB")) for p in files[i:i + a.batch_size]]
            x = torch.stack(xs)
            if a.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            model(x).argmax(1)
            n += len(xs)
    end = time.perf_counter()
    print(json.dumps({
        "images": n,
        "loop_seconds": end - loop_start,
        "process_seconds": end - start,
    }))


# ---- the driver ----------------------------------------------------------------------------------

def run_json(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0, help="timed window of each forward run")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2, help="libtorch threads, both sides")
    ap.add_argument("--images", type=int, default=240, help="JPEGs of the end-to-end runs")
    ap.add_argument("--skip-forward", action="store_true")
    ap.add_argument("--skip-end-to-end", action="store_true")
    ap.add_argument("--json", help="also write every figure here")
    # Children.
    ap.add_argument("--child", choices=["forward", "loop"], help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child == "forward":
        return child_timm_forward(a)
    if a.child == "loop":
        return child_timm_loop(a)

    fixtures = os.environ.get("TRESNET_FIXTURES")
    pre = os.environ.get("TRESNET_PREPROCESS_FIXTURES")
    if not fixtures or not pre:
        sys.exit("source ops/env.sh and ops/fixtures.sh first (TRESNET_FIXTURES, TRESNET_PREPROCESS_FIXTURES)")
    weights = os.path.join(fixtures, "tresnet_m_224", "timm.pth")
    bench_jpegs = sorted(
        os.path.join(pre, "bench", f) for f in os.listdir(os.path.join(pre, "bench")) if f.endswith(".jpg")
    )
    bin_dir = os.environ.get("TRESNET_BIN_DIR") or os.path.join(os.environ["CARGO_TARGET_DIR"], "release")
    worker = os.path.join(bin_dir, "tresnet-worker")
    coordinator = os.path.join(bin_dir, "tresnet-coordinator")
    me = os.path.abspath(__file__)
    py = sys.executable
    import timm
    import torch

    header = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(me)] + sys.argv[1:]),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "binaries": bin_dir,
        "settings": {k: getattr(a, k) for k in ("rounds", "seconds", "batch_size", "resolution", "threads", "images")},
        "load_average_at_start": load_avg(),
    }
    for k, v in header.items():
        print(f"{k}: {v}")

    configs = {}
    if not a.skip_forward:
        common = ["--weights", weights, "--batch-size", str(a.batch_size), "--resolution", str(a.resolution),
                  "--threads", str(a.threads), "--seconds", str(a.seconds), "--warmup", str(a.warmup)]

        def ours_forward():
            r = run_json([worker, "bench", "--model", "tresnet_m", "--weights", weights,
                          "--batch-sizes", str(a.batch_size), "--resolution", str(a.resolution),
                          "--threads", str(a.threads), "--seconds", str(a.seconds),
                          "--warmup", str(a.warmup)])
            l = r["layouts"][0]["chosen"]
            return r["images_per_second"], f"BN {'folded' if l['fold_bn'] else 'kept'}, " \
                f"{'channels-last' if l['channels_last'] else 'contiguous'}"

        def timm_forward(cl):
            def f():
                r = run_json([py, me, "--child", "forward"] + common + (["--channels-last"] if cl else []))
                return r["images_per_second"], ""
            return f

        configs["forward: tresnet-worker bench (defaults)"] = ours_forward
        configs["forward: timm eager, contiguous"] = timm_forward(False)
        configs["forward: timm eager, channels_last"] = timm_forward(True)

    work = tempfile.mkdtemp(prefix="tresnet-vs-timm-")
    if not a.skip_end_to_end:
        data = os.path.join(work, "data")
        for i in range(a.images):
            d = os.path.join(data, f"class{i % 10}")
            os.makedirs(d, exist_ok=True)
            shutil.copy(bench_jpegs[i % len(bench_jpegs)], os.path.join(d, f"{i:05d}.jpg"))

        def ours_e2e():
            out = os.path.join(work, "run")
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            subprocess.run([coordinator, "run", "--model", "tresnet_m", "--weights", weights, "--data", data,
                            "--format", "imagefolder", "--num-classes", "1000", "--resolution",
                            str(a.resolution), "--batch-size", str(a.batch_size), "--local-workers", "1",
                            "--worker-threads", str(a.threads), "--out", out],
                           check=True, capture_output=True)
            wall = time.perf_counter() - t
            s = json.load(open(os.path.join(out, "summary.json")))
            w = max(s["workers"], key=lambda w: w["accepted_samples"])
            note = f"window {s['eval_seconds']:.2f} s; {w.get('stages', {}).get('bound', '?')}"
            ls = w.get("layouts") or [{}]
            note += (f"; layout fold_bn={ls[0].get('fold_bn')} channels_last={ls[0].get('channels_last')}"
                     f"{' (from the layout cache)' if ls[0].get('from_cache') else ''}")
            return a.images / wall, note

        def timm_e2e():
            r = run_json([py, me, "--child", "loop", "--weights", weights, "--data", data,
                          "--batch-size", str(a.batch_size), "--resolution", str(a.resolution),
                          "--threads", str(a.threads)])
            return r["images"] / r["process_seconds"], f"loop alone {r['images'] / r['loop_seconds']:.1f} img/s"

        configs["end to end: tresnet-coordinator run (whole command)"] = ours_e2e
        configs["end to end: timm loop (whole process)"] = timm_e2e

    names = list(configs)
    results = {n: [] for n in names}
    notes = {n: [] for n in names}
    rounds = []
    for r in range(a.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            before = load_avg()
            v, note = configs[n]()
            after = load_avg()
            results[n].append(v)
            notes[n].append(note)
            rounds.append({"round": r + 1, "config": n, "images_per_second": v, "note": note,
                           "load_before": before, "load_after": after})
            print(f"round {r + 1}: {n:<55} {v:8.2f} img/s  load {before} -> {after}  {note}", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    print("\nimg/s, min / median / max over rounds:")
    summary = {}
    for n in names:
        v = results[n]
        summary[n] = {"min": min(v), "median": statistics.median(v), "max": max(v)}
        print(f"  {n:<55} {min(v):7.2f} / {statistics.median(v):7.2f} / {max(v):7.2f}")
    med = {n: summary[n]["median"] for n in names}
    ratios = {}
    for ours, theirs in [
        ("forward: tresnet-worker bench (defaults)", "forward: timm eager, contiguous"),
        ("forward: tresnet-worker bench (defaults)", "forward: timm eager, channels_last"),
        ("end to end: tresnet-coordinator run (whole command)", "end to end: timm loop (whole process)"),
    ]:
        if ours in med and theirs in med:
            ratios[f"{ours} / {theirs}"] = med[ours] / med[theirs]
            per_round = [x / y for x, y in zip(results[ours], results[theirs])]
            print(f"  ratio of medians {med[ours] / med[theirs]:.2f}x ({ours.split(':')[0]} vs {theirs.split(': ')[1]});"
                  f" per round {', '.join(f'{x:.2f}' for x in per_round)}")
    print(f"load average at end: {load_avg()}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({**header, "rounds": rounds, "summary": summary, "ratios_of_medians": ratios,
                       "load_average_at_end": load_avg()}, f, indent=1)


if __name__ == "__main__":
    main()
