#!/usr/bin/env bash
# pgfleet sharded-workload bench (issue 14): what sharding costs per statement, side by side with its
# unsharded baselines.
#
#   bash bench/sharded.sh                 # 1 and 16 clients, 3 rounds of 15 s: about 40 minutes on 2 cores
#   SHARD_QUICK=1 bash bench/sharded.sh   # short mode: 16 clients, 1 round of 10 s: about 6 minutes
#
# `pgfleet demo --shards 3` starts three clusters, each a primary with one streaming replica and
# max_prepared_transactions = 64, with an empty `accounts (id bigint PRIMARY KEY, owner text, balance numeric)`
# on each primary. Clusters 0 and 1 become a 2-shard fleet behind one pgfleet (`[[sharded_tables]]`
# accounts(id)); cluster 2 is the unsharded baseline: the same servers, one primary + one replica, holding
# every account, behind a second pgfleet and reached directly. The demo's own pgfleet stays idle.
# SHARD_ACCOUNTS accounts are loaded through the sharded pgfleet (COPY, split by pgfleet) and directly into
# the baseline primary. Then bench/pgbench_matrix.py runs, alternating targets round by round:
#   shard-read      workloads/shard_read.sql: SELECT by key (one shard; its replica)
#   shard-write     workloads/shard_write.sql: autocommit UPDATE by key (one shard's primary)
#   shard-transfer  generated here: BEGIN; UPDATE a; UPDATE b; COMMIT with a on shard 0 and b on shard 1:
#                   two-phase commit through the sharded pgfleet, one local commit on the baseline
#   shard-sum       workloads/shard_sum.sql: SELECT count(*), sum(balance) FROM accounts (fan-out and merge)
# each with -M simple and -M extended, against direct (the baseline primary), pgfleet-unsharded and
# pgfleet-sharded, and reports TPS, latency, and the pgfleet process's CPU µs and context switches per
# transaction. Afterwards it checks that no prepared transaction is left on the shard primaries.
#
# Everything it starts, it stops again (bench/lib.sh's stop_pids), on success, on error and on TERM/Ctrl-C;
# the demo stops its servers and deletes their files when it stops. Needs the release build, pgbench, psql,
# python3 (3.11+); installs nothing. bench/run.sh runs it as its last section (BENCH_SHARDED=0 skips it).
#
# Knobs: SHARD_QUICK (0), SHARD_SECONDS (15), SHARD_ROUNDS (3), SHARD_CLIENTS ("1 16"), SHARD_WARMUP (5),
# SHARD_ACCOUNTS (100000), SHARD_PAIRS (1000 accounts per shard that the transfers use), SHARD_WORKLOADS (the
# eight above), SHARD_POOL_SIZE (20), SHARD_PORT_BASE (17700: demo, then the two pgfleets), SHARD_RESULTS
# (bench/results), SHARD_SUMMARY (markdown tables appended there; default SHARD_RESULTS/<stamp>-sharded.md),
# PGFLEET_BIN (target/release/pgfleet).
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
ROOT=$(cd "$BENCH_DIR/.." && pwd)

if [[ ${SHARD_QUICK:-0} == 1 ]]; then
    SHARD_SECONDS=${SHARD_SECONDS:-10}
    SHARD_ROUNDS=${SHARD_ROUNDS:-1}
    SHARD_CLIENTS=${SHARD_CLIENTS:-16}
    SHARD_WARMUP=${SHARD_WARMUP:-2}
