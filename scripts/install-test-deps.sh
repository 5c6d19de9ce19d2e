#!/usr/bin/env bash
# Installs what pgfleet's integration tests need on a Debian 12 machine, as root:
#   - PostgreSQL 15 server binaries (/usr/lib/postgresql/15/bin) and client tools (psql, pgbench),
#   - the PostgreSQL JDBC driver (/usr/share/java/postgresql.jar) for tests/clients/JdbcCheck.java,
#   - openssl and procps (ps, kill) used by the harness,
#   - psycopg 3 and psycopg2 for tests/clients/*.py, into the `python3` found on PATH,
#   - Node.js with node-postgres, pg-cursor and pg-query-stream (npm, versions pinned in
#     tests/clients/node/package.json) for tests/clients/node/cursor_check.js,
#   - cargo-fuzz (cargo install, from crates.io) for the bounded fuzz pass of scripts/fuzz.sh.
# Idempotent and quick when everything is there: it checks first and runs `apt-get update` only when a
# Debian package is missing. Prints what it installs. Needs the Java compiler (javac) already on the machine
# only for the JDBC test; installs default-jdk-headless if javac is missing.
set -euo pipefail

log() { printf 'install-test-deps: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

PG_MAJOR=15
PG_BIN="/usr/lib/postgresql/${PG_MAJOR}/bin"
PGJDBC_JAR=/usr/share/java/postgresql.jar
PYTHON="${PYTHON:-python3}"

apt_missing=()

# package  -> the file that proves it is installed
need_file() {
    local package=$1 path=$2
    if [ ! -e "$path" ]; then
        log "missing $path -> will install Debian package $package"
        apt_missing+=("$package")
    fi
}

need_file "postgresql-${PG_MAJOR}" "${PG_BIN}/initdb"
need_file "postgresql-${PG_MAJOR}" "${PG_BIN}/postgres"
need_file "postgresql-${PG_MAJOR}" "${PG_BIN}/pg_basebackup"
need_file "postgresql-client-${PG_MAJOR}" "${PG_BIN}/psql"
need_file "postgresql-client-${PG_MAJOR}" "${PG_BIN}/pgbench"
need_file libpostgresql-jdbc-java "$PGJDBC_JAR"
command -v openssl >/dev/null 2>&1 || { log "missing openssl"; apt_missing+=(openssl); }
command -v ps >/dev/null 2>&1 || { log "missing ps -> procps"; apt_missing+=(procps); }
command -v pkill >/dev/null 2>&1 || { log "missing pkill -> procps"; apt_missing+=(procps); }
command -v javac >/dev/null 2>&1 || { log "missing javac"; apt_missing+=(default-jdk-headless); }
command -v "$PYTHON" >/dev/null 2>&1 || { log "missing $PYTHON"; apt_missing+=(python3 python3-pip); }
command -v node >/dev/null 2>&1 || { log "missing node"; apt_missing+=(nodejs); }
command -v npm >/dev/null 2>&1 || { log "missing npm"; apt_missing+=(npm); }

if [ "${#apt_missing[@]}" -gt 0 ]; then
    # De-duplicate, keeping order.
    mapfile -t apt_missing < <(printf '%s\n' "${apt_missing[@]}" | awk '!seen[$0]++')
    log "apt-get update"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    log "apt-get install -y ${apt_missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
    # The Debian postgresql-15 package creates and starts a `main` cluster on port 5432; the tests start
    # their own servers and do not need it. Leave it be: stopping services is not this script's business.
else
    log "Debian packages: all present (postgresql-${PG_MAJOR}, client, pgjdbc, openssl, procps, javac)"
fi

for path in "${PG_BIN}/initdb" "${PG_BIN}/psql" "${PG_BIN}/pgbench" "$PGJDBC_JAR"; do
    if [ ! -e "$path" ]; then
        log "ERROR: $path still missing after apt-get install" >&2
        exit 1
    fi
done

# Python drivers: import check first, pip only for what is missing.
py_missing=()
"$PYTHON" -c 'import psycopg, psycopg_binary' >/dev/null 2>&1 || py_missing+=('psycopg[binary]')
"$PYTHON" -c 'import psycopg2' >/dev/null 2>&1 || py_missing+=('psycopg2-binary')

if [ "${#py_missing[@]}" -gt 0 ]; then
    if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
        log "apt-get install -y python3-pip (no pip for $PYTHON)"
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip
    fi
    log "pip install ${py_missing[*]} (into $("$PYTHON" -c 'import sys; print(sys.executable)'))"
    pip_args=(-m pip install --quiet --disable-pip-version-check --root-user-action=ignore)
    # Debian's own python3 is "externally managed" (PEP 668): pip needs --break-system-packages there.
    pip_err=$(mktemp)
    if ! $SUDO "$PYTHON" "${pip_args[@]}" "${py_missing[@]}" 2>"$pip_err"; then
        if grep -q externally-managed "$pip_err"; then
            log "$PYTHON is externally managed (PEP 668): retrying with --break-system-packages"
            $SUDO "$PYTHON" "${pip_args[@]}" --break-system-packages "${py_missing[@]}"
        else
            cat "$pip_err" >&2
            rm -f "$pip_err"
            exit 1
        fi
    fi
    rm -f "$pip_err"
    "$PYTHON" -c 'import psycopg, psycopg2; print("install-test-deps: psycopg", psycopg.__version__, "psycopg2", psycopg2.__version__)'
else
    log "Python drivers: psycopg and psycopg2 present for $PYTHON"
fi

# node-postgres and its cursor and streaming packages, into tests/clients/node/node_modules.
node_dir="$(dirname "$0")/../tests/clients/node"
if [ -d "$node_dir/node_modules/pg-cursor" ] && [ -d "$node_dir/node_modules/pg-query-stream" ]; then
    log "node-postgres, pg-cursor and pg-query-stream present"
else
    log "npm install (node-postgres, pg-cursor, pg-query-stream) in tests/clients/node"
    (cd "$node_dir" && npm install --no-audit --no-fund --no-package-lock --loglevel=error)
fi

# cargo-fuzz: scripts/fuzz.sh owns the check and the install, so both paths install it the same way.
bash "$(dirname "$0")/fuzz.sh" --install-only

log "done"
