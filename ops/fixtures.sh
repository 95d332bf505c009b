#!/usr/bin/env bash
#! Generates (once per generator version) the seeded model fixtures and exports TRESNET_FIXTURES.
# Source it after ops/env.sh. Output is keyed by a hash of the generator and the pinned Python stack, so
# editing either regenerates; the directory is written atomically (COMPLETE marker, then rename).
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_key="$(cat "$_root/ops/reference/gen_model_fixtures.py" "$_root/ops/requirements.txt" | sha256sum | cut -c1-16)"
export TRESNET_FIXTURES="$TRESNET_CACHE_DIR/fixtures/model-$_key"
if [ ! -f "$TRESNET_FIXTURES/COMPLETE" ]; then
  echo "tresnet-eval: generating model fixtures into $TRESNET_FIXTURES" >&2
  rm -rf "$TRESNET_FIXTURES.tmp"
  mkdir -p "$(dirname "$TRESNET_FIXTURES")"
  python "$_root/ops/reference/gen_model_fixtures.py" --out "$TRESNET_FIXTURES.tmp" || return 1 2>/dev/null || exit 1
  rm -rf "$TRESNET_FIXTURES" && mv "$TRESNET_FIXTURES.tmp" "$TRESNET_FIXTURES"
  # Older generations are dead weight (GBs); keep only the current one.
  find "$(dirname "$TRESNET_FIXTURES")" -maxdepth 1 -name 'model-*' ! -name "model-$_key" -exec rm -rf {} +
fi
unset _root _key
