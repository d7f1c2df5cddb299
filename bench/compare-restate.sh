#!/usr/bin/env bash
# Tally's function calls side by side with Restate's, in one invocation, on this machine, on
# 127.0.0.1 only.
#
# Two workloads, each a closed loop of HTTP calls with a `{}` input, measured by the same load
# generator (`tally bench call`) at each client count in CLIENTS:
#
#   noop:    a function that answers at once. Tally: `noop` (never touches the log). Restate:
#            `Bench/noop` of a Rust restate-sdk service (bench/restate-service).
#   append3: three durable steps one after the other. Tally: `append3`, three `ctx.append`s to
#            the log. Restate: `Bench/append3`, three `ctx.run` steps, each journaled.
#
# Rows per workload: Tally in-process (`tally up`'s own functions), Tally in a worker (the same
# handlers in `bench-worker`, a separate process attached over gRPC), Tally keyed (in-process,
# a unique Idempotency-Key per call, which makes the call a durable invocation: logged before
# it runs and its result after, as Restate journals every call), and Restate 1.7 (server from
# npm, default configuration).
# Every cell starts its system afresh in a temp dir, alone (the other system is stopped), and
# stops it after; systems take turns within a run; each figure is the median of RUNS runs.
#
# Restate's server asks GitHub for its latest release at every start, whatever its
# configuration. So once everything is installed and built, the measurements run in a network
# namespace of their own (unshare --net --map-root-user) where only loopback exists: nothing
# but 127.0.0.1 is reachable, and nothing leaves the machine.
#
# Environment: CLIENTS ("1 32"), DURATION seconds measured per cell (10), WARMUP seconds before
# each (2), RUNS (3), OUT (bench/results/restate-<date>.json), QUICK=1 (one run of 2 s after
# 1 s: a smoke check), RESTATE_VERSION (1.7.12), RESTATE_CACHE (where npm installs the server;
# target/bench-cache/restate-server-<version>), BENCH_TMPDIR (/var/tmp: where the data dirs go;
# a disk, not tmpfs), KEEP_WORK=1 (keep the temp dir and its logs; a failed run keeps them
# anyway), NETNS=0 (measure in this network namespace, e.g. where user namespaces are off;
# restate-server then tries to reach api.github.com once at start).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${QUICK:-0}" == 1 ]]; then
    RUNS="${RUNS:-1}" DURATION="${DURATION:-2}" WARMUP="${WARMUP:-1}"
fi
CLIENTS="${CLIENTS:-1 32}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
RUNS="${RUNS:-3}"
RESTATE_VERSION="${RESTATE_VERSION:-1.7.12}"
RESTATE_CACHE="${RESTATE_CACHE:-$ROOT/target/bench-cache/restate-server-$RESTATE_VERSION}"
OUT="${OUT:-$ROOT/bench/results/restate-$(date -u +%Y%m%d-%H%M%S).json}"
NETNS="${NETNS:-1}"
READY_TIMEOUT_S=60
WORKLOADS="noop append3"
SYSTEMS="tally tally-worker tally-keyed restate"

# Messages, process tracking, free ports and ready lines (bench/lib.sh).
source "$ROOT/bench/lib.sh"

