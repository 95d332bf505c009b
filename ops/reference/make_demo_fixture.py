#!/usr/bin/env python3
"""The demo's weights and data: the seeded TResNet-M backbone with a head fitted on training crops.

Used by ops/demo.sh (through ops/fixtures.sh: $TRESNET_DEMO) and tests/tests/demo_accuracy.rs, which
checks that the distributed run's top-1 on val/ equals `val_top1` below, measured here with timm on the
same files. Regenerated whenever this file, gen_model_fixtures.py or make_sample_dataset.py changes.

What the weights are: the backbone is exactly the seeded random TResNet-M of the model fixtures
(gen_model_fixtures.py, case tresnet_m_224: never trained on anything), and only the classifier head is
fitted, with scikit-learn's logistic regression on the backbone's pooled 2048-d features of augmented
training crops. The task is "which of six photos (make_sample_dataset.PHOTOS) is this crop from"; a
random backbone still encodes colour and texture statistics well enough for that. It is not ImageNet:
six classes (chance 16.7%), and the classes are photos, not object categories.

The split (no leakage): each class is a single photo (the packages ship one per subject), so the split
is by region of the photo. Training crops lie entirely in the left TRAIN_FRACTION of its width,
validation crops entirely in the rest: no pixel is in both. Validation crops are also re-encoded with
other JPEG/PNG settings and never flipped or colour-jittered.

Outputs (--out DIR):
  weights/miil.pth  {'model': sd, 'epoch': 0}: official MIIL layout (zip torch.save), a 6-class head.fc
                    (the ImageFolder's sorted class order)
  val/CLASS/*.jpg|png   the demo's dataset (VAL_PER_CLASS crops per photo)
  train/CLASS/*.jpg     the crops the head was fitted on (the augmentation is applied before saving)
  val_logits.npy    float32 [N, 6]: timm eval() logits of val/ in sorted ImageFolder order
  meta.json         val/train top-1 and top-5, chance, per-class val top-1, counts, versions, seed
"""
import argparse
import json
import os
import random
import sys

import numpy as np
import torch
from PIL import Image, ImageEnhance
import timm
import sklearn
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_model_fixtures as gmf  # noqa: E402
from make_sample_dataset import PHOTOS  # noqa: E402

SEED = 17
TRAIN_FRACTION = 0.6
TRAIN_PER_CLASS = 48
VAL_PER_CLASS = 10
# Inverse L2 strength (288 samples in 2048 dimensions): the strongest regularisation with the best
# 5-fold cross-validation score on train/ alone, among 0.001, 0.01, 0.05, 0.1, 1 and 10 (val/ was not
# looked at to choose it).
C = 0.05
BACKBONE_CASE = "tresnet_m_224"


def photos():
    return {name: Image.fromarray(np.asarray(load()).astype(np.uint8)).convert("RGB")
            for name, load in sorted(PHOTOS.items())}


def random_crop(img, x0, x1, rng, min_frac):
    """A crop lying entirely in columns [x0, x1) of img."""
    rw, h = x1 - x0, img.height
    w = rng.randint(int(rw * min_frac), rw)
    ch = rng.randint(int(h * min_frac), h)
    x = rng.randint(x0, x1 - w)
    y = rng.randint(0, h - ch)
    return img.crop((x, y, x + w, y + ch))


def encode(crop, path, rng, png_every):
    """Writes crop as JPEG (varied quality/subsampling) or PNG; returns what a reader decodes."""
    if png_every and rng.randrange(png_every) == 0:
        path += ".png"
        crop.save(path)
    else:
        path += ".jpg"
        crop.save(path, quality=rng.choice([75, 85, 95]), subsampling=rng.choice([0, 1, 2]))
    return path


def make_split(out, imgs, rng):
    """Writes train/ and val/ ImageFolders; returns {split: [(path, label)]} in sorted ImageFolder order."""
    files = {"train": [], "val": []}
    for label, (name, img) in enumerate(imgs.items()):
        cut = int(img.width * TRAIN_FRACTION)
        for split, n in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
            d = os.path.join(out, split, name)
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                if split == "train":
                    crop = random_crop(img, 0, cut, rng, 0.3)
                    if rng.random() < 0.5:
                        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                    crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.8, 1.2))
                    crop = ImageEnhance.Color(crop).enhance(rng.uniform(0.8, 1.2))
                    path = encode(crop, os.path.join(d, f"{name}_{i:03d}"), rng, 0)
                else:
                    crop = random_crop(img, cut, img.width, rng, 0.5)
                    path = encode(crop, os.path.join(d, f"{name}_{i:03d}"), rng, 4)
                files[split].append((path, label))
    # ImageFolder order: classes sorted, files sorted within a class.
    for split in files:
        files[split].sort(key=lambda t: (t[1], os.path.basename(t[0])))
    return files


