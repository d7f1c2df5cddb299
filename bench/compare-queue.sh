#!/usr/bin/env bash
# Queues side by side: Tally's queues, NATS JetStream and Redis streams, in one invocation, on
# this machine, on 127.0.0.1 only, with producers and consumers running at once (a steady
# state): BokiQueue's producer/consumer matrix scaled to a 2-core machine.
#
# One load generator drives every system the same way (bench/src/queue.rs): P producers and C
# consumers, closed loops, each with its own connection; a producer pushes a SIZE-byte message
# and waits for the acknowledgement; a consumer pops one message (waiting up to 1 s), acks it,
# waits for the ack's answer, and pops again.
#
#   tally:          `tally up` (fsync durability, its default), `tally bench queue`: a queue of
#                   C shards (one per consumer), group `bench`; push = POST /queues/Q/push; pop =
#                   POST /queues/Q/pop?group=bench&wait_ms=1000, then POST /queues/Q/ack.
#   jetstream:      Debian's nats-server -js, its defaults (file store synced every 2 min; a
#                   publish is acked once written, without fsync), `bench-jetstream queue`: a
#                   work-queue stream (file storage, 1 replica), one durable pull consumer;
#                   push = publish, await the PubAck; pop = a pull request for 1 message
#                   (expires 1 s), then an ack awaiting the server's confirmation (double ack).
#   jetstream-sync: the same with `jetstream { sync_interval: always }` in a config file (fsync
#                   on every write). nats-server accepts that from 2.10 on; with an older one
#                   (Debian 12 ships 2.9.10) the row says so and is not measured.
#   redis:          Debian's redis-server, its defaults (no AOF; RDB snapshots by its save
#                   rules: an acked write is in memory only), `bench-redis`: a stream and a
#                   consumer group made first (XGROUP CREATE ... MKSTREAM); push = XADD; pop =
#                   XREADGROUP COUNT 1 BLOCK 1000, then XACK.
#   redis-aof:      the same with `appendonly yes` and `appendfsync always` (the AOF is fsynced
#                   before a write is answered).
#
# Each system is started afresh in a temp dir for each cell and run, alone. Each figure is the
# median of RUNS runs; systems take turns within a run. acked/s counts messages popped and
# acked (the throughput compared), pushed/s pushes acknowledged; push and pop latency (the
# pop-and-ack round, waiting for a message included) are p50 and p99; backlog is messages
# pushed minus messages acked over the whole run (warmup included) at the end; per CPU s is
# messages acked per CPU second of the server process over the measured window (the load
# generator apart); T/x is Tally's acked/s over the system's.
#
# The script installs what it lacks (Debian's nats-server, redis-server, python3, iproute2; one
# `apt-get update` first), builds `tally`, `bench-jetstream` and `bench-redis` (release), and
# measures in a network namespace of its own where only loopback exists.
#
# Environment: MATRIX ("1x1 4x4 16x16 32x32": PxC, producers by consumers), SIZE bytes per
# message (1024), DURATION seconds measured per cell (10), WARMUP seconds before each (2), RUNS
# (3), SYSTEMS ("tally jetstream jetstream-sync redis redis-aof"), OUT
# (bench/results/queue-<date>.json), QUICK=1 (a smoke check: one run of 2 s after 1 s),
# BENCH_TMPDIR (/var/tmp: a disk, not tmpfs), KEEP_WORK=1 (keep the temp dir and its logs),
# NETNS=0 (measure in this network namespace).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${QUICK:-0}" == 1 ]]; then
    RUNS="${RUNS:-1}" DURATION="${DURATION:-2}" WARMUP="${WARMUP:-1}"
fi
MATRIX="${MATRIX:-1x1 4x4 16x16 32x32}"
SIZE="${SIZE:-1024}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
RUNS="${RUNS:-3}"
SYSTEMS="${SYSTEMS:-tally jetstream jetstream-sync redis redis-aof}"
OUT="${OUT:-$ROOT/bench/results/queue-$(date -u +%Y%m%d-%H%M%S).json}"
NETNS="${NETNS:-1}"
READY_TIMEOUT_S=60

# Messages, processes, ports, readiness, the network namespace, the build and `tally up`.
source "$ROOT/bench/lib.sh"

