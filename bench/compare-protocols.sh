#!/usr/bin/env bash
# libflow's three logging protocols side by side on the `travel` workflow (read the traveller's
# profile, search, reserve a flight, a hotel and a car at once, write the trip and the
# traveller's count of trips), on one `tally up`: for each protocol, a closed loop of new
# instances at CLIENTS clients, and the log appends and bytes each instance costs (the
# gateway's tally_appended_records_total and tally_appended_bytes_total over the run, divided
# by the instances that ran, the warmup's included).
#
# Environment: CLIENTS (1), DURATION seconds measured per protocol (10), WARMUP (2), RUNS (3),
# BENCH_TMPDIR (/var/tmp), KEEP_WORK=1 (keep the temp dir).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLIENTS="${CLIENTS:-1}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
RUNS="${RUNS:-3}"
PROTOCOLS="symmetric write-log read-log"
READY_TIMEOUT_S=60
PIDS=()
STOP_PIDS=()
source "$ROOT/bench/lib.sh"
for name in CLIENTS DURATION RUNS; do
    [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive integer, not '${!name}'"
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a whole number of seconds, not '$WARMUP'"

WORK="$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/tally-protocols.XXXXXX")"
trap 'stop_all $?' EXIT
log "building tally (release)"
build_tally

metric() {
    curl -sf --max-time 5 "$TALLY_URL/metrics" | awk -v m="$1" '$1 == m { printf "%.0f\n", $2 }'
}

printf '%-10s %4s %10s %9s %9s %12s %12s\n' protocol run calls/s "p50 ms" "p99 ms" \
    "appends/wf" "bytes/wf"
for run in $(seq 1 "$RUNS"); do
    for protocol in $PROTOCOLS; do
        dir="$WORK/$protocol-$run"
        mkdir -p "$dir"
        start_tally "$dir" || die "tally up did not start (its log: $dir/tally.log)"
        records_before="$(metric tally_appended_records_total)"
        bytes_before="$(metric tally_appended_bytes_total)"
        "$TALLY" bench workflow travel --url "$TALLY_URL" --wait-ms 60000 \
            --input "{\"protocol\":\"$protocol\"}" --clients "$CLIENTS" \
            --duration "$DURATION" --warmup "$WARMUP" --json "$dir/report.json" \
            >"$dir/bench.log" 2>&1 || die "the benchmark failed (its log: $dir/bench.log)"
        records="$(($(metric tally_appended_records_total) - records_before))"
        bytes="$(($(metric tally_appended_bytes_total) - bytes_before))"
        python3 - "$dir/report.json" "$protocol" "$run" "$records" "$bytes" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
protocol, run, records, nbytes = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
calls = r.get("calls_with_warmup") or r["calls"]
l = r["latency_us"]
print(f"{protocol:<10} {run:>4} {r['calls_per_s']:>10.1f} {l['p50'] / 1000:>9.2f} "
      f"{l['p99'] / 1000:>9.2f} {records / calls:>12.1f} {nbytes / calls:>12.0f}")
PY
        stop_systems
    done
done
log "travel, $CLIENTS client(s), $RUNS run(s) of $DURATION s after $WARMUP s per protocol; appends and bytes per workflow include the durable invocation's records and the child calls' (search, three reservations)"
