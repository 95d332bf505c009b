#!/usr/bin/env bash
#! Installs (once) what the report tests need: Debian's chromium, to render report.html headless, and
#! pyarrow in the venv, for ops/reference/check_metrics.py to read the parquet files.
# Source it after ops/env.sh. Idempotent and fast when already installed. pyarrow is installed on its own
# rather than listed in ops/requirements.txt so that adding it does not rebuild the whole cached venv.
if ! command -v chromium >/dev/null 2>&1; then
  echo "tresnet-eval: installing chromium (headless rendering of report.html)" >&2
  { apt-get update -qq && apt-get install -y -qq chromium fonts-dejavu-core; } >&2 || return 1 2>/dev/null || exit 1
fi
export TRESNET_CHROMIUM="${TRESNET_CHROMIUM:-$(command -v chromium)}"
_tresnet_pyarrow="pyarrow==26.0.1"
if ! python -c "import pyarrow, sys; sys.exit(pyarrow.__version__ != '${_tresnet_pyarrow#*==}')" 2>/dev/null; then
  echo "tresnet-eval: installing $_tresnet_pyarrow into the venv" >&2
  pip install -q "$_tresnet_pyarrow" >&2 || return 1 2>/dev/null || exit 1
fi
unset _tresnet_pyarrow
