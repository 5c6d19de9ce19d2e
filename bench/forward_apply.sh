#!/usr/bin/env bash
# pgfleet forward-mode apply bench: how fast forward mode copies a table and applies bulk changes, next to a
# psql COPY pipe and PostgreSQL's own logical replication, in one run.
#
#   bash bench/forward_apply.sh
#
# Starts four plain PostgreSQL servers of its own (primary, replica1, replica2, sub), all with the same settings
# (fsync off as in the test harness), and loads a table of FWD_ROWS rows (id bigint primary key, v int, pad
# text of 40 bytes) on the primary. Then, one after the other so that they do not share the CPU:
#
#   1. COPY pipe: `psql -c "COPY t TO STDOUT" | psql -c "COPY t FROM STDIN"` from the primary to `sub`; with
#      two replicas, also one such pipe to each of replica1 and replica2 at the same time (the tables dropped
#      again afterwards), which is what the machine does with two copies sharing its cores.
#   2. pgfleet in forward mode to replica1 and replica2: time until both have finished the initial copy; then
#      a bulk UPDATE (every row), DELETE (every row) and INSERT ... SELECT (every row again), each committed on
#      the primary, timed from the commit until both replicas have it. pgfleet is then stopped and
#      `pgfleet forward-stop` removes its slots, publication and event trigger from the primary.
#   3. Native logical replication: CREATE PUBLICATION on the primary, CREATE SUBSCRIPTION on `sub` (after
#      emptying it): time of its initial copy, then the same three bulk changes, timed from commit to `sub`.
#
# A change "has reached" a server when a marker row written at the end of the same primary transaction is
# visible there (both pgfleet and PostgreSQL apply a transaction atomically). Prints seconds and rows/s per
# replica. Everything it starts, it stops again, on success, on error and on Ctrl-C.
#
# Knobs: FWD_ROWS (2000000), FWD_REPLICAS (2: pgfleet forwards to replica1 and replica2; 1: to replica1 only,
# the same work as the native subscription), FWD_PORT_BASE (17600), FWD_TIMEOUT (600 s per step),
# PGFLEET_BIN (target/release/pgfleet; build with `cargo build --release`), PG_BIN (directory of initdb,
# found on PATH otherwise), FWD_KEEP=1 keeps the work directory, FWD_DECODING_WORK_MEM (unset: PostgreSQL's
# 64MB) sets logical_decoding_work_mem on every server, so for pgfleet's WAL senders and native's alike,
# FWD_STREAMING=0 sets pgfleet's `replication.streaming = false` (large transactions then reach pgfleet whole
# at their commit, as native's subscription receives them by default in PostgreSQL 15), FWD_MAX_STREAMED (4) sets
# `replication.max_streamed_transactions` (0: pgfleet holds every streamed transaction in a file until its commit).
#
# Besides the times, it reports the CPU each bulk change cost, from /proc: pgfleet's process, the primary's WAL
# senders, and each applying server's processes (their backends live through the step; the primary's backend
# that ran the change is not counted).
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
ROOT=$(cd "$BENCH_DIR/.." && pwd)
FWD_ROWS=${FWD_ROWS:-2000000}
FWD_PORT_BASE=${FWD_PORT_BASE:-17600}
FWD_TIMEOUT=${FWD_TIMEOUT:-600}
FWD_REPLICAS=${FWD_REPLICAS:-2}
FWD_DECODING_WORK_MEM=${FWD_DECODING_WORK_MEM:-}
FWD_STREAMING=${FWD_STREAMING:-1}
FWD_MAX_STREAMED=${FWD_MAX_STREAMED:-4}
PGFLEET_BIN=${PGFLEET_BIN:-$ROOT/target/release/pgfleet}
if [[ -z ${PG_BIN:-} ]]; then
    PG_BIN=$(dirname "$(command -v initdb || echo /usr/lib/postgresql/15/bin/initdb)")
fi
PASSWORD=bench
DB=app

log() { printf '[forward %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() {
    log "ERROR: $*"
    exit 1
}

