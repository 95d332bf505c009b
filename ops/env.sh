#!/usr/bin/env bash
#! Creates (once) and activates the cached Python venv that provides libtorch and the reference stack.
# Source it: `source ops/env.sh`. Idempotent and fast when the cache is warm; a cold run installs
# torch==2.11.0 from PyPI (~2.7 GB, a few minutes). Never uses tch's download-libtorch.
_tresnet_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The turbojpeg crate builds its vendored libjpeg-turbo (the decoder inside Pillow) with cmake, and its
# SIMD code needs nasm; Debian's libturbojpeg is too old (2.1 < 3.0) to link against instead.
if ! command -v cmake >/dev/null 2>&1 || ! command -v nasm >/dev/null 2>&1; then
  echo "tresnet-eval: installing cmake and nasm (needed to build libjpeg-turbo)" >&2
  { apt-get update -qq && apt-get install -y -qq cmake nasm; } >&2 || return 1 2>/dev/null || exit 1
fi
export TRESNET_CACHE_DIR="${TRESNET_CACHE_DIR:-$HOME/.cache/tresnet-eval}"
_req="$_tresnet_root/ops/requirements.txt"
_stamp_want="$(sha256sum "$_req" | cut -c1-16)"
export TRESNET_VENV="${TRESNET_VENV:-$TRESNET_CACHE_DIR/venv}"
if [ ! -f "$TRESNET_VENV/.tresnet-stamp" ] || [ "$(cat "$TRESNET_VENV/.tresnet-stamp")" != "$_stamp_want" ]; then
  echo "tresnet-eval: installing the Python venv into $TRESNET_VENV (cold cache: a few minutes)" >&2
  mkdir -p "$TRESNET_CACHE_DIR"
  python3 -m venv "$TRESNET_VENV" || return 1 2>/dev/null || exit 1
  "$TRESNET_VENV/bin/pip" install -q --upgrade pip >&2 || return 1 2>/dev/null || exit 1
  "$TRESNET_VENV/bin/pip" install -q -r "$_req" >&2 || return 1 2>/dev/null || exit 1
  echo "$_stamp_want" > "$TRESNET_VENV/.tresnet-stamp"
fi
export VIRTUAL_ENV="$TRESNET_VENV"
export PATH="$TRESNET_VENV/bin:$PATH"
# torch-sys asks this python for libtorch's include and library paths.
export LIBTORCH_USE_PYTORCH=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TRESNET_CACHE_DIR/target}"
unset _tresnet_root _req _stamp_want
