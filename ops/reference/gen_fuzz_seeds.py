#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/seeds/<target>/) from small real files.

Each seed is a tiny instance of what the parser meets in production, written by the tool that writes it
there (torch.save, safetensors, scipy.io.savemat, tarfile, numpy, Pillow), so the fuzzer starts from
deep inside every format instead of guessing magic numbers. The protocol target's seeds are encoded
with prost by common/tests/fuzz_corpus.rs (TRESNET_WRITE_PROTOCOL_SEEDS=1), which replays all of these
on stable. Seeded and deterministic; the whole corpus stays well under 1 MiB.

    python ops/reference/gen_fuzz_seeds.py --out fuzz/seeds
"""

import argparse
import collections
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image
from safetensors.torch import save as st_save
from skimage import data as skdata


def write(out: Path, target: str, name: str, payload: bytes) -> None:
    d = out / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(payload)


def checkpoints(out: Path) -> None:
    g = torch.Generator().manual_seed(0)
    sd = collections.OrderedDict(
        [
            ("body.conv1.conv.weight", torch.randn(2, 3, 1, 1, generator=g)),
            ("body.conv1.bn.weight", torch.randn(2, generator=g).half()),
            ("body.conv1.bn.num_batches_tracked", torch.tensor(3)),
            ("head.fc.bias", torch.randn(4, generator=g).to(torch.bfloat16)),
            ("mask", torch.tensor([True, False])),
        ]
    )
    # A strided view and a shared storage, as BN-folded or sliced state dicts have.
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    views = {"t": base.t(), "row": base[1], "same": base}
    miil = collections.OrderedDict(
        [
            ("body.conv1.0.weight", torch.randn(2, 3, 1, 1, generator=g)),
            ("body.conv1.1.weight", torch.randn(2, generator=g)),
            ("body.layer1.0.downsample.1.0.weight", torch.randn(2, 2, 1, 1, generator=g)),
        ]
    )
    for name, obj, zipped in [
        ("timm_zip.pth", sd, True),
        ("timm_legacy.pth", sd, False),
        ("wrapped_state_dict.pth", {"state_dict": sd, "epoch": 3, "best_acc1": torch.tensor(0.5)}, True),
        ("miil_model_legacy.pth", {"model": miil, "args": {"lr": 0.1}}, False),
        ("views.pth", views, True),
    ]:
        buf = io.BytesIO()
        torch.save(obj, buf, _use_new_zipfile_serialization=zipped)
        write(out, "checkpoint", name, buf.getvalue())
    st = st_save({k: v.contiguous() for k, v in sd.items()}, metadata={"format": "pt"})
    write(out, "checkpoint", "timm.safetensors", st)
    write(out, "safetensors", "timm.safetensors", st)
    write(out, "safetensors", "empty.safetensors", st_save({}))

    # The pickle VM: torch's own data.pkl and plain pickles of every protocol.
    buf = io.BytesIO()
    torch.save(sd, buf)
    import zipfile

    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
        write(out, "pickle", "torch_data.pkl", z.read(pkl))
    obj = {
        "ints": [0, -1, 255, 65535, 2**31, -(2**63), 2**70],
        "floats": (1.5, float("inf")),
        "text": "tresnet ü",
        "bytes": b"\x00\x01",
        "set": {1, 2},
        "frozen": frozenset({3}),
        "none": None,
        "flags": [True, False],
        "nested": collections.OrderedDict(a={"b": [1, (2, 3)]}),
    }
    shared = [1, 2]
    obj["memo"] = [shared, shared]
    for proto in range(0, 6):
        write(out, "pickle", f"objects_p{proto}.pkl", pickle.dumps(obj, protocol=proto))


def mats(out: Path) -> None:
    labels = {"labels": np.array([[1, 2, 3, 102]], dtype=np.uint8)}
    setid = {
        "trnid": np.array([[1, 2]], dtype=np.uint16),
        "valid": np.array([[3]], dtype=np.int32),
        "tstid": np.array([[4]], dtype=np.double),
    }
    ann = np.zeros((1, 2), dtype=[("bbox_x1", "O"), ("class", "O"), ("fname", "O")])
    ann[0, 0] = (np.array([[39]], dtype=np.uint8), np.array([[14]], dtype=np.uint8), "00001.jpg")
    ann[0, 1] = (np.array([[36]], dtype=np.uint16), np.array([[3]], dtype=np.uint8), "00002.jpg")
    cars = {
        "annotations": ann,
        "class_names": np.array([["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]], dtype=object),
    }
    meta = {"synsets": np.array([[("n01440764", 1, "tench")]], dtype=[("WNID", "O"), ("ILSVRC2012_ID", "O"), ("words", "O")])}
    misc = {
        "cell": np.array([[np.array([[1.0]]), "text", np.array([[1 + 2j]])]], dtype=object),
        "chars": np.array(["ab", "cd"]),
        "empty": np.zeros((0, 3)),
        "logical": np.array([[True, False]]),
        "i64": np.array([[-5, 2**40]], dtype=np.int64),
        "f32": np.array([[0.5, -1.25]], dtype=np.float32),
    }
    for name, variables in [("labels", labels), ("setid", setid), ("cars_annos", cars), ("meta", meta), ("misc", misc)]:
        for compress in (False, True):
            buf = io.BytesIO()
            scipy.io.savemat(buf, variables, do_compression=compress, oned_as="row")
            write(out, "mat", f"{name}{'_z' if compress else ''}.mat", buf.getvalue())


def tiny_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(skdata.astronaut()[100:108, 180:190]).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def tars(out: Path) -> None:
    jpg = tiny_jpeg()
    for name, fmt, long in [("ustar", tarfile.USTAR_FORMAT, False), ("gnu", tarfile.GNU_FORMAT, True), ("pax", tarfile.PAX_FORMAT, True)]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            members = [("n01440764/val_1.jpg", jpg), ("n01440764/val_1.cls", b"0"), ("n02/val_2.cifar", bytes(3072)), ("n02/val_2.cls", b"7\n"), ("orphan.cls", b"3"), ("meta.json", b"{}")]
            if long:
                members.append(("d/" + "x" * 120 + ".png.cls", b"12"))
            for member, payload in members:
                info = tarfile.TarInfo(member)
                info.size = len(payload)
                info.mtime = 0
                tf.addfile(info, io.BytesIO(payload))
        # Trailing zero blocks are in the shard; cut them to keep the seed small.
        write(out, "tar", f"{name}.tar", buf.getvalue()[: -8192] if len(buf.getvalue()) > 10240 else buf.getvalue())
    index = {
        "version": 1,
        "shard_size": 4096,
        "samples": [{"key": "n01440764/val_1", "member": "n01440764/val_1.jpg", "offset": 512, "size": 300, "label": 0}],
        "bad": [{"key": "orphan", "reason": "no image member"}],
    }
    write(out, "tar_index", "index.json", json.dumps(index).encode())
    write(out, "tar_index", "no_bad.json", json.dumps({k: v for k, v in index.items() if k != "bad"}).encode())


def cifars(out: Path) -> None:
    rng = np.random.default_rng(0)
    c10 = b"".join(bytes([i]) + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes() for i in (3, 9, 10))
    c100 = b"".join(bytes([1, f]) + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes() for f in (0, 99))
    write(out, "cifar", "cifar10_3.bin", c10)
    write(out, "cifar", "cifar100_2.bin", c100)
    names = "\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]) + "\n"
    write(out, "cifar", "batches.meta.txt", names.encode())


def npys(out: Path) -> None:
    rng = np.random.default_rng(0)
    for name, arr, version in [
        ("batch", rng.random((1, 3, 4, 4), dtype=np.float32), (1, 0)),
        ("v2", rng.random((2, 3), dtype=np.float32), (2, 0)),
        ("v3", rng.random((3,), dtype=np.float32), (3, 0)),
        ("scalar", np.float32(1.5), (1, 0)),
        ("empty", np.zeros((0, 3), dtype=np.float32), (1, 0)),
        ("fortran", np.asfortranarray(rng.random((2, 2), dtype=np.float32)), (1, 0)),
        ("f64", rng.random((2,)), (1, 0)),
        ("big_endian", rng.random((2,)).astype(">f4"), (1, 0)),
    ]:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.asanyarray(arr), version=version)
        write(out, "npy", f"{name}.npy", buf.getvalue())


def manifests(out: Path) -> None:
    for name, text in [
        ("header_names.csv", "path,label,class_name\nimg/a.jpg,2,dog\n/abs/b.png,0,\nmemory://fuzz/x/c.jpg,2,dog\n\n"),
        ("headerless.csv", "a.jpg,1\nb.jpg,0\n"),
        ("quoted.csv", 'path,label\n"with,comma.jpg",3\n  spaced.jpg , 1 \n'),
        ("bad_label.csv", "path,label\na.jpg,-1\n"),
        ("escape.csv", "../x.jpg,0\n"),
    ]:
        write(out, "manifest", name, text.encode())


def images(out: Path) -> None:
    photo = skdata.astronaut()[96:114, 176:200]  # 18x24 RGB
    gray = skdata.camera()[200:210, 200:216]
    im = Image.fromarray(photo)
    seeds = {}
    for name, kw in [
        ("baseline_420.jpg", dict(quality=75, subsampling=2)),
        ("baseline_444.jpg", dict(quality=90, subsampling=0)),
        ("progressive_422.jpg", dict(quality=75, subsampling=1, progressive=True)),
        ("restart.jpg", dict(quality=75, restart_marker_blocks=1)),
    ]:
        buf = io.BytesIO()
        im.save(buf, "JPEG", **kw)
        seeds[name] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "JPEG", quality=75)
    seeds["gray.jpg"] = buf.getvalue()
    buf = io.BytesIO()
    im.convert("CMYK").save(buf, "JPEG", quality=75)
    seeds["cmyk.jpg"] = buf.getvalue()
    for name, img, kw in [
        ("rgb.png", im, {}),
        ("rgba.png", im.convert("RGBA"), {}),
        ("palette.png", im.convert("P", palette=Image.Palette.ADAPTIVE, colors=8), {}),
        ("gray.png", Image.fromarray(gray), {}),
        ("gray16.png", Image.fromarray(gray.astype(np.uint16) * 257), {}),
        ("bilevel.png", Image.fromarray(gray).convert("1"), {}),
        ("interlaced.png", im, {"interlace": 1}),
        ("la.png", Image.fromarray(gray).convert("LA"), {}),
    ]:
        buf = io.BytesIO()
        img.save(buf, "PNG", **kw)
        seeds[name] = buf.getvalue()
    # 1x1: the only size the header target (pixel limit 1) decodes fully.
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png")):
        buf = io.BytesIO()
        Image.fromarray(photo[:1, :1]).save(buf, fmt)
        seeds[f"one_pixel.{ext}"] = buf.getvalue()
    for target in ("image_header", "image_decode"):
        for name, payload in seeds.items():
            write(out, target, name, payload)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    checkpoints(args.out)
    mats(args.out)
    tars(args.out)
    cifars(args.out)
    npys(args.out)
    manifests(args.out)
    images(args.out)


if __name__ == "__main__":
    main()