[[ -x $PGFLEET_BIN ]] || die "$PGFLEET_BIN is missing: run cargo build --release first"
[[ -x $PG_BIN/initdb && -x $PG_BIN/pg_ctl ]] || die "no initdb/pg_ctl in $PG_BIN: set PG_BIN"
for tool in psql pg_dump python3; do
    command -v "$tool" >/dev/null || die "$tool is not on PATH"
done

WORK=$(mktemp -d /tmp/pgfleet-forward.XXXXXX)
chmod 755 "$WORK"
declare -a PIDS=()
declare -a DATADIRS=()
RUN_AS=()
# PostgreSQL refuses to run as root: then the servers run as `nobody`.
if [[ $(id -u) == 0 ]]; then
    RUN_AS=(runuser -u nobody --)
    chown nobody "$WORK"
fi

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_pids
    for dir in "${DATADIRS[@]}"; do
        "${RUN_AS[@]}" "$PG_BIN/pg_ctl" -D "$dir" -m immediate stop >/dev/null 2>&1 || true
    done
    if [[ ${FWD_KEEP:-0} == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
rate() { python3 -c "import sys; print(f'{int(sys.argv[1]) / max(float(sys.argv[2]), 1e-9):,.0f}')" "$1" "$2"; }

# ---- servers -------------------------------------------------------------------------------------------------
REPLICAS=()
for ((i = 1; i <= FWD_REPLICAS; i++)); do
    REPLICAS+=("replica$i")
done
NAMES=(primary "${REPLICAS[@]}" sub)
declare -A PORT=()
for i in "${!NAMES[@]}"; do
    PORT[${NAMES[$i]}]=$((FWD_PORT_BASE + i))
done

init_server() { # NAME
    local name=$1 dir=$WORK/$1
    "${RUN_AS[@]}" "$PG_BIN/initdb" -D "$dir" -U postgres --auth=trust --no-sync >"$WORK/$name.initdb.log" 2>&1 ||
        die "initdb $name: $(tail -3 "$WORK/$name.initdb.log")"
    cat >>"$dir/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = ${PORT[$name]}
unix_socket_directories = '$WORK'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_logical_replication_workers = 4
fsync = off
full_page_writes = off
shared_buffers = 128MB
max_wal_size = 2GB
logging_collector = off
EOF
    if [[ -n $FWD_DECODING_WORK_MEM ]]; then
        echo "logical_decoding_work_mem = '$FWD_DECODING_WORK_MEM'" >>"$dir/postgresql.conf"
    fi
    DATADIRS+=("$dir")
    "${RUN_AS[@]}" "$PG_BIN/pg_ctl" -D "$dir" -l "$WORK/$name.log" -w start >/dev/null ||
        die "starting $name: $(tail -5 "$WORK/$name.log")"
}

sql() { # NAME SQL...: one value per line, no headers
    local name=$1
    shift
    psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${PORT[$name]}" -U postgres -d "$DB" -c "$*"
}

wait_for() { # WHAT NAME SQL EXPECTED: polls NAME until SQL returns EXPECTED
    local what=$1 name=$2 query=$3 expected=$4 deadline=$((SECONDS + FWD_TIMEOUT)) got
    while true; do
        got=$(sql "$name" "$query" 2>/dev/null || true)
        [[ $got == "$expected" ]] && return 0
        ((SECONDS < deadline)) || die "$what: $name still returns '$got', not '$expected', after ${FWD_TIMEOUT}s"
        sleep 0.05
    done
}

log "starting 4 servers in $WORK (rows: $FWD_ROWS)"
for name in "${NAMES[@]}"; do
    init_server "$name"
    psql -X -q -h 127.0.0.1 -p "${PORT[$name]}" -U postgres -d postgres \
        -c "ALTER ROLE postgres PASSWORD '$PASSWORD'" -c "CREATE DATABASE $DB" >/dev/null
done

SCHEMA="CREATE TABLE t (id bigint PRIMARY KEY, v int NOT NULL, pad text NOT NULL);
        CREATE TABLE marker (id int PRIMARY KEY, n int NOT NULL);"
sql primary "$SCHEMA" >/dev/null
sql primary "INSERT INTO marker VALUES (1, 0);
             INSERT INTO t SELECT g, g % 1000, md5(g::text) || 'padding!' FROM generate_series(1, $FWD_ROWS) g" >/dev/null
sql primary "VACUUM ANALYZE t" >/dev/null
sql sub "$SCHEMA" >/dev/null

# CPU clock ticks so far, as "pgfleet=N walsenders=N replica1=N ...": pgfleet's process (all threads), the
# primary's WAL senders, and every process of each other server (children of its postmaster).
cpu_ticks() {
    python3 - "${PGFLEET_PID:-0}" "$WORK" "${NAMES[@]}" <<'PY'
import os, sys
pgfleet, work, names = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # ppid, utime + stime, cutime + cstime (children that ended: a copy's backends)
        return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
    except (OSError, IndexError, ValueError):
        return None
def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""
postmasters = {}
for name in names:
    try:
        with open(f"{work}/{name}/postmaster.pid") as f:
            postmasters[int(f.readline())] = name
    except (OSError, ValueError):
        pass
totals = {"pgfleet": 0, "walsenders": 0, **{n: 0 for n in names}}
if pgfleet and (s := stat(pgfleet)):
    totals["pgfleet"] = s[1]
# A server's own processes, live ones and (through its postmaster) those that ended.
for pid, name in postmasters.items():
    if (s := stat(pid)):
        totals[name] += s[2]
for pid in filter(str.isdigit, os.listdir("/proc")):
    s = stat(pid)
    if s is None or s[0] not in postmasters:
        continue
    server = postmasters[s[0]]
    totals[server] += s[1]
    if server == "primary" and "walsender" in cmdline(pid):
        totals["walsenders"] += s[1]
print(" ".join(f"{k}={v}" for k, v in totals.items()))
PY
}

# CPU seconds between two cpu_ticks lines, for the parts that moved.
cpu_spent() { # BEFORE AFTER
    python3 - "$1" "$2" "$(getconf CLK_TCK)" <<'PY'
import sys
before = dict(kv.split("=") for kv in sys.argv[1].split())
after = dict(kv.split("=") for kv in sys.argv[2].split())
hz = int(sys.argv[3])
parts = [f"{k} {(int(v) - int(before.get(k, 0))) / hz:.2f}" for k, v in after.items() if int(v) > int(before.get(k, 0))]
print(", ".join(parts) or "-")
PY
}

# ---- 1. COPY pipe --------------------------------------------------------------------------------------------
log "COPY pipe primary -> sub"
declare -A CPU=()
ticks=$(cpu_ticks)
start_at=$(now)
psql -X -q -h 127.0.0.1 -p "${PORT[primary]}" -U postgres -d "$DB" -c "COPY t TO STDOUT" |
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${PORT[sub]}" -U postgres -d "$DB" -c "COPY t FROM STDIN"
COPY_PIPE=$(since "$start_at")
CPU[pipe]=$(cpu_spent "$ticks" "$(cpu_ticks)")
log "COPY pipe: ${COPY_PIPE}s"
sql sub "TRUNCATE t" >/dev/null

# ---- 1b. one COPY pipe per pgfleet replica, all at once ------------------------------------------------------
# What this machine does when every replica's copy runs at the same time, as pgfleet's do: the reference for
# "no slower than a COPY pipe per replica" when the replicas share the cores. Into the same table as `sub`'s
# (its primary key filled during the COPY), dropped again so that pgfleet starts on empty replicas.
PIPES_AT_ONCE=-
if ((FWD_REPLICAS > 1)); then
    log "one COPY pipe per replica at once: ${REPLICAS[*]}"
    pipe_pids=()
    for r in "${REPLICAS[@]}"; do
        sql "$r" "CREATE TABLE t (id bigint PRIMARY KEY, v int NOT NULL, pad text NOT NULL)" >/dev/null
    done
    ticks=$(cpu_ticks)
    start_at=$(now)
    for r in "${REPLICAS[@]}"; do
        psql -X -q -h 127.0.0.1 -p "${PORT[primary]}" -U postgres -d "$DB" -c "COPY t TO STDOUT" |
            psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${PORT[$r]}" -U postgres -d "$DB" -c "COPY t FROM STDIN" &
        pipe_pids+=($!)
    done
    for p in "${pipe_pids[@]}"; do wait "$p" || die "a COPY pipe to a replica failed"; done
    PIPES_AT_ONCE=$(since "$start_at")
    CPU[pipes]=$(cpu_spent "$ticks" "$(cpu_ticks)")
    log "one COPY pipe per replica at once: ${PIPES_AT_ONCE}s"
    for r in "${REPLICAS[@]}"; do sql "$r" "DROP TABLE t" >/dev/null; done
fi

# ---- the bulk changes ----------------------------------------------------------------------------------------
MARK=0
# Each change ends by bumping the marker in the same transaction, so that seeing the marker means having all.
bulk_sql() { # KIND MARK
    local body
    case $1 in
    update) body="UPDATE t SET v = v + 1, pad = 'x' || pad" ;;
    delete) body="DELETE FROM t" ;;
    insert) body="INSERT INTO t SELECT g, g % 1000, md5(g::text) || 'padding!' FROM generate_series(1, $FWD_ROWS) g" ;;
    esac
    printf 'BEGIN; %s; UPDATE marker SET n = %s WHERE id = 1; COMMIT;' "$body" "$2"
}

