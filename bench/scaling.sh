#!/usr/bin/env bash
# Cores given to the proxy: does pgfleet's throughput grow with the cores it may use, and what does a
# transaction cost it in CPU time, next to pgbouncer (one thread, so one core at most)?
#
#   bash bench/scaling.sh                                       # about 6 minutes on 2 cores
#   SCALING_SECONDS=3 SCALING_ROUNDS=1 bash bench/scaling.sh    # a quick look: about a minute
#
# Starts a PostgreSQL primary (`pgfleet demo`; its two replicas and its own pgfleet stay idle), loads pgbench -s
# 10 and makes a self-signed RSA certificate (4096 bits: see SCALING_KEY_BITS). Then, per workload, it starts three proxies in front of
# the primary alone, each with TLS for clients and transaction pooling (pool of 20), each pinned with taskset:
#   pgfleet-1core    pgfleet, worker_threads = 1, taskset -c 0
#   pgfleet-2cores   pgfleet, worker_threads = 2, taskset -c 0,1
#   pgbouncer        pgbouncer, as bench/run.sh configures it, taskset -c 0,1 (single-threaded: one core at most)
# and runs pgbench through each, SCALING_ROUNDS rounds of SCALING_SECONDS, the targets in this order every round:
#   tls-connect      pgbench -C -S -n, PGSSLMODE=require: a new TLS connection and login per transaction, so the
#                    proxy does a TLS server handshake (an RSA signature) and a login per transaction, while the
#                    server runs one SELECT on a connection the proxy keeps (the proxies require TLS here)
#   plain-connect    pgbench -C -S -n, PGSSLMODE=disable: a new login per transaction, no TLS
#   select           pgbench -S -n: the reference, where the PostgreSQL server dominates
# Clients log in with md5 (SCALING_AUTH): libpq's SCRAM costs pgbench tens of milliseconds of CPU per login and
# would leave the proxies idle. The connect workloads run a pgbench thread per client (pgbench connects
# synchronously); select runs bench/run.sh's -j 2. pgbench itself is not pinned: on two cores it and the server
# share the cores of the 2-core targets.
#
# For each run, from /proc (every thread of every process in the proxy's session, before and after the run):
# the proxy's user + system CPU time and voluntary + involuntary context switches; from pgbench: TPS, the
# transactions processed and its own CPU time; from the primary's pg_stat_database: the sessions it started (to
# show that the proxies reuse server connections across client logins). Prints, per workload, the medians of the
# rounds: TPS, cores used (proxy CPU seconds per wall-clock second of the run), proxy CPU µs per transaction,
# transactions per proxy CPU-second, context switches per transaction, pgbench CPU µs per transaction and server
# logins per transaction; then the TPS ratios pgfleet-2cores/pgfleet-1core and pgfleet-2cores/pgbouncer. The
# tables also go to bench/results/<UTC timestamp>-scaling.md.
#
# Everything it starts, it stops again by pid (bench/lib.sh), on success, on error and on Ctrl-C or TERM. Needs
# the release build (it builds nothing), pgbench, psql, openssl, taskset, python3 (3.11+) and pgbouncer (a target
# without it is shown as n/a); installs nothing. Run as root, pgbouncer runs as an unprivileged user, as in
# bench/run.sh.
#
# Knobs: SCALING_WORKLOADS ("tls-connect plain-connect select"), SCALING_CLIENTS (16), SCALING_SECONDS (10),
# SCALING_ROUNDS (3), SCALING_WARMUP (2 s per target and workload, not measured), SCALING_SCALE (10),
# SCALING_POOL_SIZE (20), SCALING_JOBS (unset: pgbench -j as above), SCALING_AUTH (md5; or scram-sha-256),
# SCALING_KEY_BITS (4096), SCALING_PORT_BASE (17900: the demo, then the three targets), SCALING_RESULTS
# (bench/results), PGFLEET_BIN (target/release/pgfleet). The defaults take about 6 minutes on 2 cores.
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
ROOT=$(cd "$BENCH_DIR/.." && pwd)
SCALING_WORKLOADS=${SCALING_WORKLOADS:-"tls-connect plain-connect select"}
SCALING_CLIENTS=${SCALING_CLIENTS:-16}
SCALING_SECONDS=${SCALING_SECONDS:-10}
SCALING_ROUNDS=${SCALING_ROUNDS:-3}
SCALING_WARMUP=${SCALING_WARMUP:-2}
SCALING_SCALE=${SCALING_SCALE:-10}
SCALING_POOL_SIZE=${SCALING_POOL_SIZE:-20}
# Empty: a thread per client for the connect workloads, 2 for select (jobs_for below).
SCALING_JOBS=${SCALING_JOBS:-}
# How clients log in to every target: md5 by default, since libpq's SCRAM (PostgreSQL 15 on OpenSSL 3) costs
# pgbench tens of milliseconds of CPU per login, which would leave the proxies idle; scram-sha-256 is bench/run.sh's.
SCALING_AUTH=${SCALING_AUTH:-md5}
# 4096 bits: the server's side of a handshake (the signature) is then about three times the client's, so that the
# proxy, not pgbench, is what the connect workload waits for; with 2048 bits both sides cost about the same.
SCALING_KEY_BITS=${SCALING_KEY_BITS:-4096}
SCALING_PORT_BASE=${SCALING_PORT_BASE:-17900}
SCALING_RESULTS=${SCALING_RESULTS:-$BENCH_DIR/results}
PGFLEET_BIN=${PGFLEET_BIN:-$ROOT/target/release/pgfleet}
# The demo cluster's credentials (src/demo.rs): app/demo owns database app; the superuser postgres has the
# same password.
APP_USER=app
APP_PASSWORD=demo
APP_DB=app
SUPERUSER=postgres

