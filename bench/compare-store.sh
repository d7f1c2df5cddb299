#!/usr/bin/env bash
# Transactions over objects on Tally and on PostgreSQL at SERIALIZABLE side by side, in one
# invocation, on this machine, on 127.0.0.1 only: YCSB-T transfers and BokiStore's Retwis mix.
#
# One load generator, `tally bench store`, closed-loop clients (CLIENTS, 32), drives both:
#
#   tally:    `tally up` (fsync durability, its defaults), the `bank` and `retwis` functions over
#             HTTP (POST /function/bank, /function/retwis). The setup phase writes each account
#             with PUT /objects/accounts/a{n} (what bank's `open` makes, less its entry in the
#             one bank/index document) or registers the users with retwis's `register`.
#   postgres: Debian's PostgreSQL (its defaults: fsync on, synchronous_commit on) from a fresh
#             initdb, the same operations as SERIALIZABLE transactions on tables of the same
#             shape (accounts(id, balance); users, follows, posts, timelines), each retried on a
#             serialization failure or deadlock up to 10 times and then counted as aborted.
#             Transfers: oneshot = two conditional UPDATEs; interactive = SELECT both balances,
#             then UPDATE both; rows written in id order (no deadlocks). The setup phase
#             bulk-inserts the rows.
#
# Cells (each on both systems, each system started afresh in a temp dir for each cell, alone):
#   ycsbt over ACCOUNTS (10000) accounts, uniform and zipfian THETA (0.99), and over
#   HOT_ACCOUNTS (100) accounts, uniform and zipfian (contention), each in oneshot and
#   interactive mode; retwis over USERS (10000) users, each following FOLLOWS (5) others after
#   the setup phase (user u follows u+1 to u+5): 50% timeline, 15% profile, 15% login, 15% post,
#   5% follow, users drawn uniformly. A transfer moves 1 to 10 between two distinct
#   accounts that each start with 1,000,000, so insufficient funds does not happen in practice;
#   an abort is a conflict given up on.
#
# Each figure is the median of RUNS runs; systems take turns within a run. Throughput is
# committed operations per second; p50/p99 cover every answered operation (committed or
# aborted); abort rate is aborted / answered; errors (failed requests) are counted apart. Per
# CPU s is committed operations per CPU second the system's processes used over the measured
# window (`tally up`; PostgreSQL's postmaster and its backends), the load generator apart.
# T/P is Tally over PostgreSQL (throughput above 1: Tally ahead; latency above 1: Tally slower).
#
# The script installs what it lacks (Debian's postgresql, python3, curl, iproute2; one
# `apt-get update` first), builds `tally` (release), and measures in a network namespace of its
# own where only loopback exists. PostgreSQL runs as the `postgres` user (root cannot run it).
#
# Environment: CLIENTS (32), DURATION seconds measured per cell (10), WARMUP seconds before
# each (2), RUNS (3), ACCOUNTS (10000), HOT_ACCOUNTS (100), THETA (0.99), USERS (10000), FOLLOWS (5),
# CELLS (all of: ycsbt-big-uniform ycsbt-big-zipfian ycsbt-hot-uniform ycsbt-hot-zipfian retwis),
# MODES ("oneshot interactive"), SYSTEMS ("tally postgres"), OUT
# (bench/results/store-<date>.json), QUICK=1 (a smoke check: one run of 2 s after 1 s, over
# 1000 accounts and users unless set), BENCH_TMPDIR (/var/tmp: a disk, not tmpfs), KEEP_WORK=1
# (keep the temp dir and its logs), NETNS=0 (measure in this network namespace).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${QUICK:-0}" == 1 ]]; then
    RUNS="${RUNS:-1}" DURATION="${DURATION:-2}" WARMUP="${WARMUP:-1}"
    ACCOUNTS="${ACCOUNTS:-1000}" USERS="${USERS:-1000}"