declare -A RESULT=()
run_bulk() { # PREFIX TARGETS...: runs update, delete, insert; RESULT[PREFIX.kind.target] = seconds
    local prefix=$1 kind target started ticks
    shift
    for kind in update delete insert; do
        MARK=$((MARK + 1))
        ticks=$(cpu_ticks)
        sql primary "$(bulk_sql "$kind" "$MARK")" >/dev/null
        started=$(now)
        for target in "$@"; do
            wait_for "$prefix $kind" "$target" "SELECT n FROM marker" "$MARK"
            RESULT[$prefix.$kind.$target]=$(since "$started")
        done
        CPU[$prefix.$kind]=$(cpu_spent "$ticks" "$(cpu_ticks)")
        log "$prefix $kind: $(for t in "$@"; do printf '%s %ss  ' "$t" "${RESULT[$prefix.$kind.$t]}"; done)"
        sql primary "CHECKPOINT" >/dev/null
    done
}

# ---- 2. pgfleet forward mode ---------------------------------------------------------------------------------
CONFIG=$WORK/pgfleet.toml
cat >"$CONFIG" <<EOF
[listen]
address = "127.0.0.1:$((FWD_PORT_BASE + 9))"

[[users]]
name = "postgres"
password = "$PASSWORD"

[[nodes]]
name = "primary"
address = "127.0.0.1:${PORT[primary]}"
role = "primary"