for name in DURATION RUNS; do
    [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive integer, not '${!name}'"
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a whole number of seconds, not '$WARMUP'"
[[ -n "$CLIENTS" ]] || die "CLIENTS must list at least one client count"
for clients in $CLIENTS; do
    [[ "$clients" =~ ^[1-9][0-9]*$ ]] || die "CLIENTS must hold positive integers, not '$clients'"
done
[[ "$RESTATE_VERSION" =~ ^1\.[0-9]+\.[0-9]+$ ]] ||
    die "RESTATE_VERSION must be an exact 1.x.y version, not '$RESTATE_VERSION'"
[[ "$NETNS" == 0 || "$NETNS" == 1 ]] || die "NETNS takes 0 or 1, not '$NETNS'"

# ---------------------------------------------------------------------------------------------
# Processes: every one this script starts is tracked and stopped on exit, failure included.

PIDS=()
WORK=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all "$rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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

# Installs the Restate server from npm into RESTATE_CACHE unless it is there; sets RESTATE and
# RESTATE_SERVER_VERSION.
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

# Builds what runs (release); sets TALLY, BENCH_WORKER and RESTATE_SERVICE.
build() {
    local target_dir binary
    log "building tally, bench-worker and the Restate service (release)"
    # The service is a workspace of its own: it builds into the workspace's target dir too,
    # so one build cache serves both.
    target_dir="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
    (
        cd "$ROOT"
        cargo build --release --quiet --bin tally
        cargo build --release --quiet -p gateway --example bench-worker
        cargo build --release --quiet --manifest-path bench/restate-service/Cargo.toml \
            --target-dir "$target_dir"
    )
    TALLY="$target_dir/release/tally"
    BENCH_WORKER="$target_dir/release/examples/bench-worker"
    RESTATE_SERVICE="$target_dir/release/tally-bench-restate-service"
    for binary in "$TALLY" "$BENCH_WORKER" "$RESTATE_SERVICE"; do
        [[ -x "$binary" ]] || die "the build left no $binary"
    done
}

# Runs this script again in a new network namespace where only loopback exists, with what
# install_restate and build found; does not return.
reenter_in_network_namespace() {
    command -v ip >/dev/null || die "ip (iproute2) is needed for the network namespace; or NETNS=0"
    unshare --net --map-root-user true 2>/dev/null ||
        die "cannot make a network namespace (unshare --net --map-root-user failed: are user \
namespaces off?); NETNS=0 measures in this one, where restate-server tries to reach GitHub"
    log "entering a network namespace with only loopback"
    export TALLY_BENCH_IN_NETNS=1 OUT RESTATE RESTATE_SERVER_VERSION TALLY BENCH_WORKER \
        RESTATE_SERVICE
    exec unshare --net --map-root-user -- bash "${BASH_SOURCE[0]}"
}

if [[ "${TALLY_BENCH_IN_NETNS:-0}" == 1 ]]; then
    # Inside: loopback exists but is down.
    ip link set lo up || die "cannot bring up loopback in the network namespace"
    NETWORK="a network namespace of its own with only loopback"
else
    for tool in python3 curl npm cargo; do
        command -v "$tool" >/dev/null || die "$tool is needed and not on the PATH"
    done
    install_restate
    build
    [[ "$NETNS" == 0 ]] || reenter_in_network_namespace
    NETWORK="this machine's network namespace, on 127.0.0.1"
fi

# Data dirs live here: a disk, not tmpfs, or fsync costs nothing and the figures mislead.
WORK="$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/tally-vs-restate.XXXXXX")"
RESULTS="$WORK/results"
mkdir -p "$RESULTS"
WORK_FS="$(stat -f -c %T "$WORK")"
[[ "$WORK_FS" != tmpfs ]] ||
    log "warning: $WORK is on tmpfs: fsync is free there; set BENCH_TMPDIR to a dir on disk"

DURABILITY_NOTE="Restate journals every invocation before it answers: the call, each ctx.run \
step's result and the output go to its log (Bifrost, a replicated loglet with one replica on \
this node, RocksDB WAL synced: the defaults of restate-server $RESTATE_VERSION), and the \
service runs in its own process that Restate calls over HTTP/2. Tally (tally up, fsync \
durability) acknowledges each ctx.append only once it is fsynced, but a /function call \
without an Idempotency-Key is not logged at all: its invocation lives in memory only (the \
in-process and worker rows). The keyed row sends a unique Idempotency-Key per call, which \
makes it a durable invocation: appended to the log before it runs, its result after, like \
Restate's journal (Tally's handler runs in the gateway's process, Restate's in the service's)."

cat >&2 <<EOF
== Tally vs Restate: function calls ==
$DURABILITY_NOTE
clients: $CLIENTS; ${DURATION} s measured after ${WARMUP} s of warmup per cell; median of $RUNS run(s)
tally: $TALLY ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown))
restate: $RESTATE_SERVER_VERSION ($RESTATE)
temp dir: $WORK ($WORK_FS)
network: $NETWORK
load average (1, 5, 15 min) before: $(cut -d ' ' -f 1-3 /proc/loadavg)
EOF
LOAD_BEFORE="$(cut -d ' ' -f 1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------
# Systems. Each start_* sets the URL the cell calls; STOP_PIDS lists what to stop.

