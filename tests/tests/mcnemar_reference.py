"""Independent reference for tests/tests/compare.rs: McNemar's test by statsmodels itself
(`statsmodels.stats.contingency_tables.mcnemar`), which the README names, not a copy of its formula.

Usage:
  mcnemar_reference.py A.json B.json K   pairs two runs' predictions by key (JSON rows {key, label, topk}
      exported from each run's predictions.parquet by the test) and prints JSON: per metric (top1, topK)
      the 2x2 counts, the exact p-value, the chi-square statistic and p-value with continuity
      correction, plus the overall accuracies in percent.
  mcnemar_reference.py counts B:C [B:C ...]   prints a JSON list, per pair of discordant counts (b right
      in A only, c right in B only), of statsmodels' exact p-value and its chi-square statistic and
      p-value with and without the continuity correction.
"""
import json
import sys

from statsmodels.stats.contingency_tables import mcnemar


def modes(both, only_a, only_b, neither):
    table = [[both, only_a], [only_b, neither]]
    exact = mcnemar(table, exact=True)
    if only_a + only_b == 0:
        # statsmodels divides by zero here (nan, inf): no chi-square test without discordant pairs.
        return {"exact_p": float(exact.pvalue)}
    corrected = mcnemar(table, exact=False, correction=True)
    plain = mcnemar(table, exact=False, correction=False)
    return {
        "exact_p": float(exact.pvalue),
        "chi2_stat": float(corrected.statistic),
        "chi2_p": float(corrected.pvalue),
        "chi2_uncorrected_stat": float(plain.statistic),
        "chi2_uncorrected_p": float(plain.pvalue),
    }


def runs(path_a, path_b, k5):
    a = {r["key"]: r for r in json.load(open(path_a))}
    b = {r["key"]: r for r in json.load(open(path_b))}
    assert a.keys() == b.keys(), "runs cover different samples"
    out = {}
    for name, k in (("top1", 1), ("top5", k5)):
        ra = {key: r["label"] in r["topk"][:k] for key, r in a.items()}
        rb = {key: b[key]["label"] in b[key]["topk"][:k] for key in a}
        both = sum(ra[x] and rb[x] for x in a)
        only_a = sum(ra[x] and not rb[x] for x in a)
        only_b = sum(rb[x] and not ra[x] for x in a)
        neither = sum(not ra[x] and not rb[x] for x in a)
        out[name] = {
            "both": both,
            "only_a": only_a,
            "only_b": only_b,
            "neither": neither,
            **modes(both, only_a, only_b, neither),
            "acc_a": 100.0 * sum(ra.values()) / len(a),
            "acc_b": 100.0 * sum(rb.values()) / len(a),
        }
    return out


def main():
    if sys.argv[1] == "counts":
        out = []
        for pair in sys.argv[2:]:
            b, c = (int(x) for x in pair.split(":"))
            # The concordant cells do not enter McNemar's test; 7 and 11 show they are ignored.
            out.append({"b": b, "c": c, **modes(7, b, c, 11)})
        print(json.dumps(out))
    else:
        print(json.dumps(runs(sys.argv[1], sys.argv[2], int(sys.argv[3]))))


if __name__ == "__main__":
    main()
