#!/usr/bin/env bash
# Objects on Tally side by side with Restate's virtual objects, and transactions between objects
# on Tally, in one invocation, on this machine, on 127.0.0.1 only.
#
# One load generator, `tally bench object`, closed-loop clients, drives every cell:
#
#   counter:  each call adds 1 to a counter, `{"by": 1}` in, `{"value": V}` out, over KEYS
#             (10000) counters drawn uniformly, and over one hot counter, at each client count
#             in CLIENTS. Tally: `POST /objects/counter/c{k}/add` (the example class `counter`
#             of `tally up`). Restate: `POST /Counter/c{k}/add` on its ingress (the virtual
#             object `Counter` of bench/restate-service). Both run one call at a time per
#             object and make its state change durable before they answer.
#   transfer: Tally only, TRANSFER_CLIENTS (32) clients: over each count of accounts in
#             ACCOUNTS ("100 5000 10000"), each opened first with a deposit, keys drawn
#             uniform or zipfian THETA (0.99), each call a transfer of 1 between two distinct
#             accounts (`POST /transactions/{id}`, a unique id per transfer), serializable
#             (one record in both accounts' queues), open (one call of `pay`, whose call of
#             the other account joins it: two-phase commit with locks) or a saga.
#
# Every cell starts its system afresh in a temp dir, alone (the other system is stopped), and
# stops it after; systems take turns within a run; each figure is the median of RUNS runs.
# Per CPU s is successful operations per CPU second of the system's processes over the
# measured window (`tally up`; Restate's server and its service), the load generator apart.
# Beside them the goals: 5 times Restate's calls a second on both counter workloads; 1,200
# serializable transactions (either form) and 1,800 sagas per CPU second.
#
# Restate's server asks GitHub for its latest release at every start, whatever its
# configuration. So once everything is installed and built, the measurements run in a network
# namespace of their own (unshare --net, with --map-root-user when not root) where only loopback
# exists: nothing but 127.0.0.1 is reachable, and nothing leaves the machine.
#
# Environment: CLIENTS ("1 32": the counter cells), TRANSFER_CLIENTS (32), KEYS (10000),
# ACCOUNTS ("100 5000 10000"), DISTRIBUTIONS ("uniform zipfian"), THETA (0.99), STYLES
# ("serializable open saga"), WORKLOADS ("counter transfer"), DURATION seconds measured per cell (10),
# WARMUP seconds before each (2), RUNS (3), OUT (bench/results/objects-<date>.json), QUICK=1
# (a smoke check: one run of 2 s after 1 s, over 100 and 1000 accounts unless set),
# RESTATE_VERSION (1.7.12), RESTATE_CACHE (where npm installs the server;
# target/bench-cache/restate-server-<version>), BENCH_TMPDIR (/var/tmp: where the data dirs go;
# a disk, not tmpfs), KEEP_WORK=1 (keep the temp dir and its logs; a failed run keeps them
# anyway), NETNS=0 (measure in this network namespace, e.g. where user namespaces are off;
# restate-server then tries to reach api.github.com once at start).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${QUICK:-0}" == 1 ]]; then
    RUNS="${RUNS:-1}" DURATION="${DURATION:-2}" WARMUP="${WARMUP:-1}"
    ACCOUNTS="${ACCOUNTS:-100 1000}"
fi
CLIENTS="${CLIENTS:-1 32}"
TRANSFER_CLIENTS="${TRANSFER_CLIENTS:-32}"
KEYS="${KEYS:-10000}"
ACCOUNTS="${ACCOUNTS:-100 5000 10000}"
DISTRIBUTIONS="${DISTRIBUTIONS:-uniform zipfian}"
THETA="${THETA:-0.99}"
STYLES="${STYLES:-serializable open saga}"
WORKLOADS="${WORKLOADS:-counter transfer}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
RUNS="${RUNS:-3}"
RESTATE_VERSION="${RESTATE_VERSION:-1.7.12}"
RESTATE_CACHE="${RESTATE_CACHE:-$ROOT/target/bench-cache/restate-server-$RESTATE_VERSION}"
OUT="${OUT:-$ROOT/bench/results/objects-$(date -u +%Y%m%d-%H%M%S).json}"
NETNS="${NETNS:-1}"
READY_TIMEOUT_S=60
# The goals printed beside the figures.
GOAL_COUNTER_RATIO=5
GOAL_SERIALIZABLE_PER_CPU_S=1200
GOAL_SAGA_PER_CPU_S=1800

