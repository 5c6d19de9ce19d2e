# Shared by the bench scripts that keep their started processes in the array PIDS (consistency.sh,
# forward_apply.sh, sharded.sh, instructions.sh, scaling.sh): sourced, not run.

# stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL to its process group (or to it alone when it leads
# none). Nothing when it has exited already.
stop_pid() {
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$1" 2>/dev/null || kill -KILL "$1" 2>/dev/null || true
}

# stop_pids: stops every process in PIDS, the newest first (stop_pid).
stop_pids() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[$i]}"
    done
}

# setup_work NAME: a fresh temp dir in WORK (/tmp/pgfleet-NAME.XXXXXX), an empty PIDS, and traps that stop every
# process in PIDS and remove WORK on exit (success or error), on Ctrl-C and on TERM. The caller defines `log`.
setup_work() {
    WORK=$(mktemp -d "/tmp/pgfleet-$1.XXXXXX")
    PIDS=()
    trap cleanup_work EXIT
    trap 'log "interrupted"; exit 130' INT
    trap 'log "terminated"; exit 143' TERM
}

# cleanup_work: setup_work's exit trap.
cleanup_work() {
    local status=$?
    trap - EXIT INT TERM
    stop_pids
    rm -rf "$WORK"
    exit "$status"
}

# start_demo PGFLEET ADDRESS: starts `pgfleet demo --listen ADDRESS` in its own session (output in
# WORK/demo.out, pid in PIDS) and sets CONFIG to the config file it wrote for its fleet once it has. The caller
# defines `die`.
start_demo() {
    setsid "$1" demo --listen "$2" >"$WORK/demo.out" 2>&1 </dev/null &
    PIDS+=("$!")
    CONFIG=""
    for _ in $(seq 1800); do
        CONFIG=$(awk '$1 == "config" {print $2}' "$WORK/demo.out" 2>/dev/null || true)
        [[ -n $CONFIG && -f $CONFIG ]] && return 0
        sleep 0.1
    done
    die "pgfleet demo printed no config: $(tail -5 "$WORK/demo.out")"
}
