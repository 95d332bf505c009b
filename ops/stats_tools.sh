#!/usr/bin/env bash
#! Installs (once) statsmodels in the venv: its `mcnemar` is the reference `compare`'s McNemar test is
#! checked against (tests/tests/compare.rs, tests/tests/mcnemar_reference.py).
# Source it after ops/env.sh. Idempotent and fast when already installed. Installed on its own rather than
# listed in ops/requirements.txt, like pyarrow (ops/report_tools.sh): adding it there would rebuild the
# whole cached venv and regenerate every fixture set, whose keys hash that file. Only additions: pip keeps
# the venv's numpy and scipy (statsmodels 0.15 accepts them) and adds pandas, patsy and their small deps.
_tresnet_stats=("statsmodels==0.15.0" "pandas==3.1.2" "patsy==1.0.3")
if ! python -c "import statsmodels, sys; sys.exit(statsmodels.__version__ != '0.15.0')" 2>/dev/null; then
  echo "tresnet-eval: installing ${_tresnet_stats[*]} into the venv" >&2
  pip install -q "${_tresnet_stats[@]}" >&2 || return 1 2>/dev/null || exit 1
fi
unset _tresnet_stats