# Messages, processes, ports, readiness, the network namespace, the builds, Restate and Tally.
source "$ROOT/bench/lib.sh"

for name in TRANSFER_CLIENTS KEYS DURATION RUNS; do
    [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive integer, not '${!name}'"
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a whole number of seconds, not '$WARMUP'"
[[ "$THETA" =~ ^0?\.[0-9]+$ ]] || die "THETA must be above 0 and below 1, not '$THETA'"
for list in CLIENTS ACCOUNTS DISTRIBUTIONS STYLES WORKLOADS; do
    [[ -n "${!list}" ]] || die "$list must list at least one value"
done
for clients in $CLIENTS; do
    [[ "$clients" =~ ^[1-9][0-9]*$ ]] || die "CLIENTS must hold positive integers, not '$clients'"
done
for accounts in $ACCOUNTS; do
    [[ "$accounts" =~ ^[1-9][0-9]*$ && "$accounts" -ge 2 ]] ||
        die "ACCOUNTS must hold integers of at least 2, not '$accounts'"
done
for distribution in $DISTRIBUTIONS; do
    [[ "$distribution" == uniform || "$distribution" == zipfian ]] ||
        die "DISTRIBUTIONS takes uniform and zipfian, not '$distribution'"
done
for style in $STYLES; do
    [[ "$style" == serializable || "$style" == open || "$style" == saga ]] ||
        die "STYLES takes serializable, open and saga, not '$style'"
done
for workload in $WORKLOADS; do
    [[ "$workload" == counter || "$workload" == transfer ]] ||
        die "WORKLOADS takes counter and transfer, not '$workload'"
done
[[ "$RESTATE_VERSION" =~ ^1\.[0-9]+\.[0-9]+$ ]] ||
    die "RESTATE_VERSION must be an exact 1.x.y version, not '$RESTATE_VERSION'"
[[ "$NETNS" == 0 || "$NETNS" == 1 ]] || die "NETNS takes 0 or 1, not '$NETNS'"

wants() { [[ " $WORKLOADS " == *" $1 "* ]]; }

PIDS=()
STOP_PIDS=()
WORK=""

trap_cleanup

# ---------------------------------------------------------------------------------------------
# Installation and builds (outside the network namespace).

if [[ "${TALLY_BENCH_IN_NETNS:-0}" == 1 ]]; then
    bring_up_loopback
    NETWORK="a network namespace of its own with only loopback"
else
    for tool in python3 curl cargo; do
        command -v "$tool" >/dev/null || die "$tool is needed and not on the PATH"
    done
    RESTATE="" RESTATE_SERVER_VERSION="" RESTATE_SERVICE=""
    if wants counter; then
        command -v npm >/dev/null || [[ -d "$RESTATE_CACHE/node_modules" ]] ||
            die "npm is needed to install restate-server (or WORKLOADS=transfer)"
        install_restate
    fi
    log "building tally$(wants counter && echo ' and the Restate service') (release)"
    build_tally
    if wants counter; then build_restate_service; fi
    [[ "$NETNS" == 0 ]] || reenter_in_network_namespace "${BASH_SOURCE[0]}" OUT TALLY RESTATE \
        RESTATE_SERVER_VERSION RESTATE_SERVICE CLIENTS TRANSFER_CLIENTS KEYS ACCOUNTS \
        DISTRIBUTIONS THETA STYLES WORKLOADS DURATION WARMUP RUNS
    NETWORK="this machine's network namespace, on 127.0.0.1"
fi

make_work_dir objects

DURABILITY_NOTE="Tally (tally up, fsync durability) logs a call to an object and then one \
record with its output and the object's new state, fsynced, before it answers; a serializable \
transfer is one transaction record in both accounts' queues, a vote from each and the decision; \
an open one is the payer's join record, the payee's join record and vote, and the decision \
(which holds the payer's outcome), the payer locked until then; a saga is a workflow whose two calls (and any compensation) are each such a call. Restate \
(restate-server $RESTATE_VERSION, its defaults) journals the call, the state change and the \
output of a virtual object's handler in its log (Bifrost, RocksDB WAL synced) and runs the \
handler in the service's own process over HTTP/2."

cat >&2 <<EOF
== Objects: Tally vs Restate virtual objects, and transfers on Tally ==
$DURABILITY_NOTE
workloads: $WORKLOADS; ${DURATION} s measured after ${WARMUP} s of warmup per cell; median of $RUNS run(s)
counter: $KEYS keys and 1 key at clients $CLIENTS; transfer: $ACCOUNTS accounts x $DISTRIBUTIONS \
(theta $THETA) x $STYLES at $TRANSFER_CLIENTS clients
tally: $TALLY ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown))
restate: ${RESTATE_SERVER_VERSION:-not measured} ${RESTATE:+($RESTATE)}
temp dir: $WORK ($WORK_FS)
network: $NETWORK
load average (1, 5, 15 min) before: $(cut -d ' ' -f 1-3 /proc/loadavg)
EOF
LOAD_BEFORE="$(cut -d ' ' -f 1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------
# Systems. Each start_* starts one afresh in DIR and sets TARGET_ARGS, the arguments of
# `tally bench object` that point at it (every process of it measured for CPU); it returns 1
# if it does not start, having said why.

