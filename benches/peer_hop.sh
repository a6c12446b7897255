#!/usr/bin/env bash
# Peer hop vs local hit: latency and throughput of a cached response served
# through the key's owner (node A -> node B) vs one served from A's own cache.
#
#   benches/peer_hop.sh            # DURATION=1s CONNS=8 KEYS=200 by default
#   BUILD=1 benches/peer_hop.sh    # rebuild the release binaries first
#   PEER_PROTOCOL=http1 benches/peer_hop.sh # peers on signed HTTP/1.1 (the channel is the default)
#   PEER_PROTOCOL=h2c benches/peer_hop.sh   # peers on signed HTTP/2 over cleartext
#   PEER_TLS=1 benches/peer_hop.sh          # peers on mutual TLS (cluster.tls;
#                                           # certificates made here with openssl)
#   THREADS=2 benches/peer_hop.sh           # two proxy threads per node (default 1)
#
# Starts the sample origin and a 2-node cluster (hot fraction 0, so A never
# mirrors B's keys), warms KEYS keys through A, sorts them by the
# Cache-Status A answers (`detail=peer`: owned by B), then runs wrk --latency
# against A for each set. Besides latency and throughput it prints the CPU
# time A and B used per request (user + system, from /proc): on a shared
# machine that varies less from run to run than requests/s does. Every
# process is stopped by PID on exit; the script says when not every request
# for B's keys hopped.
set -euo pipefail

DURATION=${DURATION:-1s}
CONNS=${CONNS:-8}
KEYS=${KEYS:-200}
BODY_BYTES=${BODY_BYTES:-1024}
PEER_PROTOCOL=${PEER_PROTOCOL:-channel} # or http1, h2c
PEER_TLS=${PEER_TLS:-0}                 # 1: cluster.tls between A and B
THREADS=${THREADS:-1}                   # proxy threads of each node

cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
# Build if a binary is missing (BUILD=1: always, to pick up source changes).
if [ "${BUILD:-0}" = 1 ] || [ ! -x target/release/ringside ] || [ ! -x target/release/examples/cluster_bench ]; then
    cargo build --release --quiet --bin ringside --example cluster_bench
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# Seven distinct free ports, held open together while picked so none repeats.
read -r -a PORTS <<<"$(python3 -c '
import socket
socks = [socket.socket() for _ in range(7)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')"
ORIGIN=127.0.0.1:${PORTS[0]}
A=127.0.0.1:${PORTS[1]}; A_ADMIN=127.0.0.1:${PORTS[2]}; A_PEER=127.0.0.1:${PORTS[3]}
B=127.0.0.1:${PORTS[4]}; B_ADMIN=127.0.0.1:${PORTS[5]}; B_PEER=127.0.0.1:${PORTS[6]}
SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')

target/release/examples/cluster_bench origin --listen "$ORIGIN" --delay-ms 20 \
    --max-age 3600 --body-bytes "$BODY_BYTES" >"$WORK/origin.log" 2>&1 &
PIDS+=($!)

# A CA and one certificate per node (ECDSA P-256, for 127.0.0.1, server and
# client auth), as cert-manager would issue them.
make_certs() {
    local dir=$WORK/pki
    mkdir -p "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj /CN=peer-hop-ca -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    for node in a b; do
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$node" \
            -keyout "$dir/$node.key" -out "$dir/$node.csr" 2>/dev/null
        openssl x509 -req -in "$dir/$node.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
            -CAcreateserial -days 1 -out "$dir/$node.crt" -extfile <(printf '%s\n' \
            "subjectAltName=IP:127.0.0.1" "extendedKeyUsage=serverAuth,clientAuth") 2>/dev/null
    done
}
tls_yaml() { # node
    [ "$PEER_TLS" = 1 ] || return 0
    cat <<EOF
  tls:
    ca_file: $WORK/pki/ca.crt
    cert_file: $WORK/pki/$1.crt
    key_file: $WORK/pki/$1.key
EOF
}
if [ "$PEER_TLS" = 1 ]; then make_certs; fi

node_yaml() { # listen admin peer name
    cat <<EOF
listen: $1
admin_listen: $2
threads: $THREADS
shutdown_grace: 1s
log_level: warn
origin:
  url: http://$ORIGIN
cache:
  capacity: 64MiB
cluster:
  enabled: true
  peer_listen: $3
  secret: "$SECRET"
  peer_protocol: $PEER_PROTOCOL
  hot:
    fraction: 0
  membership:
    static: ["$A_PEER", "$B_PEER"]
EOF
    tls_yaml "$4"
}
(umask 077; node_yaml "$A" "$A_ADMIN" "$A_PEER" a >"$WORK/a.yaml"; node_yaml "$B" "$B_ADMIN" "$B_PEER" b >"$WORK/b.yaml")
target/release/ringside --config "$WORK/a.yaml" >"$WORK/a.log" 2>&1 &
PIDS+=($!)
target/release/ringside --config "$WORK/b.yaml" >"$WORK/b.log" 2>&1 &
PIDS+=($!)

for admin in "$A_ADMIN" "$B_ADMIN"; do
    for _ in $(seq 100); do
        members=$(curl -sf "http://$admin/metrics" | awk '$1=="ringside_ring_members"{print $2}') || true
        [ "${members:-0}" = 2 ] && break
        sleep 0.1
    done
    [ "${members:-0}" = 2 ] || { echo "node on $admin not ready"; cat "$WORK"/*.log; exit 1; }
done

# Warm every key through A (the owner loads it), then ask again and sort by Cache-Status.
: >"$WORK/local.txt"; : >"$WORK/peer.txt"
for i in $(seq "$KEYS"); do curl -sf -o /dev/null "http://$A/items/$i"; done
for i in $(seq "$KEYS"); do
    status=$(curl -sf -o /dev/null -D - "http://$A/items/$i" | tr -d '\r' | awk -F': ' 'tolower($1)=="cache-status"{print $2}')
    case "$status" in
        *detail=peer*) echo "/items/$i" >>"$WORK/peer.txt" ;;
        *"; hit"*) echo "/items/$i" >>"$WORK/local.txt" ;;
        *) echo "unexpected Cache-Status for /items/$i: $status" >&2 ;;
    esac
done
echo "keys: $(wc -l <"$WORK/local.txt") owned by A (local hits), $(wc -l <"$WORK/peer.txt") owned by B (peer hops)"

lua_for() { # key list -> wrk script cycling through it
    {
        echo "local paths = {"
        sed 's/.*/  "&",/' "$1"
        echo "}"
        echo 'local i = 0'
        echo 'request = function() i = i + 1; return wrk.format("GET", paths[(i % #paths) + 1]) end'
    } >"$1.lua"
}
lua_for "$WORK/local.txt"
lua_for "$WORK/peer.txt"

