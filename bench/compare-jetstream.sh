#!/usr/bin/env bash
# Tally's log appends side by side with NATS JetStream publishes, in one invocation, on this
# machine, on 127.0.0.1 only.
#
#   R1: one nats-server with JetStream (file storage) against `tally up`, in both durability
#       modes (--durability fsync and --durability async); and Debian's redis-server with
#       `appendonly yes` and `appendfsync always` (an XADD is acknowledged once the AOF is
#       fsynced: Tally fsync's durability), driven by `bench-redis append` (rows "redis").
#   R3: a 3-node JetStream cluster (stream with 3 replicas, file storage) against Tally
#       clusters in both durability modes: a process per role (`tally cluster up --sequencers 3
#       --storage 3 --gateways 2`) and three co-located nodes, each a sequencer, a storage node
#       and a gateway in one process (`tally cluster up --nodes 3`, rows "nodes"). Skipped,
#       with a message, when this `tally` has no `cluster` command.
#
# Tally is driven over HTTP and over its log protocol (gRPC, `tally bench append --protocol
# grpc`, rows "grpc"): the same closed loop, a connection per client.
#
# Both load generators are closed loops with the same client count and record sizes: a client
# appends (Tally: HTTP POST /log/0/append; JetStream: publish, await the PubAck) and appends
# again. Every run starts its system afresh in a temp dir; each cell is the median of RUNS runs.
#
# Environment: CLIENTS (32), DURATION seconds per run (10), RUNS (3), SIZES ("100 1024"),
# CONFIGS ("r1 r3"), LAYOUTS ("roles nodes": which Tally clusters R3 runs), PROTOCOLS
# ("http grpc": how Tally is driven), REDIS (1: the R1 Redis rows; 0: none),
# OUT (bench/results/jetstream-<date>.json), QUICK=1 (one run of 2 s, 1 KiB
# records: a smoke check), BENCH_TMPDIR (/var/tmp: where the data dirs go; a disk, not tmpfs),
# KEEP_WORK=1 (keep the temp dir and its logs; a failed run keeps them anyway).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${QUICK:-0}" == 1 ]]; then
    RUNS="${RUNS:-1}" DURATION="${DURATION:-2}" SIZES="${SIZES:-1024}"
fi
CLIENTS="${CLIENTS:-32}"
DURATION="${DURATION:-10}"
RUNS="${RUNS:-3}"
SIZES="${SIZES:-100 1024}"
CONFIGS="${CONFIGS:-r1 r3}"
LAYOUTS="${LAYOUTS:-roles nodes}"
PROTOCOLS="${PROTOCOLS:-http grpc}"
REDIS="${REDIS:-1}"
OUT="${OUT:-$ROOT/bench/results/jetstream-$(date -u +%Y%m%d-%H%M%S).json}"
READY_TIMEOUT_S=60

# Messages, process tracking, free ports and ready lines (bench/lib.sh).
source "$ROOT/bench/lib.sh"

