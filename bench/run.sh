#!/usr/bin/env bash
# pgfleet benchmarks: one command, one local fleet, every target measured with the same pgbench workloads.
#
#   bash bench/run.sh
#
# Starts a primary + 2 streaming replicas (`pgfleet demo`, i.e. the test harness's LocalCluster), installs
# pgbouncer and pgpool-II from Debian packages (and psycopg 3) when missing, and then, alternating targets in
# rounds, runs pgbench against: the primary directly, pgfleet (session and transaction pooling), pgbouncer
# (transaction pooling, primary only) and pgpool-II (streaming-replication mode, load balancing on).
# Afterwards it measures pgfleet's memory and connection handling (idle clients, 5,000 concurrent clients on
# a pool of 20, a 2-million-row result streamed to a slow client). Last, bench/sharded.sh measures a sharded
# fleet against its unsharded baselines (BENCH_SHARDED=0 skips it).
#
# Everything it prints is also saved to bench/results/<timestamp>.txt (and the summary tables to .md).
# Every process it starts is stopped, and its temp dir removed, on exit and on Ctrl-C.
# Knobs (environment variables) are listed in bench/README.md; the defaults take about 1 h 45 min on 2 cores
# (40 minutes of it the sharded workload).
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)

# BENCH_QUICK=1: a short run for A/B checks (about 10 minutes on 2 cores): select-only and rw90 at 16 clients,
# one round of 10 s per target, no memory tests, the sharded workload in its short mode. Any knob set
# explicitly still wins.
if [[ ${BENCH_QUICK:-0} == 1 ]]; then
    BENCH_SECONDS=${BENCH_SECONDS:-10}
    BENCH_ROUNDS=${BENCH_ROUNDS:-1}
    BENCH_WARMUP=${BENCH_WARMUP:-2}
    BENCH_CLIENTS=${BENCH_CLIENTS:-16}
    BENCH_WORKLOADS=${BENCH_WORKLOADS:-"select-simple rw90"}
    BENCH_MEMORY=${BENCH_MEMORY:-0}
fi
# The sharded workload (bench/sharded.sh) runs last, in its short mode when BENCH_QUICK=1; 0 skips it.
BENCH_SHARDED=${BENCH_SHARDED:-1}
BENCH_SECONDS=${BENCH_SECONDS:-15}
BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_SCALE=${BENCH_SCALE:-10}
BENCH_WARMUP=${BENCH_WARMUP:-5}
BENCH_CLIENTS=${BENCH_CLIENTS:-"1 16 500"}
BENCH_WORKLOADS=${BENCH_WORKLOADS:-"select-simple select-extended select-prepared tpcb rw90"}
BENCH_TARGETS=${BENCH_TARGETS:-"direct direct-spread relay pgfleet-defaults pgfleet-session pgfleet-cores pgfleet-txn pgfleet-primary pgbouncer pgpool"}
BENCH_POOL_SIZE=${BENCH_POOL_SIZE:-20}
# Empty: pgfleet's own default for the key.
BENCH_AFFINITY=${BENCH_AFFINITY:-}
BENCH_WORKER_THREADS=${BENCH_WORKER_THREADS:-}
BENCH_CONSISTENCY=${BENCH_CONSISTENCY:-}
# CPU list (taskset -c) for every proxy process (pgfleet, pgbouncer, pgpool-II), e.g. "1" to give the proxies a
# core of their own and keep pgbench and the servers on the others; empty: no pinning.
BENCH_PROXY_CPUS=${BENCH_PROXY_CPUS:-}
PROXY_PIN=()
[[ -n $BENCH_PROXY_CPUS ]] && PROXY_PIN=(taskset -c "$BENCH_PROXY_CPUS")
BENCH_PGPOOL_CHILDREN=${BENCH_PGPOOL_CHILDREN:-32}
# 1: the proxies (pgfleet, pgbouncer, pgpool-II; not the TCP relays) reach the servers through the servers'
# Unix-domain sockets instead of loopback TCP; clients still connect over TCP. 0: TCP everywhere.
BENCH_NODE_SOCKETS=${BENCH_NODE_SOCKETS:-0}
BENCH_MEMORY=${BENCH_MEMORY:-1}
BENCH_IDLE_CLIENTS=${BENCH_IDLE_CLIENTS:-5000}
BENCH_CONCURRENT_CLIENTS=${BENCH_CONCURRENT_CLIENTS:-5000}
BENCH_STREAM_ROWS=${BENCH_STREAM_ROWS:-2000000}
BENCH_STREAM_RATE=${BENCH_STREAM_RATE:-200000}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-17400}
BENCH_INSTALL=${BENCH_INSTALL:-1}
BENCH_BUILD=${BENCH_BUILD:-1}
BENCH_RESULTS=${BENCH_RESULTS:-$BENCH_DIR/results}
PGFLEET_BIN=${PGFLEET_BIN:-$ROOT/target/release/pgfleet}

# The demo cluster's credentials (src/demo.rs): app/demo owns database app; the superuser postgres has the
# same password.
APP_USER=app
APP_PASSWORD=demo
APP_DB=app
SUPERUSER=postgres

