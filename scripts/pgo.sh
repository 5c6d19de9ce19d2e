#!/usr/bin/env bash
# Makes pgo/pgfleet.profdata.gz, the execution profile scripts/build.sh compiles the release build with:
#   1. builds pgfleet instrumented (every branch counts how often it runs) into target/pgo-instrumented;
#   2. runs bench/'s workloads through it, short: bench/run.sh with the three pgfleet targets (reads over the
#      nodes, transaction pooling, the primary alone; select-only simple/extended/prepared, TPC-B and rw90 at 1,
#      16 and 500 clients; the sharded workload), then bench/forward_apply.sh with a small table;
#   3. merges the counts (llvm-profdata, LLVM 19 or later; Debian's llvm-19 is installed when none is found),
#      keeping only functions that ran, so that code the workloads never reach is compiled as without a profile;
#   4. writes pgo/profile.txt: the compiler and the commit the profile was made with.
# Run it from a clean tree after any change to src/, then commit both files. About fifteen minutes on
# two cores (two more the first time, when the instrumented build compiles the dependencies).
# Knobs: PGO_SECONDS (5: seconds per bench workload), PGO_FORWARD_ROWS (200000).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

die() { echo "pgo.sh: $*" >&2; exit 1; }

if [[ -n $(git status --porcelain -- src crates Cargo.toml Cargo.lock) ]]; then
  die "src/, crates/ or Cargo.* have uncommitted changes; commit them first, so that pgo/profile.txt names the code profiled"
fi

profdata=""
for v in 22 21 20 19; do
  if [[ -x /usr/lib/llvm-$v/bin/llvm-profdata ]]; then
    profdata=/usr/lib/llvm-$v/bin/llvm-profdata
    break
  fi
done
if [[ -z $profdata ]]; then
  echo "installing llvm-19 (llvm-profdata; older versions cannot read this compiler's raw profiles)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq llvm-19 >/dev/null
  profdata=/usr/lib/llvm-19/bin/llvm-profdata
fi

work=$(mktemp -d /tmp/pgfleet-pgo.XXXXXX)
# A fixed place for the raw counts: the path is part of RUSTFLAGS, and a new one each run would rebuild every
# dependency of the instrumented build (6 min on two cores, where pgfleet alone takes 3.5).
raw=$root/target/pgo-raw
trap 'rm -rf "$work" "$raw"' EXIT

echo "== instrumented build (target/pgo-instrumented)"
CARGO_TARGET_DIR=target/pgo-instrumented RUSTFLAGS="-Cprofile-generate=$raw" \
  cargo build --release --locked --bin pgfleet
bin=$root/target/pgo-instrumented/release/pgfleet
# The build scripts of the build above ran instrumented too; only pgfleet's runs below count.
rm -rf "$raw"

echo "== bench workloads through the instrumented build"
PGFLEET_BIN=$bin BENCH_BUILD=0 BENCH_MEMORY=0 BENCH_ROUNDS=1 BENCH_WARMUP=1 \
  BENCH_SECONDS="${PGO_SECONDS:-5}" BENCH_TARGETS="pgfleet-defaults pgfleet-txn pgfleet-primary" \
  BENCH_RESULTS="$work/bench" bash bench/run.sh
echo "== forward mode through the instrumented build"
PGFLEET_BIN=$bin FWD_ROWS="${PGO_FORWARD_ROWS:-200000}" bash bench/forward_apply.sh

shopt -s nullglob
files=("$raw"/*.profraw)
[[ ${#files[@]} -gt 0 ]] || die "no profile was written under $raw (did pgfleet exit normally?)"
echo "== merging ${#files[@]} raw profile(s) with $profdata"
"$profdata" merge --sparse -o "$work/pgfleet.profdata" "${files[@]}"
mkdir -p pgo
gzip -9 -n -c "$work/pgfleet.profdata" > pgo/pgfleet.profdata.gz
{
  echo "rustc: $(rustc --version)"
  echo "commit: $(git rev-parse HEAD)"
  echo "made: $(date -u '+%Y-%m-%dT%H:%MZ')"
  echo "workloads: bench/run.sh (pgfleet-defaults, pgfleet-txn, pgfleet-primary; ${PGO_SECONDS:-5} s each), bench/forward_apply.sh (${PGO_FORWARD_ROWS:-200000} rows)"
} > pgo/profile.txt
echo "wrote pgo/pgfleet.profdata.gz ($(stat -c %s pgo/pgfleet.profdata.gz) bytes) and pgo/profile.txt"
echo "before committing it: copy the current build aside, bash scripts/build.sh, then bash bench/instructions.sh OLD NEW;"
echo "a profile that makes the request path dearer without a code change to explain it is made again (docs/operations.md, \"Building\")"