for name in CLIENTS DURATION RUNS; do
    [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive integer, not '${!name}'"
done
for size in $SIZES; do
    [[ "$size" =~ ^[1-9][0-9]*$ ]] || die "SIZES must hold positive integers, not '$size'"
done
for config in $CONFIGS; do
    [[ "$config" == r1 || "$config" == r3 ]] || die "CONFIGS takes r1 and r3, not '$config'"
done
for layout in $LAYOUTS; do
    [[ "$layout" == roles || "$layout" == nodes ]] || die "LAYOUTS takes roles and nodes, not '$layout'"
done
for protocol in $PROTOCOLS; do
    [[ "$protocol" == http || "$protocol" == grpc ]] || die "PROTOCOLS takes http and grpc, not '$protocol'"
done

# ---------------------------------------------------------------------------------------------
# Processes: every one this script starts is tracked and stopped on exit, failure included.

PIDS=()
CLUSTER_DIRS=()
WORK=""

# The pids a Tally cluster recorded in DIR/cluster.json, one a line.
cluster_pids() {
    local file=$1/cluster.json
    [[ -f "$file" ]] || return 0
    python3 - "$file" <<'EOF' || true
import json, sys
for node in json.load(open(sys.argv[1])).get("nodes", []):
    if isinstance(node.get("pid"), int):
        print(node["pid"])
EOF
}

stop_tally_cluster() {
    local dir=$1 pid kept=() d
    timeout 60 "$TALLY" cluster down --dir "$dir" >>"$dir.down.log" 2>&1 ||
        log "warning: tally cluster down --dir $dir failed; see $dir.down.log"
    # Whatever `cluster down` left running is still ours: it was started for this run.
    for pid in $(cluster_pids "$dir"); do
        if grep -qa tally "/proc/$pid/cmdline" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for d in "${CLUSTER_DIRS[@]}"; do [[ "$d" == "$dir" ]] || kept+=("$d"); done
    CLUSTER_DIRS=("${kept[@]}")
}

cleanup() {
    local rc=$? dir
    trap - EXIT INT TERM
    for dir in "${CLUSTER_DIRS[@]}"; do stop_tally_cluster "$dir"; done
    stop_all "$rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# What it needs: python3 (ports, summary), nats-server from Debian, tally and bench-jetstream.

as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }
apt_install() {
    log "installing $* from Debian"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v python3 >/dev/null || apt_install python3
command -v nats-server >/dev/null || apt_install nats-server
NATS_VERSION="$(nats-server --version 2>&1 | head -n 1)"
REDIS_VERSION=""
if [[ "$REDIS" == 1 && " $CONFIGS " == *" r1 "* ]]; then
    # Debian's package may start a service of its own where systemd runs; this script starts
    # its own servers on free ports and never uses that one.
    command -v redis-server >/dev/null || apt_install redis-server
    REDIS_VERSION="$(redis-server --version 2>&1 | head -n 1)"
fi

log "building tally, bench-jetstream and bench-redis (release)"
(
    cd "$ROOT"
    cargo build --release --quiet --bin tally
    cargo build --release --quiet -p bench --features "jetstream redis" \
        --bin bench-jetstream --bin bench-redis
)
TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
TALLY="$TARGET_DIR/release/tally"
BENCH_JS="$TARGET_DIR/release/bench-jetstream"
BENCH_REDIS="$TARGET_DIR/release/bench-redis"

HAS_TALLY_CLUSTER=0
if "$TALLY" cluster --help >/dev/null 2>&1; then HAS_TALLY_CLUSTER=1; fi

make_work_dir vs-jetstream

DURABILITY_NOTE="nats-server ${NATS_VERSION#nats-server: } (Debian's package). JetStream (2.9 and \
later) acknowledges a publish once the stream leader (R1) or a quorum of replicas (R3) has \
written it, without fsync: its file store syncs every 2 minutes by default (sync_interval). \
Tally's async mode acknowledges once written and syncs every 10 ms; its fsync mode (the \
default) acknowledges only after fdatasync. Equal durability: compare JetStream with Tally \
async; Tally's default: compare with Tally fsync${REDIS_VERSION:+, and with Redis (\
${REDIS_VERSION%% sha=*}, appendonly yes, appendfsync always: an XADD is acknowledged once the \
AOF is fsynced)}."

cat >&2 <<EOF
== Tally vs NATS JetStream ==
$DURABILITY_NOTE
clients $CLIENTS, ${DURATION} s per run, median of $RUNS run(s), records: $SIZES bytes, configs: $CONFIGS
tally: $TALLY ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown))
temp dir: $WORK ($WORK_FS)
EOF

# ---------------------------------------------------------------------------------------------
# Systems. Each start_* sets ENDPOINTS (comma-separated) and STOP (a command to stop it).

