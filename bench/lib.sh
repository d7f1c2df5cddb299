# Shell functions the side-by-side benchmark scripts share (sourced, not run): messages,
# tracking and stopping the processes a script starts, free loopback ports, and waiting for a
# process's ready line. A script that sources it defines PIDS=() (the pids it must stop) and
# READY_TIMEOUT_S.

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Processes: every one a script starts goes in PIDS and is stopped on exit, failure included.

forget_pid() {
    local pid=$1 kept=() p
    for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || kept+=("$p"); done
    PIDS=("${kept[@]}")
}

# Stops one process: SIGTERM, up to 10 s to exit, then SIGKILL.
stop_pid() {
    local pid=$1 i
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

# N free loopback ports, distinct (all bound at once, then released).
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Waits until `CHECK...` succeeds, trying every 0.1 s for READY_TIMEOUT_S; fails, showing the
# end of WHAT's log FILE, if PID exits first or the time runs out.
wait_until_ready() {
    local pid=$1 file=$2 what=$3 i
    shift 3
    for ((i = 0; i < READY_TIMEOUT_S * 10; i++)); do
        "$@" && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$file" >&2 || true
            die "$what exited before it was ready; its log is above"
        fi
        sleep 0.1
    done
    tail -n 20 "$file" >&2 || true
    die "$what was not ready within $READY_TIMEOUT_S s ($*); its log is above"
}

# Waits until FILE matches the extended regex PATTERN; fails if PID exits first.
wait_for_line() {
    local file=$1 pattern=$2 pid=$3 what=$4
    wait_until_ready "$pid" "$file" "$what" grep -Eqs "$pattern" "$file"
}

# On exit: stops every tracked process (SIGTERM to all first, so they stop together), then
# removes WORK unless KEEP_WORK=1 or the exit status RC is a failure (its logs are kept).
stop_all() {
    local rc=$1 pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ "${KEEP_WORK:-0}" == 1 || $rc -ne 0 ]]; then
            log "logs kept in $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
}
