#!/usr/bin/env bash
# pgfleet consistency bench: what each `routing.consistency` level costs, in a few minutes.
#
#   bash bench/consistency.sh
#
# Starts a primary + 2 streaming replicas (`pgfleet demo`), loads pgbench -s 10, starts one pgfleet per level
# (same config but for `routing.consistency`), then runs the rw90 workload (bench/workloads/rw90.sql: 90 %
# primary-key reads, 10 % autocommit updates) at 16 clients through each, alternating levels round by round.
# Prints, per level, the median TPS, its ratio to "session", and the share of reads that replicas served (from
# each pgfleet's admin console: SHOW NODES queries per node against SHOW STATS routes). Everything it starts, it
# stops again, on success, on error and on Ctrl-C. Needs the release build (`cargo build --release`).
#
# Knobs: CONS_SECONDS (15), CONS_ROUNDS (3), CONS_CLIENTS (16), CONS_SCALE (10),
# CONS_LEVELS ("session global universal off"), CONS_AFFINITY ("statement"), CONS_PORT_BASE (17500),
# PGFLEET_BIN (target/release/pgfleet). The defaults take about 4 minutes on 2 cores.
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
ROOT=$(cd "$BENCH_DIR/.." && pwd)
CONS_SECONDS=${CONS_SECONDS:-15}
CONS_ROUNDS=${CONS_ROUNDS:-3}
CONS_CLIENTS=${CONS_CLIENTS:-16}
CONS_SCALE=${CONS_SCALE:-10}
CONS_LEVELS=${CONS_LEVELS:-"session global universal off"}
CONS_AFFINITY=${CONS_AFFINITY:-statement}
CONS_PORT_BASE=${CONS_PORT_BASE:-17500}
PGFLEET_BIN=${PGFLEET_BIN:-$ROOT/target/release/pgfleet}
# The demo cluster's credentials (src/demo.rs).
APP_USER=app
APP_PASSWORD=demo
APP_DB=app

log() { printf '[consistency %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() {
    log "ERROR: $*"
    exit 1
}

[[ -x $PGFLEET_BIN ]] || die "$PGFLEET_BIN is missing: run cargo build --release first"
for tool in pgbench psql python3; do
    command -v "$tool" >/dev/null || die "$tool is not on PATH"
done

setup_work consistency

start() { # LOGFILE CMD...: in its own session, so that Ctrl-C reaches only this script
    local logfile=$1
    shift
    setsid "$@" >"$logfile" 2>&1 </dev/null &
    PIDS+=("$!")
}

log "starting the cluster with pgfleet demo"
start_demo "$PGFLEET_BIN" "127.0.0.1:$CONS_PORT_BASE"
mapfile -t NODES < <(python3 - "$CONFIG" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    config = tomllib.load(f)
for node in config["nodes"]:
    host, port = node["address"].rsplit(":", 1)
    print(node["name"], host, port, node["role"])
EOF
)
PRIMARY_PORT=$(printf '%s\n' "${NODES[@]}" | awk '$4 == "primary" {print $3}')
export PGSSLMODE=disable PGCONNECT_TIMEOUT=30 PGPASSWORD=$APP_PASSWORD
for _ in $(seq 300); do
    psql -X -q -At -h 127.0.0.1 -p "$PRIMARY_PORT" -U "$APP_USER" -d "$APP_DB" -c 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.1
done
log "pgbench -i -s $CONS_SCALE on the primary"
pgbench -i -q -s "$CONS_SCALE" -h 127.0.0.1 -p "$PRIMARY_PORT" -U "$APP_USER" "$APP_DB" >"$WORK/init.log" 2>&1 ||
    die "pgbench -i failed: $(tail -5 "$WORK/init.log")"
LSN=$(psql -X -q -At -h 127.0.0.1 -p "$PRIMARY_PORT" -U "$APP_USER" -d "$APP_DB" -c 'SELECT pg_current_wal_lsn()')
for line in "${NODES[@]}"; do
    read -r _ _ port role <<<"$line"
    [[ $role == primary ]] && continue
    for _ in $(seq 1200); do
        [[ $(psql -X -q -At -h 127.0.0.1 -p "$port" -U "$APP_USER" -d "$APP_DB" \
            -c "SELECT pg_last_wal_replay_lsn() >= '$LSN'") == t ]] && break
        sleep 0.1
    done