for name in SIZE DURATION RUNS; do
    [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive integer, not '${!name}'"
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a whole number of seconds, not '$WARMUP'"
for cell in $MATRIX; do
    [[ "$cell" =~ ^[1-9][0-9]*x[1-9][0-9]*$ ]] ||
        die "MATRIX takes PxC cells (producers x consumers), e.g. 4x4, not '$cell'"
done
for system in $SYSTEMS; do
    [[ " tally jetstream jetstream-sync redis redis-aof " == *" $system "* ]] ||
        die "SYSTEMS takes tally, jetstream, jetstream-sync, redis and redis-aof, not '$system'"
done
[[ "$NETNS" == 0 || "$NETNS" == 1 ]] || die "NETNS takes 0 or 1, not '$NETNS'"

wants() { [[ " $SYSTEMS " == *" $1 "* ]]; }
wants_jetstream() { wants jetstream || wants jetstream-sync; }
wants_redis() { wants redis || wants redis-aof; }

PIDS=()
STOP_PIDS=()
WORK=""

trap_cleanup

# ---------------------------------------------------------------------------------------------
# Installation and the build (outside the network namespace).

install_debian_packages() {
    local missing=()
    command -v python3 >/dev/null || missing+=(python3)
    [[ "$NETNS" == 0 ]] || command -v ip >/dev/null || missing+=(iproute2)
    if wants_jetstream && ! command -v nats-server >/dev/null; then missing+=(nats-server); fi
    if wants_redis && ! command -v redis-server >/dev/null; then missing+=(redis-server); fi
    # Debian's redis-server package starts a service where systemd runs; the measurements
    # start servers of their own on free ports, so one running elsewhere does not matter.
    apt_install_missing "${missing[@]}"
}

# Builds bench-jetstream and bench-redis (release) with the features the wanted systems need;
# sets BENCH_JS and BENCH_REDIS.
build_peers() {
    local features=() bins=() target_dir
    if wants_jetstream; then features+=(jetstream) bins+=(--bin bench-jetstream); fi
    if wants_redis; then features+=(redis) bins+=(--bin bench-redis); fi
    BENCH_JS="" BENCH_REDIS=""
    ((${#features[@]} > 0)) || return 0
    (IFS=,; cd "$ROOT" && cargo build --release --quiet -p bench --features "${features[*]}" \
        "${bins[@]}")
    target_dir="$(cargo_target_dir)"
    if wants_jetstream; then BENCH_JS="$target_dir/release/bench-jetstream"; fi
    if wants_redis; then BENCH_REDIS="$target_dir/release/bench-redis"; fi
}

# Whether this nats-server takes `sync_interval: always`; sets NATS_SYNC_ALWAYS (1 or 0) and,
# when it does not, NATS_SYNC_WHY.
check_nats_sync_always() {
    local dir
    dir="$(mktemp -d)"
    printf 'listen: 127.0.0.1:4222\njetstream { store_dir: "%s/js", sync_interval: always }\n' \
        "$dir" >"$dir/check.conf"
    if nats-server -t -c "$dir/check.conf" >"$dir/check.log" 2>&1; then
        NATS_SYNC_ALWAYS=1 NATS_SYNC_WHY=""
    else
        NATS_SYNC_ALWAYS=0
        NATS_SYNC_WHY="$(nats-server --version 2>&1 | head -n 1) refuses sync_interval \
($(grep . "$dir/check.log" | tail -n 1 | sed 's|^.*: ||')); it came in nats-server 2.10"
    fi
    rm -rf "$dir"
}

if [[ "${TALLY_BENCH_IN_NETNS:-0}" == 1 ]]; then
    bring_up_loopback
    NETWORK="a network namespace of its own with only loopback"
else
    command -v cargo >/dev/null || die "cargo is needed and not on the PATH"
    install_debian_packages
    log "building tally, and the load generators of the peers (release)"
    build_tally
    build_peers
    NATS_SYNC_ALWAYS=0 NATS_SYNC_WHY=""
    if wants jetstream-sync; then check_nats_sync_always; fi
    [[ "$NETNS" == 0 ]] || reenter_in_network_namespace "${BASH_SOURCE[0]}" OUT TALLY BENCH_JS \
        BENCH_REDIS NATS_SYNC_ALWAYS NATS_SYNC_WHY MATRIX SIZE DURATION WARMUP RUNS SYSTEMS
    NETWORK="this machine's network namespace, on 127.0.0.1"
fi

make_work_dir queue
NATS_VERSION="" REDIS_VERSION=""
if wants_jetstream; then NATS_VERSION="$(nats-server --version 2>&1 | head -n 1)"; fi
if wants_redis; then REDIS_VERSION="$(redis-server --version 2>&1 | head -n 1)"; fi

cat >&2 <<EOF
== Queues: $SYSTEMS ==
producers x consumers: $MATRIX; $SIZE-byte messages; ${DURATION} s measured after ${WARMUP} s of \
warmup per cell; median of $RUNS run(s)
tally: $TALLY ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown))
nats-server: ${NATS_VERSION:-not measured}${NATS_SYNC_WHY:+ (jetstream-sync: $NATS_SYNC_WHY)}
redis: ${REDIS_VERSION:-not measured}
temp dir: $WORK ($WORK_FS)
network: $NETWORK
load average (1, 5, 15 min) before: $(cut -d ' ' -f 1-3 /proc/loadavg)
EOF
LOAD_BEFORE="$(cut -d ' ' -f 1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------
# Systems. Each start_* starts one afresh in DIR and sets BENCH_ARGS, the load generator and
# the arguments that point it at the system and its server's process; it returns 1 if the
# system does not start, having said why.

start_tally_queue() {
    start_tally "$1" || return 1
    BENCH_ARGS=("$TALLY" bench queue --addr "$TALLY_URL" --cpu-pid "$STARTED_PID")
}

# nats-server with JetStream in DIR; SYNC=always adds `sync_interval: always`.
start_jetstream() {
    local dir=$1 sync=$2 port
    port="$(free_ports 1)"
    {
        echo "listen: 127.0.0.1:$port"
        if [[ "$sync" == always ]]; then
            echo "jetstream { store_dir: \"$dir/nats\", sync_interval: always }"
        else
            echo "jetstream { store_dir: \"$dir/nats\" }"
        fi
    } >"$dir/nats.conf"
    start_tracked "$dir/nats.log" nats-server -c "$dir/nats.conf"
    (wait_for_line "$dir/nats.log" "Server is ready" "$STARTED_PID" "nats-server") || return 1
    BENCH_ARGS=("$BENCH_JS" queue --nats "nats://127.0.0.1:$port" --cpu-pid "$STARTED_PID")
}

# redis-server in DIR, its defaults but for the address and the dir; AOF=always adds
# `appendonly yes` and `appendfsync always`.
start_redis() {
    local dir=$1 aof=$2 port args=()
    port="$(free_ports 1)"
    mkdir -p "$dir/redis"
    args=(--port "$port" --bind 127.0.0.1 --dir "$dir/redis")
    if [[ "$aof" == always ]]; then args+=(--appendonly yes --appendfsync always); fi
    start_tracked "$dir/redis.log" redis-server "${args[@]}"
    (wait_for_line "$dir/redis.log" "Ready to accept connections" "$STARTED_PID" \
        "redis-server") || return 1
    BENCH_ARGS=("$BENCH_REDIS" --redis "redis://127.0.0.1:$port" --cpu-pid "$STARTED_PID")
}

# ---------------------------------------------------------------------------------------------
# Cells.

FAILED=()

# One measurement: NAME = PxC~system~run.
run_cell() {
    local run=$1 cell=$2 system=$3 name dir pid started=0
    local producers=${cell%x*} consumers=${cell#*x}
    name="$cell~$system~$run"
    dir="$WORK/$name"
    mkdir -p "$dir"
    if [[ "$system" == jetstream-sync && "$NATS_SYNC_ALWAYS" != 1 ]]; then
        echo "$NATS_SYNC_WHY" >"$RESULTS/$name.skipped"
        return 0
    fi
    case "$system" in
    tally) start_tally_queue "$dir" && started=1 ;;
    jetstream) start_jetstream "$dir" default && started=1 ;;
    jetstream-sync) start_jetstream "$dir" always && started=1 ;;
    redis) start_redis "$dir" default && started=1 ;;
    redis-aof) start_redis "$dir" always && started=1 ;;
    esac
    if [[ $started == 0 ]]; then
        log "  $name: $system did not start"
        echo "$system did not start" >"$RESULTS/$name.failed"
        FAILED+=("$name")
        stop_systems
        return 0
    fi
    # In the background and waited for, so a signal stops the script at once, not after it.
    "${BENCH_ARGS[@]}" --producers "$producers" --consumers "$consumers" --size "$SIZE" \
        --duration "$DURATION" --warmup "$WARMUP" --json "$RESULTS/$name.json" \
        >"$dir/bench.log" 2>&1 &
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
    rm -rf "$dir/tally-data" "$dir/nats" "$dir/redis"
    python3 - "$RESULTS/$name.json" "$name" <<'EOF' >&2
