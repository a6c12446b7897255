#!/usr/bin/env bash
# The Zipf run (cluster vs independent caches) with a CPU burner beside it,
# two ways:
#
#   benches/zipf_loaded.sh                 # burner in the same cgroup
#   CGROUP=1 benches/zipf_loaded.sh        # burner and benchmark each in a
#                                          # cgroup of its own, equal weight
#   benches/zipf_loaded.sh --threads 1     # extra arguments go to cluster_bench zipf
#   REQUESTS=100000 benches/zipf_loaded.sh # also KEYS, BODY_BYTES, CAPACITY
#   RINGSIDE=/path/to/ringside benches/zipf_loaded.sh   # another binary (A/B)
#
# In the same cgroup the burner competes with every thread of the nodes one
# by one, so a setup with more threads gets more of the CPU. In cgroups of
# their own (CGROUP=1, needs root and the cpu controller, v1 or v2) they
# compete as co-located containers do, whatever their thread counts. The
# burner is stopped by PID and the cgroups removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/release/examples/cluster_bench ] || cargo build --release --quiet --bin ringside --example cluster_bench
RINGSIDE=${RINGSIDE:-target/release/ringside}
BENCH=(target/release/examples/cluster_bench zipf --keys "${KEYS:-100000}"
    --body-bytes "${BODY_BYTES:-1024}" --capacity "${CAPACITY:-16MiB}"
    --requests "${REQUESTS:-1000000}" --ringside "$RINGSIDE" "$@")

if [ -d /sys/fs/cgroup/cpu ] && [ -f /sys/fs/cgroup/cpu/cpu.shares ]; then
    ROOT=/sys/fs/cgroup/cpu; WEIGHT_FILE=cpu.shares; WEIGHT=1024      # cgroup v1
else
    ROOT=/sys/fs/cgroup; WEIGHT_FILE=cpu.weight; WEIGHT=100           # cgroup v2
fi
GROUPS_MADE=()
BURNER=
cleanup() {
    if [ -n "$BURNER" ]; then
        kill "$BURNER" 2>/dev/null || true
        wait "$BURNER" 2>/dev/null || true
    fi
    for g in "${GROUPS_MADE[@]}"; do rmdir "$g" 2>/dev/null || echo "could not remove $g" >&2; done
}
trap cleanup EXIT INT TERM

group() { # name: make a cgroup of that name with the default weight
    local dir=$ROOT/ringside-bench-$1
    mkdir -p "$dir" && echo "$WEIGHT" >"$dir/$WEIGHT_FILE"
    GROUPS_MADE+=("$dir")
}

if [ "${CGROUP:-0}" = 1 ]; then
    group burner; group bench
    burner_group=${GROUPS_MADE[0]}; bench_group=${GROUPS_MADE[1]}
    sh -c 'echo $$ >"$1/cgroup.procs"; exec sh -c "while :; do :; done"' sh "$burner_group" &
    BURNER=$!
    sh -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' sh "$bench_group" "${BENCH[@]}"
else
    sh -c 'while :; do :; done' &
    BURNER=$!
    "${BENCH[@]}"
fi