$(for r in "${REPLICAS[@]}"; do printf '[[nodes]]\nname = "%s"\naddress = "127.0.0.1:%s"\nrole = "replica"\n\n' "$r" "${PORT[$r]}"; done)
[replication]
mode = "forward"
user = "postgres"
password = "$PASSWORD"
databases = ["$DB"]
streaming = $([[ $FWD_STREAMING == 0 ]] && echo false || echo true)
max_streamed_transactions = $FWD_MAX_STREAMED

[log]
level = "info"
EOF

log "pgfleet forward mode: initial copy to ${REPLICAS[*]}"
ticks=$(cpu_ticks)
start_at=$(now)
setsid "$PGFLEET_BIN" --config "$CONFIG" >"$WORK/pgfleet.log" 2>&1 </dev/null &
PGFLEET_PID=$!
PIDS+=("$PGFLEET_PID")
declare -A COPY_TIME=()
for r in "${REPLICAS[@]}"; do
    wait_for "initial copy" "$r" \
        "SELECT coalesce((SELECT state FROM pgfleet_replica.progress LIMIT 1), 'none')" streaming
    COPY_TIME[$r]=$(since "$start_at")
done
CPU[pgfleet.copy]=$(cpu_spent "$ticks" "$(cpu_ticks)")
log "pgfleet initial copy: $(for r in "${REPLICAS[@]}"; do printf '%s %ss  ' "$r" "${COPY_TIME[$r]}"; done)(at once)"
run_bulk pgfleet "${REPLICAS[@]}"
kill -TERM "$PGFLEET_PID"
wait "$PGFLEET_PID" 2>/dev/null || true
log "pgfleet stopped; forward-stop:"
"$PGFLEET_BIN" forward-stop --config "$CONFIG" --database "$DB" 2>&1 | sed 's/^/    /' ||
    log "forward-stop failed (an older pgfleet without the command?)"

