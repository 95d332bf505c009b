#!/usr/bin/env bash
#! The README's test command: installs what the tests need (cached), generates fixtures, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/env.sh
source ops/fixtures.sh
cargo test --workspace --all-targets "$@"