start_tally_objects() {
    local dir=$1
    start_tally "$dir" || return 1
    (wait_for_http "$STARTED_PID" "$dir/tally.log" "Tally's counter" '"value"' -X POST \
        -d '{"by":0}' "$TALLY_URL/objects/counter/ready/add") || return 1
    TARGET_ARGS=(--addr "$TALLY_URL" --cpu-pid "$STARTED_PID")
}

start_restate_objects() {
    local dir=$1 pid
    start_restate "$dir" Bench/noop || return 1
    (wait_for_http "${STOP_PIDS[0]}" "$dir/restate.log" "Restate's Counter" '"value"' -X POST \
        -H 'content-type: application/json' -d '{"by":0}' \
        "$RESTATE_INGRESS/Counter/ready/add") || return 1
    TARGET_ARGS=(--restate "$RESTATE_INGRESS")
    for pid in "${STOP_PIDS[@]}"; do TARGET_ARGS+=(--cpu-pid "$pid"); done
}

# ---------------------------------------------------------------------------------------------
# Cells. A cell's name: WORKLOAD~KEYS~DISTRIBUTION~STYLE~SYSTEM~CLIENTS~RUN, "-" for a style a
# counter has none of.

FAILED=()

run_cell() {
    local workload=$1 keys=$2 distribution=$3 style=$4 system=$5 clients=$6 run=$7
    local name dir pid start args
    name="$workload~$keys~$distribution~$style~$system~$clients~$run"
    dir="$WORK/$name"
    mkdir -p "$dir"
    case "$system" in
    tally) start=start_tally_objects ;;
    restate) start=start_restate_objects ;;
    esac
    if ! "$start" "$dir"; then
        log "  $name: $system did not start"
        echo "$system did not start" >"$RESULTS/$name.failed"
        FAILED+=("$name")
        stop_systems
        return 0
    fi
    args=(--workload "$workload" --distribution "$distribution" --theta "$THETA")
    case "$workload" in
    counter) args+=(--keys "$keys") ;;
    transfer) args+=(--accounts "$keys" --style "$style") ;;
    esac
    # In the background and waited for, so a signal stops the script at once, not after it.
    "$TALLY" bench object "${args[@]}" "${TARGET_ARGS[@]}" --clients "$clients" \
        --duration "$DURATION" --warmup "$WARMUP" --seed "$run" \
        --json "$RESULTS/$name.json" >"$dir/bench.log" 2>&1 &
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
    stop_systems
    rm -rf "$dir/restate" "$dir/tally-data"
    python3 - "$RESULTS/$name.json" "$name" <<'EOF' >&2
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_us"]
extra = "".join(f"  {k} {r[k]}" for k in ("failed", "retryable", "errors") if r[k])
setup = f"  (setup {r['setup_s']:.1f} s)" if r["setup_s"] >= 0.1 else ""
print(f"  {sys.argv[2]:<52} {r['succeeded_per_s']:>9,.1f}/s  p50 {l['p50']/1000:.2f} ms"
      f"  p99 {l['p99']/1000:.2f} ms  {r.get('server_cpu_s') or 0:.1f} CPU s{setup}{extra}")
