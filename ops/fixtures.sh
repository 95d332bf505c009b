#!/usr/bin/env bash
#! Generates (once per generator version) the seeded test fixtures and exports their directories.
# Source it after ops/env.sh. Each set is keyed by a hash of its generator and the pinned Python stack, so
# editing either regenerates; a directory is written atomically (COMPLETE marker, then rename).
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# _tresnet_fixtures VAR PREFIX GENERATOR [SUBDIR [IMPORTED...]]: run GENERATOR --out
# $TRESNET_CACHE_DIR/fixtures/PREFIX-<hash>[/SUBDIR] (the directory being the export VAR); IMPORTED are
# the other ops/reference scripts it imports, hashed into the key too.
_tresnet_fixtures() {
  local var="$1" prefix="$2" gen="$_root/ops/reference/$3" sub="${4:+/$4}"
  local key dir dep deps=()
  # TRESNET_FIXTURE_SETS="demo ...": only these sets (ops/demo.sh needs one, not the whole test suite's).
  if [ -n "${TRESNET_FIXTURE_SETS:-}" ] && [[ " $TRESNET_FIXTURE_SETS " != *" $prefix "* ]]; then
    return 0
  fi
  for dep in "${@:5}"; do deps+=("$_root/ops/reference/$dep"); done
  key="$(cat "$gen" "${deps[@]}" "$_root/ops/requirements.txt" | sha256sum | cut -c1-16)"
  dir="$TRESNET_CACHE_DIR/fixtures/$prefix-$key"
  export "$var=$dir"
  if [ ! -f "$dir/COMPLETE" ]; then
    echo "tresnet-eval: generating $prefix fixtures into $dir" >&2
    rm -rf "$dir.tmp"
    mkdir -p "$(dirname "$dir")"
    python "$gen" --out "$dir.tmp$sub" || return 1
    touch "$dir.tmp/COMPLETE"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
    # Older generations are dead weight (GBs); keep only the current one.
    find "$(dirname "$dir")" -maxdepth 1 -name "$prefix-*" ! -name "$prefix-$key" -exec rm -rf {} +
  fi
}

# Model parity (worker/tests/parity.rs, cli.rs, loading.rs).
_tresnet_fixtures TRESNET_FIXTURES model gen_model_fixtures.py || return 1 2>/dev/null || exit 1
# Preprocessing parity and benchmarks (worker/tests/preprocess_parity.rs, worker/benches/preprocess.rs).
_tresnet_fixtures TRESNET_PREPROCESS_FIXTURES preprocess gen_preprocess_fixtures.py || return 1 2>/dev/null || exit 1
# The ImageFolder of real photos for the cross-process tests ($TRESNET_SAMPLE_DATA/images).
_tresnet_fixtures TRESNET_SAMPLE_DATA sample make_sample_dataset.py images || return 1 2>/dev/null || exit 1
# The demo's weights and held-out photos with a known top-1 (ops/demo.sh, tests/tests/demo_accuracy.rs).
_tresnet_fixtures TRESNET_DEMO demo make_demo_fixture.py "" gen_model_fixtures.py make_sample_dataset.py \
  || return 1 2>/dev/null || exit 1
# ImageNet-ReaL/-V2/-A/-R/-Sketch layouts of the same photos with timm's class lists (tests/tests/datasets.rs).
_tresnet_fixtures TRESNET_IMAGENET_VARIANTS variants make_imagenet_variants.py "" make_sample_dataset.py \
  || return 1 2>/dev/null || exit 1
unset -f _tresnet_fixtures
unset _root
