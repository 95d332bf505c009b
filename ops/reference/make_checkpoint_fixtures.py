"""Writes the checkpoint-format fixtures read by common/formats/tests/checkpoint_formats.rs.

Run from the repository root with the project venv (`source ops/env.sh`):

    python ops/reference/make_checkpoint_fixtures.py

Everything is derived from fixed seeds; re-run this script instead of editing the outputs. It writes
small checkpoints in every format the native reader supports (torch zip at pickle protocols 2 and 4,
torch legacy, MIIL-style and `state_dict`-wrapped dicts, safetensors), damaged or foreign files for
the error paths, and `expected.json` with each tensor's dtype, shape and values.
"""

import argparse
import collections
import io
import json
import pickle
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

OUT = Path(__file__).resolve().parents[2] / "common" / "formats" / "tests" / "fixtures" / "checkpoints"

# Names match the Rust `DType` variants' Debug output so the test can compare them directly.
DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "Bool",
}


def make_state_dict() -> collections.OrderedDict:
    g = torch.Generator().manual_seed(20240601)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g, dtype=torch.float32).to(dtype)

    sd = collections.OrderedDict()
    sd["body.conv1.conv.weight"] = randn(2, 3, 3, 3)
    sd["body.conv1.bn.weight"] = randn(2)
    sd["body.conv1.bn.num_batches_tracked"] = torch.tensor(7)  # 0-dim int64
    sd["scalar.f32"] = torch.tensor(3.5)  # 0-dim float
    sd["half.weight"] = randn(3, 4, dtype=torch.float16)
    sd["bf16.weight"] = randn(2, 3, dtype=torch.bfloat16)
    sd["f64.bias"] = randn(5, dtype=torch.float64)
    sd["i64.index"] = torch.arange(6, dtype=torch.int64).reshape(2, 3) - 2
    sd["i32.index"] = torch.tensor([-3, 0, 2**31 - 1], dtype=torch.int32)
    sd["i16.index"] = torch.tensor([-300, 7], dtype=torch.int16)
    sd["i8.index"] = torch.tensor([-128, 127], dtype=torch.int8)
    sd["u8.index"] = torch.tensor([0, 255, 9], dtype=torch.uint8)
    sd["mask"] = torch.tensor([True, False, True])
    # Views saved directly keep their storage, offset and strides in the file.
    sd["head.fc.weight"] = randn(5, 6).t()  # transposed: strides (1, 6)
    sd["strided.every_other"] = randn(3, 8)[:, ::2]  # strides (8, 2)
    sd["broadcast.expanded"] = randn(3, 1).expand(3, 4)  # strides (1, 0)
    base = torch.arange(10, dtype=torch.float32) * 0.25
    sd["shared.a"] = base[:4]  # two tensors on one storage, the second at offset 4
    sd["shared.b"] = base[4:].view(2, 3)
    sd["param.weight"] = torch.nn.Parameter(randn(2, 2))
    # module.state_dict() attaches this; torch pickles it through BUILD.
    sd._metadata = collections.OrderedDict([("", {"version": 1}), ("body.conv1.bn", {"version": 2})])
    return sd


def expected_entry(t: torch.Tensor) -> dict:
    t = t.detach()
    values = t.reshape(-1).to(torch.float64).tolist() if t.dtype != torch.bool else t.reshape(-1).int().tolist()
    # Values as repr strings: serde_json's default float parsing may be off by an ulp, Rust's
    # `str::parse::<f64>` is exact, and the test compares exactly.
    return {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "values": [repr(float(v)) for v in values]}


def save(obj, name: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    data = buf.getvalue()
    (OUT / name).write_bytes(data)
    return data


def save_legacy(obj, name: str) -> None:
    """Saves in the pre-1.6 format with storage keys made reproducible.

    Torch names legacy storages by their memory address and writes them sorted by that name. For a
    file that is identical from run to run, the storages are written in first-use order (by shadowing
    the `sorted` that `_legacy_save` calls) and each name becomes a counter of the same length, so
    every pickle length prefix stays valid.
    """
    buf = io.BytesIO()
    torch.serialization.sorted = list
    try:
        torch.save(obj, buf, _use_new_zipfile_serialization=False)
    finally:
        del torch.serialization.sorted
    data = buf.getvalue()
    f = io.BytesIO(data)
    for _ in range(3):  # magic number, protocol version, sys info
        pickle.load(f)
    for _ in pickletools.genops(f):  # the object pickle: skipped, since loading it needs storages
        pass
    keys = pickle.load(f)
    for i, key in enumerate(keys):
        new = str(i).rjust(len(key), "0")
        assert data.count(key.encode()) >= 2, key  # once in the object pickle, once in the key list
        data = data.replace(key.encode(), new.encode())
    (OUT / name).write_bytes(data)


def rewrite_zip(data: bytes, name: str, edit) -> None:
    """Copies a torch zip entry by entry, letting `edit(entry_name, bytes)` change or drop entries."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            content = edit(info.filename, src.read(info.filename))
            if content is not None:
                entry = zipfile.ZipInfo(info.filename, date_time=(2024, 1, 1, 0, 0, 0))
                dst.writestr(entry, content)
    (OUT / name).write_bytes(out.getvalue())


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    sd = make_state_dict()

    zip_bytes = save(sd, "state_dict.pth")
    save(sd, "state_dict_protocol4.pth", pickle_protocol=4)
    save_legacy(sd, "state_dict_legacy.pth")

    # Official MIIL releases: the state dict under 'model' next to training state; old code saved
    # num_batches_tracked-like counters as Python ints, which readers must skip.
    model = collections.OrderedDict(sd)
    model._metadata = sd._metadata
    model["legacy.python_int"] = 5
    miil = {
        "model": model,
        "epoch": 3,
        "args": argparse.Namespace(arch="tresnet_m", lr=0.1, image_size=224),
        "optimizer": {
            "state": {0: {"momentum_buffer": torch.zeros(2)}},
            "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0]}],
        },
    }
    save(miil, "miil_style.pth")
    save_legacy(miil, "miil_style_legacy.pth")
    # The torchvision/timm training-script convention; `best_acc1` is a stray tensor at the top level.
    save({"state_dict": sd, "best_acc1": torch.tensor(76.125), "epoch": 90}, "wrapped_state_dict.pth")

    safetensors.torch.save_file(
        {k: v.detach().contiguous().clone() for k, v in sd.items()},
        str(OUT / "state_dict.safetensors"),
        metadata={"format": "pt"},
    )

    # Error paths.
    (OUT / "truncated.pth").write_bytes(zip_bytes[: len(zip_bytes) // 2])
    (OUT / "empty.pth").write_bytes(b"")
    garbage = bytearray(np.random.default_rng(7).bytes(512))
    garbage[0] = 0x42  # not a zip, pickle or plausible safetensors header
    (OUT / "garbage.bin").write_bytes(bytes(garbage))
    save({"epoch": 3, "arch": "tresnet_m"}, "no_tensors.pth")
    save({"w": torch.ones(2, dtype=torch.complex64)}, "complex_tensor.pth")
    (OUT / "plain_pickle.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    rewrite_zip(zip_bytes, "no_data_pkl.zip", lambda name, b: None if name.endswith("data.pkl") else b)
    rewrite_zip(zip_bytes, "big_endian.pth", lambda name, b: b"big" if name.endswith("/byteorder") else b)

    expected = {
        "generator": "ops/reference/make_checkpoint_fixtures.py",
        "torch": torch.__version__,
        "state_dict": {k: expected_entry(v) for k, v in sd.items()},
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")

    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
