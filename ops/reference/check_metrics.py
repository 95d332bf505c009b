#!/usr/bin/env python3
"""Recomputes every number of a tresnet-eval run directory independently and compares.

The reference is the run's full logits (logits.npy, written by `run --save-logits fp32|fp16`) and the
labels in predictions.parquet; from them numpy, scipy and scikit-learn (top_k_accuracy_score,
log_loss, confusion_matrix, precision_recall_fscore_support, scipy's binomtest Wilson interval)
recompute top-1/top-5 and their 95% intervals, NLL, ECE, the
reliability bins, the confusion matrix, per-class and macro/weighted precision/recall/F1, and every
per-sample column. Counts must match exactly, floats within 1e-9. Exit status 1 lists every mismatch.

Top-k ties: tresnet-eval ranks equal logits by the lower class index first (worker/src/scoring.rs).
scikit-learn's top_k_accuracy_score sorts with a stable argsort and reverses it, which ranks the
*higher* index first; feeding it the class axis reversed (column j -> C-1-j, labels likewise) turns
that into exactly our rule, so the sklearn figure is comparable on tied rows too. The script also ranks
with its own stable sort and reports how many rows had a tie at the top-k boundary.

Class subsets (`--class-subset`, ImageNet-A/-R): logits.npy holds the model's full rows; the script
keeps the subset's columns itself (job.json's class_subset, ascending) and recomputes everything in the
subset's positions, and checks class_subset.csv. ImageNet-ReaL: the script reads the dataset's
real.json itself and matches each image by the number in its file name; top-1 is correct when the
prediction is in the image's list, top-5 when any of the five is (no scikit-learn function scores label
lists, so these are by definition), images with an empty list must be exactly the excluded ones, and the
per-class table, confusion matrix and precision/recall/F1 stay against the val label.

Run by tests/tests/reports.rs and tests/tests/datasets.rs (with the venv's python):
check_metrics.py RUN_DIR
"""

