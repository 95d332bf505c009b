"""Independent reference for tests/tests/compare.rs: pairs two runs' predictions by key and runs
McNemar's test with scipy (exact: binomtest; otherwise chi2 with continuity correction).

Usage: mcnemar_reference.py A.json B.json K  (JSON rows {key, label, topk} exported from each run's
predictions.parquet by the test). Prints JSON: per metric (top1, topK) the 2x2 counts and both p-values,
plus the overall accuracies in percent.
"""
import json
import sys

from scipy.stats import binomtest, chi2


def main():
    a = {r["key"]: r for r in json.load(open(sys.argv[1]))}
    b = {r["key"]: r for r in json.load(open(sys.argv[2]))}
    k5 = int(sys.argv[3])
    assert a.keys() == b.keys(), "runs cover different samples"
    out = {}
    for name, k in (("top1", 1), ("top5", k5)):
        ra = {key: r["label"] in r["topk"][:k] for key, r in a.items()}
        rb = {key: b[key]["label"] in b[key]["topk"][:k] for key in a}
        both = sum(ra[x] and rb[x] for x in a)
        only_a = sum(ra[x] and not rb[x] for x in a)
        only_b = sum(rb[x] and not ra[x] for x in a)
        neither = sum(not ra[x] and not rb[x] for x in a)
        n = only_a + only_b
        exact = binomtest(min(only_a, only_b), n, 0.5).pvalue if n else 1.0
        stat = max(abs(only_a - only_b) - 1, 0) ** 2 / n if n else 0.0
        out[name] = {
            "both": both,
            "only_a": only_a,
            "only_b": only_b,
            "neither": neither,
            "exact_p": float(exact),
            "chi2_stat": stat,
            "chi2_p": float(chi2.sf(stat, 1)) if n else 1.0,
            "acc_a": 100.0 * sum(ra.values()) / len(a),
            "acc_b": 100.0 * sum(rb.values()) / len(a),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