PORT_DEMO=$SCALING_PORT_BASE
TARGETS=(pgfleet-1core pgfleet-2cores pgbouncer)
declare -A PORT=([pgfleet-1core]=$((SCALING_PORT_BASE + 1)) [pgfleet-2cores]=$((SCALING_PORT_BASE + 2))
    [pgbouncer]=$((SCALING_PORT_BASE + 3)))
declare -A CPUS=([pgfleet-1core]=0 [pgfleet-2cores]="0,1" [pgbouncer]="0,1")
declare -A WORKERS=([pgfleet-1core]=1 [pgfleet-2cores]=2)
declare -A TARGET_PID=()

log() { printf '[scaling %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# pgbench's arguments and PGSSLMODE for each workload.
declare -A WORKLOAD_ARGS=([tls-connect]="-C -S" [plain-connect]="-C -S" [select]="-S")
declare -A WORKLOAD_SSL=([tls-connect]=require [plain-connect]=disable [select]=disable)
[[ $SCALING_AUTH == md5 || $SCALING_AUTH == scram-sha-256 ]] ||
    die "SCALING_AUTH is md5 or scram-sha-256, not $SCALING_AUTH"
for workload in $SCALING_WORKLOADS; do
    [[ -n ${WORKLOAD_ARGS[$workload]:-} ]] || die "unknown workload $workload (tls-connect, plain-connect, select)"
done

[[ -x $PGFLEET_BIN ]] || die "$PGFLEET_BIN is missing: build it first (bash scripts/build.sh)"
for tool in pgbench psql python3 openssl taskset setsid; do
    command -v "$tool" >/dev/null || die "$tool is not on PATH"
done
(($(nproc) >= 2)) || die "needs at least 2 usable cores (taskset -c 0,1); this process may use $(nproc)"
PGBOUNCER_BIN=$(command -v pgbouncer || true)
[[ -z $PGBOUNCER_BIN && -x /usr/sbin/pgbouncer ]] && PGBOUNCER_BIN=/usr/sbin/pgbouncer
for port in "$PORT_DEMO" "${PORT[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is in use; choose other ports with SCALING_PORT_BASE"
    fi
done

# pgbouncer refuses to run as root: then it runs as the servers' unprivileged user (as in bench/run.sh).
AS_SERVICE_USER=()
SERVICE_USER=""
if [[ $(id -u) -eq 0 ]]; then
    SERVICE_USER=${PGFLEET_PG_USER:-postgres}
    id -u "$SERVICE_USER" >/dev/null 2>&1 || SERVICE_USER=pgfleet
    id -u "$SERVICE_USER" >/dev/null 2>&1 || useradd --system --no-create-home --user-group "$SERVICE_USER"
    AS_SERVICE_USER=(setpriv "--reuid=$SERVICE_USER" "--regid=$SERVICE_USER" --init-groups --)
fi

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$SCALING_RESULTS"
SUMMARY=$SCALING_RESULTS/$STAMP-scaling.md
setup_work scaling
chmod 755 "$WORK"
mkdir -p "$WORK/pgbouncer"
[[ -n $SERVICE_USER ]] && chown "$SERVICE_USER" "$WORK/pgbouncer"

# start NAME CPUS CMD...: CMD pinned to CPUS, in a session of its own (so that Ctrl-C reaches only this script,
# and so that its session id, its pid, finds its processes in /proc), its pid in PIDS and TARGET_PID[NAME].
start() {
    local name=$1 cpus=$2
    shift 2
    setsid taskset -c "$cpus" "$@" >"$WORK/$name.log" 2>&1 </dev/null &
    PIDS+=("$!")
    TARGET_PID[$name]=$!
}

# forget PID: takes PID out of PIDS (it was stopped or has exited).
forget() {
    local -a kept=()
    local pid
    for pid in "${PIDS[@]}"; do
        [[ $pid == "$1" ]] || kept+=("$pid")
    done
    PIDS=("${kept[@]}")
}

# stop_target NAME: stops the target (bench/lib.sh's stop_pid) and forgets it.
stop_target() {
    local pid=${TARGET_PID[$1]:-}
    [[ -n $pid ]] || return 0
    unset "TARGET_PID[$1]"
    stop_pid "$pid"
    wait "$pid" 2>/dev/null || true
    forget "$pid"
}

export PGCONNECT_TIMEOUT=30 PGPASSWORD=$APP_PASSWORD PGGSSENCMODE=disable PGAPPNAME=pgfleet-scaling

LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "pgfleet scaling bench $STAMP: $(nproc) cores, load average $LOAD_AT_START"
log "settings: SCALING_WORKLOADS='$SCALING_WORKLOADS' SCALING_CLIENTS=$SCALING_CLIENTS SCALING_SECONDS=$SCALING_SECONDS SCALING_ROUNDS=$SCALING_ROUNDS SCALING_AUTH=$SCALING_AUTH SCALING_KEY_BITS=$SCALING_KEY_BITS"
log "starting a cluster with pgfleet demo"
start_demo "$PGFLEET_BIN" "127.0.0.1:$PORT_DEMO"
PRIMARY=$(python3 - "$CONFIG" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    config = tomllib.load(f)
print(next(n["address"] for n in config["nodes"] if n["role"] == "primary"))
EOF
)
PRIMARY_HOST=${PRIMARY%:*}
PRIMARY_PORT=${PRIMARY##*:}
superuser_sql() { # SQL: on the primary, database postgres
    PGSSLMODE=disable psql -X -q -At -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$SUPERUSER" -d postgres -c "$1"
}
for _ in $(seq 300); do
    superuser_sql 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.1
done
log "pgbench -i -s $SCALING_SCALE on the primary ($PRIMARY)"
PGSSLMODE=disable pgbench -i -q -s "$SCALING_SCALE" -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$APP_USER" "$APP_DB" \
    >"$WORK/init.log" 2>&1 || die "pgbench -i failed: $(tail -5 "$WORK/init.log")"
superuser_sql 'CHECKPOINT' >/dev/null

log "self-signed RSA $SCALING_KEY_BITS certificate"
openssl req -x509 -newkey "rsa:$SCALING_KEY_BITS" -nodes -days 2 -subj "/CN=localhost" \
    -keyout "$WORK/pgbouncer/server.key" -out "$WORK/pgbouncer/server.crt" >"$WORK/openssl.log" 2>&1 ||
    die "openssl req failed: $(tail -5 "$WORK/openssl.log")"
CERT=$WORK/pgbouncer/server.crt
KEY=$WORK/pgbouncer/server.key
chmod 600 "$KEY"
[[ -n $SERVICE_USER ]] && chown "$SERVICE_USER" "$CERT" "$KEY"

# pgfleet_config PORT WORKERS TLS_MODE: bench/run.sh's pgfleet-primary (the primary as the only node, transaction
# pooling) with TLS for clients (and SCALING_AUTH).
pgfleet_config() {
    printf '# generated by bench/scaling.sh\nworker_threads = %s\n\n' "$2"
    printf '[listen]\naddress = "127.0.0.1:%s"\ntls_cert = "%s"\ntls_key = "%s"\ntls_mode = "%s"\n\n' \
        "$1" "$CERT" "$KEY" "$3"
    printf '[[users]]\nname = "%s"\npassword = "%s"\nauth = "%s"\n\n' "$APP_USER" "$APP_PASSWORD" "$SCALING_AUTH"
    printf '[[nodes]]\nname = "primary"\naddress = "%s"\nrole = "primary"\n\n' "$PRIMARY"
    printf '[routing]\nload_balance = "round_robin"\nprimary_reads = true\n\n'
    printf '[pool]\nmode = "transaction"\nmax_size = %s\n\n[log]\nlevel = "warn"\n' "$SCALING_POOL_SIZE"
}

# pgbouncer_config PORT SSLMODE: bench/run.sh's pgbouncer target with TLS for clients (and SCALING_AUTH).
pgbouncer_config() {
    cat <<EOF
; generated by bench/scaling.sh
[databases]
$APP_DB = host=$PRIMARY_HOST port=$PRIMARY_PORT dbname=$APP_DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $1
unix_socket_dir =
pidfile = $WORK/pgbouncer/pgbouncer.pid
auth_type = $SCALING_AUTH
auth_file = $WORK/pgbouncer/userlist.txt
pool_mode = transaction
default_pool_size = $SCALING_POOL_SIZE
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 6000
max_db_connections = $SCALING_POOL_SIZE
ignore_startup_parameters = extra_float_digits,options
client_tls_sslmode = $2
client_tls_cert_file = $CERT
client_tls_key_file = $KEY
log_connections = 0
log_disconnections = 0
log_stats = 0
EOF
}
printf '"%s" "%s"\n' "$APP_USER" "$APP_PASSWORD" >"$WORK/pgbouncer/userlist.txt"
[[ -n $SERVICE_USER ]] && chown "$SERVICE_USER" "$WORK/pgbouncer/userlist.txt"

# start_targets SSLMODE: the three targets, requiring TLS of clients when SSLMODE is require (else allowing
# it); a target that does not answer SELECT 1 within 60 s is left out (n/a). Sets UP to the targets that run.
UP=()
start_targets() {
    local sslmode=$1 name ok tls_mode=allow
    [[ $sslmode == require ]] && tls_mode=require
    UP=()
    for name in "${TARGETS[@]}"; do
        case $name in
        pgfleet-*)
            pgfleet_config "${PORT[$name]}" "${WORKERS[$name]}" "$tls_mode" >"$WORK/$name.toml"
            "$PGFLEET_BIN" --check --config "$WORK/$name.toml" >"$WORK/$name.check" 2>&1 ||
                die "pgfleet --check refused $name's config: $(tail -5 "$WORK/$name.check")"
            start "$name" "${CPUS[$name]}" "$PGFLEET_BIN" --config "$WORK/$name.toml"
            ;;
        pgbouncer)
            if [[ -z $PGBOUNCER_BIN ]]; then
                log "pgbouncer is not installed: n/a"
                continue
            fi
            pgbouncer_config "${PORT[$name]}" "$tls_mode" >"$WORK/pgbouncer/pgbouncer.ini"
            [[ -n $SERVICE_USER ]] && chown "$SERVICE_USER" "$WORK/pgbouncer/pgbouncer.ini"
            start "$name" "${CPUS[$name]}" "${AS_SERVICE_USER[@]}" "$PGBOUNCER_BIN" "$WORK/pgbouncer/pgbouncer.ini"
            ;;
        esac
        ok=0
        for _ in $(seq 600); do
            if PGSSLMODE=$sslmode psql -X -q -At -h 127.0.0.1 -p "${PORT[$name]}" -U "$APP_USER" -d "$APP_DB" \
                -c 'SELECT 1' >/dev/null 2>&1; then
                ok=1
                break
            fi
            kill -0 "${TARGET_PID[$name]}" 2>/dev/null || break
            sleep 0.1
        done
        if ((ok)); then
            UP+=("$name")
        else
            log "$name did not start (n/a); its log: $(tail -5 "$WORK/$name.log")"
            stop_target "$name"
        fi
    done
}

