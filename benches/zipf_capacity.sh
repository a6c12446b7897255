#!/usr/bin/env bash
# Zipf workload over a key space larger than one node's capacity: origin
# requests and hit ratio of a 3-node cluster vs the same 3 nodes as
# independent caches. Extra arguments go to `cluster_bench zipf`
# (--requests, --capacity, --keys, --body-bytes, --zipf-s, --hot-fraction ...).
#
#   benches/zipf_capacity.sh
#   BUILD=1 benches/zipf_capacity.sh --hot-fraction 0
#
# The example starts the sample origin in-process and every ringside node as
# a child process, and stops them by PID (SIGTERM, then kill) when done.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${BUILD:-0}" = 1 ] || [ ! -x target/release/ringside ] || [ ! -x target/release/examples/cluster_bench ]; then
    cargo build --release --quiet --bin ringside --example cluster_bench
fi
exec target/release/examples/cluster_bench zipf "$@"
