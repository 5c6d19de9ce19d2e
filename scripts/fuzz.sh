#!/usr/bin/env bash
# The bounded fuzz pass: builds the cargo-fuzz targets in fuzz/ (nightly toolchain, AddressSanitizer, debug
# assertions) and runs each for FUZZ_SECONDS, failing if any input panics, trips an assertion, runs longer
# than FUZZ_TIMEOUT or exhausts memory. docs/operations.md ("Fuzzing") says what each target checks.
#
#   scripts/fuzz.sh                  every target, FUZZ_SECONDS (default 60) each
#   scripts/fuzz.sh router           only the named targets
#   scripts/fuzz.sh --install-only   install cargo-fuzz if missing, nothing else (install-test-deps.sh)
#   FUZZ_SECONDS=0 scripts/fuzz.sh   skip the pass (prints that it did)
#   FUZZ_ARGS="-len_control=0" ...  extra libFuzzer flags (here: try long inputs from the start)
#
# Installs cargo-fuzz from crates.io when `cargo fuzz` is missing. Needs the nightly toolchain (cargo-fuzz
# builds with -Zsanitizer and libFuzzer's coverage instrumentation) and a C++ compiler (libfuzzer-sys builds
# libFuzzer itself). Builds into fuzz/target and keeps the growing corpus in fuzz/work/corpus/<target> (both
# git-ignored; the committed seeds in fuzz/corpus/<target> are only read). A failing input is saved under
# fuzz/artifacts/<target>/ and its path printed. Ends with `fuzz: N passed, N failed`, one per target.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

log() { printf 'fuzz: %s\n' "$*"; }

install_cargo_fuzz() {
    if cargo fuzz --version >/dev/null 2>&1; then
        return
    fi
    log "cargo-fuzz missing -> cargo install cargo-fuzz --locked"
    local started=$SECONDS
    cargo install cargo-fuzz --locked || return 1
    log "cargo-fuzz installed in $((SECONDS - started)) s: $(cargo fuzz --version)"
}

have_nightly() {
    cargo +nightly --version >/dev/null 2>&1
}

if [ "${1:-}" = "--install-only" ]; then
    install_cargo_fuzz
    have_nightly || log "warning: no nightly toolchain; scripts/fuzz.sh will fail until one is installed"
    exit 0
fi

seconds="${FUZZ_SECONDS:-60}"
timeout="${FUZZ_TIMEOUT:-10}"
if [ "$seconds" = 0 ]; then
    log "skipped (FUZZ_SECONDS=0)"
    exit 0
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=(frame_decode startup_packet router)
fi
# Ends a pass that could not run: every target counts as failed in the closing line.
give_up() {
    echo "fuzz: 0 passed, ${#targets[@]} failed"
    exit 1
}

if ! have_nightly; then
    log "ERROR: the nightly Rust toolchain is missing ('cargo +nightly' fails)." >&2
    log "ERROR: cargo-fuzz needs it; install it with 'rustup toolchain install nightly' and run again." >&2
    give_up
fi
if ! command -v c++ >/dev/null 2>&1; then
    log "ERROR: no C++ compiler (c++): libfuzzer-sys compiles libFuzzer; install g++." >&2
    give_up
fi
install_cargo_fuzz || give_up

# The fuzz crate is its own workspace; its build never shares a target dir with pgfleet's own builds.
target_dir="$root/fuzz/target"
fuzz=(cargo +nightly fuzz)
fuzz_dir=(--fuzz-dir "$root/fuzz" --target-dir "$target_dir")

# A run in progress when this script is stopped is ended with it: each runs in its own process group.
child=""
cleanup() {
    if [ -n "$child" ]; then
        kill -TERM -- "-$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
        child=""
    fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

# Runs a command in its own process group, waiting for it; returns its status.
run_group() {
    setsid "$@" &
    child=$!
    local rc=0
    wait "$child" || rc=$?
    child=""
    return "$rc"
}

mkdir -p fuzz/work/logs
started=$SECONDS
log "building ${targets[*]} (nightly, AddressSanitizer, debug assertions) into fuzz/target"
build_log=fuzz/work/logs/build.log
for t in "${targets[@]}"; do
    if ! run_group "${fuzz[@]}" build "${fuzz_dir[@]}" "$t" >"$build_log" 2>&1; then
        tail -n 40 "$build_log" >&2
        log "ERROR: building fuzz target $t failed (log: $build_log)" >&2
        give_up
    fi
done
log "built in $((SECONDS - started)) s"

passed=0
failed=0
for t in "${targets[@]}"; do
    case "$t" in
        frame_decode) max_len=4096 ;;
        startup_packet) max_len=10100 ;; # a little over MAX_STARTUP_PACKET (10000)
        router) max_len=8192 ;;          # both sides of the cache's 4096-byte limit
        *) max_len=4096 ;;
    esac
    read -r -a extra <<<"${FUZZ_ARGS:-}"
    if [ "$t" = router ]; then
        # The decision caches keep entries from input to input by design, so nearly every input ends with
        # more memory allocated than it began with, still reachable; libFuzzer takes that for a possible
        # leak and has LeakSanitizer scan the whole heap after it, which took most of the pass's time
        # (85-125 inputs per second from the seeds, 500 without the scan). AddressSanitizer stays on.
        extra=(-detect_leaks=0 "${extra[@]}")
    fi
    if [ -f "fuzz/dict/$t.dict" ]; then
        extra+=("-dict=$root/fuzz/dict/$t.dict")
    fi
    corpus="$root/fuzz/work/corpus/$t"
    artifacts="$root/fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    run_log="$root/fuzz/work/logs/$t.log"
    before=$(find "$artifacts" -type f | sort)
    # New inputs go to the first corpus directory; the committed seeds are only read. cargo-fuzz points
    # libFuzzer's -artifact_prefix at fuzz/artifacts/<target>/, where a failing input is saved.
    rc=0
    run_group "${fuzz[@]}" run "${fuzz_dir[@]}" "$t" "$corpus" "$root/fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -max_len="$max_len" -timeout="$timeout" -rss_limit_mb=2048 \
        -print_final_stats=1 "${extra[@]}" >"$run_log" 2>&1 || rc=$?
    # libFuzzer's last status line, e.g. "#51729 DONE cov: 7121 ft: 26820 corp: 2414/187Kb ... exec/s: 848".
    stats=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$run_log" | tail -n 1 | tr -s '[:space:]' ' ' || true)
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        log "$t ok after ${seconds} s: ${stats:-no stats} (log: $run_log)"
        continue
    fi
    failed=$((failed + 1))
    tail -n 60 "$run_log" >&2
    log "FAILED: $t exited with status $rc (log: $run_log)" >&2
    new=$(comm -13 <(printf '%s\n' "$before") <(find "$artifacts" -type f | sort) | sed '/^$/d')
    if [ -n "$new" ]; then
        while IFS= read -r input; do
            log "  failing input saved to $input" >&2
            log "  reproduce: cargo +nightly fuzz run --fuzz-dir fuzz $t $input" >&2
        done <<<"$new"
    else
        log "  no input was saved (see the log)" >&2
    fi
done
log "total $((SECONDS - started)) s"
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
