#!/usr/bin/env bash
#! The README's test command: installs what the tests need (cached), generates fixtures, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/env.sh
source ops/fixtures.sh
# s3s-fs for the storage tests (tests/tests/{storage_s3,object_store,backends}.rs), which start their own servers from it.
source ops/s3.sh
# Azurite and fake-gcs-server for the az:// and gs:// rows of tests/tests/backends.rs (each test starts its own).
source ops/azurite.sh
source ops/gcs.sh
# chromium (report.html rendering) and pyarrow (check_metrics.py) for tests/tests/reports.rs.
source ops/report_tools.sh
# statsmodels, the reference of compare's McNemar test (tests/tests/compare.rs).
source ops/stats_tools.sh
# Workers of runs that tests compare bit for bit must not time their layouts (a measured choice may
# differ between runs, within the parity bound); tests of the measurement set it back to true.
export TRESNET_MEASURE_LAYOUT=false
# Debian's slurm-wlm + munge for tests/tests/slurm.rs, which starts a private cluster per case through
# ops/slurm_cluster.sh (no systemd, nothing system-wide) and stops it at the end.
source ops/slurm_cluster.sh
# kubernetes-validate and hadolint for tests/tests/k8s.rs and docker.rs (kubectl comes with the machine).
source ops/k8s_tools.sh
# The cross-process tests run the real binaries; `cargo test` only builds a package's binaries for that
# package's own integration tests, so build them all first (also keeps them from going stale).
cargo build --workspace --bins
cargo test --workspace --all-targets "$@"
