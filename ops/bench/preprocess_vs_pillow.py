#!/usr/bin/env python3
"""Images/s per core of decode + resize + crop: this project (Rust, one thread) against Pillow + timm (one core).

Both sides read the same images from memory: the preprocessing fixtures' `bench/` set (ImageNet-like
500x375 / 375x500 quality-90 JPEGs, 4:2:0) and its `bench-kinds/` sets (4:4:4, progressive, 2000x1500
JPEGs, PNG), all written by ops/reference/gen_preprocess_fixtures.py from the same photos.

Like for like, to the same output (the headline):
  u8   Pillow: Image.open(f).convert("RGB"), timm's eval Resize + CenterCrop for tresnet_m, then
       torchvision's PILToTensor (uint8 CHW).  Rust: worker/benches/preprocess.rs `preprocess_kinds/u8/*`,
       bit-identical to it (uint8 CHW). This is what the pipeline runs: /255 and normalisation happen on
       the device.
  f32  Pillow: the same with ToTensor (float32 CHW in [0, 1]) instead.  Rust: `preprocess_kinds/f32/*`,
       the same plus the /255 on the host.
For context only, Pillow through timm's whole eval transform (ToTensor + Normalize) is printed too.

Two clocks: wall time (the headline, what a dedicated core delivers) and the CPU time of the measuring
thread (Pillow: time.thread_time(); Rust: the bench's `preprocess_kinds_cpu` group, u8 only). On a
shared machine other processes take slices of the pinned core, which inflates wall time by however busy
it was while each side ran; CPU time excludes those slices. Both processes are pinned to one CPU. The
two sides alternate for --rounds rounds (Pillow first in odd rounds, Rust first in even ones), so a
neighbour's burst hits one round, not one side; the summary gives min / median / max per side and the
ratio of the medians, with the machine, load average, date and command line (and --json FILE).

Usage (from the repository root; `cargo bench` builds the release-profile bench itself):
    source ops/env.sh && source ops/fixtures.sh
    python ops/bench/preprocess_vs_pillow.py [--cpu 1] [--seconds 3] [--rounds 3] [--json out.json]
"""
import argparse
import datetime
import glob
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from benchlib import cpu_model, load_avg  # noqa: E402 (ops/bench/benchlib.py, beside this script)

MAIN_KIND = "jpeg420_500x375"  # the bench/ folder, named as the Rust bench names it
OUTPUTS = ("u8", "f32")




def image_kinds(fixtures):
    kinds = {MAIN_KIND: sorted(glob.glob(os.path.join(fixtures, "bench", "*.jpg")))}
    for d in sorted(glob.glob(os.path.join(fixtures, "bench-kinds", "*"))):
        kinds[os.path.basename(d)] = sorted(glob.glob(os.path.join(d, "*.jpg")) + glob.glob(os.path.join(d, "*.png")))
    for k, files in kinds.items():
        if not files:
            sys.exit(f"no images for kind {k} under {fixtures}: regenerate the fixtures (source ops/fixtures.sh)")
    return kinds


def pillow_transforms():
    import timm
    from torchvision import transforms

    cfg = timm.data.resolve_data_config({}, model=timm.create_model("tresnet_m", pretrained=False))
    full = timm.data.create_transform(**cfg)
    # timm's eval transform is Resize, CenterCrop, ToTensor, Normalize; the first two are the geometry.
    geometry = [t for t in full.transforms if isinstance(t, (transforms.Resize, transforms.CenterCrop))]
    assert len(geometry) == 2, full
    return {
        "u8": transforms.Compose(geometry + [transforms.PILToTensor()]),
        "f32": transforms.Compose(geometry + [transforms.ToTensor()]),
        "timm_full": full,
    }


def pillow_images_per_s(blobs, transform, seconds):
    """(wall img/s, img per CPU-second of this thread) of open + convert + transform over the blobs."""
    from PIL import Image

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


def pillow_round(kinds, seconds):
    import torch

    torch.set_num_threads(1)
    tfs = pillow_transforms()
    out = {}
    for kind, files in kinds.items():
        blobs = [open(f, "rb").read() for f in files]
        for name, tf in tfs.items():
            out[(kind, name)] = pillow_images_per_s(blobs, tf, seconds)
    return out


