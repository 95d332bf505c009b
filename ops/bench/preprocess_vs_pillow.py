#!/usr/bin/env python3
"""Images/s per core of decode + resize + crop: this project (Rust, one thread) against Pillow + timm (one core).

Both sides read the same ImageNet-like 500x375 quality-90 JPEGs, the `bench/` set written by
ops/reference/gen_preprocess_fixtures.py, from memory. Pillow's side is torchvision's loader
(`Image.open(f).convert("RGB")`) followed by timm's eval transform for tresnet_m (Resize 256, CenterCrop 224,
ToTensor, Normalize); the Rust side is the criterion benchmark worker/benches/preprocess.rs, whose "exact"
variant is bit-identical to it (uint8 CHW; the /255 happens on the device) and "exact_f32" adds the /255 on the
host. Both processes are pinned to one CPU.

Two clocks: wall time (the headline, what a dedicated core delivers) and the CPU time of the measuring
thread (Pillow: time.thread_time(); Rust: the bench's `preprocess_500x375_q90_cpu` group). On a shared
machine other processes take slices of the pinned core, which inflates wall time by however busy it was
while each side ran; CPU time excludes those slices, so its ratio is the steadier one there. The load
average is printed before and after. CPU time still moves with what the other cores do to shared caches
and clocks, so `--rounds N` alternates the two sides N more times (Pillow, then the Rust `exact` variant
alone) and prints every round's ratios and their median: a neighbour's burst then hits one round, not
one side.

Usage (from the repository root):
    source ops/env.sh && source ops/fixtures.sh
    python ops/bench/preprocess_vs_pillow.py [--cpu 0] [--seconds 10] [--skip-rust]
"""
import argparse
import glob
import io
import json
import os
import statistics
import subprocess
import sys
import time

CRITERION_GROUP = "preprocess_500x375_q90"
CRITERION_CPU_GROUP = "preprocess_500x375_q90_cpu"
RUST_VARIANTS = ["exact", "exact_f32", "dct_scaling", "decode_only", "resize_crop_only"]


def pillow_images_per_s(files, seconds):
    import timm
    import torch
    from PIL import Image

    torch.set_num_threads(1)
    cfg = timm.data.resolve_data_config({}, model=timm.create_model("tresnet_m", pretrained=False))
    transform = timm.data.create_transform(**cfg)
    blobs = [open(f, "rb").read() for f in files]

    def one_pass():
        for b in blobs:
            with Image.open(io.BytesIO(b)) as im:
                transform(im.convert("RGB"))

    one_pass()  # warm-up: imports, allocator, caches
    n, start, cpu_start = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - start < seconds:
        one_pass()
        n += len(blobs)
    return n / (time.perf_counter() - start), n / (time.thread_time() - cpu_start)


def rust_images_per_s(root, cpu, seconds, n_images, only_exact=False):
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    cmd = ["taskset", "-c", str(cpu), "cargo", "bench", "-p", "tresnet-worker", "--bench", "preprocess", "--",
           "--measurement-time", str(seconds), "--warm-up-time", "2"]
    if only_exact:
        cmd.append(f"^({CRITERION_GROUP}|{CRITERION_CPU_GROUP})/exact$")
    print("$ " + " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=root, check=True, stdout=subprocess.DEVNULL if only_exact else None)
    out = {}
    variants = ["exact"] if only_exact else RUST_VARIANTS
    for group, v in [(CRITERION_GROUP, v) for v in variants] + [(CRITERION_CPU_GROUP, "exact")]:
        with open(os.path.join(target, "criterion", group, v, "new", "estimates.json")) as f:
            ns_per_iter = json.load(f)["mean"]["point_estimate"]
        out[(group, v)] = n_images / (ns_per_iter * 1e-9)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", type=int, default=0, help="the CPU both sides are pinned to")
    ap.add_argument("--seconds", type=float, default=10.0, help="measurement time per side")
    ap.add_argument("--skip-rust", action="store_true", help="only measure Pillow")
    ap.add_argument("--rounds", type=int, default=0,
                    help="then alternate Pillow and the Rust exact variant this many more times (median ratio)")
    args = ap.parse_args()

    fixtures = os.environ.get("TRESNET_PREPROCESS_FIXTURES")
    if not fixtures:
        sys.exit("TRESNET_PREPROCESS_FIXTURES is not set: source ops/env.sh and ops/fixtures.sh first")
    files = sorted(glob.glob(os.path.join(fixtures, "bench", "*.jpg")))
    if not files:
        sys.exit(f"no bench JPEGs under {fixtures}/bench")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    os.sched_setaffinity(0, {args.cpu})
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    pil, pil_cpu = pillow_images_per_s(files, args.seconds)
    print(f"images: {len(files)} JPEGs, 500x375 / 375x500, quality 90, 4:2:0 (from {fixtures}/bench)")
    print(f"pillow + timm transform (1 core):      {pil:8.1f} images/s   ({pil_cpu:.1f} per CPU-second)")
    if args.skip_rust:
        return
    rust = rust_images_per_s(root, args.cpu, args.seconds, len(files))
    for v in RUST_VARIANTS:
        r = rust[(CRITERION_GROUP, v)]
        print(f"tresnet-eval {v:<13} (1 thread):  {r:8.1f} images/s   ratio {r / pil:5.2f}x")
    r = rust[(CRITERION_CPU_GROUP, "exact")]
    print(f"per CPU-second: tresnet-eval exact {r:.1f}, pillow + timm {pil_cpu:.1f}: ratio {r / pil_cpu:5.2f}x")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    walls, cpus = [rust[(CRITERION_GROUP, "exact")] / pil], [r / pil_cpu]
    for i in range(args.rounds):
        pil, pil_cpu = pillow_images_per_s(files, args.seconds)
        rust = rust_images_per_s(root, args.cpu, args.seconds, len(files), only_exact=True)
        ours, ours_cpu = rust[(CRITERION_GROUP, "exact")], rust[(CRITERION_CPU_GROUP, "exact")]
        walls.append(ours / pil)
        cpus.append(ours_cpu / pil_cpu)
        print(f"round {i + 1}: wall {ours:6.1f} vs {pil:6.1f} images/s = {walls[-1]:.2f}x; "
              f"CPU {ours_cpu:6.1f} vs {pil_cpu:6.1f} per CPU-second = {cpus[-1]:.2f}x; "
              f"load {os.getloadavg()[0]:.2f}")
    if args.rounds:
        print(f"median over {len(walls)} rounds: wall {statistics.median(walls):.2f}x, "
              f"CPU {statistics.median(cpus):.2f}x")


if __name__ == "__main__":
    main()