fi
CLIENTS="${CLIENTS:-32}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
RUNS="${RUNS:-3}"
ACCOUNTS="${ACCOUNTS:-10000}"
HOT_ACCOUNTS="${HOT_ACCOUNTS:-100}"
THETA="${THETA:-0.99}"
USERS="${USERS:-10000}"
FOLLOWS="${FOLLOWS:-5}"
CELLS="${CELLS:-ycsbt-big-uniform ycsbt-big-zipfian ycsbt-hot-uniform ycsbt-hot-zipfian retwis}"
MODES="${MODES:-oneshot interactive}"
SYSTEMS="${SYSTEMS:-tally postgres}"
OUT="${OUT:-$ROOT/bench/results/store-$(date -u +%Y%m%d-%H%M%S).json}"
NETNS="${NETNS:-1}"
READY_TIMEOUT_S=60

# Messages, processes, ports, readiness, the network namespace, the build and `tally up`.
source "$ROOT/bench/lib.sh"

[[ "$FOLLOWS" =~ ^[0-9]+$ ]] || die "FOLLOWS must be a whole number, not '$FOLLOWS'"
for name in CLIENTS DURATION RUNS ACCOUNTS HOT_ACCOUNTS USERS; do
    [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive integer, not '${!name}'"
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a whole number of seconds, not '$WARMUP'"
[[ "$THETA" =~ ^0?\.[0-9]+$ ]] || die "THETA must be above 0 and below 1, not '$THETA'"
for cell in $CELLS; do
    [[ " ycsbt-big-uniform ycsbt-big-zipfian ycsbt-hot-uniform ycsbt-hot-zipfian retwis " == \
        *" $cell "* ]] || die "CELLS takes ycsbt-{big,hot}-{uniform,zipfian} and retwis, not '$cell'"
done
for mode in $MODES; do
    [[ "$mode" == oneshot || "$mode" == interactive ]] ||
        die "MODES takes oneshot and interactive, not '$mode'"
done
for system in $SYSTEMS; do
    [[ "$system" == tally || "$system" == postgres ]] ||
        die "SYSTEMS takes tally and postgres, not '$system'"
done
[[ "$NETNS" == 0 || "$NETNS" == 1 ]] || die "NETNS takes 0 or 1, not '$NETNS'"

wants() { [[ " $SYSTEMS " == *" $1 "* ]]; }

PIDS=()
STOP_PIDS=()
WORK=""

trap_cleanup

# ---------------------------------------------------------------------------------------------
# Installation (outside the network namespace).

install_debian_packages() {
    local missing=()
    command -v python3 >/dev/null || missing+=(python3)
    command -v curl >/dev/null || missing+=(curl)
    [[ "$NETNS" == 0 ]] || command -v ip >/dev/null || missing+=(iproute2)
    if wants postgres && [[ -z "$(pg_bindir)" ]]; then missing+=(postgresql); fi
    apt_install_missing "${missing[@]}"
}

if [[ "${TALLY_BENCH_IN_NETNS:-0}" == 1 ]]; then
    bring_up_loopback
    NETWORK="a network namespace of its own with only loopback"
else
    command -v cargo >/dev/null || die "cargo is needed and not on the PATH"
    install_debian_packages
    log "building tally (release)"
    build_tally
    PG_BIN=""
    if wants postgres; then
        find_postgres
    fi
    [[ "$NETNS" == 0 ]] || reenter_in_network_namespace "${BASH_SOURCE[0]}" OUT TALLY PG_BIN \
        CLIENTS DURATION WARMUP RUNS ACCOUNTS HOT_ACCOUNTS THETA USERS FOLLOWS CELLS MODES SYSTEMS
    NETWORK="this machine's network namespace, on 127.0.0.1"
fi

make_work_dir store
PG_VERSION=""
[[ -z "$PG_BIN" ]] || PG_VERSION="$("$PG_BIN/postgres" --version)"

cat >&2 <<EOF
== Transactions over objects: $SYSTEMS ==
cells: $CELLS (ycsbt modes: $MODES); $CLIENTS clients; ${DURATION} s measured after ${WARMUP} s \
of warmup per cell; median of $RUNS run(s)
ycsbt: $ACCOUNTS accounts (hot: $HOT_ACCOUNTS), zipfian theta $THETA; retwis: $USERS users \
following $FOLLOWS each
tally: $TALLY ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown))
postgres: ${PG_VERSION:-not measured}
temp dir: $WORK ($WORK_FS)
network: $NETWORK
load average (1, 5, 15 min) before: $(cut -d ' ' -f 1-3 /proc/loadavg)
EOF
LOAD_BEFORE="$(cut -d ' ' -f 1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------
# Systems. Each start_* starts one afresh in DIR and sets TARGET_ARGS, the arguments of
# `tally bench store` that point at it; it returns 1 if it does not start, having said why.

