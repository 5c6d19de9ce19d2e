#!/usr/bin/env bash
# pgfleet's release build: cargo with the committed execution profile (pgo/pgfleet.profdata.gz) applied, so that
# the compiler lays out and inlines the request path by how often each branch ran under bench/'s workloads
# (profile-guided optimisation; docs/performance.md, "Twenty-third pass"). scripts/demo.sh, bench/run.sh and the
# Dockerfile build with it.
#
#   bash scripts/build.sh                      # cargo build --release --locked
#   bash scripts/build.sh test --release ...   # any cargo command, with the same flags
#   PGFLEET_PGO=0 bash scripts/build.sh        # the same build without the profile, for comparisons
#
# Code the profile does not know (changed since it was made, or never run by its workloads) is compiled as
# without it; the build says when the profile is older than the code or was made by another compiler, and
# scripts/pgo.sh makes a new one.
set -euo pipefail
cd "$(dirname "$0")/.."

args=("$@")
if [[ ${#args[@]} -eq 0 ]]; then
  args=(build --release --locked)
fi

profile=pgo/pgfleet.profdata.gz
if [[ ${PGFLEET_PGO:-1} != 0 && -f $profile ]]; then
  mkdir -p target/pgo
  # Rewritten only when it differs: rustc records the profile among a crate's inputs, and a new file would
  # rebuild every crate.
  gunzip -c "$profile" > target/pgo/pgfleet.profdata.new
  if cmp -s target/pgo/pgfleet.profdata.new target/pgo/pgfleet.profdata; then
    rm target/pgo/pgfleet.profdata.new
  else
    mv target/pgo/pgfleet.profdata.new target/pgo/pgfleet.profdata
  fi
  made_by=$(sed -n 's/^rustc: //p' pgo/profile.txt 2>/dev/null || true)
  made_from=$(sed -n 's/^commit: //p' pgo/profile.txt 2>/dev/null || true)
  if [[ -n $made_by && $made_by != "$(rustc --version)" ]]; then
    echo "note: pgo/pgfleet.profdata.gz was made by $made_by, this is $(rustc --version); functions compiled differently get no profile" >&2
  fi
  if [[ -n $made_from ]] && git rev-parse --git-dir >/dev/null 2>&1 \
    && git cat-file -e "$made_from^{commit}" 2>/dev/null \
    && ! git diff --quiet "$made_from" -- src crates Cargo.lock; then
    echo "note: the request path changed since pgo/pgfleet.profdata.gz was made (commit $made_from); functions that changed get no profile until bash scripts/pgo.sh makes a new one" >&2
  fi
  # Functions whose code changed since the profile was made are compiled without it; LLVM would print a
  # warning for each.
  export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-Cprofile-use=$PWD/target/pgo/pgfleet.profdata -Cllvm-args=-no-pgo-warn-mismatch"
  echo "build.sh: with the execution profile of pgo/ (made from commit ${made_from:0:7})" >&2
else
  echo "build.sh: without an execution profile (PGFLEET_PGO=0, or no $profile)" >&2
fi
exec cargo "${args[@]}"