to_us() { # wrk latency (e.g. 412.00us, 1.20ms, 2.00s) -> microseconds
    awk -v v="$1" 'BEGIN{ n=v+0; if (v ~ /us$/) m=1; else if (v ~ /ms$/) m=1000; else m=1000000; printf "%.0f", n*m }'
}
peer_before=$(curl -sf "http://$A_ADMIN/metrics" | awk '/^ringside_requests_total/ && /result="peer"/{s+=$2} END{print s+0}')
# CPU time (user + system, in clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Minor page faults so far: memory the allocator gives back and takes again.
minor_faults() { awk '{print $10}' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
A_PID=${PIDS[1]}; B_PID=${PIDS[2]}
declare -A P50 P99 RPS CPU_A CPU_B FAULTS_A
for kind in local peer; do
    a0=$(cpu_ticks "$A_PID"); b0=$(cpu_ticks "$B_PID"); f0=$(minor_faults "$A_PID")
    wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$WORK/$kind.txt.lua" "http://$A" >"$WORK/$kind.wrk"
    P50[$kind]=$(to_us "$(awk '$1=="50%"{print $2}' "$WORK/$kind.wrk")")
    P99[$kind]=$(to_us "$(awk '$1=="99%"{print $2}' "$WORK/$kind.wrk")")
    RPS[$kind]=$(awk '$1=="Requests/sec:"{printf "%.0f", $2}' "$WORK/$kind.wrk")
    n=$(awk '/requests in/{print $1}' "$WORK/$kind.wrk")
    CPU_A[$kind]=$(awk -v t="$(( $(cpu_ticks "$A_PID") - a0 ))" -v u="$TICK_US" -v n="$n" 'BEGIN{printf "%.1f", t*u/n}')
    CPU_B[$kind]=$(awk -v t="$(( $(cpu_ticks "$B_PID") - b0 ))" -v u="$TICK_US" -v n="$n" 'BEGIN{printf "%.1f", t*u/n}')
    FAULTS_A[$kind]=$(awk -v f="$(( $(minor_faults "$A_PID") - f0 ))" -v n="$n" 'BEGIN{printf "%.3f", f/n}')
    errors=$(awk '/Non-2xx|Socket errors/' "$WORK/$kind.wrk")
    [ -z "$errors" ] || echo "$kind: $errors"
done
peer_after=$(curl -sf "http://$A_ADMIN/metrics" | awk '/^ringside_requests_total/ && /result="peer"/{s+=$2} END{print s+0}')

echo
tls_note=""; if [ "$PEER_TLS" = 1 ]; then tls_note=", peers on mutual TLS"; fi
echo "peer hop vs local hit: 2-node cluster, hot fraction 0, $PEER_PROTOCOL$tls_note, threads $THREADS, wrk -t1 -c$CONNS -d$DURATION, ${BODY_BYTES}-byte bodies, $(nproc) CPUs"
printf '%-28s %10s %10s %12s %14s %14s\n' "" "p50 (us)" "p99 (us)" "requests/s" "A CPU us/req" "B CPU us/req"
printf '%-28s %10s %10s %12s %14s %14s\n' "local hit (A owns the key)" "${P50[local]}" "${P99[local]}" "${RPS[local]}" "${CPU_A[local]}" "${CPU_B[local]}"
printf '%-28s %10s %10s %12s %14s %14s\n' "peer hop (B owns the key)" "${P50[peer]}" "${P99[peer]}" "${RPS[peer]}" "${CPU_A[peer]}" "${CPU_B[peer]}"
echo "added latency of the hop at p50: $((P50[peer] - P50[local])) us"
echo "A's minor page faults per request: local hit ${FAULTS_A[local]}, peer hop ${FAULTS_A[peer]}"
hops=$((peer_after - peer_before))
sent=$(awk '/requests in/{print $1}' "$WORK/peer.wrk")
echo "A counted $hops peer hops during the runs (result=\"peer\"), of $sent requests for B's keys"
if [ "$PEER_PROTOCOL" = channel ]; then
    # Frames per write (system call) on each end: several when they queue.
    for node in A B; do
        admin_var=${node}_ADMIN
        curl -sf "http://${!admin_var}/metrics" | awk -v node="$node" '
            /^ringside_peer_channel_frames_total/ && /direction="out"/ {f=$2}
            /^ringside_peer_channel_writes_total/ {w=$2}
            END { if (w > 0) printf "%s: %d channel frames out in %d writes (%.2f a write)\n", node, f, w, f/w }'
    done
fi
[ -z "${KEEP_LOGS:-}" ] || cp "$WORK"/a.log "$WORK"/b.log "$KEEP_LOGS"/
if [ "$hops" -lt "$sent" ]; then
    refused=$(curl -sf "http://$B_ADMIN/metrics" | awk '/^ringside_peer_nonce_refusals_total/{s+=$2} END{print s+0}')
    echo "WARNING: $((sent - hops)) requests did not hop (B refused $refused for its nonce table): shorten DURATION"
fi