start_jetstream() {
    local dir=$1 replicas=$2 i pid ports client_ports=() route_ports=() routes="" urls=""
    if [[ "$replicas" == 1 ]]; then
        ports=$(free_ports 1)
        nats-server -a 127.0.0.1 -p "$ports" -n n1 -js -sd "$dir/n1" >"$dir/n1.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        wait_for_line "$dir/n1.log" "Server is ready" "$pid" "nats-server"
        ENDPOINTS="nats://127.0.0.1:$ports"
        STOP="stop_pid $pid"
        return
    fi
    read -r -a ports <<<"$(free_ports $((2 * replicas)))"
    client_ports=("${ports[@]:0:replicas}")
    route_ports=("${ports[@]:replicas}")
    for ((i = 0; i < replicas; i++)); do
        routes+="${routes:+,}nats://127.0.0.1:${route_ports[i]}"
        urls+="${urls:+,}nats://127.0.0.1:${client_ports[i]}"
    done
    STOP=""
    for ((i = 0; i < replicas; i++)); do
        nats-server -a 127.0.0.1 -p "${client_ports[i]}" -n "n$((i + 1))" -js -sd "$dir/n$((i + 1))" \
            --cluster_name bench --cluster "nats://127.0.0.1:${route_ports[i]}" --routes "$routes" \
            >"$dir/n$((i + 1)).log" 2>&1 &
        PIDS+=("$!")
        STOP+="stop_pid $!; "
    done
    for ((i = 0; i < replicas; i++)); do
        wait_for_line "$dir/n$((i + 1)).log" "Server is ready" "${PIDS[${#PIDS[@]} - replicas + i]}" \
            "nats-server n$((i + 1))"
    done
    ENDPOINTS="$urls"
}

# redis-server in DIR with `appendonly yes` and `appendfsync always`, on a free port.
start_redis() {
    local dir=$1 port pid
    port=$(free_ports 1)
    mkdir -p "$dir/redis"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/redis" --save "" \
        --appendonly yes --appendfsync always >"$dir/redis.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_for_line "$dir/redis.log" "Ready to accept connections" "$pid" "redis-server"
    ENDPOINTS="redis://127.0.0.1:$port"
    STOP="stop_pid $pid"
}

start_tally() {
    local dir=$1 durability=$2 pid
    "$TALLY" up --data-dir "$dir/data" --http-addr 127.0.0.1:0 --worker-addr 127.0.0.1:0 --durability "$durability" \
        >"$dir/tally.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_for_line "$dir/tally.log" "^listening on http://" "$pid" "tally up"
    if [[ "$PROTOCOL" == grpc ]]; then
        ENDPOINTS="$(sed -n 's|^the log protocol (tally-client) at \([^ ]*\).*|\1|p' "$dir/tally.log" | head -n 1)"
        [[ -n "$ENDPOINTS" ]] || die "tally up printed no log protocol address"
    else
        ENDPOINTS="$(sed -n 's|^listening on \(http://[^ ]*\).*|\1|p' "$dir/tally.log" | head -n 1)"
    fi
    STOP="stop_pid $pid"
}

# `tally cluster up` prints a line per gateway with its URL and writes DIR/cluster.json; it may
# stay in the foreground or return once the cluster runs: both are handled. LAYOUT: roles (a
# process per role: 3 sequencers, 3 storage nodes, 2 gateways) or nodes (3 processes, each a
# sequencer, a storage node and a gateway).
start_tally_cluster() {
    local dir=$1 durability=$2 layout=$3 pid i gateways="" up_exited=0 shape
    case "$layout" in
    nodes) shape=(--nodes 3) ;;
    *) shape=(--sequencers 3 --storage 3 --gateways 2) ;;
    esac
    "$TALLY" cluster up --dir "$dir/cluster" "${shape[@]}" \
        --durability "$durability" >"$dir/cluster.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    CLUSTER_DIRS+=("$dir/cluster")
    for ((i = 0; i < READY_TIMEOUT_S * 10; i++)); do
        if [[ -f "$dir/cluster/cluster.json" ]]; then
            gateways="$(python3 - "$dir/cluster/cluster.json" "$PROTOCOL" <<'EOF' || true
