#!/usr/bin/env bash
# Membership changes under load, with handoff and previous-owner lookups on
# and off: a rolling restart of 3 nodes (static membership, each restarted
# on its address), a scale-up from 3 to 4 nodes (etcd membership), and
# double fills (cold keys on every node while a member joins and one
# leaves). Extra arguments go to each `cluster_bench` subcommand
# (--keys, --clients, --rate, --settle-secs, --gap-secs, ...).
#
#   benches/rolling_restart.sh
#   BUILD=1 benches/rolling_restart.sh --rate 100
#
# Needs `etcd` on the PATH (apt-get install -y etcd-server) for the last two.
# Every process is a child of the example, stopped by PID when done.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${BUILD:-0}" = 1 ] || [ ! -x target/release/ringside ] || [ ! -x target/release/examples/cluster_bench ]; then
    cargo build --release --quiet --bin ringside --example cluster_bench
fi
for bench in rolling scale-up double-fills; do
    target/release/examples/cluster_bench "$bench" "$@"
done
