#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a bounded time; exits non-zero on any finding (a
# panic, an overflow, a failed assertion, an input slower than FUZZ_TIMEOUT, too much memory).
#
#   fuzz/run.sh                                       every target, FUZZ_SECONDS each (CI)
#   FUZZ_SECONDS=3600 fuzz/run.sh segment_recovery    one target, for an hour
#
# Runs on the stable toolchain: cargo-fuzz builds without a sanitizer (`-s none`), which needs no
# nightly flag; the targets are built with debug assertions and overflow checks. Inputs that
# find something go to fuzz/artifacts/TARGET/; replay one with
# `cargo fuzz run -s none TARGET fuzz/artifacts/TARGET/crash-...`.
#
# Environment: FUZZ_SECONDS (per target, default 20), FUZZ_TIMEOUT (seconds one input may take,
# default 10), FUZZ_JOBS (targets run at once, default 2 or the CPU count if lower),
# CARGO_TARGET_DIR (default fuzz/target). The corpus each run grows is kept in fuzz/corpus/
# (not committed); the committed seeds are in fuzz/seeds/ (`seeds/generate.py` writes them).
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-20}
timeout=${FUZZ_TIMEOUT:-10}
cpus=$(nproc)
jobs=${FUZZ_JOBS:-$((cpus < 2 ? cpus : 2))}
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
host=$(rustc -vV | sed -n 's/^host: //p')

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

build=(cargo fuzz build --sanitizer none --target-dir "$target_dir")
if [ $# -gt 0 ]; then
    for target in "${targets[@]}"; do
        "${build[@]}" "$target"
    done
else
    "${build[@]}"
fi

mkdir -p logs
run() {
    local target=$1 seeds=()
    [ -d "seeds/$target" ] && seeds=("seeds/$target")
    mkdir -p "corpus/$target" "artifacts/$target"
    local rc=0
    "$target_dir/$host/release/$target" \
        -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$target/" -print_final_stats=1 \
        "corpus/$target" "${seeds[@]}" >"logs/$target.log" 2>&1 || rc=$?
    echo "$rc" >"logs/$target.rc"
}

echo "fuzzing ${#targets[@]} targets for ${seconds}s each, $jobs at a time"
for target in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        wait -n || true
    done
    run "$target" &
done
wait

# libFuzzer's closing `stat::NAME: VALUE` lines.
final_stat() { sed -n "s/^stat::$2: *//p" "$1" | tail -1; }

failed=()
printf '%-20s %12s %10s %8s %s\n' target executions exec/s corpus result
for target in "${targets[@]}"; do
    log="logs/$target.log"
    rc=$(cat "logs/$target.rc")
    result=ok
    if [ "$rc" != 0 ]; then
        result="FOUND (exit $rc): see fuzz/$log and fuzz/artifacts/$target/"
        failed+=("$target")
    fi
    printf '%-20s %12s %10s %8s %s\n' "$target" "$(final_stat "$log" number_of_executed_units)" \
        "$(final_stat "$log" average_exec_per_sec)" "$(find "corpus/$target" -type f | wc -l)" "$result"
done

for target in "${failed[@]}"; do
    echo
    echo "== $target =="
    grep -m1 -A2 'panicked at' "logs/$target.log" || true
    tail -12 "logs/$target.log"
done
[ ${#failed[@]} -eq 0 ]