EOF
}

for ((run = 1; run <= RUNS; run++)); do
    log "run $run of $RUNS"
    if wants counter; then
        for clients in $CLIENTS; do
            for keys in "$KEYS" 1; do
                # Systems take turns within a run, so drift on a shared machine hits them alike.
                for system in tally restate; do
                    run_cell counter "$keys" uniform - "$system" "$clients" "$run"
                done
            done
        done
    fi
    if wants transfer; then
        for accounts in $ACCOUNTS; do
            for distribution in $DISTRIBUTIONS; do
                for style in $STYLES; do
                    run_cell transfer "$accounts" "$distribution" "$style" tally \
                        "$TRANSFER_CLIENTS" "$run"
                done
            done
        done
    fi
done

# ---------------------------------------------------------------------------------------------
# Medians, ratios, goals, the tables and the JSON file.

mkdir -p "$(dirname "$OUT")"
RESTATE_SERVER_VERSION="$RESTATE_SERVER_VERSION" DURABILITY_NOTE="$DURABILITY_NOTE" \
    NETWORK="$NETWORK" LOAD_BEFORE="$LOAD_BEFORE" LOAD_AFTER="$(cut -d ' ' -f 1-3 /proc/loadavg)" \
    TALLY_COMMIT="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
    CLIENTS="$CLIENTS" TRANSFER_CLIENTS="$TRANSFER_CLIENTS" KEYS="$KEYS" ACCOUNTS="$ACCOUNTS" \
    DISTRIBUTIONS="$DISTRIBUTIONS" THETA="$THETA" STYLES="$STYLES" WORKLOADS="$WORKLOADS" \
    DURATION="$DURATION" WARMUP="$WARMUP" RUNS="$RUNS" QUICK="${QUICK:-0}" \
    GOAL_COUNTER_RATIO="$GOAL_COUNTER_RATIO" \
    GOAL_SERIALIZABLE_PER_CPU_S="$GOAL_SERIALIZABLE_PER_CPU_S" \
    GOAL_SAGA_PER_CPU_S="$GOAL_SAGA_PER_CPU_S" \
    python3 - "$RESULTS" "$OUT" <<'EOF'
import glob, json, os, platform, statistics, sys, time

results_dir, out = sys.argv[1], sys.argv[2]
env = os.environ
goal_ratio = float(env["GOAL_COUNTER_RATIO"])
goal_per_cpu = {"serializable": float(env["GOAL_SERIALIZABLE_PER_CPU_S"]),
                "open": float(env["GOAL_SERIALIZABLE_PER_CPU_S"]),
                "saga": float(env["GOAL_SAGA_PER_CPU_S"])}

def parse(stem):
    workload, keys, distribution, style, system, clients, run = stem.split("~")
    return (workload, int(keys), distribution, style, system, int(clients)), int(run)

runs, failed = {}, {}
for path in glob.glob(os.path.join(results_dir, "*.json")):
    key, run = parse(os.path.basename(path)[: -len(".json")])
    r = json.load(open(path))
    runs.setdefault(key, []).append({
        "run": run,
        "succeeded_per_s": r["succeeded_per_s"],
        "p50_us": r["latency_us"]["p50"],
        "p99_us": r["latency_us"]["p99"],
        "p999_us": r["latency_us"]["p999"],
        "succeeded": r["succeeded"],
        "failed": r["failed"],
        "retryable": r["retryable"],
        "errors": r["errors"],
        "retried": r["retried"],
        "setup_s": r["setup_s"],
        "elapsed_s": r["elapsed_s"],
        "server_cpu_s": r.get("server_cpu_s"),
        "succeeded_per_cpu_s": r.get("succeeded_per_cpu_s"),
        "first_failure": r.get("first_failure"),
        "first_error": r.get("first_error"),
    })