STOP_PIDS=()

# Restate: the server (its data dir, ingress, admin API and node port all on loopback), the
# Rust service, and the service's deployment registered through the admin API. Sets
# RESTATE_INGRESS.
start_restate() {
    local dir=$1 ingress admin fabric service pid service_pid handler
    read -r ingress admin fabric service <<<"$(free_ports 4)"
    mkdir -p "$dir/restate"
    # Its defaults otherwise; telemetry off.
    RESTATE_INGRESS__BIND_ADDRESS="127.0.0.1:$ingress" \
        RESTATE_ADMIN__BIND_ADDRESS="127.0.0.1:$admin" \
        RESTATE_BIND_ADDRESS="127.0.0.1:$fabric" \
        RESTATE_DISABLE_TELEMETRY=true \
        RESTATE_LOG_DISABLE_ANSI_CODES=true \
        "$RESTATE" --base-dir "$dir/restate" --node-name bench --no-logo --listen-mode tcp \
        >"$dir/restate.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    STOP_PIDS+=("$pid")
    wait_for_http "$pid" "$dir/restate.log" "restate-server (admin API)" "" \
        "http://127.0.0.1:$admin/health"
    wait_for_http "$pid" "$dir/restate.log" "restate-server (ingress)" "" \
        "http://127.0.0.1:$ingress/restate/health"

    "$RESTATE_SERVICE" "127.0.0.1:$service" >"$dir/restate-service.log" 2>&1 &
    service_pid=$!
    PIDS+=("$service_pid")
    STOP_PIDS+=("$service_pid")
    wait_for_line "$dir/restate-service.log" "^listening on http://" "$service_pid" \
        "the Restate service"

    curl -sf --max-time 30 -X POST "http://127.0.0.1:$admin/deployments" \
        -H 'content-type: application/json' \
        -d "{\"uri\":\"http://127.0.0.1:$service\"}" >"$dir/deployment.json" ||
        die "registering the service at http://127.0.0.1:$admin/deployments failed"
    # The ingress learns the new service from the cluster's metadata: ready once it answers.
    for handler in noop append3; do
        wait_for_http "$pid" "$dir/restate.log" "Restate's Bench/$handler" "" \
            -X POST -H 'content-type: application/json' -d '{}' \
            "http://127.0.0.1:$ingress/Bench/$handler"
    done
    RESTATE_INGRESS="http://127.0.0.1:$ingress"
}

# Tally: `tally up` (fsync durability, its defaults). Sets TALLY_URL and TALLY_WORKER_ADDR.
start_tally() {
    local dir=$1 pid name
    "$TALLY" up --data-dir "$dir/tally-data" --http-addr 127.0.0.1:0 --worker-addr 127.0.0.1:0 \
        >"$dir/tally.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    STOP_PIDS+=("$pid")
    wait_for_line "$dir/tally.log" "^listening on http://" "$pid" "tally up"
    TALLY_URL="$(sed -n 's|^listening on \(http://[^ ]*\).*|\1|p' "$dir/tally.log" | head -n 1)"
    TALLY_WORKER_ADDR="$(sed -n 's|^workers attach at \([^ ]*\).*|\1|p' "$dir/tally.log" | head -n 1)"
    [[ -n "$TALLY_WORKER_ADDR" ]] || die "tally up printed no 'workers attach at' line"
    for name in noop append3; do
        wait_for_http "$pid" "$dir/tally.log" "Tally's $name" "" -X POST -d '{}' \
            "$TALLY_URL/function/$name"
    done
}

# `bench-worker`, attached to the Tally that start_tally started.
start_bench_worker() {
    local dir=$1 pid name
    "$BENCH_WORKER" --gateway "$TALLY_WORKER_ADDR" >"$dir/bench-worker.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    STOP_PIDS+=("$pid")
    wait_for_http "$pid" "$dir/bench-worker.log" "bench-worker (registered)" \
        '"append3-worker"' "$TALLY_URL/functions"
    for name in noop-worker append3-worker; do
        wait_for_http "$pid" "$dir/bench-worker.log" "Tally's $name" "" -X POST -d '{}' \
            "$TALLY_URL/function/$name"
    done
}