PORT_DEMO=$BENCH_PORT_BASE
PORT_SESSION=$((BENCH_PORT_BASE + 1))
PORT_TXN=$((BENCH_PORT_BASE + 2))
PORT_BOUNCER=$((BENCH_PORT_BASE + 3))
PORT_PGPOOL=$((BENCH_PORT_BASE + 4))
PORT_PCP=$((BENCH_PORT_BASE + 5))
PORT_MEM=$((BENCH_PORT_BASE + 6))
PORT_PRIMARY_ONLY=$((BENCH_PORT_BASE + 7))
PORT_CORES=$((BENCH_PORT_BASE + 8))
PORT_DEFAULTS=$((BENCH_PORT_BASE + 9))
PORT_RELAY=$((BENCH_PORT_BASE + 10))
PORT_RELAY_URING=$((BENCH_PORT_BASE + 11))
PORT_BASE_BUILD=$((BENCH_PORT_BASE + 12))

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$BENCH_RESULTS"
RESULT_FILE=$BENCH_RESULTS/$STAMP.txt
SUMMARY_FILE=$BENCH_RESULTS/$STAMP.md
# tee ignores Ctrl-C so that it still records (and shows) what the cleanup says.
exec > >(
    trap '' INT TERM
    exec tee -a "$RESULT_FILE"
) 2>&1
TEE_PID=$!

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() {
    log "ERROR: $*"
    exit 1
}

WORK=""
declare -a STARTED_NAMES=()
declare -A STARTED_PIDS=()
declare -A STOP_SIGNAL=()

# ---------------------------------------------------------------------------------------------------------
# Processes: each service runs in its own session (setsid) so that Ctrl-C reaches only this script and
# pgbench; the trap stops them in reverse start order, by pid (the group only if a leader ignores us).
# ---------------------------------------------------------------------------------------------------------

# start NAME SIGNAL LOGFILE CMD...: runs CMD in the background in a new session, remembering its pid.
start() {
    local name=$1 signal=$2 logfile=$3
    shift 3
    setsid "$@" >"$logfile" 2>&1 </dev/null &
    local pid=$!
    STARTED_NAMES+=("$name")
    STARTED_PIDS[$name]=$pid
    STOP_SIGNAL[$name]=$signal
    echo "$pid" >"$WORK/pids/$name"
}

alive() { kill -0 "$1" 2>/dev/null; }

# run_step CMD...: runs a long step (pgbench driver, memory test) in the background and waits for it, so that
# a signal reaches our trap at once instead of after the step; the trap stops the step by its pid.
FG_PID=""
run_step() {
    "$@" &
    FG_PID=$!
    local rc=0
    wait "$FG_PID" || rc=$?
    FG_PID=""
    return "$rc"
}