# ---- 3. native logical replication ---------------------------------------------------------------------------
log "native logical replication: initial copy to sub"
sql sub "TRUNCATE t; DELETE FROM marker" >/dev/null
sql primary "CREATE PUBLICATION native FOR TABLE t, marker" >/dev/null
ticks=$(cpu_ticks)
start_at=$(now)
sql sub "CREATE SUBSCRIPTION native CONNECTION 'host=127.0.0.1 port=${PORT[primary]} user=postgres \
    password=$PASSWORD dbname=$DB' PUBLICATION native" >/dev/null
wait_for "native initial copy" sub "SELECT count(*) FILTER (WHERE srsubstate <> 'r') FROM pg_subscription_rel" 0
wait_for "native initial copy" sub "SELECT count(*) FROM pg_subscription_rel" 2
NATIVE_COPY=$(since "$start_at")
CPU[native.copy]=$(cpu_spent "$ticks" "$(cpu_ticks)")
log "native initial copy: ${NATIVE_COPY}s"
run_bulk native sub

# ---- report --------------------------------------------------------------------------------------------------
echo
echo "forward-mode apply bench: $FWD_ROWS rows, $FWD_REPLICAS pgfleet replica(s), $(nproc) cores, pgfleet $("$PGFLEET_BIN" --version 2>/dev/null | awk '{print $2}'), logical_decoding_work_mem ${FWD_DECODING_WORK_MEM:-64MB}, pgfleet streaming $([[ $FWD_STREAMING == 0 ]] && echo off || echo "on, max_streamed_transactions $FWD_MAX_STREAMED")"
printf '%-34s %10s %14s\n' "step" "seconds" "rows/s"
printf '%-34s %10s %14s\n' "COPY pipe to one server" "$COPY_PIPE" "$(rate "$FWD_ROWS" "$COPY_PIPE")"
if ((FWD_REPLICAS > 1)); then
    printf '%-34s %10s %14s\n' "COPY pipes, one per replica" "$PIPES_AT_ONCE" "$(rate "$FWD_ROWS" "$PIPES_AT_ONCE")"
fi
for r in "${REPLICAS[@]}"; do
    printf '%-34s %10s %14s\n' "pgfleet initial copy, $r" "${COPY_TIME[$r]}" "$(rate "$FWD_ROWS" "${COPY_TIME[$r]}")"
done
printf '%-34s %10s %14s\n' "native initial copy, sub" "$NATIVE_COPY" "$(rate "$FWD_ROWS" "$NATIVE_COPY")"
for kind in update delete insert; do
    for r in "${REPLICAS[@]}"; do
        s=${RESULT[pgfleet.$kind.$r]}
        printf '%-34s %10s %14s\n' "pgfleet $kind, $r" "$s" "$(rate "$FWD_ROWS" "$s")"
    done
    s=${RESULT[native.$kind.sub]}
    printf '%-34s %10s %14s\n' "native $kind, sub" "$s" "$(rate "$FWD_ROWS" "$s")"
done
echo
echo "CPU seconds of the initial copies, from start to the last target done (/proc; servers count their ended backends):"
printf '  %-16s %s\n' "COPY pipe" "${CPU[pipe]:--}"
printf '  %-16s %s\n' "COPY pipes" "${CPU[pipes]:--}"
printf '  %-16s %s\n' "pgfleet copy" "${CPU[pgfleet.copy]:--}"
printf '  %-16s %s\n' "native copy" "${CPU[native.copy]:--}"
echo
echo "CPU seconds per bulk change, from before it ran on the primary until the last target had it (/proc):"
for kind in update delete insert; do
    printf '  %-16s %s\n' "pgfleet $kind" "${CPU[pgfleet.$kind]:--}"
    printf '  %-16s %s\n' "native $kind" "${CPU[native.$kind]:--}"
done