done

TARGETS=()
port=$((CONS_PORT_BASE + 1))
for level in $CONS_LEVELS; do
    {
        printf '[listen]\naddress = "127.0.0.1:%s"\n\n[[users]]\nname = "%s"\npassword = "%s"\nadmin = true\n\n' \
            "$port" "$APP_USER" "$APP_PASSWORD"
        for line in "${NODES[@]}"; do
            read -r name host nport role <<<"$line"
            printf '[[nodes]]\nname = "%s"\naddress = "%s:%s"\nrole = "%s"\n\n' "$name" "$host" "$nport" "$role"
        done
        printf '[routing]\nload_balance = "round_robin"\nreplica_affinity = "%s"\nconsistency = "%s"\n\n' \
            "$CONS_AFFINITY" "$level"
        printf '[pool]\nmax_size = 20\n\n[log]\nlevel = "warn"\n'
    } >"$WORK/$level.toml"
    "$PGFLEET_BIN" --check --config "$WORK/$level.toml" >/dev/null || die "config for $level refused"
    start "$WORK/$level.log" "$PGFLEET_BIN" --config "$WORK/$level.toml"
    for _ in $(seq 600); do
        psql -X -q -At -h 127.0.0.1 -p "$port" -U "$APP_USER" -d "$APP_DB" -c 'SELECT 1' >/dev/null 2>&1 && break
        sleep 0.1
    done
    TARGETS+=("$level:$port")
    port=$((port + 1))
done

log "rw90, $CONS_CLIENTS clients, $CONS_ROUNDS rounds of ${CONS_SECONDS}s per level, replica_affinity $CONS_AFFINITY"
python3 - "$BENCH_DIR/workloads/rw90.sql" "$CONS_SECONDS" "$CONS_ROUNDS" "$CONS_CLIENTS" "$APP_USER" "$APP_DB" \
    "${TARGETS[@]}" <<'EOF'
import re, statistics, subprocess, sys

script, seconds, rounds, clients, user, db = sys.argv[1:7]
targets = [t.split(":") for t in sys.argv[7:]]

def admin(port, command):
    out = subprocess.run(["psql", "-X", "-q", "-At", "-F", "\t", "-h", "127.0.0.1", "-p", port, "-U", user,
                          "-d", "pgfleet", "-c", command], capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]

def counters(port):
    """(reads routed, reads that replicas ran): SHOW STATS routes of target replica; SHOW NODES queries."""
    reads = sum(int(r[3]) for r in admin(port, "SHOW STATS") if r[0] == "route" and r[1] == "replica")
    nodes = admin(port, "SHOW NODES")
    on_replicas = sum(int(r[9]) for r in nodes if r[2] == "replica")
    return reads, on_replicas

results = {level: [] for level, _ in targets}
shares = {level: [] for level, _ in targets}
for r in range(int(rounds)):
    order = targets[r % len(targets):] + targets[:r % len(targets)]
    for level, port in order:
        before = counters(port)
        done = subprocess.run(["pgbench", "-n", "-c", clients, "-j", "2", "-T", seconds, "-f", script,
                               "-h", "127.0.0.1", "-p", port, "-U", user, db], capture_output=True, text=True)
        after = counters(port)
        m = re.search(r"tps = ([0-9.]+) \(without initial", done.stdout)
        if done.returncode != 0 or not m:
            print(f"  round {r + 1} {level}: pgbench failed: {done.stderr.strip()[-300:]}")
            continue
        tps = float(m.group(1))
        reads = after[0] - before[0]
        share = (after[1] - before[1]) / reads if reads else 0.0
        results[level].append(tps)
        shares[level].append(share)
        print(f"  round {r + 1} {level:<9} {tps:9.0f} tps  {100 * share:5.1f} % of reads on replicas")

base = statistics.median(results["session"]) if results.get("session") else None
print()
print("| consistency | median TPS | vs session | reads on replicas |")
print("| --- | ---: | ---: | ---: |")
for level, _ in targets:
    if not results[level]:
        print(f"| {level} | failed | | |")
        continue
    tps = statistics.median(results[level])
    ratio = f"{tps / base:.2f}" if base else "n/a"
    print(f"| {level} | {tps:.0f} | {ratio} | {100 * statistics.median(shares[level]):.1f} % |")
EOF