import json, sys
r = json.load(open(sys.argv[1]))
push, pop = r["push_latency_us"], r["pop_latency_us"]
errors = f"  errors {r['errors']}" if r["errors"] else ""
print(f"  {sys.argv[2]:<26} {r['acked_per_s']:>9,.0f} acked/s {r['pushed_per_s']:>9,.0f} pushed/s"
      f"  push p50 {push['p50']/1000:.2f} p99 {push['p99']/1000:.2f} ms"
      f"  pop p50 {pop['p50']/1000:.2f} p99 {pop['p99']/1000:.2f} ms"
      f"  backlog {r['backlog']:,}  {r.get('server_cpu_s') or 0:.1f} CPU s{errors}")
EOF
}

for ((run = 1; run <= RUNS; run++)); do
    log "run $run of $RUNS"
    for cell in $MATRIX; do
        # Systems take turns within a run, so drift on a shared machine hits them alike.
        for system in $SYSTEMS; do run_cell "$run" "$cell" "$system"; done
    done
done

# ---------------------------------------------------------------------------------------------
# Medians, ratios, the table and the JSON file.

mkdir -p "$(dirname "$OUT")"
NATS_VERSION="$NATS_VERSION" REDIS_VERSION="$REDIS_VERSION" NETWORK="$NETWORK" \
    LOAD_BEFORE="$LOAD_BEFORE" LOAD_AFTER="$(cut -d ' ' -f 1-3 /proc/loadavg)" \
    TALLY_COMMIT="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
    MATRIX="$MATRIX" SIZE="$SIZE" DURATION="$DURATION" WARMUP="$WARMUP" RUNS="$RUNS" \
    SYSTEMS="$SYSTEMS" QUICK="${QUICK:-0}" python3 - "$RESULTS" "$OUT" <<'EOF'