# usage SID: "TICKS SWITCHES": user + system clock ticks and voluntary + involuntary context switches, summed
# over every thread of every process in session SID (the proxy; setsid, taskset and setpriv exec it in place).
usage() {
    local sid=$1 f status line pid key value ticks=0 switches=0
    local -a fields
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        # The fields after the command name: state, ppid, pgrp, session, ..., utime (11), stime (12).
        read -r -a fields <<<"${line##*") "}"
        [[ ${fields[3]:-} == "$sid" ]] || continue
        ticks=$((ticks + fields[11] + fields[12]))
        pid=${f#/proc/}
        pid=${pid%/stat}
        for status in /proc/"$pid"/task/*/status; do
            {
                while read -r key value _; do
                    case $key in
                    voluntary_ctxt_switches: | nonvoluntary_ctxt_switches:) switches=$((switches + value)) ;;
                    esac
                done <"$status"
            } 2>/dev/null || true
        done
    done
    echo "$ticks $switches"
}

# server_sessions: sessions the primary has started in the app database (pg_stat_database, PostgreSQL 14+).
server_sessions() {
    superuser_sql "SELECT sessions FROM pg_stat_database WHERE datname = '$APP_DB'"
}

# jobs_for WORKLOAD: pgbench's threads (-j). pgbench opens a connection synchronously, holding its thread for the
# whole TLS handshake and login: with -C a thread has one login in flight at a time, so the connect workloads get
# a thread per client (else two threads would leave the proxy idle between logins); select gets bench/run.sh's 2.
jobs_for() {
    if [[ -n $SCALING_JOBS ]]; then
        echo "$SCALING_JOBS"
    elif [[ $1 == select ]]; then
        echo "$((SCALING_CLIENTS < 2 ? 1 : 2))"
    else
        echo "$SCALING_CLIENTS"
    fi
}

# pgbench_run PORT WORKLOAD SECONDS: pgbench through PORT, output in WORK/pgbench.out. In the background with
# its pid in PIDS, so that TERM or Ctrl-C stops it at once.
pgbench_run() {
    local port=$1 workload=$2 seconds=$3 pid rc=0
    # shellcheck disable=SC2086 # the workload's arguments are meant to split
    PGSSLMODE=${WORKLOAD_SSL[$workload]} pgbench -n ${WORKLOAD_ARGS[$workload]} -c "$SCALING_CLIENTS" \
        -j "$(jobs_for "$workload")" -T "$seconds" -h 127.0.0.1 -p "$port" -U "$APP_USER" "$APP_DB" \
        >"$WORK/pgbench.out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    forget "$pid"
    return "$rc"
}

# children_cpu VAR: sets VAR to the user + system CPU seconds of this shell's waited-for children so far (bash's
# `times`, run in this shell: a subshell's counts would start at zero): around a run, what pgbench used.
children_cpu() {
    times >"$WORK/times"
    printf -v "$1" '%s' "$(awk 'NR == 2 {
        for (i = 1; i <= 2; i++) { split($i, t, "m"); total += t[1] * 60 + substr(t[2], 1, length(t[2]) - 1) }
        printf "%.3f\n", total
    }' "$WORK/times")"
}

# measure WORKLOAD TARGET ROUND: one run, a line in WORK/runs.tsv: workload, target, round, tps, transactions,
# wall seconds, proxy CPU seconds, proxy context switches, server sessions started, pgbench CPU seconds ("failed"
# in tps when pgbench failed).
CLK_TCK=$(getconf CLK_TCK)
measure() {
    local workload=$1 name=$2 round=$3 pid=${TARGET_PID[$2]} before after sessions_before sessions_after
    local t0 t1 rc=0 tps txns wall cpu switches logins client_before client_after client
    sessions_before=$(server_sessions)
    children_cpu client_before
    before=$(usage "$pid")
    t0=$EPOCHREALTIME
    pgbench_run "${PORT[$name]}" "$workload" "$SCALING_SECONDS" || rc=$?
    t1=$EPOCHREALTIME
    after=$(usage "$pid")
    children_cpu client_after
    sessions_after=$(server_sessions)
    tps=$(awk '/^tps = / {print $3; exit}' "$WORK/pgbench.out")
    txns=$(awk -F': ' '/^number of transactions actually processed:/ {split($2, a, "/"); print a[1]; exit}' \
        "$WORK/pgbench.out")
    if ((rc != 0)) || [[ -z $tps || -z $txns || $txns == 0 ]] || grep -q 'aborted' "$WORK/pgbench.out"; then
        log "$workload through $name, round $round: pgbench failed: $(grep -m3 -iE 'error|fatal|abort' "$WORK/pgbench.out" | tr '\n' ' ')"
        printf '%s\t%s\t%s\tfailed\t0\t0\t0\t0\t0\t0\n' "$workload" "$name" "$round" >>"$WORK/runs.tsv"
        return 0
    fi
    read -r wall cpu switches logins client < <(awk -v t0="$t0" -v t1="$t1" -v b="$before" -v a="$after" \
        -v sb="$sessions_before" -v sa="$sessions_after" -v cb="$client_before" -v ca="$client_after" \
        -v hz="$CLK_TCK" 'BEGIN {
            split(b, x, " "); split(a, y, " ")
            printf "%.3f %.3f %d %d %.3f\n", t1 - t0, (y[1] - x[1]) / hz, y[2] - x[2], sa - sb, ca - cb
        }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$workload" "$name" "$round" "$tps" "$txns" "$wall" \
        "$cpu" "$switches" "$logins" "$client" >>"$WORK/runs.tsv"
    log "$workload through $name, round $round: $tps tps; proxy $cpu CPU s in $wall s, $switches context switches; pgbench $client CPU s; $logins server logins"
}

PGFLEET_VERSION="$("$PGFLEET_BIN" --version | awk '{print $2}') ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ', uncommitted changes in src'))"
PGBOUNCER_VERSION=n/a
[[ -n $PGBOUNCER_BIN ]] && PGBOUNCER_VERSION=$("$PGBOUNCER_BIN" --version | awk 'NR == 1 {print $2}')
: >"$WORK/runs.tsv"
for workload in $SCALING_WORKLOADS; do
    log "$workload: starting the targets (clients' sslmode ${WORKLOAD_SSL[$workload]})"
    start_targets "${WORKLOAD_SSL[$workload]}"
    ((${#UP[@]})) || die "no target started"
    if ((SCALING_WARMUP > 0)); then
        for name in "${UP[@]}"; do
            pgbench_run "${PORT[$name]}" "$workload" "$SCALING_WARMUP" ||
                log "warm-up of $name failed: $(tail -3 "$WORK/pgbench.out" | tr '\n' ' ')"
        done
    fi
    for ((round = 1; round <= SCALING_ROUNDS; round++)); do
        for name in "${UP[@]}"; do
            kill -0 "${TARGET_PID[$name]}" 2>/dev/null || die "$name exited: $(tail -5 "$WORK/$name.log")"
            measure "$workload" "$name" "$round"
        done
    done
    for name in "${UP[@]}"; do
        stop_target "$name"
    done
done

{
    printf '## Cores given to the proxy (bench/scaling.sh)\n\n'
    printf 'Run %s on %s (%s cores, load average at the start %s): pgfleet %s, pgbouncer %s, %s.\n' \
        "$STAMP" "$(uname -n)" "$(nproc)" "$LOAD_AT_START" "$PGFLEET_VERSION" "$PGBOUNCER_VERSION" \
        "$(pgbench --version)"
    printf '%s clients (pgbench -j %s for the connect workloads, %s for select), medians of %s rounds of %s s; every proxy in front of the primary alone, transaction pooling, pool of %s, %s logins, TLS for clients with a self-signed RSA %s certificate; pgfleet-1core: worker_threads = 1, taskset -c 0; pgfleet-2cores: worker_threads = 2, taskset -c 0,1; pgbouncer: taskset -c 0,1; pgbench and the server unpinned. Cores used: the proxy'"'"'s CPU seconds per second of the run.\n' \
        "$SCALING_CLIENTS" "$(jobs_for tls-connect)" "$(jobs_for select)" "$SCALING_ROUNDS" "$SCALING_SECONDS" \
        "$SCALING_POOL_SIZE" "$SCALING_AUTH" "$SCALING_KEY_BITS"
    python3 - "$WORK/runs.tsv" "$SCALING_WORKLOADS" "${TARGETS[*]}" <<'EOF'
import statistics, sys

runs_file, workloads, targets = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
describe = {
    "tls-connect": "pgbench -C -S -n, PGSSLMODE=require: a new TLS connection and login per transaction",
    "plain-connect": "pgbench -C -S -n, PGSSLMODE=disable: a new login per transaction, no TLS",
    "select": "pgbench -S -n, no TLS: one connection per client for the whole run",
}
runs: dict[tuple[str, str], list[list[str]]] = {}
with open(runs_file) as f:
    for line in f:
        w, t, _, *values = line.rstrip("\n").split("\t")
        runs.setdefault((w, t), []).append(values)

for workload in workloads:
    print(f"\n### {workload}: {describe[workload]}\n")
    print("| target | TPS | cores used | proxy CPU µs/tx | tx per proxy CPU-second | cs/tx | pgbench CPU µs/tx | server logins/tx |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    tps_of: dict[str, float] = {}
    for target in targets:
        rows = runs.get((workload, target), [])
        ok = [[float(v) for v in r] for r in rows if r[0] != "failed"]
        if not ok:
            print(f"| {target} | {'failed' if rows else 'n/a'} | | | | | | |")
            continue
        med = lambda values: statistics.median(values)
        tps = med([r[0] for r in ok])
        tps_of[target] = tps
        cores = med([r[3] / r[2] for r in ok])
        us_tx = med([r[3] * 1e6 / r[1] for r in ok])
        tx_cpu = med([r[1] / r[3] if r[3] > 0 else float("inf") for r in ok])
        cs_tx = med([r[4] / r[1] for r in ok])
        logins_tx = med([r[5] / r[1] for r in ok])
        client_us = med([r[6] * 1e6 / r[1] for r in ok])
        failed = f" ({len(rows) - len(ok)} of {len(rows)} runs failed)" if len(ok) < len(rows) else ""
        print(f"| {target}{failed} | {tps:,.0f} | {cores:.2f} | {us_tx:,.0f} | {tx_cpu:,.0f} | {cs_tx:.2f} | {client_us:,.0f} | {logins_tx:.3f} |")
    ratios = []
    for a, b in (("pgfleet-2cores", "pgfleet-1core"), ("pgfleet-2cores", "pgbouncer")):
        value = f"{tps_of[a] / tps_of[b]:.2f}" if a in tps_of and tps_of.get(b) else "n/a"
        ratios.append(f"{a}/{b} TPS: {value}")
    print("\n" + "; ".join(ratios) + ".")
EOF
} | tee "$SUMMARY"
log "tables saved in $SUMMARY"
