#!/usr/bin/env bash
#! Runs every fuzz target (fuzz/, cargo-fuzz + libFuzzer + AddressSanitizer) for N seconds each.
# Usage: bash ops/fuzz.sh [SECONDS_PER_TARGET=60] [TARGET...]
# Parser targets alone (e.g. `bash ops/fuzz.sh 60 tar mat`) build only tresnet-formats; `protocol` and the
# image targets turn on the fuzz crate's `protocol` / `images` features.
# Needs the nightly toolchain; installs cargo-fuzz if missing. Builds into its own target dir (nightly +
# sanitizer artifacts share nothing with the normal build). Each target starts from its checked-in seeds
# (fuzz/seeds/T) and a growing working corpus in $TRESNET_CACHE_DIR/fuzz-corpus/T; crashes land in
# fuzz/artifacts/T (git-ignored): minimise one with `cargo +nightly fuzz tmin T FILE`, copy it to
# fuzz/regressions/T/ and fix the bug; the stable tests replay that folder. A per-target summary
# (runs, seconds, coverage, crashes) is printed at the end and written to $TRESNET_CACHE_DIR/fuzz-summary.txt.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source ops/env.sh || exit 1
secs="${1:-60}"
shift || true
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal || exit 1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked || exit 1
fuzz_target_dir="$TRESNET_CACHE_DIR/target-fuzz"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi
# The fuzz crate's features the selected targets need (their `required-features` in fuzz/Cargo.toml):
# the parser targets none, so running only those builds tresnet-formats without the network stack.
# One set for the build and every run, so that `fuzz run` does not rebuild with other features.
features=()
for t in "${targets[@]}"; do
  case "$t" in
    protocol) features+=(protocol) ;;
    image_*) features+=(images) ;;
  esac
done
feature_args=()
if [ ${#features[@]} -gt 0 ]; then
  feature_args=(--features "$(printf '%s\n' "${features[@]}" | sort -u | paste -sd, -)")
fi
(cd fuzz && cargo +nightly fuzz build "${feature_args[@]}" --target-dir "$fuzz_target_dir") || exit 1
summary="$TRESNET_CACHE_DIR/fuzz-summary.txt"
printf '%-14s %10s %6s %8s %8s %s\n' target runs secs cov ft crashes > "$summary"
status=0
for t in "${targets[@]}"; do
  corpus="$TRESNET_CACHE_DIR/fuzz-corpus/$t"
  log="$TRESNET_CACHE_DIR/fuzz-logs/$t.log"
  mkdir -p "$corpus" "$(dirname "$log")" "fuzz/artifacts/$t"
  before=$(find "fuzz/artifacts/$t" -type f | wc -l)
  # -rss_limit_mb: an input that makes a parser allocate > 2 GiB is a finding (OOM), not a pass.
  (cd fuzz && cargo +nightly fuzz run "${feature_args[@]}" --target-dir "$fuzz_target_dir" "$t" "$corpus" "seeds/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1) >"$log" 2>&1
  rc=$?
  # libFuzzer's own figures: "Done N runs in S second(s)" and the last status line's cov/ft
  # (edges and features of instrumented Rust code; the vendored C libjpeg-turbo is not instrumented).
  runs=$(grep -aoE 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 | awk '{print $2}')
  secs_run=$(grep -aoE 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 | awk '{print $5}')
  [ -z "$runs" ] && runs=$(grep -aoE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
  cov=$(grep -aoE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 | awk '{print $2, $4}')
  crashes=$(( $(find "fuzz/artifacts/$t" -type f | wc -l) - before ))
  [ "$rc" -ne 0 ] && status=1
  printf '%-14s %10s %6s %8s %8s %s\n' "$t" "${runs:-?}" "${secs_run:-?}" ${cov:-? ?} "$crashes$([ "$rc" -ne 0 ] && echo " (exit $rc, see $log)")" | tee -a "$summary"
done
echo "summary: $summary"
exit $status