start_tally_store() {
    start_tally "$1" || return 1
    TARGET_ARGS=(--addr "$TALLY_URL" --cpu-pid "$STARTED_PID")
}

# PostgreSQL (bench/lib.sh), and the load generator's address for it.
start_postgres_target() {
    start_postgres "$1" || return 1
    TARGET_ARGS=(--postgres "postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
        --cpu-pid "$STARTED_PID")
}

# ---------------------------------------------------------------------------------------------
# Cells.

# The `tally bench store` arguments of a workload cell and mode.
workload_args() {
    local cell=$1 mode=$2
    case "$cell" in
    ycsbt-big-*) WORKLOAD_ARGS=(ycsbt --accounts "$ACCOUNTS" --mode "$mode") ;;
    ycsbt-hot-*) WORKLOAD_ARGS=(ycsbt --accounts "$HOT_ACCOUNTS" --mode "$mode") ;;
    retwis) WORKLOAD_ARGS=(retwis --users "$USERS" --follows "$FOLLOWS") ;;
    esac
    case "$cell" in
    *-uniform) WORKLOAD_ARGS+=(--distribution uniform) ;;
    *-zipfian) WORKLOAD_ARGS+=(--distribution zipfian --theta "$THETA") ;;
    esac
}

FAILED=()

# One measurement: NAME = cell~mode~system~run.
run_cell() {
    local run=$1 cell=$2 mode=$3 system=$4 name dir pid start
    name="$cell~$mode~$system~$run"
    dir="$WORK/$name"
    mkdir -p "$dir"
    case "$system" in
    tally) start=start_tally_store ;;
    postgres) start=start_postgres_target ;;
    esac
    if ! "$start" "$dir"; then
        log "  $name: $system did not start"
        echo "$system did not start" >"$RESULTS/$name.failed"
        FAILED+=("$name")
        stop_systems
        return 0
    fi
    workload_args "$cell" "$mode"
    # In the background and waited for, so a signal stops the script at once, not after it.
    "$TALLY" bench store "${WORKLOAD_ARGS[@]}" "${TARGET_ARGS[@]}" --clients "$CLIENTS" \
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
    rm -rf "$dir/tally-data" "$dir/postgres"
    python3 - "$RESULTS/$name.json" "$name" <<'EOF' >&2
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_us"]
errors = f"  errors {r['errors']}" if r["errors"] else ""
print(f"  {sys.argv[2]:<40} {r['committed_per_s']:>9,.1f} committed/s  p50 {l['p50']/1000:.2f} ms"
      f"  p99 {l['p99']/1000:.2f} ms  aborts {100 * r['abort_rate']:.1f}%"
      f"  {r.get('server_cpu_s') or 0:.1f} CPU s"
      f"  (setup {r['setup_s']:.1f} s){errors}")
EOF
}

for ((run = 1; run <= RUNS; run++)); do
    log "run $run of $RUNS"
    for cell in $CELLS; do
        modes="$MODES"
        [[ "$cell" != retwis ]] || modes=oneshot
        for mode in $modes; do
            # Systems take turns within a run, so drift on a shared machine hits them alike.
            for system in $SYSTEMS; do run_cell "$run" "$cell" "$mode" "$system"; done
        done
    done
done

# ---------------------------------------------------------------------------------------------
# Medians, ratios, the table and the JSON file.