for path in glob.glob(os.path.join(results_dir, "*.failed")):
    key, run = parse(os.path.basename(path)[: -len(".failed")])
    failed.setdefault(key, []).append({"run": run, "error": open(path).read().strip()})

def median_of(rs, field):
    values = [r[field] for r in rs if r[field] is not None]
    return statistics.median(values) if values else None

cells = []
for key in sorted(set(runs) | set(failed)):
    workload, keys, distribution, style, system, clients = key
    cell = {"workload": workload, "keys": keys, "distribution": distribution,
            "style": None if style == "-" else style, "system": system, "clients": clients}
    if key in runs:
        rs = sorted(runs[key], key=lambda r: r["run"])
        cell["runs"] = rs
        cell["median"] = {f: median_of(rs, f) for f in
                          ("succeeded_per_s", "p50_us", "p99_us", "p999_us",
                           "succeeded_per_cpu_s")}
        cores = [r["server_cpu_s"] / r["elapsed_s"] for r in rs
                 if r["server_cpu_s"] and r["elapsed_s"]]
        cell["median"]["cores"] = statistics.median(cores) if cores else None
        for f in ("failed", "retryable", "errors"):
            cell[f] = sum(r[f] for r in rs)
    if key in failed:
        cell["failed_runs"] = sorted(failed[key], key=lambda r: r["run"])
    cells.append(cell)

by_key = {(c["workload"], c["keys"], c["distribution"], c["style"], c["system"], c["clients"]): c
          for c in cells}
for c in cells:
    if c["workload"] == "transfer" and "median" in c:
        per = c["median"]["succeeded_per_cpu_s"]
        goal = goal_per_cpu[c["style"]]
        c["goal"] = {"per_cpu_s": goal, "met": per is not None and per >= goal}
    if c["workload"] != "counter" or c["system"] != "tally" or "median" not in c:
        continue
    restate = by_key.get(("counter", c["keys"], c["distribution"], None, "restate", c["clients"]))
    if restate and "median" in restate and restate["median"]["succeeded_per_s"]:
        m, r = c["median"], restate["median"]
        ratio = lambda a, b: round(a / b, 3) if a is not None and b else None
        c["ratio_vs_restate"] = {"throughput": ratio(m["succeeded_per_s"], r["succeeded_per_s"]),
                                 "p50": ratio(m["p50_us"], r["p50_us"]),
                                 "p99": ratio(m["p99_us"], r["p99_us"])}
        c["goal"] = {"throughput_ratio": goal_ratio,
                     "met": c["ratio_vs_restate"]["throughput"] >= goal_ratio}

num = lambda v, f: format(v, f) if v is not None else "-"
met = lambda c: "" if "goal" not in c else ("  met" if c["goal"]["met"] else "  not met")

def problems(c):
    extra = [f"{f} {c[f]}" for f in ("failed", "retryable", "errors") if c.get(f)]
    if "failed_runs" in c:
        extra.append(f"{len(c['failed_runs'])} run(s) failed")
    return ("  (" + ", ".join(extra) + ")") if extra else ""

lines = []
counter = [c for c in cells if c["workload"] == "counter"]
if counter:
    header = (f"{'counter':<14}{'clients':>8}  {'system':<9}{'calls/s':>10}{'p50 ms':>9}"
              f"{'p99 ms':>9}{'cores':>7}{'per CPU s':>11}{'T/R':>7}{'p50 T/R':>9}  goal")
    lines += [header, "-" * len(header)]
    for c in sorted(counter, key=lambda c: (c["clients"], -c["keys"], c["system"] != "tally")):
        lead = (f"{'1 hot key' if c['keys'] == 1 else format(c['keys'], ',') + ' keys':<14}"
                f"{c['clients']:>8}  {c['system']:<9}")
        if "median" not in c:
            lines.append(f"{lead}failed: {c['failed_runs'][0]['error']}")
            continue
        m, r = c["median"], c.get("ratio_vs_restate")
        ratios = (f"{num(r['throughput'], '.2f'):>7}{num(r['p50'], '.2f'):>9}"
                  f"  {goal_ratio:g}x{met(c)}" if r else "")
        lines.append((lead + f"{m['succeeded_per_s']:>10,.0f}{m['p50_us'] / 1000:>9.2f}"
                      f"{m['p99_us'] / 1000:>9.2f}{num(m['cores'], '.2f'):>7}"
                      f"{num(m['succeeded_per_cpu_s'], ',.0f'):>11}" + ratios
                      + problems(c)).rstrip())
    lines.append("")