# stop NAME: the service's stop signal, up to 20 s for it to exit, then SIGKILL to its process group.
stop() {
    local name=$1
    local pid=${STARTED_PIDS[$name]:-}
    [[ -n $pid ]] || return 0
    unset "STARTED_PIDS[$name]"
    alive "$pid" || return 0
    kill "-${STOP_SIGNAL[$name]}" "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 200; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        log "$name (pid $pid) did not stop after SIG${STOP_SIGNAL[$name]}; killing its process group"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    # pgpool-II's children leave when their parent does; give stragglers of this group a moment, then kill.
    sleep 0.2
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$? i
    trap - EXIT INT TERM
    if [[ -n $FG_PID ]] && alive "$FG_PID"; then
        kill -TERM "$FG_PID" 2>/dev/null || true
        # bench/sharded.sh stops its own demo (six servers) before it exits: give it time.
        for ((i = 0; i < 300; i++)); do
            alive "$FG_PID" || break
            sleep 0.1
        done
        kill -KILL "$FG_PID" 2>/dev/null || true
    fi
    if ((${#STARTED_NAMES[@]})); then
        log "stopping everything this run started"
        for ((i = ${#STARTED_NAMES[@]} - 1; i >= 0; i--)); do
            stop "${STARTED_NAMES[$i]}"
        done
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        rm -rf "$WORK"
    fi
    log "results saved in $RESULT_FILE"
    # Let tee write the last lines before we go.
    exec >&- 2>&-
    wait "$TEE_PID" 2>/dev/null || true
    exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---------------------------------------------------------------------------------------------------------
# Preflight: tools, file descriptors, packages, the pgfleet binary.
# ---------------------------------------------------------------------------------------------------------

IS_ROOT=0
[[ $(id -u) -eq 0 ]] && IS_ROOT=1

need_fds=$((BENCH_IDLE_CLIENTS > BENCH_CONCURRENT_CLIENTS ? BENCH_IDLE_CLIENTS : BENCH_CONCURRENT_CLIENTS))
need_fds=$((2 * need_fds + 2000))
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < need_fds)); then
    log "warning: open-file limit $(ulimit -n) is below the $need_fds the 5,000-client tests need"
fi

for tool in pgbench psql python3; do
    command -v "$tool" >/dev/null || die "$tool is not on PATH (apt-get install postgresql-client python3)"
done

APT_UPDATED=0
apt_install() {
    if ((!IS_ROOT)); then
        log "cannot install $* (not root)"
        return 1
    fi
    if ((!APT_UPDATED)); then
        apt-get update -qq >/dev/null 2>&1 || true
        APT_UPDATED=1
    fi
    # Debian starts a package's service on install; a policy-rc.d answering 101 forbids that, and we
    # remove ours again afterwards (an existing one is left as it is).
    local own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >"/tmp/pgfleet-bench-apt.log" 2>&1 || rc=$?
    ((own_policy)) && rm -f /usr/sbin/policy-rc.d
    if ((rc)); then
        log "apt-get install $* failed; see /tmp/pgfleet-bench-apt.log"
        return 1
    fi
    rm -f /tmp/pgfleet-bench-apt.log
}

target_wanted() { [[ " $BENCH_TARGETS " == *" $1 "* ]]; }

HAVE_PGBOUNCER=0
HAVE_PGPOOL=0
if target_wanted pgbouncer; then
    if ! command -v pgbouncer >/dev/null && [[ ! -x /usr/sbin/pgbouncer ]] && ((BENCH_INSTALL)); then
        log "installing pgbouncer (Debian package)"
        apt_install pgbouncer || true
    fi
    if command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]]; then HAVE_PGBOUNCER=1; fi
fi
if target_wanted pgpool; then
    if ! command -v pgpool >/dev/null && [[ ! -x /usr/sbin/pgpool ]] && ((BENCH_INSTALL)); then
        log "installing pgpool-II (Debian package pgpool2)"
        apt_install pgpool2 || true
    fi
    if command -v pgpool >/dev/null || [[ -x /usr/sbin/pgpool ]]; then HAVE_PGPOOL=1; fi
fi
export PATH="$PATH:/usr/sbin:/sbin"
if ((BENCH_MEMORY)) && ! python3 -c 'import psycopg' 2>/dev/null && ((BENCH_INSTALL)); then
    log "installing psycopg 3"
    # pip where python3 is a venv or pyenv interpreter; Debian's own python3 refuses pip and takes the package.
    python3 -m pip install -q 'psycopg[binary]' 2>/dev/null || apt_install python3-psycopg || true
fi
if ((BENCH_MEMORY)) && ! python3 -c 'import psycopg' 2>/dev/null; then
    log "psycopg 3 is missing: the memory and connection tests are skipped"
    BENCH_MEMORY=0
fi

if ((BENCH_BUILD)); then
    # The release build as shipped: with the committed execution profile (scripts/build.sh).
    log "release build (scripts/build.sh)"
    # It says on stderr whether it used the profile, and which.
    (cd "$ROOT" && bash scripts/build.sh build --release --quiet) || die "the release build (scripts/build.sh) failed"
fi
[[ -x $PGFLEET_BIN ]] || die "no pgfleet binary at $PGFLEET_BIN (cargo build --release, or set PGFLEET_BIN)"

for port in "$PORT_DEMO" "$PORT_DEFAULTS" "$PORT_RELAY" "$PORT_RELAY_URING" "$PORT_SESSION" "$PORT_TXN" "$PORT_BOUNCER" "$PORT_PGPOOL" "$PORT_PCP" "$PORT_MEM"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is in use; choose other ports with BENCH_PORT_BASE"
    fi
done

# The OS user pgbouncer and pgpool-II run as when we are root (both refuse root), as the servers do.
SERVICE_USER=""
if ((IS_ROOT)); then
    SERVICE_USER=${PGFLEET_PG_USER:-postgres}
    id -u "$SERVICE_USER" >/dev/null 2>&1 || SERVICE_USER=pgfleet
    id -u "$SERVICE_USER" >/dev/null 2>&1 || useradd --system --no-create-home --user-group "$SERVICE_USER"
fi
# Prefix that runs a command as that user (empty when we are not root).
AS_SERVICE_USER=()
[[ -n $SERVICE_USER ]] && AS_SERVICE_USER=(setpriv "--reuid=$SERVICE_USER" "--regid=$SERVICE_USER" --init-groups --)

WORK=$(mktemp -d /tmp/pgfleet-bench.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/pids" "$WORK/logs" "$WORK/pgbouncer" "$WORK/pgpool"
[[ -n $SERVICE_USER ]] && chown "$SERVICE_USER" "$WORK/pgbouncer" "$WORK/pgpool"

log "pgfleet benchmark $STAMP on $(uname -n): $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
PGFLEET_VERSION="$("$PGFLEET_BIN" --version | awk '{print $2}') ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ', uncommitted changes in src'))"
log "pgfleet $PGFLEET_VERSION, binary $PGFLEET_BIN built $(date -u -r "$PGFLEET_BIN" '+%Y-%m-%d %H:%M UTC'); $(pgbench --version)"
log "load average now: $(cut -d' ' -f1-3 /proc/loadavg) (anything else running makes the numbers noisy)"
log "settings: BENCH_SECONDS=$BENCH_SECONDS BENCH_ROUNDS=$BENCH_ROUNDS BENCH_SCALE=$BENCH_SCALE BENCH_CLIENTS='$BENCH_CLIENTS' BENCH_POOL_SIZE=$BENCH_POOL_SIZE BENCH_AFFINITY=${BENCH_AFFINITY:-default} BENCH_WORKER_THREADS=${BENCH_WORKER_THREADS:-default} BENCH_NODE_SOCKETS=$BENCH_NODE_SOCKETS"

# ---------------------------------------------------------------------------------------------------------
# The cluster: `pgfleet demo` builds it with the test harness (crates/localcluster) and prints its config.
# Its own pgfleet stays idle; every target below gets its own process and config.
# ---------------------------------------------------------------------------------------------------------

log "starting the cluster (primary + 2 streaming replicas) with pgfleet demo"
start demo TERM "$WORK/demo.out" "$PGFLEET_BIN" demo --listen "127.0.0.1:$PORT_DEMO"
DEMO_CONFIG=""
for ((i = 0; i < 1800; i++)); do
    DEMO_CONFIG=$(awk '$1 == "config" {print $2}' "$WORK/demo.out" 2>/dev/null || true)
    [[ -n $DEMO_CONFIG && -f $DEMO_CONFIG ]] && break
    alive "${STARTED_PIDS[demo]}" || {
        cat "$WORK/demo.out"
        die "pgfleet demo exited"
    }
    sleep 0.1
done
[[ -n $DEMO_CONFIG ]] || die "pgfleet demo printed no config within 180 s"
grep -E '^  (primary|replica)' "$WORK/demo.out" | sed 's/^/    /'

# Node name, port and role, one per line, from the demo's TOML (tomllib: Python 3.11+).
mapfile -t NODES < <(python3 - "$DEMO_CONFIG" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    config = tomllib.load(f)
for node in config["nodes"]:
    host, port = node["address"].rsplit(":", 1)
    print(node["name"], host, port, node["role"])
EOF
)
# The servers' sockets are in their node directories beside the demo's config (crates/localcluster's layout).
if ((BENCH_NODE_SOCKETS)); then
    for i in "${!NODES[@]}"; do
        read -r _name _host _port _role <<<"${NODES[$i]}"
        NODES[i]="$_name $(dirname "$DEMO_CONFIG")/$_name $_port $_role"
    done
    log "proxies reach the servers through their Unix-domain sockets (BENCH_NODE_SOCKETS=1)"
fi
PRIMARY_PORT=""
PRIMARY_HOST=""
REPLICA_PORTS=()
for line in "${NODES[@]}"; do
    read -r _name _host _port _role <<<"$line"
    if [[ $_role == primary ]]; then
        PRIMARY_PORT=$_port PRIMARY_HOST=$_host
    else
        REPLICA_PORTS+=("$_port")
    fi
done
[[ -n $PRIMARY_PORT && ${#REPLICA_PORTS[@]} -ge 1 ]] || die "cannot read the nodes from $DEMO_CONFIG"

export PGSSLMODE=disable PGCONNECT_TIMEOUT=30
superuser_sql() { # PORT SQL
    PGPASSWORD=$APP_PASSWORD psql -X -q -At -h 127.0.0.1 -p "$1" -U "$SUPERUSER" -d postgres -c "$2"
}
app_sql() { # PORT SQL
    PGPASSWORD=$APP_PASSWORD psql -X -q -At -h 127.0.0.1 -p "$1" -U "$APP_USER" -d "$APP_DB" -c "$2"
}
for ((i = 0; i < 300; i++)); do
    superuser_sql "$PRIMARY_PORT" 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.1
done
MAX_CONNECTIONS=$(superuser_sql "$PRIMARY_PORT" 'SHOW max_connections')

log "pgbench -i -s $BENCH_SCALE on the primary (port $PRIMARY_PORT)"
PGPASSWORD=$APP_PASSWORD pgbench -i -q -s "$BENCH_SCALE" -h 127.0.0.1 -p "$PRIMARY_PORT" -U "$APP_USER" "$APP_DB" \
    >"$WORK/logs/pgbench-init.log" 2>&1 || {
    cat "$WORK/logs/pgbench-init.log"
    die "pgbench -i failed"
}
superuser_sql "$PRIMARY_PORT" 'CHECKPOINT' >/dev/null
wait_replicas() {
    local lsn port i
    lsn=$(superuser_sql "$PRIMARY_PORT" 'SELECT pg_current_wal_lsn()')
    for port in "${REPLICA_PORTS[@]}"; do
        for ((i = 0; i < 1200; i++)); do
            [[ $(superuser_sql "$port" "SELECT pg_last_wal_replay_lsn() >= '$lsn'") == t ]] && break
            sleep 0.1
        done
    done
}
wait_replicas
log "replicas caught up"

# wait_ready NAME PORT: SELECT 1 through the target as the app user, for up to 60 s.
wait_ready() {
    local name=$1 port=$2 i
    for ((i = 0; i < 600; i++)); do
        if app_sql "$port" 'SELECT 1' >/dev/null 2>&1; then
            return 0
        fi
        if ! alive "${STARTED_PIDS[$name]}"; then
            log "$name exited; its log:"
            tail -n 30 "$WORK/logs/$name.log" | sed 's/^/    /'
            return 1
        fi
        sleep 0.1
    done
    log "$name did not answer within 60 s; its log:"
    tail -n 30 "$WORK/logs/$name.log" | sed 's/^/    /'
    return 1
}

# ---------------------------------------------------------------------------------------------------------
# Targets. targets.tsv: name, port, state ("ok" or "n/a"), note.
# ---------------------------------------------------------------------------------------------------------

# pgfleet_config PORT MODE(session|transaction|"") MAX_SIZE [NODES(all|primary)] [WORKER_THREADS]
pgfleet_config() {
    local port=$1 mode=$2 max_size=$3 nodes=${4:-all} workers=${5:-$BENCH_WORKER_THREADS} line
    printf '# generated by bench/run.sh\n'
    [[ -n $workers ]] && printf 'worker_threads = %s\n' "$workers"
    printf '\n'
    printf '[listen]\naddress = "127.0.0.1:%s"\n\n' "$port"
    printf '[[users]]\nname = "%s"\npassword = "%s"\n\n' "$APP_USER" "$APP_PASSWORD"
    for line in "${NODES[@]}"; do
        read -r _name _host _port _role <<<"$line"
        [[ $nodes == primary && $_role != primary ]] && continue
        printf '[[nodes]]\nname = "%s"\naddress = "%s:%s"\nrole = "%s"\n\n' "$_name" "$_host" "$_port" "$_role"
    done
    printf '[routing]\nload_balance = "round_robin"\n'
    [[ -n $BENCH_AFFINITY ]] && printf 'replica_affinity = "%s"\n' "$BENCH_AFFINITY"
    [[ -n $BENCH_CONSISTENCY ]] && printf 'consistency = "%s"\n' "$BENCH_CONSISTENCY"
    # With the primary alone, reads go there (as through pgbouncer) instead of failing for want of a replica.
    [[ $nodes == primary ]] && printf 'primary_reads = true\n'
    printf '\n'
    printf '[pool]\nmax_size = %s\n' "$max_size"
    [[ -n $mode ]] && printf 'mode = "%s"\n' "$mode"
    printf '\n[log]\nlevel = "warn"\n'
}

# Which pool modes does this build know? `[pool] mode` is checked with --check, never assumed.
SESSION_MODE=""
TXN_MODE_OK=0
TXN_NOTE=""
pgfleet_config "$PORT_TXN" transaction "$BENCH_POOL_SIZE" >"$WORK/probe-txn.toml"
if "$PGFLEET_BIN" --check --config "$WORK/probe-txn.toml" >"$WORK/logs/probe-txn.log" 2>&1; then
    TXN_MODE_OK=1
    pgfleet_config "$PORT_SESSION" session "$BENCH_POOL_SIZE" >"$WORK/probe-session.toml"
    if "$PGFLEET_BIN" --check --config "$WORK/probe-session.toml" >/dev/null 2>&1; then SESSION_MODE=session; fi
else
    TXN_NOTE="transaction mode: not available in this build"
    log "$TXN_NOTE (pgfleet --check: $(awk 'NF && !/\|/ {line = $0} END {print line}' "$WORK/logs/probe-txn.log"))"
    log "pgfleet-session runs with this build's default pooling (a backend per client session)"
fi

printf 'name\tport\tstate\tnote\n' >"$WORK/targets.tsv"
add_target() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$WORK/targets.tsv"; }

# serve_target NAME PORT SIGNAL NOTE COMMAND...: starts a target and lists it, "ok" with NOTE once it answers
# SELECT 1, else "n/a".
serve_target() {
    local name=$1 port=$2 signal=$3 note=$4
    shift 4
    start "$name" "$signal" "$WORK/logs/$name.log" "${PROXY_PIN[@]}" "$@"
    if wait_ready "$name" "$port"; then
        add_target "$name" "$port" ok "$note"
    else
        add_target "$name" "$port" n/a "did not start"
    fi
}

start_pgfleet() { # NAME PORT MODE MAX_SIZE [NODES] [WORKER_THREADS]
    local name=$1 port=$2 mode=$3 max_size=$4 nodes=${5:-all} workers=${6:-$BENCH_WORKER_THREADS}
    pgfleet_config "$port" "$mode" "$max_size" "$nodes" "$workers" >"$WORK/$name.toml"
    "$PGFLEET_BIN" --check --config "$WORK/$name.toml" >/dev/null || return 1
    start "$name" TERM "$WORK/logs/$name.log" "${PROXY_PIN[@]}" "$PGFLEET_BIN" --config "$WORK/$name.toml"
    wait_ready "$name" "$port"
}

if target_wanted direct; then
    add_target direct "$PRIMARY_PORT" ok "the primary, no proxy"
fi

# No proxy either, but the clients split evenly over the primary and the replicas (read-only workloads): the
# same spread as pgfleet's defaults give reads, so that what spreading itself costs on this machine (three
# servers sharing its cores and caches) shows apart from what pgfleet costs.
if target_wanted direct-spread; then
    add_target direct-spread "$PRIMARY_PORT" ok "the primary and the replicas, no proxy, clients split evenly"
fi

# A bare byte relay on tokio's current-thread runtime (bench/relay): a connection to the primary per client and
# nothing decided. Its CPU per transaction is what the runtime, the sockets and the wake-ups cost any proxy built
# like pgfleet, so the difference to pgfleet is pgfleet's own work.
if target_wanted relay; then
    RELAY_BIN=$BENCH_DIR/relay/target/release/relay
    if (cd "$BENCH_DIR/relay" && cargo build --release --quiet) >"$WORK/logs/relay-build.log" 2>&1; then
        serve_target relay "$PORT_RELAY" TERM "bare byte relay to the primary (tokio current-thread, a connection per client)" \
            "$RELAY_BIN" "127.0.0.1:$PORT_RELAY" "127.0.0.1:$PRIMARY_PORT"
    else
        add_target relay "$PORT_RELAY" n/a "did not build (see logs/relay-build.log)"
    fi
fi

# The same relay on an io_uring runtime (bench/relay, relay-uring; opt-in, not in the default targets): what a
# thread-per-core io_uring design would cost per transaction, next to the epoll relay above. Reported as n/a
# where the kernel refuses io_uring (it then exits at once).
if target_wanted relay-uring; then
    RELAY_URING_BIN=$BENCH_DIR/relay/target/release/relay-uring
    if (cd "$BENCH_DIR/relay" && cargo build --release --quiet) >"$WORK/logs/relay-build.log" 2>&1; then
        serve_target relay-uring "$PORT_RELAY_URING" TERM \
            "bare byte relay to the primary (io_uring, one thread, cooperative task running; a connection per client)" \
            "$RELAY_URING_BIN" "127.0.0.1:$PORT_RELAY_URING" "127.0.0.1:$PRIMARY_PORT"
    else
        add_target relay-uring "$PORT_RELAY_URING" n/a "did not build (see logs/relay-build.log)"
    fi
fi

# The configuration a user writes first: the three nodes, the primary also serving reads, every other key at
# its default (pool mode and size, balancing, affinity, consistency, worker threads).
if target_wanted pgfleet-defaults; then
    {
        printf '# generated by bench/run.sh: defaults\n[listen]\naddress = "127.0.0.1:%s"\n\n' "$PORT_DEFAULTS"
        printf '[[users]]\nname = "%s"\npassword = "%s"\n\n' "$APP_USER" "$APP_PASSWORD"
        for line in "${NODES[@]}"; do
            read -r _name _host _port _role <<<"$line"
            printf '[[nodes]]\nname = "%s"\naddress = "%s:%s"\nrole = "%s"\n\n' "$_name" "$_host" "$_port" "$_role"
        done
        printf '[routing]\nprimary_reads = true\n'
    } >"$WORK/pgfleet-defaults.toml"
    if "$PGFLEET_BIN" --check --config "$WORK/pgfleet-defaults.toml" >/dev/null; then
        serve_target pgfleet-defaults "$PORT_DEFAULTS" TERM "the three nodes, primary_reads = true, every other key at its default" \
            "$PGFLEET_BIN" --config "$WORK/pgfleet-defaults.toml"
    else
        add_target pgfleet-defaults "$PORT_DEFAULTS" n/a "pgfleet --check refused the config"
    fi
fi

if target_wanted pgfleet-session; then
    if start_pgfleet pgfleet-session "$PORT_SESSION" "$SESSION_MODE" "$BENCH_POOL_SIZE"; then
        add_target pgfleet-session "$PORT_SESSION" ok "pool $BENCH_POOL_SIZE per node, ${SESSION_MODE:-default} pooling, round-robin reads on replicas, replica_affinity ${BENCH_AFFINITY:-default}, worker_threads ${BENCH_WORKER_THREADS:-default}"
    else
        add_target pgfleet-session "$PORT_SESSION" n/a "did not start"
    fi
fi

# The same as pgfleet-session with one session worker per core: side by side, what more workers cost or buy.
if target_wanted pgfleet-cores; then
    if start_pgfleet pgfleet-cores "$PORT_CORES" "$SESSION_MODE" "$BENCH_POOL_SIZE" all "$(nproc)"; then
        add_target pgfleet-cores "$PORT_CORES" ok "as pgfleet-session with worker_threads = $(nproc) (one per core)"
    else
        add_target pgfleet-cores "$PORT_CORES" n/a "did not start"
    fi
fi

if target_wanted pgfleet-txn; then
    if ((!TXN_MODE_OK)); then
        add_target pgfleet-txn "$PORT_TXN" n/a "$TXN_NOTE"
    elif start_pgfleet pgfleet-txn "$PORT_TXN" transaction "$BENCH_POOL_SIZE"; then
        add_target pgfleet-txn "$PORT_TXN" ok "pool $BENCH_POOL_SIZE per node, transaction pooling"
    else
        add_target pgfleet-txn "$PORT_TXN" n/a "did not start"
    fi
fi

if target_wanted pgfleet-primary; then
    if ((!TXN_MODE_OK)); then
        add_target pgfleet-primary "$PORT_PRIMARY_ONLY" n/a "$TXN_NOTE"
    elif start_pgfleet pgfleet-primary "$PORT_PRIMARY_ONLY" transaction "$BENCH_POOL_SIZE" primary; then
        add_target pgfleet-primary "$PORT_PRIMARY_ONLY" ok "the primary as its only node (pgbouncer's topology), transaction pooling, pool $BENCH_POOL_SIZE"
    else
        add_target pgfleet-primary "$PORT_PRIMARY_ONLY" n/a "did not start"
    fi
fi

# pgfleet-primary's configuration served by another build (PGFLEET_BASE_BIN; opt-in, not in the default
# targets): a change and the build before it measured side by side in one run, CPU per transaction included,
# which separate runs on a shared machine cannot compare.
if target_wanted pgfleet-base; then
    if [[ -z ${PGFLEET_BASE_BIN:-} || ! -x ${PGFLEET_BASE_BIN:-} ]]; then
        add_target pgfleet-base "$PORT_BASE_BUILD" n/a "PGFLEET_BASE_BIN names no executable"
    elif ((!TXN_MODE_OK)); then
        add_target pgfleet-base "$PORT_BASE_BUILD" n/a "$TXN_NOTE"
    else
        pgfleet_config "$PORT_BASE_BUILD" transaction "$BENCH_POOL_SIZE" primary "$BENCH_WORKER_THREADS" \
            >"$WORK/pgfleet-base.toml"
        serve_target pgfleet-base "$PORT_BASE_BUILD" TERM \
            "as pgfleet-primary, served by $PGFLEET_BASE_BIN ($("$PGFLEET_BASE_BIN" --version | awk '{print $2}'))" \
            "$PGFLEET_BASE_BIN" --config "$WORK/pgfleet-base.toml"
    fi
fi

if target_wanted pgbouncer; then
    if ((HAVE_PGBOUNCER)); then
        B=$WORK/pgbouncer
        printf '"%s" "%s"\n' "$APP_USER" "$APP_PASSWORD" >"$B/userlist.txt"
        cat >"$B/pgbouncer.ini" <<EOF
; generated by bench/run.sh
[databases]
$APP_DB = host=$PRIMARY_HOST port=$PRIMARY_PORT dbname=$APP_DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT_BOUNCER
unix_socket_dir =
pidfile = $B/pgbouncer.pid
auth_type = scram-sha-256
auth_file = $B/userlist.txt
pool_mode = transaction
default_pool_size = $BENCH_POOL_SIZE
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 6000
max_db_connections = $BENCH_POOL_SIZE
ignore_startup_parameters = extra_float_digits,options
log_connections = 0
log_disconnections = 0
log_stats = 0
EOF
        [[ -n $SERVICE_USER ]] && chown -R "$SERVICE_USER" "$B"
        serve_target pgbouncer "$PORT_BOUNCER" TERM \
            "transaction pooling, pool $BENCH_POOL_SIZE, primary only, pgbouncer $(pgbouncer --version | awk 'NR==1 {print $2}')" \
            "${AS_SERVICE_USER[@]}" "$(command -v pgbouncer)" "$B/pgbouncer.ini"
    else
        add_target pgbouncer "$PORT_BOUNCER" n/a "pgbouncer is not installed"
    fi
fi

if target_wanted pgpool; then
    if ((HAVE_PGPOOL)); then
        P=$WORK/pgpool
        {
            cat <<EOF
# generated by bench/run.sh: streaming-replication mode, reads balanced over the replicas (weight 0 keeps
# them off the primary, like pgfleet's primary_reads = false), no health or replication checks during runs.
backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = $PORT_PGPOOL
socket_dir = '$P'
pcp_listen_addresses = '127.0.0.1'
pcp_port = $PORT_PCP
pcp_socket_dir = '$P'
pid_file_name = '$P/pgpool.pid'
logdir = '$P'
log_destination = 'stderr'
logging_collector = off
log_min_messages = warning
log_connections = off
enable_pool_hba = off
pool_passwd = 'pool_passwd'
allow_clear_text_frontend_auth = off
ssl = off
num_init_children = $BENCH_PGPOOL_CHILDREN
max_pool = 1
reserved_connections = 0
listen_backlog_multiplier = 2
child_life_time = 0
child_max_connections = 0
connection_life_time = 0
client_idle_limit = 0
connection_cache = on
load_balance_mode = on
statement_level_load_balance = off
disable_load_balance_on_write = 'transaction'
sr_check_period = 0
sr_check_user = '$SUPERUSER'
sr_check_password = '$APP_PASSWORD'
sr_check_database = 'postgres'
health_check_period = 0
failover_on_backend_error = off
failover_command = ''
use_watchdog = off
memory_cache_enabled = off
EOF
            n=0
            for line in "${NODES[@]}"; do
                read -r _name _host _port _role <<<"$line"
                weight=1
                [[ $_role == primary ]] && weight=0
                printf "backend_hostname%d = '%s'\nbackend_port%d = %s\nbackend_weight%d = %s\nbackend_flag%d = 'DISALLOW_TO_FAILOVER'\nbackend_application_name%d = '%s'\n" \
                    "$n" "$_host" "$n" "$_port" "$n" "$weight" "$n" "$n" "$_name"
                n=$((n + 1))
            done
        } >"$P/pgpool.conf"
        printf '%s:TEXT%s\n' "$APP_USER" "$APP_PASSWORD" >"$P/pool_passwd"
        : >"$P/pcp.conf"
        : >"$P/pool_hba.conf"
        chmod 600 "$P/pool_passwd"
        [[ -n $SERVICE_USER ]] && chown -R "$SERVICE_USER" "$P"
        # INT is pgpool-II's fast shutdown (TERM waits for every client to leave).
        serve_target pgpool "$PORT_PGPOOL" INT \
            "streaming replication, load balancing over the replicas, $BENCH_PGPOOL_CHILDREN children, $(pgpool --version 2>&1 | awk '{print "pgpool-II", $3}')" \
            "${AS_SERVICE_USER[@]}" "$(command -v pgpool)" -n -D -f "$P/pgpool.conf" -F "$P/pcp.conf" -a "$P/pool_hba.conf"
    else
        add_target pgpool "$PORT_PGPOOL" n/a "pgpool-II is not installed"
    fi
fi

log "targets:"
column -t -s $'\t' "$WORK/targets.tsv" | sed 's/^/    /'

# ---------------------------------------------------------------------------------------------------------
# pgbench matrix
# ---------------------------------------------------------------------------------------------------------

{
    printf 'Run %s on %s (%s cores): pgfleet %s, BENCH_SECONDS=%s BENCH_ROUNDS=%s BENCH_SCALE=%s, pool size %s, proxies to servers over %s.\n\n' \
        "$STAMP" "$(uname -n)" "$(nproc)" "$PGFLEET_VERSION" "$BENCH_SECONDS" "$BENCH_ROUNDS" "$BENCH_SCALE" "$BENCH_POOL_SIZE" \
        "$( ((BENCH_NODE_SOCKETS)) && echo "Unix-domain sockets" || echo "TCP")"
} >"$SUMMARY_FILE"
run_step python3 "$BENCH_DIR/pgbench_matrix.py" \
    --targets "$WORK/targets.tsv" \
    --work "$WORK/logs" \
    --workloads "$BENCH_WORKLOADS" \
    --clients "$BENCH_CLIENTS" \
    --seconds "$BENCH_SECONDS" \
    --rounds "$BENCH_ROUNDS" \
    --user "$APP_USER" --password "$APP_PASSWORD" --database "$APP_DB" \
    --max-connections "$MAX_CONNECTIONS" \
    --pgpool-children "$BENCH_PGPOOL_CHILDREN" \
    --pool-size "$BENCH_POOL_SIZE" \
    --rw-script "$BENCH_DIR/workloads/rw90.sql" \
    --script "bigkey=$BENCH_DIR/workloads/bigkey.sql" \
    --warmup "$BENCH_WARMUP" \
    --summary "$SUMMARY_FILE" \
    --spread-ports "$PRIMARY_PORT ${REPLICA_PORTS[*]}"

if [[ -n ${STARTED_PIDS[pgpool]:-} ]]; then
    printf '\npgpool-II SHOW pool_nodes after the runs (select_cnt: reads each node served):\n'
    PGPASSWORD=$APP_PASSWORD psql -X -h 127.0.0.1 -p "$PORT_PGPOOL" -U "$APP_USER" -d "$APP_DB" \
        -c 'SHOW pool_nodes' 2>&1 | cut -c1-160 | sed 's/^/    /' || true
fi

for name in pgpool pgbouncer pgfleet-base pgfleet-primary pgfleet-txn pgfleet-session pgfleet-defaults relay relay-uring; do
    stop "$name"
done

# ---------------------------------------------------------------------------------------------------------
# Memory and connections: a fresh pgfleet for each test, pool max_size 20, transaction pooling when this
# build has it.
# ---------------------------------------------------------------------------------------------------------

if ((BENCH_MEMORY)); then
    MEM_MODE=$SESSION_MODE
    ((TXN_MODE_OK)) && MEM_MODE=transaction
    printf '\n== Memory and connections (pgfleet, pool max_size %s per node, %s pooling) ==\n' \
        "$BENCH_POOL_SIZE" "${MEM_MODE:-default}"
    NODE_PORTS="$PRIMARY_PORT ${REPLICA_PORTS[*]}"
    printf '\nMemory and connections (pgfleet, pool max_size %s per node, %s pooling):\n\n' \
        "$BENCH_POOL_SIZE" "${MEM_MODE:-default}" >>"$SUMMARY_FILE"
    mem_args=(--host 127.0.0.1 --port "$PORT_MEM" --user "$APP_USER" --password "$APP_PASSWORD" --database "$APP_DB"
        --superuser "$SUPERUSER" --node-ports "$NODE_PORTS" --scale "$BENCH_SCALE" --summary "$SUMMARY_FILE")
    for test in idle concurrent stream; do
        if start_pgfleet "pgfleet-mem-$test" "$PORT_MEM" "$MEM_MODE" "$BENCH_POOL_SIZE"; then
            pid=${STARTED_PIDS[pgfleet-mem-$test]}
            case $test in
            idle) run_step python3 "$BENCH_DIR/memory.py" idle "${mem_args[@]}" --pid "$pid" --clients "$BENCH_IDLE_CLIENTS" || true ;;
            concurrent) run_step python3 "$BENCH_DIR/memory.py" concurrent "${mem_args[@]}" --pid "$pid" \
                --clients "$BENCH_CONCURRENT_CLIENTS" --pool-size "$BENCH_POOL_SIZE" || true ;;
            stream) run_step python3 "$BENCH_DIR/memory.py" stream "${mem_args[@]}" --pid "$pid" \
                --rows "$BENCH_STREAM_ROWS" --rate "$BENCH_STREAM_RATE" || true ;;
            esac
            if ! alive "$pid"; then
                log "pgfleet exited during the $test test; its log:"
                tail -n 20 "$WORK/logs/pgfleet-mem-$test.log" | sed 's/^/    /'
            fi
            stop "pgfleet-mem-$test"
        else
            log "$test test skipped: pgfleet did not start"
        fi
    done
fi

# ---------------------------------------------------------------------------------------------------------
# The sharded workload: bench/sharded.sh starts and stops a fleet of its own (two shards and an unsharded
# baseline), so this run's cluster is stopped first to leave it the CPU.
# ---------------------------------------------------------------------------------------------------------

if ((BENCH_SHARDED)); then
    stop pgfleet-cores
    stop demo
    printf '\n== Sharded workload (bench/sharded.sh) ==\n'
    SHARD_QUICK=${BENCH_QUICK:-0} SHARD_SECONDS=${SHARD_SECONDS:-$BENCH_SECONDS} \
        SHARD_ROUNDS=${SHARD_ROUNDS:-$BENCH_ROUNDS} SHARD_WARMUP=${SHARD_WARMUP:-$BENCH_WARMUP} \
        SHARD_SUMMARY=$SUMMARY_FILE SHARD_RESULTS=$BENCH_RESULTS PGFLEET_BIN=$PGFLEET_BIN \
        run_step bash "$BENCH_DIR/sharded.sh" || log "the sharded workload failed (see above)"
fi

log "done; summary tables in $SUMMARY_FILE"
