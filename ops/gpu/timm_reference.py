#!/usr/bin/env python3
"""timm's side of the GPU checks (ops/gpu/check.sh): CUDA logits, dataset predictions and throughput.

Every subcommand prints one JSON object. The model is timm's own `tresnet_*` loaded from the same
checkpoint the Rust worker reads, so any difference is ours (or the arithmetic's, which is reported).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import timm

# CPU only to smoke-test this script where there is no GPU; the checks themselves mean CUDA.
DEVICE = os.environ.get("TRESNET_REFERENCE_DEVICE", "cuda")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load(model_name, weights, device, precision, channels_last=True):
    model = timm.create_model(model_name, pretrained=False)
    if weights.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(weights)
    else:
        sd = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(sd, strict=True)
    model = model.eval().to(device=device, dtype=DTYPES[precision])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def compare(a, b, ref_sigma):
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {
        "max_abs_diff": float(d.max()),
        "mean_abs_diff": float(d.mean()),
        "max_abs_diff_over_sigma": float(d.max() / ref_sigma),
        "argmax_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
    }


def cmd_logits(a):
    """timm's CUDA logits for an .npy batch at each precision, compared with ours and timm's CPU."""
    x = torch.from_numpy(np.load(a.input))
    cpu_ref = np.load(a.cpu_logits)
    sigma = float(cpu_ref.std(axis=0).mean()) or 1.0
    out = {"sigma": sigma, "tf32_conv": torch.backends.cudnn.allow_tf32, "precisions": {}}
    for p in a.precisions.split(","):
        model = load(a.model, a.weights, DEVICE, p)
        with torch.inference_mode():
            xt = x.to(DEVICE, DTYPES[p]).contiguous(memory_format=torch.channels_last)
            timm_cuda = model(xt).float().cpu().numpy()
        ours = np.load(os.path.join(a.ours_dir, f"ours_{p}.npy"))
        out["precisions"][p] = {
            "ours_vs_timm_cuda": compare(ours, timm_cuda, sigma),
            "ours_vs_timm_cpu_fp32": compare(ours, cpu_ref, sigma),
            "timm_cuda_vs_timm_cpu_fp32": compare(timm_cuda, cpu_ref, sigma),
        }
    print(json.dumps(out, indent=1))


def cmd_dataset(a):
    """timm's own eval transform and CUDA fp32 forward on every image the run evaluated; compares
    top-1 and the full logits with the run's predictions and logits.npy."""
    from PIL import Image
    import pyarrow.parquet as pq

    model = load(a.model, a.weights, DEVICE, "fp32")
    cfg = timm.data.resolve_data_config({"input_size": (3, a.resolution, a.resolution)}, model=model)
    tf = timm.data.create_transform(**cfg)
    preds = pq.read_table(os.path.join(a.run, "predictions.parquet")).to_pylist()
    ours_logits = np.load(os.path.join(a.run, "logits.npy"))
    xs = torch.stack([tf(Image.open(os.path.join(a.images, r["key"])).convert("RGB")) for r in preds])
    with torch.inference_mode():
        timm_logits = model(xs.to(DEVICE).contiguous(memory_format=torch.channels_last)).float().cpu().numpy()
    ours = np.stack([ours_logits[r["index"]] for r in preds])
    sigma = float(timm_logits.std(axis=0).mean()) or 1.0
    top1_ours = np.array([r["topk_indices"][0] for r in preds])
    out = {
        "samples": len(preds),
        "data_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
        "top1_agreement_predictions_vs_timm": float((top1_ours == timm_logits.argmax(1)).mean()),
        "logits": compare(ours, timm_logits, sigma),
    }
    print(json.dumps(out, indent=1))


def cmd_summaries(a):
    """A counts-only run against the per-sample run of the same job: counts equal, floats close."""
    sa, sb = (json.load(open(os.path.join(r, "summary.json"))) for r in (a.run, a.counts_run))
    exact = ["samples", "correct1", "correct5", "bad_samples", "top1", "top5", "macro", "weighted"]
    out = {
        "counts_only": sb["job"].get("counts_only"),
        "differing": [k for k in exact if sa[k] != sb[k]],
        "nll_abs_diff": abs(sa["nll"] - sb["nll"]),
        "ece_abs_diff": abs(sa["ece"] - sb["ece"]),
        "predictions_parquet_absent": not os.path.exists(os.path.join(a.counts_run, "predictions.parquet")),
    }
    print(json.dumps(out, indent=1))
    ok = out["counts_only"] and not out["differing"] and out["nll_abs_diff"] < 1e-6 \
        and out["ece_abs_diff"] < 1e-6 and out["predictions_parquet_absent"]
    sys.exit(0 if ok else 1)


def cmd_bench(a):
    """timm forward throughput with the same settings as `tresnet-worker bench`."""
    model = load(a.model, a.weights, "cuda", a.precision)
    x = torch.rand(a.batch_size, 3, a.resolution, a.resolution).to("cuda", DTYPES[a.precision])
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(a.warmup):
            model(x)
        torch.cuda.synchronize()
        times = []
        start = time.perf_counter()
        while not times or time.perf_counter() - start < a.seconds:
            t = time.perf_counter()
            model(x)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        total = time.perf_counter() - start
    times.sort()
    print(json.dumps({
        "impl": "timm",
        "model": a.model,
        "resolution": a.resolution,
        "batch_size": a.batch_size,
        "precision": a.precision,
        "channels_last": True,
        "passes": len(times),
        "images_per_second": len(times) * a.batch_size / total,
        "median_pass_ms": times[len(times) // 2] * 1e3,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "gpu": torch.cuda.get_device_name(0),
    }, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("summaries")
    s.add_argument("--run", required=True)
    s.add_argument("--counts-run", required=True)
    for name in ("logits", "dataset", "bench"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="tresnet_m")
        p.add_argument("--weights", required=True)
        if name == "logits":
            p.add_argument("--input", required=True)
            p.add_argument("--cpu-logits", required=True)
            p.add_argument("--ours-dir", required=True)
            p.add_argument("--precisions", default="fp32,fp16,bf16")
        if name == "dataset":
            p.add_argument("--run", required=True)
            p.add_argument("--images", required=True)
            p.add_argument("--resolution", type=int, default=224)
        if name == "bench":
            p.add_argument("--precision", default="fp16")
            p.add_argument("--batch-size", type=int, default=256)
            p.add_argument("--resolution", type=int, default=224)
            p.add_argument("--warmup", type=int, default=3)
            p.add_argument("--seconds", type=float, default=8.0)
    a = ap.parse_args()
    if a.cmd != "summaries" and DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("timm_reference.py: torch sees no CUDA device")
    {"logits": cmd_logits, "dataset": cmd_dataset, "bench": cmd_bench, "summaries": cmd_summaries}[a.cmd](a)


if __name__ == "__main__":
    main()