def backbone():
    """The model fixtures' seeded tresnet_m_224, rebuilt exactly as gen_model_fixtures.py builds it."""
    case = next(c for c in gmf.CASES if c[0] == BACKBONE_CASE)
    _, model_name, res, n, _ = case
    gen = torch.Generator().manual_seed(gmf.seed_of(BACKBONE_CASE))
    x = gmf.make_inputs(n, res, gen)
    torch.manual_seed(gmf.seed_of(BACKBONE_CASE))
    model = timm.create_model(model_name, pretrained=False, num_classes=gmf.NUM_CLASSES).eval()
    miil_gamma = gmf.randomise(model, x, gen)
    return model, miil_gamma


@torch.no_grad()
def features(model, paths, transform):
    out = []
    for i in range(0, len(paths), 16):
        x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[i:i + 16]])
        out.append(model.forward_head(model.forward_features(x), pre_logits=True))
    return torch.cat(out).double().numpy()


def topk(logits, labels, k):
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float(np.mean([labels[i] in order[i] for i in range(len(labels))]) * 100)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rng = random.Random(SEED)
    imgs = photos()
    classes = list(imgs)
    files = make_split(args.out, imgs, rng)
    model, miil_gamma = backbone()
    cfg = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**cfg)
    print(f"demo: features of {len(files['train'])} training crops (a minute or two on a CPU)",
          file=sys.stderr)
    xtr = features(model, [p for p, _ in files["train"]], transform)
    ytr = np.array([y for _, y in files["train"]])
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    clf = LogisticRegression(C=C, max_iter=5000, random_state=SEED).fit((xtr - mu) / sd, ytr)
    # Standardisation folded into the linear head: w (x - mu) / sd + b = (w / sd) x + (b - w mu / sd).
    w = clf.coef_ / sd
    b = clf.intercept_ - w @ mu
    model.reset_classifier(len(classes))
    model.head.fc.weight.data.copy_(torch.from_numpy(w).float())
    model.head.fc.bias.data.copy_(torch.from_numpy(b).float())
    model.eval()

    def logits_of(split):
        with torch.no_grad():
            out = []
            paths = [p for p, _ in files[split]]
            for i in range(0, len(paths), 16):
                x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[i:i + 16]])
                out.append(model(x))
        return torch.cat(out).numpy().astype(np.float32)

    # Train top-1 of the written (float32) head on the features already computed; val logits come
    # from the whole model, as the test compares them with the distributed run.
    head = model.head.fc
    train_logits = (torch.from_numpy(xtr).float() @ head.weight.T + head.bias).detach().numpy()
    val_logits = logits_of("val")
    yva = np.array([y for _, y in files["val"]])
    per_class = {c: float(np.mean(val_logits[yva == i].argmax(1) == i) * 100)
                 for i, c in enumerate(classes)}

    os.makedirs(os.path.join(args.out, "weights"), exist_ok=True)
    sd_timm = {k: v.contiguous() for k, v in model.state_dict().items()}
    miil = gmf.to_miil(model, sd_timm, miil_gamma)
    # The zip format: byte-identical for identical tensors (the legacy format keys storages by memory
    # address), so the checkpoint's SHA-256 in ops/ci-example/baseline-demo.json stays valid.
    torch.save({"model": miil, "epoch": 0}, os.path.join(args.out, "weights", "miil.pth"))
    np.save(os.path.join(args.out, "val_logits.npy"), val_logits)
    meta = {
        "what": "seeded random TResNet-M backbone (gen_model_fixtures.py tresnet_m_224, untrained) with "
                "a 6-class head fitted by logistic regression on training crops; the task is which of "
                "six photos a crop comes from, not ImageNet",
        "classes": classes,
        "chance_top1": 100.0 / len(classes),
        "val_top1": topk(val_logits, yva, 1),
        "val_top5": topk(val_logits, yva, 5),
        "val_samples": len(yva),
        "val_keys": [os.path.relpath(p, os.path.join(args.out, "val")) for p, _ in files["val"]],
        "val_per_class_top1": per_class,
        "train_top1": topk(train_logits, ytr, 1),
        "train_samples": len(ytr),
        "split": f"by region: training crops within the left {TRAIN_FRACTION:.0%} of each photo's "
                 f"width, validation crops within the rest",
        "preprocess": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
        "logistic_regression_C": C,
        "seed": SEED,
        "timm": timm.__version__,
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
    }
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"demo: val top-1 {meta['val_top1']:.1f}% over {len(yva)} crops (chance "
          f"{meta['chance_top1']:.1f}%), train top-1 {meta['train_top1']:.1f}%", file=sys.stderr)


if __name__ == "__main__":
    main()
