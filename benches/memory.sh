#!/usr/bin/env bash
# Memory under hostile traffic: peak RSS of a ringside with cache.capacity
# 64 MiB per case (tiny objects, one URL with random Vary values, long keys
# owned by another node, slow readers of large objects, idle connections,
# slowloris). Extra arguments go to `memory_bench` (--case tiny --case idle,
# --capacity, --tiny-requests, --idle-connections ...).
#
#   benches/memory.sh
#   BUILD=1 benches/memory.sh --case slowloris
#
# The example starts the test origin in-process and every ringside as a
# child process, and stops them by PID (SIGTERM, then kill) when done.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${BUILD:-0}" = 1 ] || [ ! -x target/release/ringside ] || [ ! -x target/release/examples/memory_bench ]; then
    cargo build --release --quiet --bin ringside --example memory_bench
fi
# 5000 idle connections need as many descriptors on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec target/release/examples/memory_bench "$@"
