#!/usr/bin/env bash
# The whole test suite, as the README names it and as CI runs it (.ci/run): installs what a fresh machine lacks,
# checks formatting and lints, then runs every unit and integration test against real PostgreSQL servers.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
# Each integration test starts its own primary and replicas; two at a time suits a 2-core machine.
cargo test --locked -- --test-threads="${PGFLEET_TEST_THREADS:-2}"
