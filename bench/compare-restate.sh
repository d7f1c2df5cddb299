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
# namespace of their own (unshare --net, with --map-root-user when not root) where only loopback
# exists: nothing but 127.0.0.1 is reachable, and nothing leaves the machine.
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

trap_cleanup

# Builds what runs (release); sets TALLY, BENCH_WORKER and RESTATE_SERVICE.
build() {
    log "building tally, bench-worker and the Restate service (release)"
    build_tally
    (cd "$ROOT" && cargo build --release --quiet -p gateway --example bench-worker)
    BENCH_WORKER="$(cargo_target_dir)/release/examples/bench-worker"
    [[ -x "$BENCH_WORKER" ]] || die "the build left no $BENCH_WORKER"
    build_restate_service
}

if [[ "${TALLY_BENCH_IN_NETNS:-0}" == 1 ]]; then
    bring_up_loopback
    NETWORK="a network namespace of its own with only loopback"
else
    for tool in python3 curl npm cargo; do
        command -v "$tool" >/dev/null || die "$tool is needed and not on the PATH"
    done
    install_restate
    build
    [[ "$NETNS" == 0 ]] || reenter_in_network_namespace "${BASH_SOURCE[0]}" OUT RESTATE \
        RESTATE_SERVER_VERSION TALLY BENCH_WORKER RESTATE_SERVICE
    NETWORK="this machine's network namespace, on 127.0.0.1"
fi

make_work_dir vs-restate

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
# Systems (start_restate and start_tally: bench/lib.sh). STOP_PIDS lists what to stop.

STOP_PIDS=()

# Tally with the functions this benchmark calls ready.
start_tally_functions() {
    local dir=$1 name
    start_tally "$dir" || die "tally up did not start"
    for name in noop append3; do
        wait_for_http "$STARTED_PID" "$dir/tally.log" "Tally's $name" "" -X POST -d '{}' \
            "$TALLY_URL/function/$name"
    done
}

# `bench-worker`, attached to the Tally that start_tally_functions started.
start_bench_worker() {
    local dir=$1 pid name
    start_tracked "$dir/bench-worker.log" "$BENCH_WORKER" --gateway "$TALLY_WORKER_ADDR"
    pid=$STARTED_PID
    wait_for_http "$pid" "$dir/bench-worker.log" "bench-worker (registered)" \
        '"append3-worker"' "$TALLY_URL/functions"
    for name in noop-worker append3-worker; do
        wait_for_http "$pid" "$dir/bench-worker.log" "Tally's $name" "" -X POST -d '{}' \
            "$TALLY_URL/function/$name"
    done
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
    restate) start_restate "$dir" Bench/noop Bench/append3 || die "Restate did not start" ;;
    tally-worker) start_tally_functions "$dir" && start_bench_worker "$dir" ;;
    *) start_tally_functions "$dir" ;;
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