import json, sys
nodes = json.load(open(sys.argv[1])).get("nodes", [])
# The log protocol is served at a gateway's worker address.
key = "workers" if sys.argv[2] == "grpc" else "http"
print(",".join(n[key] for n in nodes if n.get("role") == "gateway" and n.get(key)))
EOF
)"
        fi
        if [[ -z "$gateways" && "$PROTOCOL" == http ]]; then
            gateways="$(grep -Eo 'http://127\.0\.0\.1:[0-9]+' "$dir/cluster.log" | sort -u | paste -sd, || true)"
        fi
        [[ $(tr ',' '\n' <<<"$gateways" | grep -c 127 || true) -ge 2 ]] && break
        gateways=""
        # `up` may return once the cluster runs; only a failing exit is an error.
        if [[ $up_exited == 0 ]] && ! kill -0 "$pid" 2>/dev/null; then
            up_exited=1
            if ! wait "$pid"; then
                tail -n 20 "$dir/cluster.log" >&2 || true
                die "tally cluster up failed; its log is above"
            fi
        fi
        sleep 0.1
    done
    [[ -n "$gateways" ]] || die "tally cluster up: no 2 gateway URLs within $READY_TIMEOUT_S s"
    ENDPOINTS="$gateways"
    STOP="stop_tally_cluster '$dir/cluster'; stop_pid $pid"
}

# One single-client run of 1 s, retried until it succeeds: the system is ready for appends
# (a cluster has its leaders, JetStream's stream exists). Not measured.
probe() {
    local system=$1 replicas=$2 dir=$3 i
    for ((i = 0; i < 10; i++)); do
        bench_command "$system" "$replicas" 1 100 1 ""
        if "${BENCH[@]}" >>"$dir/probe.log" 2>&1; then return 0; fi
        sleep 1
    done
    tail -n 20 "$dir/probe.log" >&2 || true
    die "$system never accepted an append; the probe's log is above"
}

# bench_command SYSTEM REPLICAS CLIENTS RECORD_BYTES DURATION JSON_FILE sets BENCH to the
# load generator's command line (an array, so it runs as its own process, not in a subshell).
bench_command() {
    local system=$1 replicas=$2 clients=$3 bytes=$4 duration=$5 json=$6
    case "$system" in
    jetstream) BENCH=("$BENCH_JS" --server "$ENDPOINTS" --replicas "$replicas") ;;
    redis) BENCH=("$BENCH_REDIS" append --server "$ENDPOINTS") ;;
    *) BENCH=("$TALLY" bench append --addr "$ENDPOINTS" --protocol "$PROTOCOL") ;;
    esac
    BENCH+=(--clients "$clients" --record-bytes "$bytes" --duration "$duration")
    if [[ -n "$json" ]]; then BENCH+=(--json "$json"); fi
}

# One measured run: start the system afresh, probe it, measure, stop it, drop its data.
run_one() {
    local config=$1 bytes=$2 system=$3 run=$4 replicas=1 dir name pid
    [[ "$config" == r3 ]] && replicas=3
    name="$config-$bytes-$system-$run"
    dir="$WORK/$name"
    mkdir -p "$dir"
    # tally[-nodes][-grpc]-DURABILITY: the cluster's layout, the protocol, the durability.
    local rest=${system#tally-} layout=roles
    PROTOCOL=http
    if [[ "$rest" == nodes-* ]]; then layout=nodes rest=${rest#nodes-}; fi
    if [[ "$rest" == grpc-* ]]; then PROTOCOL=grpc rest=${rest#grpc-}; fi
    case "$config/$system" in
    */jetstream) start_jetstream "$dir" "$replicas" ;;
    r1/redis) start_redis "$dir" ;;
    r1/tally-*) start_tally "$dir" "$rest" ;;
    r3/tally-*) start_tally_cluster "$dir" "$rest" "$layout" ;;
    esac
    probe "$system" "$replicas" "$dir"
    # In the background and waited for, so a signal stops the script at once, not after the run.
    bench_command "$system" "$replicas" "$CLIENTS" "$bytes" "$DURATION" "$RESULTS/$name.json"
    "${BENCH[@]}" >"$dir/bench.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    if ! wait "$pid"; then
        tail -n 20 "$dir/bench.log" >&2 || true
        die "$name: the benchmark failed; its log is above"
    fi
    forget_pid "$pid"
    eval "$STOP"
    python3 - "$RESULTS/$name.json" "$name" "$RUNS" <<'EOF' >&2
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_us"]
errors = f"  errors {r['errors']}" if r["errors"] else ""
print(f"  {sys.argv[2]:<28} {r['appends_per_s']:>10,.0f} appends/s  p50 {l['p50']/1000:.2f} ms"
      f"  p99 {l['p99']/1000:.2f} ms{errors}")