import glob, json, os, platform, statistics, sys, time

results_dir, out = sys.argv[1], sys.argv[2]
env = os.environ
systems = env["SYSTEMS"].split()
DURABILITY = {
    "tally": "tally up, --durability fsync (its default): a push, pop and ack each answer "
             "after fdatasync",
    "jetstream": f"{env['NATS_VERSION'] or 'nats-server'}, its defaults: a publish and an ack "
                 "answer once written, without fsync; the file store syncs every 2 minutes",
    "jetstream-sync": "nats-server with jetstream { sync_interval: always }: fsync on every write",
    "redis": f"{env['REDIS_VERSION'] or 'redis-server'}, its defaults: no AOF, RDB snapshots by "
             "its save rules; an acked write is in memory only",
    "redis-aof": "redis-server with appendonly yes, appendfsync always: the AOF is fsynced "
                 "before a write is answered",
}
runs, failed, skipped = {}, {}, {}
for path in glob.glob(os.path.join(results_dir, "*.json")):
    cell, system, run = os.path.basename(path)[: -len(".json")].split("~")
    r = json.load(open(path))
    runs.setdefault((cell, system), []).append({
        "run": int(run),
        "acked_per_s": r["acked_per_s"],
        "pushed_per_s": r["pushed_per_s"],
        "push_p50_us": r["push_latency_us"]["p50"],
        "push_p99_us": r["push_latency_us"]["p99"],
        "pop_p50_us": r["pop_latency_us"]["p50"],
        "pop_p99_us": r["pop_latency_us"]["p99"],
        "backlog": r["backlog"],
        "server_cpu_s": r.get("server_cpu_s"),
        "acked_per_cpu_s": r.get("acked_per_cpu_s"),
        "pushed": r["pushed"],
        "acked": r["acked"],
        "empty_pops": r["empty_pops"],
        "errors": r["errors"],
        "first_error": r.get("first_error"),
        "setup_s": r["setup_s"],
        "target": r["config"]["target"],
    })
for kind, into in (("failed", failed), ("skipped", skipped)):
    for path in glob.glob(os.path.join(results_dir, f"*.{kind}")):
        cell, system, run = os.path.basename(path)[: -len(kind) - 1].split("~")
        into.setdefault((cell, system), []).append(
            {"run": int(run), "reason": open(path).read().strip()})

FIELDS = ["acked_per_s", "pushed_per_s", "push_p50_us", "push_p99_us", "pop_p50_us",
          "pop_p99_us", "backlog"]
