"""Independent reference for tests/tests/compare.rs: the paired bootstrap of an accuracy difference by
resampling the paired samples themselves (numpy), and Wilson intervals (scipy).

Usage: stats_reference.py CASES_JSON, a list of {only_a, only_b, both, neither}. Prints JSON: per case
the 95% percentile interval of acc(B) - acc(A) in percentage points over ROUNDS resamples of the n
pairs, and scipy's Wilson interval of A's accuracy in percent.
"""
import json
import sys

import numpy as np
from scipy.stats import binomtest

ROUNDS = 20_000


def main():
    out = []
    rng = np.random.default_rng(20261207)
    for c in json.loads(sys.argv[1]):
        a = np.array([1] * c["only_a"] + [0] * c["only_b"] + [1] * c["both"] + [0] * c["neither"])
        b = np.array([0] * c["only_a"] + [1] * c["only_b"] + [1] * c["both"] + [0] * c["neither"])
        n = len(a)
        diffs = np.empty(ROUNDS)
        for r in range(ROUNDS):
            i = rng.integers(0, n, n)
            diffs[r] = 100.0 * (b[i].mean() - a[i].mean())
        low, high = np.percentile(diffs, [2.5, 97.5])
        ci = binomtest(int(a.sum()), n).proportion_ci(confidence_level=0.95, method="wilson")
        out.append({"low": low, "high": high, "wilson_low": 100 * ci.low, "wilson_high": 100 * ci.high})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