EOF
    rm -rf "$dir/data" "$dir/cluster" "$dir"/n[0-9] "$dir/redis"
}

SKIPPED=()
for config in $CONFIGS; do
    layouts="roles"
    [[ "$config" == r3 ]] && layouts="$LAYOUTS"
    systems="jetstream"
    [[ "$config" == r1 && "$REDIS" == 1 ]] && systems+=" redis"
    for layout in $layouts; do
        for protocol in $PROTOCOLS; do
            prefix="tally-"
            [[ "$layout" == nodes ]] && prefix+="nodes-"
            [[ "$protocol" == grpc ]] && prefix+="grpc-"
            systems+=" ${prefix}fsync ${prefix}async"
        done
    done
    if [[ "$config" == r3 && "$HAS_TALLY_CLUSTER" == 0 ]]; then
        systems="jetstream"
        SKIPPED+=("R3 Tally rows: this tally has no cluster command (\`tally cluster --help\` failed)")
        log "R3: skipping Tally's rows: \`tally cluster --help\` failed (no \`tally cluster\` in this build); JetStream R3 still runs"
    fi
    for bytes in $SIZES; do
        for ((run = 1; run <= RUNS; run++)); do
            # Systems alternate within a run, so drift on a shared machine hits them alike.
            for system in $systems; do
                run_one "$config" "$bytes" "$system" "$run"
            done
        done
    done
done

# ---------------------------------------------------------------------------------------------
# Medians, ratios, the table and the JSON file.

mkdir -p "$(dirname "$OUT")"
SKIPPED_TEXT="$(printf '%s\n' "${SKIPPED[@]}")" \
    NATS_VERSION="$NATS_VERSION" REDIS_VERSION="$REDIS_VERSION" DURABILITY_NOTE="$DURABILITY_NOTE" \
    TALLY_COMMIT="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
    CLIENTS="$CLIENTS" DURATION="$DURATION" RUNS="$RUNS" SIZES="$SIZES" CONFIGS="$CONFIGS" LAYOUTS="$LAYOUTS" PROTOCOLS="$PROTOCOLS" \
    QUICK="${QUICK:-0}" python3 - "$RESULTS" "$OUT" <<'EOF'
import glob, json, os, platform, statistics, sys, time

results_dir, out = sys.argv[1], sys.argv[2]
env = os.environ
SYSTEMS = {
    "jetstream": ("jetstream", "ack without fsync"),
    "redis": ("redis", "AOF appendfsync always"),
    "tally-fsync": ("tally", "fsync"),
    "tally-async": ("tally", "async"),
    "tally-grpc-fsync": ("tally", "grpc, fsync"),
    "tally-grpc-async": ("tally", "grpc, async"),
    "tally-nodes-fsync": ("tally", "nodes, fsync"),
    "tally-nodes-async": ("tally", "nodes, async"),
    "tally-nodes-grpc-fsync": ("tally", "nodes, grpc, fsync"),
    "tally-nodes-grpc-async": ("tally", "nodes, grpc, async"),
}
runs = {}
for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
    stem, run = os.path.basename(path)[: -len(".json")].rsplit("-", 1)
    config, size, system = stem.split("-", 2)
    r = json.load(open(path))
    runs.setdefault((config, int(size), system), []).append({
        "run": int(run),
        "appends_per_s": r["appends_per_s"],
        "mb_per_s": r["mb_per_s"],
        "p50_us": r["latency_us"]["p50"],
        "p99_us": r["latency_us"]["p99"],
        "p999_us": r["latency_us"]["p999"],
        "max_us": r["latency_us"]["max"],
        "appends": r["appends"],
        "errors": r["errors"],
        "retried": r["retried"],
        "first_error": r.get("first_error"),
    })

order = {"r1": 0, "r3": 1}
sys_order = list(SYSTEMS)
cells = []
for key in sorted(runs, key=lambda k: (order[k[0]], k[1], sys_order.index(k[2]))):
    config, size, system = key
    rs = sorted(runs[key], key=lambda r: r["run"])
    median = {f: statistics.median(r[f] for r in rs)
              for f in ("appends_per_s", "mb_per_s", "p50_us", "p99_us", "p999_us")}
    name, mode = SYSTEMS[system]
    cells.append({"config": config.upper(), "record_bytes": size, "system": name, "mode": mode,
                  "runs": rs, "median": median, "errors": sum(r["errors"] for r in rs)})

