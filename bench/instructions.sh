#!/usr/bin/env bash
# Instructions per transaction of pgfleet builds, counted by valgrind's callgrind: a measure that does not
# move with a busy machine, for comparing builds side by side (a new execution profile against the last one, a
# change against main).
#
#   bash bench/instructions.sh                          # target/release/pgfleet
#   bash bench/instructions.sh OLD_BINARY NEW_BINARY    # any number of builds, compared per workload
#
# Starts a PostgreSQL primary (`pgfleet demo`, with the first binary) and loads pgbench -s 10. Then, for each
# workload and binary, it runs pgfleet under callgrind in front of the primary alone (pgbouncer's topology;
# session pooling unless INSTR_POOL_MODE says transaction) twice, with INSTR_CLIENTS pgbench clients running
# INSTR_SHORT and then INSTR_LONG transactions each. The difference of the two runs' instruction counts over
# the difference of their transactions is what one transaction costs pgfleet, without its start-up, the logins
# or the shutdown. The health checks that run meanwhile make it move by a few dozen instructions from run to
# run.
#
# INSTR_KEEP=DIR keeps every callgrind output there (N-BINARY-WORKLOAD-TRANSACTIONS.out, N the binary's place in
# the arguments) and writes, per binary and workload, the functions with the most instructions per transaction
# (N-BINARY-WORKLOAD.functions.txt, made by bench/callgrind_self.py, which also breaks a function down by
# source line or compares two builds).
#
# Knobs: INSTR_WORKLOADS ("select-simple select-extended tpcb"; also select-prepared and rw90), INSTR_SHORT
# (100), INSTR_LONG (300), INSTR_CLIENTS (16), INSTR_SCALE (10), INSTR_PORT_BASE (17700), INSTR_POOL_MODE
# (session; transaction is pgbouncer's mode and bench/run.sh's pgfleet-primary target's). About ten seconds
# per workload and binary on 2 cores. Needs valgrind (installed from Debian when missing).
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
ROOT=$(cd "$BENCH_DIR/.." && pwd)
INSTR_WORKLOADS=${INSTR_WORKLOADS:-"select-simple select-extended tpcb"}
INSTR_SHORT=${INSTR_SHORT:-100}
INSTR_LONG=${INSTR_LONG:-300}
INSTR_CLIENTS=${INSTR_CLIENTS:-16}
INSTR_SCALE=${INSTR_SCALE:-10}
INSTR_PORT_BASE=${INSTR_PORT_BASE:-17700}
INSTR_POOL_MODE=${INSTR_POOL_MODE:-session}
INSTR_KEEP=${INSTR_KEEP:-}
KEPT=""
BIN_LABEL=""
BINARIES=("$@")
[[ ${#BINARIES[@]} -gt 0 ]] || BINARIES=("$ROOT/target/release/pgfleet")
# The demo cluster's credentials (src/demo.rs).
APP_USER=app
APP_PASSWORD=demo
APP_DB=app

log() { printf '[instructions %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

for bin in "${BINARIES[@]}"; do
    [[ -x $bin ]] || die "$bin is not an executable (build with bash scripts/build.sh)"
done
for tool in pgbench psql python3; do
    command -v "$tool" >/dev/null || die "$tool is not on PATH"
done
if ! command -v valgrind >/dev/null; then
    log "installing valgrind"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi
((INSTR_LONG > INSTR_SHORT)) || die "INSTR_LONG must be larger than INSTR_SHORT"

pgbench_args() { # WORKLOAD: pgbench's arguments for it
    case $1 in
    select-simple) echo "-S -M simple" ;;
    select-extended) echo "-S -M extended" ;;
    select-prepared) echo "-S -M prepared" ;;
    tpcb) echo "-b tpcb-like" ;;
    rw90) echo "-f $BENCH_DIR/workloads/rw90.sql" ;;
    *) return 1 ;;
    esac
}
for workload in $INSTR_WORKLOADS; do
    pgbench_args "$workload" >/dev/null || die "unknown workload $workload"
done
[[ $INSTR_POOL_MODE == session || $INSTR_POOL_MODE == transaction ]] ||
    die "INSTR_POOL_MODE is session or transaction, not $INSTR_POOL_MODE"

setup_work instructions
if [[ -n $INSTR_KEEP ]]; then
    mkdir -p "$INSTR_KEEP"
    INSTR_KEEP=$(cd "$INSTR_KEEP" && pwd)
fi

