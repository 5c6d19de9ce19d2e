# Shared by the bench scripts that keep their started processes in the array PIDS (consistency.sh,
# forward_apply.sh): sourced, not run.

# stop_pids: stops every process in PIDS, the newest first: SIGTERM, up to 10 s to exit, then SIGKILL to its
# process group (or to it alone when it leads none).
stop_pids() {
    local i pid
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[$i]}
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    done
}