by_key = {(c["config"], c["record_bytes"], c["system"], c["mode"]): c for c in cells}
for c in cells:
    js = by_key.get((c["config"], c["record_bytes"], "jetstream", SYSTEMS["jetstream"][1]))
    if c["system"] == "tally" and js:
        m, j = c["median"], js["median"]
        ratio = lambda a, b: round(a / b, 3) if b else None
        c["ratio_vs_jetstream"] = {
            "throughput": ratio(m["appends_per_s"], j["appends_per_s"]),
            "p50": ratio(m["p50_us"], j["p50_us"]),
            "p99": ratio(m["p99_us"], j["p99_us"]),
        }
    redis = by_key.get((c["config"], c["record_bytes"], "redis", SYSTEMS["redis"][1]))
    if c["system"] == "tally" and c["mode"].endswith("fsync") and redis:
        m, r = c["median"], redis["median"]
        c["ratio_vs_redis"] = {
            "throughput": round(m["appends_per_s"] / r["appends_per_s"], 3),
            "p50": round(m["p50_us"] / r["p50_us"], 3),
            "p99": round(m["p99_us"] / r["p99_us"], 3),
        }

def size_text(n):
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} B"

header = (f"{'config':<7}{'size':<8}{'system/mode':<30}{'appends/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'tput T/J':>10}{'p50 T/J':>9}{'p99 T/J':>9}")
lines = [header, "-" * len(header)]
for c in cells:
    m = c["median"]
    r = c.get("ratio_vs_jetstream")
    fmt = lambda v: f"{v:.2f}" if v is not None else "-"
    ratios = (f"{fmt(r['throughput']):>10}{fmt(r['p50']):>9}{fmt(r['p99']):>9}" if r
              else f"{'':>10}{'':>9}{'':>9}")
    label = f"{c['system']} {c['mode']}" + (f" (errors {c['errors']})" if c["errors"] else "")
    lines.append((f"{c['config']:<7}{size_text(c['record_bytes']):<8}{label:<30}"
                  f"{m['appends_per_s']:>11,.0f}{m['p50_us'] / 1000:>9.2f}{m['p99_us'] / 1000:>9.2f}"
                  + ratios).rstrip())
print()
print("\n".join(lines))
print(f"\nmedians of {env['RUNS']} run(s) of {env['DURATION']} s, {env['CLIENTS']} closed-loop clients"
      " per system; T/J = Tally / JetStream (throughput above 1: Tally faster; latency above 1:"
      " Tally slower)")
for c in cells:
    r = c.get("ratio_vs_redis")
    if r:
        print(f"{c['config']} {size_text(c['record_bytes'])} tally {c['mode']} / redis AOF always:"
              f" throughput {r['throughput']:.2f}, p50 {r['p50']:.2f}, p99 {r['p99']:.2f}")
print(env["DURABILITY_NOTE"])
skipped = [s for s in env.get("SKIPPED_TEXT", "").split("\n") if s]
for s in skipped:
    print(f"skipped: {s}")

report = {
    "benchmark": "tally-vs-jetstream",
    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "host": {"cores": os.cpu_count(), "kernel": platform.release()},
    "tally_commit": env["TALLY_COMMIT"],
    "nats_server_version": env["NATS_VERSION"],
    "redis_server_version": env.get("REDIS_VERSION") or None,
    "params": {"clients": int(env["CLIENTS"]), "duration_s": int(env["DURATION"]),
               "runs": int(env["RUNS"]), "record_bytes": [int(s) for s in env["SIZES"].split()],
               "configs": env["CONFIGS"].split(), "layouts": env["LAYOUTS"].split(),
               "protocols": env["PROTOCOLS"].split(),
               "quick": env["QUICK"] == "1"},
    "durability_note": env["DURABILITY_NOTE"],
    "skipped": skipped,
    "cells": cells,
}
with open(out, "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
print(f"wrote {out}")
EOF
