#!/usr/bin/env bash
#! Installs (once) Azurite, the Azure Blob Storage emulator that the az:// tests run against.
# Azurite checks Shared Key signatures, so a wrong account key is refused as Azure would. 3.35.0 is the
# last release that runs on Node 20 (3.36+ need Node 22). The tests (tests/src/azurite.rs) start their own
# servers from TRESNET_AZURITE; `--disableTelemetry` keeps it off the internet.
#
#   source ops/env.sh && source ops/azurite.sh   # install if missing; exports TRESNET_AZURITE
_tresnet_azurite_version="3.35.0"
export TRESNET_CACHE_DIR="${TRESNET_CACHE_DIR:-$HOME/.cache/tresnet-eval}"
_tresnet_azurite_dir="$TRESNET_CACHE_DIR/tools/azurite-$_tresnet_azurite_version"
export TRESNET_AZURITE="$_tresnet_azurite_dir/node_modules/.bin/azurite-blob"

if [ ! -f "$_tresnet_azurite_dir/COMPLETE" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "tresnet-eval: installing Node.js and npm (needed to run Azurite)" >&2
    { apt-get update -qq && apt-get install -y -qq nodejs npm; } >&2 || return 1 2>/dev/null || exit 1
  fi
  echo "tresnet-eval: installing azurite $_tresnet_azurite_version into $_tresnet_azurite_dir (about a minute)" >&2
  # Into a scratch folder first, renamed when complete, so an interrupted install is not mistaken for one.
  rm -rf "$_tresnet_azurite_dir.tmp"
  npm install --prefix "$_tresnet_azurite_dir.tmp" --no-audit --no-fund --loglevel=error \
    "azurite@$_tresnet_azurite_version" >&2 || return 1 2>/dev/null || exit 1
  touch "$_tresnet_azurite_dir.tmp/COMPLETE"
  rm -rf "$_tresnet_azurite_dir" && mv "$_tresnet_azurite_dir.tmp" "$_tresnet_azurite_dir"
fi
unset _tresnet_azurite_version _tresnet_azurite_dir