rows = []
for cell in env["MATRIX"].split():
    producers, consumers = (int(n) for n in cell.split("x"))
    row = {"producers": producers, "consumers": consumers, "systems": {}}
    for system in systems:
        key, entry = (cell, system), {"durability": DURABILITY[system]}
        if key in runs:
            rs = sorted(runs[key], key=lambda r: r["run"])
            entry["median"] = {f: statistics.median(r[f] for r in rs) for f in FIELDS}
            per_cpu = [r["acked_per_cpu_s"] for r in rs if r["acked_per_cpu_s"]]
            entry["median"]["acked_per_cpu_s"] = statistics.median(per_cpu) if per_cpu else None
            entry["runs"] = rs
            entry["errors"] = sum(r["errors"] for r in rs)
        if key in failed:
            entry["failed_runs"] = sorted(failed[key], key=lambda r: r["run"])
        if key in skipped:
            entry["not_measured"] = skipped[key][0]["reason"]
        row["systems"][system] = entry
    tally = row["systems"].get("tally", {}).get("median")
    if tally:
        row["tally_over"] = {
            s: round(tally["acked_per_s"] / e["median"]["acked_per_s"], 3)
            for s, e in row["systems"].items()
            if s != "tally" and "median" in e and e["median"]["acked_per_s"]}
    rows.append(row)

header = (f"{'PxC':<7}{'system':<16}{'acked/s':>9}{'pushed/s':>10}{'push p50':>10}"
          f"{'p99 ms':>8}{'pop p50':>9}{'p99 ms':>8}{'backlog':>10}{'per CPU s':>11}{'T/x':>6}")
lines = [header, "-" * len(header)]
for row in rows:
    cell = f"{row['producers']}x{row['consumers']}"
    for i, system in enumerate(systems):
        e = row["systems"][system]
        lead = f"{cell if i == 0 else '':<7}{system:<16}"
        if "median" not in e:
            why = (e.get("not_measured") or
                   (e["failed_runs"][0]["reason"] if "failed_runs" in e else "not measured"))
            lines.append(f"{lead}{'not measured' if 'not_measured' in e else 'failed'}: {why}")
            continue
        m = e["median"]
        ratio = row.get("tally_over", {}).get(system)
        extra = []
        if e["errors"]:
            extra.append(f"errors {e['errors']}")
        if "failed_runs" in e:
            extra.append(f"{len(e['failed_runs'])} run(s) failed")
        lines.append((lead + f"{m['acked_per_s']:>9,.0f}{m['pushed_per_s']:>10,.0f}"
                      f"{m['push_p50_us'] / 1000:>10.2f}{m['push_p99_us'] / 1000:>8.2f}"
                      f"{m['pop_p50_us'] / 1000:>9.2f}{m['pop_p99_us'] / 1000:>8.2f}"
                      f"{m['backlog']:>10,.0f}"
                      + (f"{m['acked_per_cpu_s']:>11,.0f}" if m["acked_per_cpu_s"]
                         else f"{'-':>11}")
                      + (f"{ratio:>6.2f}" if ratio is not None else "")
                      + ("  (" + ", ".join(extra) + ")" if extra else "")).rstrip())
print()
print("\n".join(lines))
print(f"\nPxC = producers x consumers; {env['SIZE']}-byte messages; medians of {env['RUNS']} run(s)"
      f" of {env['DURATION']} s after {env['WARMUP']} s of warmup, producers and consumers at"
      " once. acked/s = messages popped and acked; push and pop (the pop-and-ack round) latency"
      " in ms; backlog = pushed - acked over the whole run, at the end; per CPU s = messages"
      " acked per CPU second of the server (the load generator apart); T/x = Tally's acked/s"
      " over the system's")
for system in systems:
    print(f"{system}: {DURABILITY[system]}")
print(f"load average (1, 5, 15 min) before: {env['LOAD_BEFORE']}, after: {env['LOAD_AFTER']}"
      f" on {os.cpu_count()} cores")

report = {
    "benchmark": "queue",
    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "host": {"cores": os.cpu_count(), "kernel": platform.release(), "network": env["NETWORK"],
             "load_avg_before": env["LOAD_BEFORE"], "load_avg_after": env["LOAD_AFTER"]},
    "tally_commit": env["TALLY_COMMIT"],
    "versions": {"nats_server": env["NATS_VERSION"] or None,
                 "redis_server": env["REDIS_VERSION"] or None},
    "params": {"matrix": env["MATRIX"].split(), "message_bytes": int(env["SIZE"]),
               "systems": systems, "duration_s": int(env["DURATION"]),
               "warmup_s": int(env["WARMUP"]), "runs": int(env["RUNS"]),
               "quick": env["QUICK"] == "1", "pop_wait_ms": 1000,
               "tally_shards": "one per consumer, at most 256",
               "jetstream_pull": "1 message per pull request, double ack"},
    "durability": {s: DURABILITY[s] for s in systems},
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