fi
SHARD_SECONDS=${SHARD_SECONDS:-15}
SHARD_ROUNDS=${SHARD_ROUNDS:-3}
SHARD_CLIENTS=${SHARD_CLIENTS:-"1 16"}
SHARD_WARMUP=${SHARD_WARMUP:-5}
SHARD_ACCOUNTS=${SHARD_ACCOUNTS:-100000}
SHARD_PAIRS=${SHARD_PAIRS:-1000}
SHARD_WORKLOADS=${SHARD_WORKLOADS:-"shard-read-simple shard-read-extended shard-write-simple shard-write-extended shard-transfer-simple shard-transfer-extended shard-sum-simple shard-sum-extended"}
SHARD_POOL_SIZE=${SHARD_POOL_SIZE:-20}
SHARD_PORT_BASE=${SHARD_PORT_BASE:-17700}
SHARD_RESULTS=${SHARD_RESULTS:-$BENCH_DIR/results}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
SHARD_SUMMARY=${SHARD_SUMMARY:-$SHARD_RESULTS/$STAMP-sharded.md}
PGFLEET_BIN=${PGFLEET_BIN:-$ROOT/target/release/pgfleet}
# The demo cluster's credentials (src/demo.rs): app/demo owns database app; the superuser postgres has the
# same password.
APP_USER=app
APP_PASSWORD=demo
APP_DB=app
SUPERUSER=postgres

PORT_DEMO=$SHARD_PORT_BASE
PORT_UNSHARDED=$((SHARD_PORT_BASE + 1))
PORT_SHARDED=$((SHARD_PORT_BASE + 2))

log() { printf '[sharded %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() {
    log "ERROR: $*"
    exit 1
}

[[ -x $PGFLEET_BIN ]] || die "$PGFLEET_BIN is missing: run cargo build --release first"
for tool in pgbench psql python3; do
    command -v "$tool" >/dev/null || die "$tool is not on PATH"
done
for port in "$PORT_DEMO" "$PORT_UNSHARDED" "$PORT_SHARDED"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is in use; choose other ports with SHARD_PORT_BASE"
    fi
done