stop_systems() {
    local pid
    for pid in "${STOP_PIDS[@]}"; do stop_pid "$pid"; done
    STOP_PIDS=()
}

# cell_command SYSTEM WORKLOAD CLIENTS JSON_FILE sets CELL to the load generator's command
# line (an array, so it runs as its own process, not in a subshell).
cell_command() {
    local system=$1 workload=$2 clients=$3 json=$4
    CELL=("$TALLY" bench call)
    case "$system" in
    tally) CELL+=(--url "$TALLY_URL/function/$workload") ;;
    tally-worker) CELL+=(--url "$TALLY_URL/function/$workload-worker") ;;
    tally-keyed) CELL+=(--url "$TALLY_URL/function/$workload" --idempotency-keys) ;;
    restate) CELL+=(--url "$RESTATE_INGRESS/Bench/$workload") ;;
    esac
    CELL+=(--input '{}' --clients "$clients" --duration "$DURATION" --warmup "$WARMUP" --json "$json")
}

# One measured cell: start its system afresh (alone on the machine), measure, stop it, drop
# its data.
run_cell() {
    local run=$1 clients=$2 workload=$3 system=$4 name dir pid
    name="c$clients-$workload-$system-$run"
    dir="$WORK/$name"
    mkdir -p "$dir"
    case "$system" in
    restate) start_restate "$dir" ;;
    tally-worker) start_tally "$dir" && start_bench_worker "$dir" ;;
    *) start_tally "$dir" ;;
    esac
    cell_command "$system" "$workload" "$clients" "$RESULTS/$name.json"
    # In the background and waited for, so a signal stops the script at once, not after it.
    "${CELL[@]}" >"$dir/bench.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    if ! wait "$pid"; then
        tail -n 20 "$dir/bench.log" >&2 || true
        die "$name: the benchmark failed; its log is above"
    fi
    forget_pid "$pid"
    stop_systems
    rm -rf "$dir/restate" "$dir/tally-data"
    python3 - "$RESULTS/$name.json" "$name" <<'EOF' >&2
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_us"]
errors = f"  errors {r['errors']}" if r["errors"] else ""
print(f"  {sys.argv[2]:<32} {r['calls_per_s']:>9,.0f} calls/s  p50 {l['p50']/1000:.2f} ms"
      f"  p99 {l['p99']/1000:.2f} ms{errors}")
EOF
}

for ((run = 1; run <= RUNS; run++)); do
    log "run $run of $RUNS"
    for clients in $CLIENTS; do
        for workload in $WORKLOADS; do
            # Systems take turns within a run, so drift on a shared machine hits them alike.
            for system in $SYSTEMS; do
                run_cell "$run" "$clients" "$workload" "$system"
            done
        done
    done
done

# ---------------------------------------------------------------------------------------------
# Medians, ratios, the table and the JSON file.

mkdir -p "$(dirname "$OUT")"
RESTATE_SERVER_VERSION="$RESTATE_SERVER_VERSION" DURABILITY_NOTE="$DURABILITY_NOTE" NETWORK="$NETWORK" \
    LOAD_BEFORE="$LOAD_BEFORE" LOAD_AFTER="$(cut -d ' ' -f 1-3 /proc/loadavg)" \
    TALLY_COMMIT="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
    CLIENTS="$CLIENTS" DURATION="$DURATION" WARMUP="$WARMUP" RUNS="$RUNS" \
    QUICK="${QUICK:-0}" python3 - "$RESULTS" "$OUT" <<'EOF'
import glob, json, os, platform, statistics, sys, time