mkdir -p "$(dirname "$OUT")"
PG_VERSION="$PG_VERSION" NETWORK="$NETWORK" LOAD_BEFORE="$LOAD_BEFORE" \
    LOAD_AFTER="$(cut -d ' ' -f 1-3 /proc/loadavg)" \
    TALLY_COMMIT="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
    CLIENTS="$CLIENTS" DURATION="$DURATION" WARMUP="$WARMUP" RUNS="$RUNS" CELLS="$CELLS" \
    MODES="$MODES" SYSTEMS="$SYSTEMS" ACCOUNTS="$ACCOUNTS" HOT_ACCOUNTS="$HOT_ACCOUNTS" \
    THETA="$THETA" USERS="$USERS" FOLLOWS="$FOLLOWS" QUICK="${QUICK:-0}" \
    python3 - "$RESULTS" "$OUT" <<'EOF'
import glob, json, os, platform, statistics, sys, time

results_dir, out = sys.argv[1], sys.argv[2]
env = os.environ
systems = env["SYSTEMS"].split()
runs, failed = {}, {}
for path in glob.glob(os.path.join(results_dir, "*.json")):
    cell, mode, system, run = os.path.basename(path)[: -len(".json")].split("~")
    r = json.load(open(path))
    runs.setdefault((cell, mode, system), []).append({
        "run": int(run),
        "committed_per_s": r["committed_per_s"],
        "p50_us": r["latency_us"]["p50"],
        "p99_us": r["latency_us"]["p99"],
        "p999_us": r["latency_us"]["p999"],
        "abort_rate": r["abort_rate"],
        "server_cpu_s": r.get("server_cpu_s"),
        "committed_per_cpu_s": r.get("committed_per_cpu_s"),
        "committed": r["committed"],
        "aborted": r["aborted"],
        "errors": r["errors"],
        "retried": r["retried"],
        "setup_s": r["setup_s"],
        "first_abort": r.get("first_abort"),
        "first_error": r.get("first_error"),
        "workload": r["config"]["workload"],
    })
for path in glob.glob(os.path.join(results_dir, "*.failed")):
    cell, mode, system, run = os.path.basename(path)[: -len(".failed")].split("~")
    failed.setdefault((cell, mode, system), []).append(
        {"run": int(run), "error": open(path).read().strip()})

rows = []
for cell in env["CELLS"].split():
    for mode in (env["MODES"].split() if cell != "retwis" else ["-"]):
        row = {"cell": cell, "mode": mode, "systems": {}}
        for system in systems:
            key = (cell, mode if cell != "retwis" else "oneshot", system)
            entry = {}
            if key in runs:
                rs = sorted(runs[key], key=lambda r: r["run"])
                fields = ["committed_per_s", "p50_us", "p99_us", "p999_us", "abort_rate"]
                entry["median"] = {f: statistics.median(r[f] for r in rs) for f in fields}
                per_cpu = [r["committed_per_cpu_s"] for r in rs if r["committed_per_cpu_s"]]
                entry["median"]["committed_per_cpu_s"] = (
                    statistics.median(per_cpu) if per_cpu else None)
                entry["runs"] = rs
                entry["errors"] = sum(r["errors"] for r in rs)
            if key in failed:
                entry["failed_runs"] = sorted(failed[key], key=lambda r: r["run"])
            row["systems"][system] = entry
        t, p = row["systems"].get("tally", {}), row["systems"].get("postgres", {})
        if "median" in t and "median" in p and p["median"]["committed_per_s"]:
            row["tally_over_postgres_throughput"] = round(
                t["median"]["committed_per_s"] / p["median"]["committed_per_s"], 3)
        rows.append(row)

def label(cell):
    if cell == "retwis":
        return f"retwis {int(env['USERS']):,} users"
    _, size, dist = cell.split("-")
    n = int(env["ACCOUNTS"] if size == "big" else env["HOT_ACCOUNTS"])
    return f"ycsbt {n:,} {'uniform' if dist == 'uniform' else 'zipf ' + env['THETA']}"

