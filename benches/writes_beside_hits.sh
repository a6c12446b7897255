#!/usr/bin/env bash
# What a stream of writes costs one node's hits: hits/s of a warm node
# (50,000 items stored) alone, then beside about 1,000 PUTs/s to other items
# (examples/cluster_bench/writes_beside_hits.rs; figures in benches/README.md).
#
#   benches/writes_beside_hits.sh
#   KEYS=100000 WRITES=2000 benches/writes_beside_hits.sh
#   RINGSIDE=/path/to/old/ringside benches/writes_beside_hits.sh   # before/after
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/release/examples/cluster_bench ] || cargo build --release --quiet --bin ringside --example cluster_bench
exec target/release/examples/cluster_bench writes-beside-hits \
    --keys "${KEYS:-50000}" --writes-per-sec "${WRITES:-1000}" --secs "${SECS:-5}" \
    --ringside "${RINGSIDE:-target/release/ringside}" "$@"
