#!/usr/bin/env bash
# Builds pgfleet and runs `pgfleet demo`: a local primary and two streaming replicas in a temp dir, with pgfleet
# in front on 127.0.0.1:6432. Ctrl-C stops pgfleet and the servers and removes the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v pg_config >/dev/null 2>&1; then
  echo "installing the PostgreSQL server binaries (Debian package postgresql)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
# The release build, with the committed execution profile (scripts/build.sh).
bash scripts/build.sh
exec ./target/release/pgfleet demo "$@"