transfer = [c for c in cells if c["workload"] == "transfer"]
if transfer:
    header = (f"{'accounts':>9}  {'keys':<9}{'style':<14}{'tx/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'cores':>7}{'tx per CPU s':>14}  goal")
    lines += [header, "-" * len(header)]
    for c in sorted(transfer, key=lambda c: (c["keys"], c["distribution"] != "uniform",
                                             ["serializable", "open", "saga"].index(c["style"]))):
        lead = f"{c['keys']:>9,}  {c['distribution']:<9}{c['style']:<14}"
        if "median" not in c:
            lines.append(f"{lead}failed: {c['failed_runs'][0]['error']}")
            continue
        m = c["median"]
        lines.append((lead + f"{m['succeeded_per_s']:>9,.0f}{m['p50_us'] / 1000:>9.2f}"
                      f"{m['p99_us'] / 1000:>9.2f}{num(m['cores'], '.2f'):>7}"
                      f"{num(m['succeeded_per_cpu_s'], ',.0f'):>14}"
                      f"  {goal_per_cpu[c['style']]:,.0f}/CPU s{met(c)}" + problems(c)).rstrip())
print()
print("\n".join(lines).rstrip())
print(f"\nmedians of {env['RUNS']} run(s) of {env['DURATION']} s after {env['WARMUP']} s of warmup;"
      " calls/s and tx/s count successful operations; p50/p99 every ended one; cores = the"
      " system's CPU seconds over the window per second; per CPU s = successful operations per"
      " CPU second of the system (Tally: tally up; Restate: its server and the service), the"
      " load generator apart; T/R = Tally / Restate")
print(f"transfers: {env['TRANSFER_CLIENTS']} clients, 1 between two distinct accounts each,"
      f" keys uniform or zipfian {env['THETA']}; open: the payer's pay calls the payee's"
      " deposit (retryable: a deadlock's victim); a saga is a withdrawal and a deposit, each"
      " with its compensation")
print(env["DURABILITY_NOTE"])
print(f"load average (1, 5, 15 min) before: {env['LOAD_BEFORE']}, after: {env['LOAD_AFTER']}"
      f" on {os.cpu_count()} cores")

report = {
    "benchmark": "objects",
    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "host": {"cores": os.cpu_count(), "kernel": platform.release(), "network": env["NETWORK"],
             "load_avg_before": env["LOAD_BEFORE"], "load_avg_after": env["LOAD_AFTER"]},
    "tally_commit": env["TALLY_COMMIT"],
    "restate_server_version": env["RESTATE_SERVER_VERSION"] or None,
    "restate_sdk": "restate-sdk 0.12 (Rust), bench/restate-service",
    "params": {"workloads": env["WORKLOADS"].split(),
               "clients": [int(c) for c in env["CLIENTS"].split()],
               "transfer_clients": int(env["TRANSFER_CLIENTS"]), "keys": int(env["KEYS"]),
               "accounts": [int(a) for a in env["ACCOUNTS"].split()],
               "distributions": env["DISTRIBUTIONS"].split(), "theta": float(env["THETA"]),
               "styles": env["STYLES"].split(), "duration_s": int(env["DURATION"]),
               "warmup_s": int(env["WARMUP"]), "runs": int(env["RUNS"]),
               "quick": env["QUICK"] == "1"},
    "goals": {"counter_throughput_ratio_vs_restate": goal_ratio,
              "transfer_per_cpu_s": goal_per_cpu},
    "durability_note": env["DURABILITY_NOTE"],
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