import csv
import hashlib
import json
import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow.parquet as pq
from scipy.special import logsumexp, softmax
from scipy.stats import binomtest
from sklearn.metrics import (
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

TOL = 1e-9
ECE_BINS = 15

errors: list[str] = []
checked = 0


def close(what, got, want, tol=TOL):
    global checked
    checked += 1
    if got is None or want is None:
        if got is not want:
            errors.append(f"{what}: file has {got!r}, reference {want!r}")
        return
    if not abs(float(got) - float(want)) <= tol:
        errors.append(f"{what}: file has {got!r}, reference {want!r} (|diff| {abs(float(got) - float(want)):.3g})")


def equal(what, got, want):
    global checked
    checked += 1
    if got != want:
        errors.append(f"{what}: file has {got!r}, reference {want!r}")


def wilson(k: int, n: int):
    """scipy's 95% Wilson score interval of k in n, in percent; None without trials."""
    if n == 0:
        return None
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return (100.0 * ci.low, 100.0 * ci.high)


def ranked(logits32: np.ndarray) -> np.ndarray:
    """Class indices by descending logit, equal logits lower index first (a stable sort of -logits).
    -0.0 and 0.0 compare equal here, while Rust's total_cmp orders them; logits of exactly zero with
    both signs in one row are not a case real models produce."""
    return np.argsort(-logits32, axis=1, kind="stable")


def real_lists(job):
    """ImageNet-ReaL: every image under the dataset folder by key, with its list from real.json."""
    root = Path(unquote(urlparse(job["data_url"]).path))
    labels = job["format"].get("labels")
    path = root / labels if labels else next(Path(d) / "real.json" for d, _, fs in os.walk(root) if "real.json" in fs)
    real = json.loads(path.read_text())
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.startswith("ILSVRC2012_val_"):
                n = int(f.split(".")[0][len("ILSVRC2012_val_"):])
                out[str((Path(d) / f).relative_to(root))] = sorted(real[n - 1])
    return out


def main(run: Path) -> int:
    summary = json.loads((run / "summary.json").read_text())
    job = json.loads((run / "job.json").read_text())
    outcome = json.loads((run / "outcome.json").read_text())
    subset = job.get("class_subset")
    C = len(subset) if subset else job["num_classes"]
    k5 = summary["top5_k"]
    equal("summary.job", summary["job"], job)
    equal("top5_k", k5, min(5, job["top_k"], C))

    # --- the reference inputs ---------------------------------------------------------------------
    preds = pq.read_table(run / "predictions.parquet").to_pydict()
    idx = np.asarray(preds["index"], dtype=np.int64)
    y = np.asarray(preds["label"], dtype=np.int64)
    n = len(idx)
    all_logits = np.load(run / "logits.npy")
    equal("logits.npy shape", all_logits.shape, (job["dataset_samples"], job["num_classes"]))
    nan_rows = np.isnan(all_logits).any(axis=1)
    equal("rows with logits", sorted(np.flatnonzero(~nan_rows).tolist()), sorted(idx.tolist()))
    L32 = all_logits[idx].astype(np.float32)
    if subset:
        equal("class_subset ascending", subset, sorted(set(subset)))
        L32 = L32[:, subset]
        with open(run / "class_subset.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        equal("class_subset.csv", [(int(r["subset_index"]), int(r["class_index"]), r["class_name"]) for r in rows],
              list(zip(range(C), subset, outcome["class_names"])))
    L = L32.astype(np.float64)

    # ImageNet-ReaL: each row's accepted classes, read from real.json by the image's number.
    lists = real_lists(job) if job["format"]["format"] == "imagenet_real" else None
    if lists is not None:
        accepted = [lists[k] for k in preds["key"]]
        equal("predictions.labels", [list(v) for v in preds["labels"]], accepted)
        excluded = sorted(k for k, v in lists.items() if not v)
        equal("excluded (empty ReaL lists)", sorted(e["key"] for e in outcome.get("excluded", [])), excluded)
        equal("excluded_samples", summary["excluded_samples"], len(excluded))
    else:
        accepted = [[int(v)] for v in y]

    # --- top-k and per-sample columns ---------------------------------------------------------------
    order = ranked(L32)
    pred1 = order[:, 0]
    top_k = job["top_k"]
    equal("predictions.topk_indices", [list(r) for r in preds["topk_indices"]], order[:, :top_k].tolist())
    want_vals = np.take_along_axis(L32, order[:, :top_k], axis=1)
    equal("predictions.topk_logits", [list(np.float32(v) for v in r) for r in preds["topk_logits"]],
          [list(r) for r in want_vals])
    hit1 = np.array([int(p) in a for p, a in zip(pred1, accepted)], dtype=bool)
    hit5 = np.array([any(int(c) in a for c in row[:k5]) for row, a in zip(order, accepted)], dtype=bool)
    # The val label's own top-5 hits: the per-class table's (the same as hit5 unless ReaL).
    own5 = (order[:, :k5] == y[:, None]).any(axis=1)
    equal("predictions.correct1", preds["correct1"], hit1.tolist())
    equal("predictions.correct5", preds["correct5"], hit5.tolist())
    ties = sum(
        1 for r in range(n) for k in {1, k5} if k < C and L32[r, order[r, k - 1]] == L32[r, order[r, k]]
    )
    rev = dict(labels=np.arange(C), normalize=False)
    if lists is None:
        sk1 = top_k_accuracy_score(C - 1 - y, L[:, ::-1], k=1, **rev)
        sk5 = top_k_accuracy_score(C - 1 - y, L[:, ::-1], k=k5, **rev)
        equal("correct1 (sklearn top_k_accuracy_score, class axis reversed)", summary["correct1"], int(sk1))
        equal("correct5 (sklearn top_k_accuracy_score, class axis reversed)", summary["correct5"], int(sk5))
    else:
        sk1, sk5 = hit1.sum(), hit5.sum()
    equal("correct1 (stable sort)", summary["correct1"], int(hit1.sum()))
    equal("correct5 (stable sort)", summary["correct5"], int(hit5.sum()))
    equal("samples", summary["samples"], n)
    close("top1", summary["top1"], 100.0 * sk1 / n if n else 0.0)
    close("top5", summary["top5"], 100.0 * sk5 / n if n else 0.0)
    for key, k in (("top1_ci95", int(sk1)), ("top5_ci95", int(sk5))):
        want = wilson(k, n)
        got = summary.get(key)
        close(f"{key}.low", got and got["low"], want and want[0])
        close(f"{key}.high", got and got["high"], want and want[1])

    loss = logsumexp(L, axis=1) - L[np.arange(n), y]
    conf = np.exp(L.max(axis=1) - logsumexp(L, axis=1))
    for r in range(n):
        close(f"predictions.loss[{preds['key'][r]}]", preds["loss"][r], loss[r])
        close(f"predictions.confidence[{preds['key'][r]}]", preds["confidence"][r], conf[r])
    close("nll (by definition)", summary["nll"], loss.mean() if n else 0.0)
    # sklearn's log_loss clips probabilities to [eps, 1-eps] (eps of float64), which caps a sample's loss
    # at ~36: samples whose true-class probability falls below eps are compared by definition instead,
    # the rest through log_loss, and the two parts recombined into the mean.
    probs = softmax(L, axis=1)
    p_true = probs[np.arange(n), y]
    eps = np.finfo(np.float64).eps
    ok = (p_true >= eps) & (p_true <= 1 - eps)
    sk_sum = log_loss(y[ok], probs[ok], labels=np.arange(C)) * ok.sum() if ok.any() else 0.0
    clipped = int((~ok).sum())
    close("nll (sklearn log_loss + clipped samples by definition)", summary["nll"],
          (sk_sum + loss[~ok].sum()) / n if n else 0.0)

    # --- calibration, by definition: bin b holds confidences in (b/B, (b+1)/B], 0 in the first ------
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    ece = 0.0
    equal("ece_bins", summary["ece_bins"], ECE_BINS)
    for b in range(ECE_BINS):
        m = (conf > edges[b]) & (conf <= edges[b + 1])
        if b == 0:
            m |= conf == 0.0
        rb = summary["reliability"][b]
        equal(f"reliability[{b}].count", rb["count"], int(m.sum()))
        close(f"reliability[{b}].lower", rb["lower"], edges[b])
        close(f"reliability[{b}].upper", rb["upper"], edges[b + 1])
        if m.any():
            acc, mc = hit1[m].mean(), conf[m].mean()
            close(f"reliability[{b}].accuracy", rb["accuracy"], acc)
            close(f"reliability[{b}].confidence", rb["confidence"], mc)
            ece += m.sum() / n * abs(acc - mc)
        else:
            equal(f"reliability[{b}].accuracy", rb["accuracy"], None)
    close("ece", summary["ece"], ece)

    # --- confusion matrix ---------------------------------------------------------------------------
    cm = confusion_matrix(y, pred1, labels=np.arange(C))
    conf_file = pq.read_table(run / "confusion.parquet").to_pydict()
    sparse = {(t, p): c for t, p, c in zip(conf_file["true"], conf_file["predicted"], conf_file["count"])}
    want_sparse = {(int(t), int(p)): int(cm[t, p]) for t, p in zip(*np.nonzero(cm))}
    equal("confusion.parquet", sparse, want_sparse)
    equal("confusion.parquet order", list(zip(conf_file["true"], conf_file["predicted"])), sorted(want_sparse))

    # --- per class ----------------------------------------------------------------------------------
    p, r, f, support = precision_recall_fscore_support(
        y, pred1, labels=np.arange(C), average=None, zero_division=0
    )
    predicted = cm.sum(axis=0)
    pc = pq.read_table(run / "per_class.parquet").to_pydict()
    names = outcome["class_names"]
    names = names + [""] * (C - len(names))  # classes of the model past the dataset's have no name
    equal("per_class.class", pc["class"], list(range(C)))
    equal("per_class.name", pc["name"], names[:C])
    equal("per_class.support", pc["support"], support.tolist())
    equal("per_class.predicted", pc["predicted"], predicted.tolist())
    off = cm.copy()
    np.fill_diagonal(off, 0)
    for c in range(C):
        s = int(support[c])
        close(f"per_class.top1[{c}]", pc["top1"][c], 100.0 * cm[c, c] / s if s else None)
        close(f"per_class.top5[{c}]", pc["top5"][c], 100.0 * own5[y == c].sum() / s if s else None)
        ci = wilson(int(cm[c, c]), s)
        close(f"per_class.top1_ci95_low[{c}]", pc["top1_ci95_low"][c], ci and ci[0])
        close(f"per_class.top1_ci95_high[{c}]", pc["top1_ci95_high"][c], ci and ci[1])
        # Undefined scores are null in the file and 0 in sklearn (zero_division=0).
        for name, arr, defined in (
            ("precision", p, predicted[c] > 0),
            ("recall", r, s > 0),
            ("f1", f, s + predicted[c] > 0),
        ):
            close(f"per_class.{name}[{c}]", pc[name][c], float(arr[c]) if defined else None)
        worst = int(np.argmax(off[c]))  # first maximum: the lower class index wins ties
        if off[c, worst] > 0:
            equal(f"per_class.most_confused_with[{c}]", pc["most_confused_with"][c], worst)
            equal(f"per_class.most_confused_name[{c}]", pc["most_confused_name"][c], names[worst])
            equal(f"per_class.most_confused_count[{c}]", pc["most_confused_count"][c], int(off[c, worst]))
        else:
            equal(f"per_class.most_confused_with[{c}]", pc["most_confused_with"][c], None)
            equal(f"per_class.most_confused_count[{c}]", pc["most_confused_count"][c], 0)
    for avg, key in (("macro", "macro"), ("weighted", "weighted")):
        ap, ar, af, _ = precision_recall_fscore_support(y, pred1, average=avg, zero_division=0)
        close(f"{key}.precision", summary[key]["precision"], ap)
        close(f"{key}.recall", summary[key]["recall"], ar)
        close(f"{key}.f1", summary[key]["f1"], af)

    # per_class.csv carries the same table as per_class.parquet.
    with open(run / "per_class.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    equal("per_class.csv columns", list(rows[0].keys()) if rows else [], list(pc.keys()))
    for c, row in enumerate(rows):
        for col, v in row.items():
            want = pc[col][c]
            if isinstance(want, float) or (want is None and v == ""):
                close(f"per_class.csv {col}[{c}]", None if v == "" else float(v), want)
            else:
                equal(f"per_class.csv {col}[{c}]", v, str(want) if want is not None else "")

    # --- accounting and provenance ------------------------------------------------------------------
    failed = sum(len(s["samples"]) for s in summary["failed_shards"])
    equal("bad_samples", summary["bad_samples"], len(summary["bad"]))
    equal("bad", summary["bad"], outcome["bad"])
    equal("failed_samples", summary["failed_samples"], failed)
    equal("dataset_size", summary["dataset_size"], outcome["dataset_size"])
    excluded_n = len(outcome.get("excluded", []))
    equal("excluded_samples", summary.get("excluded_samples", 0), excluded_n)
    equal("samples + excluded + bad + failed", n + excluded_n + len(summary["bad"]) + failed, summary["dataset_size"])
    equal("model", summary["model"], job["model"])
    equal("weights_sha256", summary["weights_sha256"], job["weights_sha256"])
    if job["weights"] and Path(job["weights"]).is_file():
        equal("weights_sha256 (file)", summary["weights_sha256"],
              hashlib.sha256(Path(job["weights"]).read_bytes()).hexdigest())
    equal("dataset_fingerprint", summary["dataset_fingerprint"], job["dataset_fingerprint"])
    equal("preprocess", summary["preprocess"], job["preprocess"])
    equal("software", summary["software"], outcome["software"])
    close("throughput", summary["throughput"],
          outcome["samples_timed"] / outcome["eval_seconds"] if outcome["eval_seconds"] > 0 else 0.0)

    if errors:
        print(f"check_metrics: {len(errors)} of {checked} checks FAILED in {run}:", file=sys.stderr)
        for e in errors[:50]:
            print(f"  {e}", file=sys.stderr)
        return 1
    print(f"check_metrics: {checked} checks passed ({n} samples, {C} classes, "
          f"{ties} rows tied at a top-k boundary, {clipped} below log_loss's clip) in {run}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: check_metrics.py RUN_DIR")
    sys.exit(main(Path(sys.argv[1])))