WORK=$(mktemp -d /tmp/pgfleet-sharded.XXXXXX)
mkdir -p "$WORK/pids" "$WORK/logs" "$SHARD_RESULTS"
declare -a PIDS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((${#PIDS[@]})); then
        log "stopping everything this run started"
        stop_pids
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# start NAME LOGFILE CMD...: in a session of its own (so that Ctrl-C reaches only this script, and so that
# pgbench_matrix.py finds the process's CPU time by its session id in pids/NAME).
start() {
    local name=$1 logfile=$2
    shift 2
    setsid "$@" >"$logfile" 2>&1 </dev/null &
    PIDS+=("$!")
    echo "$!" >"$WORK/pids/$name"
}

export PGSSLMODE=disable PGCONNECT_TIMEOUT=30 PGPASSWORD=$APP_PASSWORD
sql() { # PORT USER SQL
    psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U "$2" -d "$APP_DB" -c "$3"
}

log "pgfleet sharded bench $STAMP: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
log "settings: SHARD_SECONDS=$SHARD_SECONDS SHARD_ROUNDS=$SHARD_ROUNDS SHARD_CLIENTS='$SHARD_CLIENTS' SHARD_ACCOUNTS=$SHARD_ACCOUNTS SHARD_PAIRS=$SHARD_PAIRS SHARD_POOL_SIZE=$SHARD_POOL_SIZE"
log "starting three clusters (each a primary + 1 streaming replica) with pgfleet demo --shards 3"
start demo "$WORK/demo.out" "$PGFLEET_BIN" demo --shards 3 --listen "127.0.0.1:$PORT_DEMO"
CONFIG=""
for _ in $(seq 3000); do
    CONFIG=$(awk '$1 == "config" {print $2}' "$WORK/demo.out" 2>/dev/null || true)
    [[ -n $CONFIG && -f $CONFIG ]] && break
    kill -0 "${PIDS[0]}" 2>/dev/null || die "pgfleet demo exited: $(tail -5 "$WORK/demo.out")"
    sleep 0.1
done
[[ -n $CONFIG && -f $CONFIG ]] || die "pgfleet demo printed no config within 300 s"
grep -E '^  s[0-9]' "$WORK/demo.out" | sed 's/^/    /'

# Name, host, port, role and shard of each node, from the demo's TOML (tomllib: Python 3.11+).
mapfile -t NODES < <(python3 - "$CONFIG" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    config = tomllib.load(f)
for node in config["nodes"]:
    host, port = node["address"].rsplit(":", 1)
    print(node["name"], host, port, node["role"], node["shard"])
EOF
)
declare -A PRIMARY=() REPLICA=()
for line in "${NODES[@]}"; do
    read -r _ _ port role shard <<<"$line"
    if [[ $role == primary ]]; then PRIMARY[$shard]=$port; else REPLICA[$shard]=$port; fi
done
[[ -n ${PRIMARY[0]:-} && -n ${PRIMARY[1]:-} && -n ${PRIMARY[2]:-} ]] || die "cannot read three primaries from $CONFIG"
BASE_PRIMARY=${PRIMARY[2]}
for port in "${PRIMARY[@]}"; do
    for _ in $(seq 300); do
        sql "$port" "$APP_USER" 'SELECT 1' >/dev/null 2>&1 && break
        sleep 0.1
    done
done
MAX_CONNECTIONS=$(sql "$BASE_PRIMARY" "$SUPERUSER" 'SHOW max_connections')

# pgfleet_config PORT SHARDS(0 1 | 2): the nodes of those demo shards; with two shards, as a sharded fleet.
pgfleet_config() {
    local port=$1 shards=$2 line name host nport role shard sharded=0
    [[ $shards == *" "* ]] && sharded=1
    printf '# generated by bench/sharded.sh\n\n[listen]\naddress = "127.0.0.1:%s"\n\n' "$port"
    printf '[[users]]\nname = "%s"\npassword = "%s"\n\n' "$APP_USER" "$APP_PASSWORD"
    for line in "${NODES[@]}"; do
        read -r name host nport role shard <<<"$line"
        [[ " $shards " == *" $shard "* ]] || continue
        printf '[[nodes]]\nname = "%s"\naddress = "%s:%s"\nrole = "%s"\n' "$name" "$host" "$nport" "$role"
        # The demo numbers its clusters 0, 1, 2; a sharded fleet numbers its shards from 0 in the same order.
        ((sharded)) && printf 'shard = %s\n' "$shard"
        printf '\n'
    done
    ((sharded)) && printf '[[sharded_tables]]\nname = "accounts"\ncolumn = "id"\n\n'
    printf '[routing]\nload_balance = "round_robin"\n\n'
    printf '[pool]\nmax_size = %s\n\n[log]\nlevel = "warn"\n' "$SHARD_POOL_SIZE"
}

printf 'name\tport\tstate\tnote\n' >"$WORK/targets.tsv"
printf 'direct\t%s\tok\tthe baseline primary, no proxy\n' "$BASE_PRIMARY" >>"$WORK/targets.tsv"
for target in unsharded sharded; do
    if [[ $target == sharded ]]; then port=$PORT_SHARDED shards="0 1"; else port=$PORT_UNSHARDED shards=2; fi
    pgfleet_config "$port" "$shards" >"$WORK/pgfleet-$target.toml"
    "$PGFLEET_BIN" --check --config "$WORK/pgfleet-$target.toml" >"$WORK/logs/check-$target.log" 2>&1 ||
        die "pgfleet --check refused the $target config: $(tail -3 "$WORK/logs/check-$target.log")"
    start "pgfleet-$target" "$WORK/logs/pgfleet-$target.log" "$PGFLEET_BIN" --config "$WORK/pgfleet-$target.toml"
    ready=0
    for _ in $(seq 600); do
        if sql "$port" "$APP_USER" 'SELECT 1' >/dev/null 2>&1; then
            ready=1
            break
        fi
        kill -0 "${PIDS[-1]}" 2>/dev/null || break
        sleep 0.1
    done
    ((ready)) || die "pgfleet-$target did not start: $(tail -5 "$WORK/logs/pgfleet-$target.log")"
done
printf 'pgfleet-unsharded\t%s\tok\tpool %s, session pooling, the baseline primary + replica\n' \
    "$PORT_UNSHARDED" "$SHARD_POOL_SIZE" >>"$WORK/targets.tsv"
printf 'pgfleet-sharded\t%s\tok\tpool %s per node, session pooling, 2 shards of primary + replica\n' \
    "$PORT_SHARDED" "$SHARD_POOL_SIZE" >>"$WORK/targets.tsv"

log "loading $SHARD_ACCOUNTS accounts: COPY through pgfleet-sharded, and directly into the baseline primary"
python3 -c "
import sys
w = sys.stdout.write
for i in range(1, $SHARD_ACCOUNTS + 1):
    w(f'{i},owner {i},1000\n')
" >"$WORK/accounts.csv"
COPY="\\copy accounts (id, owner, balance) FROM '$WORK/accounts.csv' WITH (FORMAT csv)"
sql "$PORT_SHARDED" "$APP_USER" "$COPY" >/dev/null || die "COPY through pgfleet-sharded failed"
sql "$BASE_PRIMARY" "$APP_USER" "$COPY" >/dev/null || die "COPY into the baseline primary failed"
for port in "${PRIMARY[0]}" "${PRIMARY[1]}" "$BASE_PRIMARY"; do
    sql "$port" "$SUPERUSER" 'VACUUM ANALYZE accounts' >/dev/null
    sql "$port" "$SUPERUSER" 'CHECKPOINT' >/dev/null
done
ROWS0=$(sql "${PRIMARY[0]}" "$APP_USER" 'SELECT count(*) FROM accounts')
ROWS1=$(sql "${PRIMARY[1]}" "$APP_USER" 'SELECT count(*) FROM accounts')
THROUGH=$(sql "$PORT_SHARDED" "$APP_USER" 'SELECT count(*) FROM accounts')
log "shard 0 holds $ROWS0 accounts, shard 1 $ROWS1; count(*) through pgfleet-sharded: $THROUGH"
[[ $THROUGH == "$SHARD_ACCOUNTS" && $((ROWS0 + ROWS1)) == "$SHARD_ACCOUNTS" ]] || die "the accounts did not all arrive"

# The replicas must have the data before reads go there (pgfleet would send reads to the primaries until then).
for shard in 0 1 2; do
    lsn=$(sql "${PRIMARY[$shard]}" "$SUPERUSER" 'SELECT pg_current_wal_lsn()')
    for _ in $(seq 1200); do
        [[ $(sql "${REPLICA[$shard]}" "$SUPERUSER" "SELECT pg_last_wal_replay_lsn() >= '$lsn'") == t ]] && break
        sleep 0.1
    done
done
log "replicas caught up"

# The transfer script: a on shard 0, b on shard 1, chosen among the first SHARD_PAIRS accounts that each shard
# holds (placement as pgfleet put it, read from the shard primaries). pgbench has no arrays, so the lists
# become a balanced CASE tree: ten comparisons per pick instead of a thousand.
sql "${PRIMARY[0]}" "$APP_USER" "SELECT id FROM accounts ORDER BY id LIMIT $SHARD_PAIRS" >"$WORK/ids0"
sql "${PRIMARY[1]}" "$APP_USER" "SELECT id FROM accounts ORDER BY id LIMIT $SHARD_PAIRS" >"$WORK/ids1"
python3 - "$WORK/ids0" "$WORK/ids1" >"$WORK/shard_transfer.sql" <<'EOF'
import sys

def tree(var, ids, lo, hi):
    """A pgbench expression giving ids[k] for :var = k in [lo, hi)."""
    if hi - lo == 1:
        return ids[lo]
    mid = (lo + hi) // 2
    return f"CASE WHEN :{var} < {mid} THEN {tree(var, ids, lo, mid)} ELSE {tree(var, ids, mid, hi)} END"

ids0, ids1 = ([line.strip() for line in open(p) if line.strip()] for p in sys.argv[1:3])
print("-- pgfleet bench, sharded workload (generated by bench/sharded.sh): a transfer from an account on shard 0")
print("-- to one on shard 1 in one transaction, which a sharded pgfleet commits with two-phase commit. Every")
print("-- transaction locks its shard-0 row first, so concurrent transfers cannot deadlock across shards.")
print(f"\\set ka random(0, {len(ids0) - 1})")
print(f"\\set kb random(0, {len(ids1) - 1})")
print(f"\\set a {tree('ka', ids0, 0, len(ids0))}")
print(f"\\set b {tree('kb', ids1, 0, len(ids1))}")
print("\\set amount random(1, 100)")
print("BEGIN;")
print("UPDATE accounts SET balance = balance - :amount WHERE id = :a;")
print("UPDATE accounts SET balance = balance + :amount WHERE id = :b;")
print("COMMIT;")
EOF
cp "$WORK/shard_transfer.sql" "$SHARD_RESULTS/$STAMP-shard_transfer.sql"

{
    printf '\nSharded workload (bench/sharded.sh) %s, %s cores: pgfleet %s, SHARD_SECONDS=%s SHARD_ROUNDS=%s SHARD_ACCOUNTS=%s (shard 0: %s, shard 1: %s), pool size %s.\n\n' \
        "$STAMP" "$(nproc)" "$("$PGFLEET_BIN" --version | awk '{print $2}') ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown))" \
        "$SHARD_SECONDS" "$SHARD_ROUNDS" "$SHARD_ACCOUNTS" "$ROWS0" "$ROWS1" "$SHARD_POOL_SIZE"
} >>"$SHARD_SUMMARY"
python3 "$BENCH_DIR/pgbench_matrix.py" \
    --targets "$WORK/targets.tsv" \
    --work "$WORK/logs" \
    --workloads "$SHARD_WORKLOADS" \
    --clients "$SHARD_CLIENTS" \
    --seconds "$SHARD_SECONDS" \
    --rounds "$SHARD_ROUNDS" \
    --user "$APP_USER" --password "$APP_PASSWORD" --database "$APP_DB" \
    --max-connections "$MAX_CONNECTIONS" \
    --pgpool-children 0 \
    --pool-size "$SHARD_POOL_SIZE" \
    --script "shard_read=$BENCH_DIR/workloads/shard_read.sql" \
    --script "shard_write=$BENCH_DIR/workloads/shard_write.sql" \
    --script "shard_sum=$BENCH_DIR/workloads/shard_sum.sql" \
    --script "shard_transfer=$WORK/shard_transfer.sql" \
    --define "naccounts=$SHARD_ACCOUNTS" \
    --compare "pgfleet-sharded/pgfleet-unsharded pgfleet-sharded/direct pgfleet-unsharded/direct" \
    --warmup-script "$BENCH_DIR/workloads/shard_read.sql" \
    --warmup "$SHARD_WARMUP" \
    --summary "$SHARD_SUMMARY" &
MATRIX=$!
PIDS+=("$MATRIX")
wait "$MATRIX"

# Each cross-shard commit recorded its decision on the coordinator, shard 0 (the lowest participant); the rows
# stay for an hour, so their number shows that the transfers did commit with two-phase commit.
decisions=$(sql "${PRIMARY[0]}" "$SUPERUSER" 'SELECT count(*) FROM pgfleet.commit_decisions' 2>/dev/null || echo none)
log "commit decisions recorded on shard 0: $decisions"
printf '\nCommit decisions recorded on shard 0 (one per cross-shard commit): %s.\n' "$decisions" >>"$SHARD_SUMMARY"
# Two-phase commit leaves nothing behind: no prepared transaction on either shard primary.
for shard in 0 1; do
    left=$(sql "${PRIMARY[$shard]}" "$SUPERUSER" 'SELECT count(*) FROM pg_prepared_xacts')
    log "shard $shard primary: $left prepared transactions left"
    printf '\nShard %s primary after the runs: %s prepared transactions left.\n' "$shard" "$left" >>"$SHARD_SUMMARY"
done
log "done; summary tables in $SHARD_SUMMARY"
