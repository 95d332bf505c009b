#!/usr/bin/env python3
"""A small ImageFolder dataset cut from real photos that ship inside PyPI packages.

Used by the README's run command (ops/demo.sh) and the cross-process tests (tests/tests/*.rs via
ops/fixtures.sh). Photos come from scikit-image's data folder and scikit-learn's sample images; each class
is one photo, its samples are seeded random crops re-encoded as JPEG (several qualities and chroma
subsamplings) or PNG, so decoding paths vary. Labels are arbitrary: with the project's seeded random
weights the accuracy means nothing, which the run's output says.
"""
import argparse
import os
import random

import numpy as np
from PIL import Image
import skimage.data
from sklearn.datasets import load_sample_images

PHOTOS = {
    "astronaut": lambda: skimage.data.astronaut(),
    "chelsea": lambda: skimage.data.chelsea(),
    "coffee": lambda: skimage.data.coffee(),
    "rocket": lambda: skimage.data.rocket(),
    "china": lambda: load_sample_images().images[0],
    "flower": lambda: load_sample_images().images[1],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    for name, load in PHOTOS.items():
        img = Image.fromarray(np.asarray(load()).astype(np.uint8)).convert("RGB")
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        for i in range(args.per_class):
            w = rng.randint(img.width // 3, img.width)
            h = rng.randint(img.height // 3, img.height)
            x = rng.randint(0, img.width - w)
            y = rng.randint(0, img.height - h)
            crop = img.crop((x, y, x + w, y + h))
            if i % 4 == 3:
                crop.save(os.path.join(d, f"{name}_{i:03d}.png"))
            else:
                crop.save(os.path.join(d, f"{name}_{i:03d}.jpg"), quality=rng.choice([75, 90, 95]),
                          subsampling=rng.choice([0, 1, 2]))
    print(f"wrote {len(PHOTOS) * args.per_class} images in {len(PHOTOS)} classes to {args.out}")


if __name__ == "__main__":
    main()