results_dir, out = sys.argv[1], sys.argv[2]
env = os.environ
SYSTEMS = {
    "tally": "Tally in-process",
    "tally-worker": "Tally worker",
    "tally-keyed": "Tally keyed",
    "restate": "Restate",
}
WORKLOADS = ["noop", "append3"]
runs = {}
for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
    stem, run = os.path.basename(path)[: -len(".json")].rsplit("-", 1)
    clients, workload, system = stem.split("-", 2)
    r = json.load(open(path))
    runs.setdefault((int(clients[1:]), workload, system), []).append({
        "run": int(run),
        "calls_per_s": r["calls_per_s"],
        "p50_us": r["latency_us"]["p50"],
        "p99_us": r["latency_us"]["p99"],
        "p999_us": r["latency_us"]["p999"],
        "max_us": r["latency_us"]["max"],
        "calls": r["calls"],
        "errors": r["errors"],
        "retried": r["retried"],
        "first_error": r.get("first_error"),
    })

cells = []
sys_order = list(SYSTEMS)
for key in sorted(runs, key=lambda k: (k[0], WORKLOADS.index(k[1]), sys_order.index(k[2]))):
    clients, workload, system = key
    rs = sorted(runs[key], key=lambda r: r["run"])
    median = {f: statistics.median(r[f] for r in rs)
              for f in ("calls_per_s", "p50_us", "p99_us", "p999_us")}
    cells.append({"clients": clients, "workload": workload, "system": system,
                  "label": SYSTEMS[system], "runs": rs, "median": median,
                  "errors": sum(r["errors"] for r in rs)})

by_key = {(c["clients"], c["workload"], c["system"]): c for c in cells}
ratio = lambda a, b: round(a / b, 3) if b else None
for c in cells:
    restate = by_key.get((c["clients"], c["workload"], "restate"))
    if c["system"] != "restate" and restate:
        m, r = c["median"], restate["median"]
        c["ratio_vs_restate"] = {
            "throughput": ratio(m["calls_per_s"], r["calls_per_s"]),
            "p50": ratio(m["p50_us"], r["p50_us"]),
            "p99": ratio(m["p99_us"], r["p99_us"]),
        }

header = (f"{'clients':<9}{'workload':<10}{'system':<28}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'tput T/R':>10}{'p50 T/R':>9}{'p99 T/R':>9}")
lines = [header, "-" * len(header)]
fmt = lambda v: f"{v:.2f}" if v is not None else "-"
for c in cells:
    m = c["median"]
    r = c.get("ratio_vs_restate")
    ratios = (f"{fmt(r['throughput']):>10}{fmt(r['p50']):>9}{fmt(r['p99']):>9}" if r else "")
    label = c["label"] + (f" (errors {c['errors']})" if c["errors"] else "")
    lines.append((f"{c['clients']:<9}{c['workload']:<10}{label:<28}{m['calls_per_s']:>10,.0f}"
                  f"{m['p50_us'] / 1000:>9.2f}{m['p99_us'] / 1000:>9.2f}" + ratios).rstrip())
print()
print("\n".join(lines))
print(f"\nmedians of {env['RUNS']} run(s) of {env['DURATION']} s after {env['WARMUP']} s of warmup;"
      " T/R = Tally / Restate (throughput above 1: Tally faster; latency above 1: Tally slower)")
print(env["DURABILITY_NOTE"])
print(f"load average (1, 5, 15 min) before: {env['LOAD_BEFORE']}, after: {env['LOAD_AFTER']}"
      f" on {os.cpu_count()} cores")

report = {
    "benchmark": "tally-vs-restate",
    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "host": {"cores": os.cpu_count(), "kernel": platform.release(), "network": env["NETWORK"],
             "load_avg_before": env["LOAD_BEFORE"], "load_avg_after": env["LOAD_AFTER"]},
    "tally_commit": env["TALLY_COMMIT"],
    "restate_server_version": env["RESTATE_SERVER_VERSION"],
    "restate_sdk": "restate-sdk 0.12 (Rust), bench/restate-service",
    "params": {"clients": [int(c) for c in env["CLIENTS"].split()],
               "duration_s": int(env["DURATION"]), "warmup_s": int(env["WARMUP"]),
               "runs": int(env["RUNS"]), "input": "{}", "quick": env["QUICK"] == "1"},
    "durability_note": env["DURABILITY_NOTE"],
    "cells": cells,
}
with open(out, "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
print(f"wrote {out}")
EOF