log "starting a cluster with pgfleet demo"
start_demo "${BINARIES[0]}" "127.0.0.1:$INSTR_PORT_BASE"
PRIMARY=$(python3 - "$CONFIG" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    config = tomllib.load(f)
print(next(n["address"] for n in config["nodes"] if n["role"] == "primary"))
EOF
)
export PGSSLMODE=disable PGCONNECT_TIMEOUT=30 PGPASSWORD=$APP_PASSWORD
for _ in $(seq 300); do
    psql -X -q -At -h "${PRIMARY%:*}" -p "${PRIMARY##*:}" -U "$APP_USER" -d "$APP_DB" -c 'SELECT 1' >/dev/null 2>&1 &&
        break
    sleep 0.1
done
log "pgbench -i -s $INSTR_SCALE on the primary"
pgbench -i -q -s "$INSTR_SCALE" -h "${PRIMARY%:*}" -p "${PRIMARY##*:}" -U "$APP_USER" "$APP_DB" >"$WORK/init.log" 2>&1 ||
    die "pgbench -i failed: $(tail -5 "$WORK/init.log")"

PORT=$((INSTR_PORT_BASE + 1))
printf '[listen]\naddress = "127.0.0.1:%s"\n\n[[users]]\nname = "%s"\npassword = "%s"\n\n' \
    "$PORT" "$APP_USER" "$APP_PASSWORD" >"$WORK/pgfleet.toml"
printf '[pool]\nmode = "%s"\n\n[[nodes]]\nname = "primary"\naddress = "%s"\nrole = "primary"\n\n[log]\nlevel = "warn"\n' \
    "$INSTR_POOL_MODE" "$PRIMARY" >>"$WORK/pgfleet.toml"

count() { # BINARY WORKLOAD TRANSACTIONS: pgfleet's instructions over a run of that many per client, into COUNT
    local bin=$1 workload=$2 transactions=$3 out pid
    out="$WORK/callgrind.$RANDOM.out"
    setsid valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --config "$WORK/pgfleet.toml" \
        >"$WORK/pgfleet.log" 2>&1 </dev/null &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 600); do
        psql -X -q -At -h 127.0.0.1 -p "$PORT" -U "$APP_USER" -d "$APP_DB" -c 'SELECT 1' >/dev/null 2>&1 && break
        sleep 0.1
    done
    # shellcheck disable=SC2046 # the workload's arguments are meant to split
    pgbench -n -c "$INSTR_CLIENTS" -j 2 -t "$transactions" -h 127.0.0.1 -p "$PORT" -U "$APP_USER" \
        $(pgbench_args "$workload") "$APP_DB" >"$WORK/pgbench.log" 2>&1 ||
        die "pgbench ($workload) through $bin failed: $(tail -5 "$WORK/pgbench.log")"
    kill -TERM "$pid"
    wait "$pid" || true
    unset 'PIDS[-1]'
    if [[ -n $INSTR_KEEP ]]; then
        KEPT="$INSTR_KEEP/$BIN_LABEL-$workload-$transactions.out"
        cp "$out" "$KEPT"
    fi
    COUNT=$(awk '/^(summary|totals):/ {print $2; exit}' "$out")
    [[ -n $COUNT ]] || die "callgrind wrote no total for $workload through $bin: $(tail -5 "$WORK/pgfleet.log")"
}

COUNT=""
declare -A RESULT=()
for workload in $INSTR_WORKLOADS; do
    for i in "${!BINARIES[@]}"; do
        bin=${BINARIES[$i]}
        # Numbered: two builds are often both called pgfleet.
        BIN_LABEL="$((i + 1))-$(basename "$bin")"
        log "$workload through $bin"
        count "$bin" "$workload" "$INSTR_SHORT"
        short=$COUNT short_kept=$KEPT
        count "$bin" "$workload" "$INSTR_LONG"
        long=$COUNT
        RESULT["$workload|$bin"]=$(((long - short) / ((INSTR_LONG - INSTR_SHORT) * INSTR_CLIENTS)))
        if [[ -n $INSTR_KEEP ]]; then
            python3 "$BENCH_DIR/callgrind_self.py" "$short_kept" "$KEPT" \
                --transactions $(((INSTR_LONG - INSTR_SHORT) * INSTR_CLIENTS)) --top 15 \
                >"$INSTR_KEEP/$BIN_LABEL-$workload.functions.txt"
        fi
    done
done

printf 'pgfleet instructions per transaction (callgrind; in front of the primary alone, %s pooling; %s clients; runs of %s and %s transactions per client):\n\n' \
    "$INSTR_POOL_MODE" "$INSTR_CLIENTS" "$INSTR_SHORT" "$INSTR_LONG"
printf '| workload |'
for bin in "${BINARIES[@]}"; do printf ' %s |' "$bin"; done
printf '\n|---|'
for _ in "${BINARIES[@]}"; do printf -- '---:|'; done
printf '\n'
for workload in $INSTR_WORKLOADS; do
    printf '| %s |' "$workload"
    for bin in "${BINARIES[@]}"; do printf ' %s |' "${RESULT["$workload|$bin"]}"; done
    printf '\n'
done
