#!/usr/bin/env bash
# etcdctl check perf against a 3-node synod cluster and a 3-node etcd 3.4 cluster (Debian's
# etcd-server), on this machine, in the same run; then, for the load "reads", `synod bench
# etcd` (a closed-loop gRPC load generator) measures linearizable reads, serializable reads
# and puts against both; the load "puts500" has it put as check perf does (500 clients,
# each on its own connection, 1 KiB values, new keys) with no rate limit, for 30 s.
# Usage: bench/etcd-compare.sh [LOADS] [RUNS] (default "s m l reads", 1 run; quote
# medians of 3 or more). READ_CLIENTS, READ_SECS tune the read benchmark;
# SYNOD=path/to/synod skips the release build.
# For check perf loads it also runs the same check against three `etcd_put_ceiling`
# servers (bench/etcd-put-ceiling.sh: tonic answering every Put at once, no Raft, MVCC
# or disk): the most any server behind this front end can show on this machine.
# CEILING=0 skips that.
# Needs: apt-get install -y etcd-server etcd-client.
set -euo pipefail
cd "$(dirname "$0")/.."
LOADS=${1:-"s m l reads"}
RUNS=${2:-1}
READ_CLIENTS=${READ_CLIENTS:-200}
READ_SECS=${READ_SECS:-10}
command -v etcd >/dev/null || { echo "etcd-server is not installed: apt-get install -y etcd-server"; exit 2; }
command -v etcdctl >/dev/null || { echo "etcd-client is not installed: apt-get install -y etcd-client"; exit 2; }
if [ -z "${SYNOD:-}" ]; then
    cargo build --release -q -p synod
    SYNOD=./target/release/synod
fi
CEILING=${CEILING:-1}
if [ "$CEILING" != 0 ]; then
    cargo build --release -q -p synod-server --example etcd_put_ceiling
fi
WORK=$(mktemp -d /tmp/etcd-compare.XXXX)
export ETCDCTL_API=3

# Wait until the system named $1 answers a put at endpoints $2.
await_ready() {
    for _ in $(seq 50); do etcdctl --endpoints="$2" put ready 1 >/dev/null 2>&1 && return; sleep 0.2; done
    echo "$1 did not start"; exit 1
}
# Kill the processes listed in pid file $1, if any.
kill_listed() {
    [ -f "$1" ] || return 0
    xargs -r kill <"$1" 2>/dev/null || true
    rm -f "$1"
}

start_etcd() {
    local cluster="e1=http://127.0.0.1:22380,e2=http://127.0.0.1:22381,e3=http://127.0.0.1:22382"
    for i in 1 2 3; do
        local peer=$((22379 + i)) client=$((22278 + i))
        etcd --name "e$i" --data-dir "$WORK/etcd$i" \
            --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
            --initial-cluster "$cluster" --initial-cluster-state new >"$WORK/etcd$i.log" 2>&1 &
        echo $! >>"$WORK/etcd.pids"
    done
    ETCD_EP=127.0.0.1:22279,127.0.0.1:22280,127.0.0.1:22281
    await_ready etcd $ETCD_EP
}
stop_etcd() {
    [ -f "$WORK/etcd.pids" ] || return 0
    kill_listed "$WORK/etcd.pids"
    for _ in $(seq 100); do ss -ltn | grep -qE ':2(2279|2280|2281|2380|2381|2382) ' || return 0; sleep 0.2; done
}

# Ports below the ephemeral range (32768+), so that a leftover outgoing connection
# from an earlier run cannot hold one of them.
start_synod() {
    $SYNOD up --nodes 3 --dir "$WORK/synod" --peer-port 21001 --client-port 21101 --admin-port 21201 >/dev/null
    SYNOD_EP=127.0.0.1:21101,127.0.0.1:21102,127.0.0.1:21103
    await_ready synod $SYNOD_EP
}
stop_synod() {
    $SYNOD down --dir "$WORK/synod" >/dev/null 2>&1 || true
    # The next cluster binds the same ports: wait until this one's are free.
    for _ in $(seq 300); do ss -ltn | grep -qE ':21(00[1-3]|10[1-3]|20[1-3]) ' || return 0; sleep 0.2; done
}
CEILING_EP=127.0.0.1:23101,127.0.0.1:23102,127.0.0.1:23103
start_ceiling() {
    for i in 1 2 3; do
        target/release/examples/etcd_put_ceiling 127.0.0.1:$((23100 + i)) >/dev/null 2>&1 &
        echo $! >>"$WORK/ceiling.pids"
    done
    await_ready "the ceiling servers" $CEILING_EP
}
stop_ceiling() { kill_listed "$WORK/ceiling.pids"; }
trap 'stop_etcd; stop_synod; stop_ceiling' EXIT

reads() {
    local ep=$1
    for op in range-l range-s put; do
        $SYNOD --log error bench etcd --endpoints "$ep" --op $op --clients "$READ_CLIENTS" \
            --conns 12 --duration "${READ_SECS}s" --keys 1000 --value-size 256 2>&1 | grep ops/s || true
    done
}

# check perf's shape without its rate limiter: 500 clients on 500 connections, 1 KiB
# values, nearly every put a new key, as fast as each system answers.
puts500() {
    $SYNOD --log error bench etcd --endpoints "$1" --op put --clients 500 --conns 500 \
        --duration 30s --keys 1000000 --value-size 1024 2>&1 | grep ops/s || true
}

check_perf() {
    local ep=$1 load=$2
    etcdctl --endpoints="$ep" check perf --load="$load" 2>&1 | tr '\r' '\n' | grep -E 'PASS|FAIL|too' || true
}

echo "3 nodes each, $(nproc) cores, $(date -u +%F)"
for run in $(seq "$RUNS"); do
    for load in $LOADS; do
        start_synod
        echo "== run $run synod --load=$load"
        case $load in
            reads) reads "$SYNOD_EP" ;;
            puts500) puts500 "$SYNOD_EP" ;;
            *) check_perf "$SYNOD_EP" "$load" ;;
        esac
        stop_synod; rm -rf "$WORK/synod"
        start_etcd
        echo "== run $run etcd $(etcd --version | head -1 | awk '{print $3}') --load=$load"
        case $load in
            reads) reads "$ETCD_EP" ;;
            puts500) puts500 "$ETCD_EP" ;;
            *) check_perf "$ETCD_EP" "$load" ;;
        esac
        stop_etcd; rm -rf "$WORK"/etcd?
        if [ "$load" != reads ] && [ "$load" != puts500 ] && [ "$CEILING" != 0 ]; then
            start_ceiling
            echo "== run $run no-op ceiling (etcd_put_ceiling) --load=$load"
            check_perf "$CEILING_EP" "$load"
            stop_ceiling
        fi
    done
done
