#!/usr/bin/env bash
# The whole test suite, as the README names it and as CI runs it (.ci/run): installs what a fresh machine lacks,
# checks formatting and lints, runs every unit and integration test against real PostgreSQL servers, then a
# bounded fuzz pass over the protocol and router code (scripts/fuzz.sh; needs the nightly toolchain).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

# The build needs a few GiB (target/ and fuzz/target/) and each test cluster some MiB under the temp dir; a
# full disk shows up as many unrelated compile errors, so say it first.
for dir in . "${TMPDIR:-/tmp}"; do
  free_kib=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
  if [ "${free_kib:-0}" -lt $((6 * 1024 * 1024)) ]; then
    echo "warning: only $((free_kib / 1024)) MiB free on the disk holding $dir; the build and tests need about 6 GiB" >&2
  fi
done

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
# Each integration test starts its own primary and replicas; two at a time suits a 2-core machine.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
threads="${PGFLEET_TEST_THREADS:-2}"
cargo test --workspace --locked --all-targets --no-fail-fast -- --test-threads="$threads" 2>&1 | tee "$log" || status=$?
echo "== the core client suites again under transaction pooling"
# One integration test binary (tests/it): its areas are picked by module-path filters.
PGFLEET_TEST_POOL_MODE=transaction cargo test --locked --no-fail-fast --test it \
  -- --test-threads="$threads" core_routing:: client_drivers:: psql_pgbench:: sessions_auth:: failures:: sharding:: 2>&1 | tee -a "$log" || status=$?
echo "== the release build as shipped (scripts/build.sh: optimised with the execution profile of pgo/), core suites"
# The demo, bench/ and the image run this build, which the compiler optimised differently from the one above.
bash scripts/build.sh test --release --locked --no-fail-fast --test it \
  -- --test-threads="$threads" core_routing:: psql_pgbench:: client_drivers:: consistency:: transaction_pooling:: \
  failures:: forward_smoke:: 2>&1 | tee -a "$log" || status=$?
echo "== bounded fuzz pass: scripts/fuzz.sh, ${FUZZ_SECONDS:-60} s per target (FUZZ_SECONDS=0 skips it)"
bash scripts/fuzz.sh 2>&1 | tee -a "$log" || status=$?
# One closing line for the whole suite, summed over every test binary and fuzz target.
awk '/^test result:/ || /^fuzz: [0-9]+ passed, [0-9]+ failed/ {
       for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^error: could not compile/ { b++ }
     END { printf "all tests: %d passed, %d failed", p, f
           if (b) printf "; %d crates failed to build (see the errors above)", b
           printf "\n" }' "$log"
exit "$status"
