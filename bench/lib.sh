# Shell functions the side-by-side benchmark scripts share (sourced, not run): messages,
# tracking and stopping the processes a script starts, free loopback ports, waiting for a
# process's ready line or HTTP answer, the network namespace the measurements run in, building
# Tally and the Restate service, installing and starting Restate, and starting `tally up`.
# A script that sources it defines PIDS=() (the pids it must stop), STOP_PIDS=() (those of the
# systems of the current cell) and READY_TIMEOUT_S.

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

# Waits until `curl ARGS...` succeeds (an HTTP 2xx) and its output matches the extended regex
# PATTERN ('' matches anything); fails if PID exits first. Its log is FILE.
wait_for_http() {
    local pid=$1 file=$2 what=$3 pattern=$4
    shift 4
    wait_until_ready "$pid" "$file" "$what" http_matches "$pattern" "$@"
}

# Whether `curl ARGS...` succeeds and its output matches the extended regex PATTERN.
http_matches() {
    local pattern=$1 body
    shift
    body="$(curl -sf --max-time 2 "$@" 2>/dev/null)" && grep -Eq "$pattern" <<<"$body"
}

# Starts COMMAND... in the background, tracked in PIDS and STOP_PIDS, its output to FILE; sets
# STARTED_PID.
start_tracked() {
    local file=$1
    shift
    "$@" >"$file" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    STOP_PIDS+=("$STARTED_PID")
}

