#!/usr/bin/env bash
# Read-your-writes soak: tests/read_your_writes.rs's shape for minutes, with
# a node killed (SIGKILL) and restarted every two minutes (see
# examples/cluster_bench/writes.rs, and benches/README.md for figures).
#
#   benches/read_your_writes.sh                       # 10 minutes, 5,000 items, 32 clients
#   DURATION=120 KILL_EVERY=30 benches/read_your_writes.sh
#   RINGSIDE=/path/to/ringside benches/read_your_writes.sh   # another binary (A/B)
#
# Prints a RESULT line; exits non-zero when a GET broke read-your-writes, or
# when, with every member up, a write went unconfirmed or a member failed an
# invalidation (ringside_invalidation_peer_failures_total).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/release/examples/cluster_bench ] || cargo build --release --quiet --bin ringside --example cluster_bench
exec target/release/examples/cluster_bench writes \
    --duration-secs "${DURATION:-600}" --kill-every-secs "${KILL_EVERY:-120}" \
    --keys "${KEYS:-5000}" --clients "${CLIENTS:-32}" \
    --ringside "${RINGSIDE:-target/release/ringside}" "$@"
