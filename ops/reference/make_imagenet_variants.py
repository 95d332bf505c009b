#!/usr/bin/env python3
"""ImageNet-ReaL, -V2, -A, -R and -Sketch fixtures cut from real photos, read by tests/tests/datasets.rs.

Run from ops/fixtures.sh (cached, export TRESNET_IMAGENET_VARIANTS): make_imagenet_variants.py --out DIR.
The class lists and ReaL's label file are timm's own (timm/data/_info, the files the datasets' users
have), never copies edited by hand. Each layout holds seeded crops of the six photos of
make_sample_dataset.py, one photo per class folder:

- imagenet-a/, imagenet-r/: six WNID folders of the dataset's 200 classes (A: three that are also in R
  and three that are not).
- imagenet-sketch/: six WNID folders of the 1000.
- imagenet-v2/: folders 0, 2, 7, 10, 100, 999 (as strings, "10" and "100" sort before "2").
- imagenet-real/: class folders of ILSVRC2012_val_NNNNNNNN.JPEG whose numbers are chosen (seeded) from
  timm's imagenet_real_labels.json so that some have an empty list, some one label and some several;
  the folder is the first label's WNID (the tench's for empty lists); real.json is timm's file.
- expected.json: per layout, every image's key and its class index in the standard 1000-class list,
  computed here from timm's imagenet_synsets.txt; for ReaL also its label list.
"""

import argparse
import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import timm
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_sample_dataset import PHOTOS  # noqa: E402

SEED = 20261207
PER_CLASS = 4
SIDE = 96
INFO = Path(timm.__file__).parent / "data" / "_info"


def lines(name):
    return (INFO / name).read_text().split()


def crops(img, rng, n):
    w, h = img.size
    out = []
    for _ in range(n):
        s = rng.randint(min(w, h) // 3, min(w, h))
        x, y = rng.randint(0, w - s), rng.randint(0, h - s)
        out.append(img.crop((x, y, x + s, y + s)).resize((SIDE, SIDE), Image.BICUBIC))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    out = Path(ap.parse_args().out)
    rng = random.Random(SEED)
    synsets = lines("imagenet_synsets.txt")
    index = {w: i for i, w in enumerate(synsets)}
    a, r = lines("imagenet_a_synsets.txt"), lines("imagenet_r_synsets.txt")
    photos = {
        name: crops(Image.fromarray(np.asarray(load()).astype(np.uint8)).convert("RGB"), rng, PER_CLASS)
        for name, load in PHOTOS.items()
    }
    expected = {}

    def layout(name, folders, file_name=lambda photo, i: f"{photo}_{i}.jpg"):
        rows = {}
        for (photo, imgs), folder in zip(photos.items(), folders):
            d = out / name / folder
            d.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(imgs):
                fname = file_name(photo, i)
                img.save(d / fname, quality=90)
                rows[f"{folder}/{fname}"] = int(folder) if name == "imagenet-v2" else index[folder]
        expected[name] = rows

    a_and_r = [w for w in a if w in r][:3]
    a_only = [w for w in a if w not in r][:3]
    layout("imagenet-a", a_and_r + a_only)
    layout("imagenet-r", sorted(rng.sample(r, 6)))
    layout("imagenet-sketch", sorted(rng.sample(synsets, 6)))
    layout("imagenet-v2", ["0", "2", "7", "10", "100", "999"])

    # ReaL: pick image numbers with empty, single and multiple label lists from the real file.
    real = json.loads((INFO / "imagenet_real_labels.json").read_text())
    kinds = {
        "empty": [i for i, l in enumerate(real) if len(l) == 0],
        "single": [i for i, l in enumerate(real) if len(l) == 1],
        "multiple": [i for i, l in enumerate(real) if len(l) >= 2],
    }
    picks = iter(
        sorted(rng.sample(kinds["empty"], 6) + rng.sample(kinds["single"], 9) + rng.sample(kinds["multiple"], 9))
    )
    order = rng.sample(range(len(PHOTOS) * PER_CLASS), len(PHOTOS) * PER_CLASS)
    numbered = [None] * len(order)
    for slot in order:
        numbered[slot] = next(picks)
    rows, lists = {}, {}
    for p, (photo, imgs) in enumerate(photos.items()):
        for i, img in enumerate(imgs):
            n = numbered[p * PER_CLASS + i]
            labels = real[n]
            folder = synsets[labels[0]] if labels else synsets[0]
            fname = f"ILSVRC2012_val_{n + 1:08d}.JPEG"
            d = out / "imagenet-real" / folder
            d.mkdir(parents=True, exist_ok=True)
            img.save(d / fname, quality=90)
            rows[f"{folder}/{fname}"] = index[folder]
            lists[f"{folder}/{fname}"] = sorted(labels)
    shutil.copyfile(INFO / "imagenet_real_labels.json", out / "imagenet-real" / "real.json")
    expected["imagenet-real"] = rows
    expected["imagenet-real-lists"] = lists
    (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