def rust_round(root, cpu, seconds, kinds):
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    cmd = ["taskset", "-c", str(cpu), "cargo", "bench", "-p", "tresnet-worker", "--bench", "preprocess", "--",
           "--measurement-time", str(seconds), "--warm-up-time", "1", "^preprocess_kinds"]
    print("$ " + " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=root, check=True, stdout=subprocess.DEVNULL)
    out = {}
    for kind, files in kinds.items():
        for group, name in [("preprocess_kinds", o) for o in OUTPUTS] + [("preprocess_kinds_cpu", "u8")]:
            path = os.path.join(target, "criterion", group, name, kind, "new", "estimates.json")
            with open(path) as f:
                ns_per_iter = json.load(f)["mean"]["point_estimate"]
            key = (kind, name if group == "preprocess_kinds" else "u8_cpu")
            out[key] = len(files) / (ns_per_iter * 1e-9)
    return out


def mmm(xs):
    return min(xs), statistics.median(xs), max(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", type=int, default=1, help="the CPU both sides are pinned to")
    ap.add_argument("--seconds", type=float, default=3.0, help="measurement time per kind, output and side")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (at least 3 for a figure)")
    ap.add_argument("--json", help="write every round and the summary here")
    args = ap.parse_args()

    fixtures = os.environ.get("TRESNET_PREPROCESS_FIXTURES")
    if not fixtures:
        sys.exit("TRESNET_PREPROCESS_FIXTURES is not set: source ops/env.sh and ops/fixtures.sh first")
    kinds = image_kinds(fixtures)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.sched_setaffinity(0, {args.cpu})
    meta = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
            "pinned_cpu": args.cpu, "kinds": {k: len(v) for k, v in kinds.items()}}
    print(f"{meta['date_utc']}  {meta['machine']}\n$ {meta['command']}")
    rounds = []
    for r in range(args.rounds):
        before = load_avg()
        sides = ["pillow", "rust"] if r % 2 == 0 else ["rust", "pillow"]
        res = {}
        for side in sides:
            res[side] = pillow_round(kinds, args.seconds) if side == "pillow" else rust_round(
                root, args.cpu, args.seconds, kinds)
        rounds.append({"load_before": before, "load_after": load_avg(), "order": sides, **res})
        print(f"round {r + 1}/{args.rounds} ({' then '.join(sides)}), load average {before} -> {load_avg()}")

    summary = {}
    print(f"\nimages/s on one core, min / median / max over {args.rounds} rounds; ratio = Rust median / Pillow median")
    print(f"{'kind':<26} {'output':<6} {'Pillow':>22} {'Rust':>22} {'ratio':>6}   CPU-time ratio")
    for kind in kinds:
        for o in OUTPUTS:
            pil = [rd["pillow"][(kind, o)][0] for rd in rounds]
            ours = [rd["rust"][(kind, o)] for rd in rounds]
            ratio = statistics.median(ours) / statistics.median(pil)
            cpu = ""
            entry = {"pillow_wall": mmm(pil), "rust_wall": mmm(ours), "ratio_of_medians": ratio}
            if o == "u8":
                pil_cpu = [rd["pillow"][(kind, o)][1] for rd in rounds]
                ours_cpu = [rd["rust"][(kind, "u8_cpu")] for rd in rounds]
                entry["cpu_ratio_of_medians"] = statistics.median(ours_cpu) / statistics.median(pil_cpu)
                cpu = f"{entry['cpu_ratio_of_medians']:.2f}x"
            summary[f"{kind}/{o}"] = entry
            fmt = lambda t: "/".join(f"{x:.0f}" for x in t)  # noqa: E731
            print(f"{kind:<26} {o:<6} {fmt(mmm(pil)):>22} {fmt(mmm(ours)):>22} {ratio:5.2f}x   {cpu}")
        full = [rd["pillow"][(kind, "timm_full")][0] for rd in rounds]
        summary[f"{kind}/pillow_timm_full_transform"] = {"pillow_wall": mmm(full)}
        print(f"{kind:<26} {'(timm full transform, Pillow only, with Normalize)':<52} {'/'.join(f'{x:.0f}' for x in mmm(full))}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "summary": summary, "rounds": [
                {k: ({f"{a}/{b}": v for (a, b), v in rd[k].items()} if isinstance(rd[k], dict) else rd[k])
                 for k in rd} for rd in rounds]}, f, indent=1)


if __name__ == "__main__":
    main()
