#!/usr/bin/env bash
#! The README's test command: installs what the tests need (cached), generates fixtures, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/env.sh
source ops/fixtures.sh
# s3s-fs for the storage tests (common/tests/storage_s3.rs), which start their own servers from it.
source ops/s3.sh
cargo test --workspace --all-targets "$@"