header = (f"{'workload':<22}{'mode':<12}{'system':<10}{'committed/s':>12}{'p50 ms':>9}"
          f"{'p99 ms':>9}{'aborts':>8}{'per CPU s':>11}{'T/P':>7}")
lines = [header, "-" * len(header)]
for row in rows:
    for i, system in enumerate(systems):
        e = row["systems"][system]
        lead = f"{label(row['cell']) if i == 0 else '':<22}{row['mode'] if i == 0 else '':<12}{system:<10}"
        if "median" not in e:
            why = e["failed_runs"][0]["error"] if "failed_runs" in e else "not measured"
            lines.append(f"{lead}failed: {why}")
            continue
        m = e["median"]
        ratio = row.get("tally_over_postgres_throughput")
        extra = []
        if e["errors"]:
            extra.append(f"errors {e['errors']}")
        if "failed_runs" in e:
            extra.append(f"{len(e['failed_runs'])} run(s) failed")
        lines.append((lead + f"{m['committed_per_s']:>12,.1f}{m['p50_us'] / 1000:>9.2f}"
                      f"{m['p99_us'] / 1000:>9.2f}{100 * m['abort_rate']:>7.1f}%"
                      + (f"{m['committed_per_cpu_s']:>11,.0f}" if m['committed_per_cpu_s']
                         else f"{'-':>11}")
                      + (f"{ratio:>7.2f}" if ratio is not None and system == "postgres" else "")
                      + ("  (" + ", ".join(extra) + ")" if extra else "")).rstrip())
print()
print("\n".join(lines))
print(f"\n{env['CLIENTS']} clients; medians of {env['RUNS']} run(s) of {env['DURATION']} s after"
      f" {env['WARMUP']} s of warmup; committed/s counts committed operations; p50/p99 every"
      " answered one; aborts = aborted / answered; per CPU s = committed operations per CPU"
      " second of the system's processes (throughput per core used; the load generator"
      " apart); T/P = Tally / PostgreSQL throughput")
print("tally: tally up (fsync durability), bank and retwis over HTTP; oneshot = one log-ordered"
      " record, interactive = snapshot reads and one commit record, retried by bank up to 5 times")
print(f"postgres: {env['PG_VERSION'] or '-'} (its defaults: fsync on), SERIALIZABLE, each"
      " transaction retried on serialization failure up to 10 times")
print(f"retwis: each user follows {env['FOLLOWS']} others after the setup phase; mix: 50%"
      " timeline, 15% profile, 15% login, 15% post, 5% follow")
print(f"load average (1, 5, 15 min) before: {env['LOAD_BEFORE']}, after: {env['LOAD_AFTER']}"
      f" on {os.cpu_count()} cores")

report = {
    "benchmark": "store",
    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "host": {"cores": os.cpu_count(), "kernel": platform.release(), "network": env["NETWORK"],
             "load_avg_before": env["LOAD_BEFORE"], "load_avg_after": env["LOAD_AFTER"]},
    "tally_commit": env["TALLY_COMMIT"],
    "versions": {"postgresql": env["PG_VERSION"] or None},
    "params": {"clients": int(env["CLIENTS"]), "systems": systems, "cells": env["CELLS"].split(),
               "modes": env["MODES"].split(), "accounts": int(env["ACCOUNTS"]),
               "hot_accounts": int(env["HOT_ACCOUNTS"]), "theta": float(env["THETA"]),
               "users": int(env["USERS"]), "follows": int(env["FOLLOWS"]),
               "duration_s": int(env["DURATION"]),
               "warmup_s": int(env["WARMUP"]), "runs": int(env["RUNS"]),
               "quick": env["QUICK"] == "1",
               "retwis_mix": {"timeline": 50, "profile": 15, "login": 15, "post": 15,
                              "follow": 5}},
    "rows": rows,
}
with open(out, "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
print(f"wrote {out}")
EOF

if ((${#FAILED[@]} > 0)); then
    die "${#FAILED[@]} measurement(s) failed: ${FAILED[*]} (logs in $WORK)"
fi