# Stops the current cell's systems (STOP_PIDS), the last started first, so a client of a server
# (a service, a worker, an application on its database) goes before the server.
stop_systems() {
    local i
    for ((i = ${#STOP_PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${STOP_PIDS[i]}"; done
    STOP_PIDS=()
}

# Runs SCRIPT again in a new network namespace where only loopback exists, with the variables
# NAME... exported; does not return. Root gets a plain network namespace; anyone else also a
# user namespace mapping them to root in it (unshare --map-root-user). The script, re-entered,
# sees TALLY_BENCH_IN_NETNS=1 and calls bring_up_loopback.
reenter_in_network_namespace() {
    local script=$1 flags=(--net)
    shift
    [[ $EUID -eq 0 ]] || flags+=(--map-root-user)
    command -v ip >/dev/null || die "ip (iproute2) is needed for the network namespace; or NETNS=0"
    unshare "${flags[@]}" true 2>/dev/null ||
        die "cannot make a network namespace (unshare ${flags[*]} failed: are namespaces \
off?); NETNS=0 measures in this one, where restate-server tries to reach GitHub"
    log "entering a network namespace with only loopback"
    export TALLY_BENCH_IN_NETNS=1 "$@"
    exec unshare "${flags[@]}" -- bash "$script"
}

# In the network namespace: loopback exists but is down.
bring_up_loopback() {
    ip link set lo up || die "cannot bring up loopback in the network namespace"
}

# The cargo target directory of the workspace at ROOT (CARGO_TARGET_DIR or its default); the
# Restate service, a workspace of its own, builds into it too, so one build cache serves both.
cargo_target_dir() {
    (cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
}

# Builds `tally` (release); sets TALLY.
build_tally() {
    (cd "$ROOT" && cargo build --release --quiet --bin tally)
    TALLY="$(cargo_target_dir)/release/tally"
    [[ -x "$TALLY" ]] || die "the build left no $TALLY"
}

# Builds the Restate service, bench/restate-service (release); sets RESTATE_SERVICE.
build_restate_service() {
    local target_dir
    target_dir="$(cargo_target_dir)"
    (cd "$ROOT" && cargo build --release --quiet \
        --manifest-path bench/restate-service/Cargo.toml --target-dir "$target_dir")
    RESTATE_SERVICE="$target_dir/release/tally-bench-restate-service"
    [[ -x "$RESTATE_SERVICE" ]] || die "the build left no $RESTATE_SERVICE"
}

# Installs the Restate server RESTATE_VERSION from npm into RESTATE_CACHE unless it is there;
# sets RESTATE and RESTATE_SERVER_VERSION.
install_restate() {
    local platform
    case "$(uname -s)/$(uname -m)" in
    Linux/x86_64) platform=linux-x64 ;;
    Linux/aarch64 | Linux/arm64) platform=linux-arm64 ;;
    *) die "no Restate server package for $(uname -s)/$(uname -m)" ;;
    esac
    RESTATE="$RESTATE_CACHE/node_modules/@restatedev/restate-server-$platform/bin/restate-server"
    if [[ ! -x "$RESTATE" ]]; then
        log "installing @restatedev/restate-server@$RESTATE_VERSION from npm into $RESTATE_CACHE"
        mkdir -p "$RESTATE_CACHE"
        # --ignore-scripts: the package's install script only reports the download (Scarf);
        # the server is the platform package's prebuilt binary, which needs no script.
        SCARF_ANALYTICS=false npm install --prefix "$RESTATE_CACHE" --no-audit --no-fund \
            --ignore-scripts --loglevel=error "@restatedev/restate-server@$RESTATE_VERSION" >&2
        [[ -x "$RESTATE" ]] || die "npm installed no restate-server binary at $RESTATE"
    fi
    RESTATE_SERVER_VERSION="$("$RESTATE" --version 2>&1 | head -n 1)"
    [[ "$RESTATE_SERVER_VERSION" == *" $RESTATE_VERSION"* ]] ||
        die "$RESTATE is '$RESTATE_SERVER_VERSION', not $RESTATE_VERSION; remove $RESTATE_CACHE"
}

# Restate in DIR: the server (RESTATE; its data dir, ingress, admin API and node port all on
# loopback, its defaults otherwise), the Rust service (RESTATE_SERVICE), and the service's
# deployment registered through the admin API; ready once a POST of `{}` to each ingress PATH
# (e.g. Bench/noop) answers. Sets RESTATE_INGRESS. Returns 1, saying why, if any of it fails to
# start (the readiness checks run in subshells, so their failure does not end the script).
start_restate() {
    local dir=$1 ingress admin fabric service pid path
    shift
    read -r ingress admin fabric service <<<"$(free_ports 4)"
    mkdir -p "$dir/restate"
    # Telemetry off.
    start_tracked "$dir/restate.log" env \
        RESTATE_INGRESS__BIND_ADDRESS="127.0.0.1:$ingress" \
        RESTATE_ADMIN__BIND_ADDRESS="127.0.0.1:$admin" \
        RESTATE_BIND_ADDRESS="127.0.0.1:$fabric" \
        RESTATE_DISABLE_TELEMETRY=true \
        RESTATE_LOG_DISABLE_ANSI_CODES=true \
        "$RESTATE" --base-dir "$dir/restate" --node-name bench --no-logo --listen-mode tcp
    pid=$STARTED_PID
    (wait_for_http "$pid" "$dir/restate.log" "restate-server (admin API)" "" \
        "http://127.0.0.1:$admin/health") || return 1
    (wait_for_http "$pid" "$dir/restate.log" "restate-server (ingress)" "" \
        "http://127.0.0.1:$ingress/restate/health") || return 1

    start_tracked "$dir/restate-service.log" "$RESTATE_SERVICE" "127.0.0.1:$service"
    (wait_for_line "$dir/restate-service.log" "^listening on http://" "$STARTED_PID" \
        "the Restate service") || return 1

    if ! curl -sf --max-time 30 -X POST "http://127.0.0.1:$admin/deployments" \
        -H 'content-type: application/json' \
        -d "{\"uri\":\"http://127.0.0.1:$service\"}" >"$dir/deployment.json"; then
        log "registering the service at http://127.0.0.1:$admin/deployments failed"
        return 1
    fi
    # The ingress learns the new service from the cluster's metadata: ready once it answers.
    for path in "$@"; do
        (wait_for_http "$pid" "$dir/restate.log" "Restate's $path" "" \
            -X POST -H 'content-type: application/json' -d '{}' \
            "http://127.0.0.1:$ingress/$path") || return 1
    done
    RESTATE_INGRESS="http://127.0.0.1:$ingress"
}

# `tally up` (TALLY) in DIR, fsync durability and its defaults otherwise, ready once it prints
# where it listens. Sets TALLY_URL and TALLY_WORKER_ADDR. Returns 1, saying why, if it fails to
# start.
start_tally() {
    local dir=$1
    start_tracked "$dir/tally.log" "$TALLY" up --data-dir "$dir/tally-data" \
        --http-addr 127.0.0.1:0 --worker-addr 127.0.0.1:0
    (wait_for_line "$dir/tally.log" "^listening on http://" "$STARTED_PID" "tally up") || return 1
    TALLY_URL="$(sed -n 's|^listening on \(http://[^ ]*\).*|\1|p' "$dir/tally.log" | head -n 1)"
    TALLY_WORKER_ADDR="$(sed -n 's|^workers attach at \([^ ]*\).*|\1|p' "$dir/tally.log" | head -n 1)"
    if [[ -z "$TALLY_WORKER_ADDR" ]]; then
        log "tally up printed no 'workers attach at' line"
        return 1
    fi
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

# Stops every tracked process and handles WORK (stop_all) however the script exits.
trap_cleanup() {
    cleanup() {
        local rc=$?
        trap - EXIT INT TERM
        stop_all "$rc"
        exit "$rc"
    }
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# Makes the run's temp dir, tally-NAME.XXXXXX under BENCH_TMPDIR (/var/tmp: a disk, not tmpfs,
# or fsync costs nothing and the figures mislead), readable by other users (PostgreSQL's must
# reach its data dir inside), with a results dir. Sets WORK, RESULTS and WORK_FS (its file
# system), and warns when that is tmpfs.
make_work_dir() {
    WORK="$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/tally-$1.XXXXXX")"
    chmod 755 "$WORK"
    RESULTS="$WORK/results"
    mkdir -p "$RESULTS"
    WORK_FS="$(stat -f -c %T "$WORK")"
    [[ "$WORK_FS" != tmpfs ]] ||
        log "warning: $WORK is on tmpfs: fsync is free there; set BENCH_TMPDIR to a dir on disk"
}

# Installs the Debian packages given (those the caller found missing), after one
# `apt-get update`; nothing when none is given. Dies, saying what to do, when it cannot.
apt_install_missing() {
    (($# > 0)) || return 0
    [[ $EUID -eq 0 ]] || die "missing Debian packages $*: install them (as root)"
    command -v apt-get >/dev/null || die "missing packages $*, and no apt-get"
    log "installing Debian packages: $* (apt-get update first)"
    apt-get update -qq >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "$@" >&2 || die "apt-get install $* failed"
}

# PostgreSQL's server programs: the newest /usr/lib/postgresql/N/bin with initdb, or nothing.
pg_bindir() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$dir" && -x "$dir/initdb" ]] && echo "$dir"
    return 0
}

# Sets PG_BIN to PostgreSQL's server programs, or dies saying why they cannot run here.
find_postgres() {
    PG_BIN="$(pg_bindir)"
    [[ -n "$PG_BIN" ]] || die "no PostgreSQL server programs in /usr/lib/postgresql/*/bin"
    [[ $EUID -ne 0 ]] || id -u postgres >/dev/null 2>&1 ||
        die "no 'postgres' user to run PostgreSQL as (Debian's postgresql package makes it)"
    [[ $EUID -eq 0 || "$NETNS" == 0 ]] ||
        die "PostgreSQL cannot run as root in a user namespace: run as root, or NETNS=0"
}

# PostgreSQL (PG_BIN) in DIR/postgres, a fresh copy of a cluster made once per invocation in
# WORK (initdb: trust on loopback, its defaults otherwise), on a free loopback port. As root it
# runs as `postgres` (PostgreSQL refuses root). Sets PG_PORT.
start_postgres() {
    local dir=$1 pid as=()
    [[ $EUID -ne 0 ]] || as=(setpriv --reuid=postgres --regid=postgres --init-groups --)
    if [[ ! -d "$WORK/postgres-template" ]]; then
        mkdir "$WORK/postgres-template"
        [[ $EUID -ne 0 ]] || chown postgres: "$WORK/postgres-template"
        if ! "${as[@]}" "$PG_BIN/initdb" -D "$WORK/postgres-template" -U postgres \
            --auth=trust -E UTF8 --no-locale >"$WORK/initdb.log" 2>&1; then
            tail -n 20 "$WORK/initdb.log" >&2
            log "initdb failed; its log is above"
            rm -rf "$WORK/postgres-template"
            return 1
        fi
    fi
    cp -a "$WORK/postgres-template" "$dir/postgres"
    PG_PORT="$(free_ports 1)"
    # TCP on loopback only, no Unix socket.
    start_tracked "$dir/postgres.log" "${as[@]}" "$PG_BIN/postgres" -D "$dir/postgres" \
        -c listen_addresses=127.0.0.1 -p "$PG_PORT" -c unix_socket_directories=
    pid=$STARTED_PID
    (wait_until_ready "$pid" "$dir/postgres.log" "PostgreSQL" \
        "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT") || return 1
}
