"""Writes the dataset-metadata fixtures read by common/tests/dataset_fixtures.rs.

Run from the repository root with the project venv (`source ops/env.sh`):

    python ops/reference/make_dataset_fixtures.py

Everything derives from a fixed seed; re-run this script instead of editing the outputs (a few tens of
KB, committed under common/tests/fixtures/datasets/). The point is a second, independent writer: the
`.mat` files come from scipy.io.savemat (scipy is pinned in ops/requirements.txt) and the tar shards
from Python's tarfile (the library WebDataset reads and writes shards with), so the Rust readers are
checked against the formats as other tools produce them, not only against the Rust test writers.

- flowers/: `imagelabels.mat` + `setid.mat` (Oxford Flowers-102 layout, 20 images; ids stored as
  double, uint16 and uint8 as MATLAB's narrowing would).
- cars/: `cars_test_annos_withlabels.mat` (struct array) + `devkit/cars_meta.mat` (cell of names).
- imagenet/: the devkit's `data/meta.mat` (synsets struct, IDs in a seeded non-sorted order) and
  `ILSVRC2012_validation_ground_truth.txt` for 12 images.
- webdataset/: shards written by tarfile in PAX format (with a member name over 100 bytes) and GNU
  format, with the offsets tarfile reports.
- expected.json: what the readers must return for all of the above.
"""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import scipy
import scipy.io

SEED = 20261125
ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "common" / "tests" / "fixtures" / "datasets"
SYNSETS = (ROOT / "common" / "data" / "imagenet_synsets.txt").read_text().split()


def savemat(path, variables, compress):
    """scipy.io.savemat, with the header's creation time replaced by fixed text so re-running the
    script reproduces the files byte for byte (readers ignore the header text)."""
    scipy.io.savemat(path, variables, do_compression=compress)
    data = bytearray(path.read_bytes())
    text = f"MATLAB 5.0 MAT-file, written by make_dataset_fixtures.py with scipy {scipy.__version__}"
    data[:116] = text.encode().ljust(116, b" ")
    path.write_bytes(bytes(data))


def flowers(rng, expected):
    n = 20
    labels = rng.integers(1, 103, size=n)
    ids = rng.permutation(np.arange(1, n + 1))
    trnid, valid, tstid = ids[:4], ids[4:8], ids[8:]
    d = OUT / "flowers"
    d.mkdir(parents=True, exist_ok=True)
    savemat(d / "imagelabels.mat", {"labels": labels.astype(np.float64)[None, :]}, compress=True)
    savemat(
        d / "setid.mat",
        {
            "trnid": trnid.astype(np.uint16)[None, :],
            "valid": valid.astype(np.uint8)[None, :],
            "tstid": tstid.astype(np.float64)[None, :],
        },
        compress=False,
    )
    expected["flowers"] = {
        "labels": labels.tolist(),
        "trnid": trnid.tolist(),
        "valid": valid.tolist(),
        "tstid": tstid.tolist(),
    }


def cars(rng, expected):
    n, k = 9, 5
    class_names = [f"Make{i} Model {2000 + i}" for i in range(k)]
    class_names[1] = "Citroën C6 Sedan 2011"
    classes = rng.integers(1, k + 1, size=n)
    fnames = [f"{i + 1:05d}.jpg" for i in range(n)]
    dtype = [(f, object) for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    annotations = np.zeros((1, n), dtype=dtype)
    for i in range(n):
        x1, y1 = rng.integers(0, 100, size=2)
        annotations[0, i] = (
            np.uint8(x1),
            np.uint8(y1),
            np.uint16(x1 + 300),
            np.uint16(y1 + 200),
            np.uint8(classes[i]),
            fnames[i],
        )
    names = np.empty((1, k), dtype=object)
    for i, name in enumerate(class_names):
        names[0, i] = name
    d = OUT / "cars"
    (d / "devkit").mkdir(parents=True, exist_ok=True)
    savemat(d / "cars_test_annos_withlabels.mat", {"annotations": annotations}, compress=True)
    savemat(d / "devkit" / "cars_meta.mat", {"class_names": names}, compress=False)
    expected["cars"] = {"fnames": fnames, "classes": classes.tolist(), "class_names": class_names}


def imagenet(rng, expected):
    # The devkit numbers the 1000 leaf synsets in its own order; a seeded permutation stands in for it.
    order = [SYNSETS[i] for i in rng.permutation(len(SYNSETS))]
    dtype = [(f, object) for f in ("ILSVRC2012_ID", "WNID", "words", "num_children")]
    synsets = np.zeros((len(order) + 2, 1), dtype=dtype)
    for i, wnid in enumerate(order):
        synsets[i, 0] = (np.float64(i + 1), wnid, f"words of {wnid}", np.float64(0))
    # Non-leaf synsets follow the leaves in meta.mat, with IDs above 1000.
    synsets[len(order), 0] = (np.float64(1001), "n00001740", "entity", np.float64(3))
    synsets[len(order) + 1, 0] = (np.float64(1002), "n00002137", "abstraction", np.float64(2))
    d = OUT / "imagenet"
    (d / "ILSVRC2012_devkit_t12" / "data").mkdir(parents=True, exist_ok=True)
    savemat(d / "ILSVRC2012_devkit_t12" / "data" / "meta.mat", {"synsets": synsets}, compress=True)
    ids = rng.integers(1, 1001, size=12)
    (d / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in ids))
    expected["imagenet"] = {
        "ground_truth_ids": ids.tolist(),
        # What the reader must produce: the sorted-synset index of each image's WNID.
        "class_indices": [SYNSETS.index(order[i - 1]) for i in ids],
    }


def webdataset(rng, expected):
    d = OUT / "webdataset"
    d.mkdir(parents=True, exist_ok=True)
    long_dir = "deep/" + "x" * 120
    expected["webdataset"] = {}
    for name, fmt in (("pax.tar", tarfile.PAX_FORMAT), ("gnu.tar", tarfile.GNU_FORMAT)):
        members = []
        for i in range(4):
            key = f"{long_dir}/sample{i}" if i == 2 else f"s{i:03d}"
            ext = "png" if i == 1 else "jpg"
            members.append((f"{key}.{ext}", rng.integers(0, 256, size=int(rng.integers(1, 900)), dtype=np.uint8).tobytes()))
            members.append((f"{key}.cls", str(int(rng.integers(0, 10))).encode()))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            for member_name, data in members:
                info = tarfile.TarInfo(member_name)
                info.size = len(data)
                info.mtime = 0
                tar.addfile(info, io.BytesIO(data))
        (d / name).write_bytes(buf.getvalue())
        with tarfile.open(d / name) as tar:
            listed = [
                {"name": m.name, "offset": m.offset_data, "size": m.size}
                for m in tar.getmembers()
            ]
        expected["webdataset"][name] = {
            "members": listed,
            "labels": {n[: -len(".cls")]: int(data) for n, data in members if n.endswith(".cls")},
        }


def main():
    rng = np.random.default_rng(SEED)
    expected = {"generator": "ops/reference/make_dataset_fixtures.py", "scipy": scipy.__version__}
    flowers(rng, expected)
    cars(rng, expected)
    imagenet(rng, expected)
    webdataset(rng, expected)
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT.relative_to(ROOT)} ({total} bytes)")


if __name__ == "__main__":
    main()
