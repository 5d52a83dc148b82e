#!/usr/bin/env bash
# etcdctl check perf against a 3-node synod cluster and a 3-node etcd 3.4 cluster (Debian's
# etcd-server), on this machine, in the same run. Usage: bench/etcd-compare.sh [LOADS]
# (default "s m l"). Needs: apt-get install -y etcd-server etcd-client.
set -euo pipefail
cd "$(dirname "$0")/.."
LOADS=${1:-"s m l"}
command -v etcd >/dev/null || { echo "etcd-server is not installed: apt-get install -y etcd-server"; exit 2; }
command -v etcdctl >/dev/null || { echo "etcd-client is not installed: apt-get install -y etcd-client"; exit 2; }
cargo build --release -q -p synod
SYNOD=./target/release/synod
WORK=$(mktemp -d /tmp/etcd-compare.XXXX)
export ETCDCTL_API=3

start_etcd() {
    local cluster="e1=http://127.0.0.1:32380,e2=http://127.0.0.1:32381,e3=http://127.0.0.1:32382"
    for i in 1 2 3; do
        local peer=$((32379 + i)) client=$((32278 + i))
        etcd --name "e$i" --data-dir "$WORK/etcd$i" \
            --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
            --initial-cluster "$cluster" --initial-cluster-state new >"$WORK/etcd$i.log" 2>&1 &
        echo $! >>"$WORK/etcd.pids"
    done
    ETCD_EP=127.0.0.1:32279,127.0.0.1:32280,127.0.0.1:32281
    for _ in $(seq 50); do etcdctl --endpoints=$ETCD_EP put ready 1 >/dev/null 2>&1 && return; sleep 0.2; done
    echo "etcd did not start"; exit 1
}
stop_etcd() { xargs -r kill <"$WORK/etcd.pids" 2>/dev/null || true; rm -f "$WORK/etcd.pids"; }

start_synod() {
    $SYNOD up --nodes 3 --dir "$WORK/synod" --peer-port 33001 --client-port 33101 --admin-port 33201 >/dev/null
    SYNOD_EP=127.0.0.1:33101,127.0.0.1:33102,127.0.0.1:33103
    for _ in $(seq 50); do etcdctl --endpoints=$SYNOD_EP put ready 1 >/dev/null 2>&1 && return; sleep 0.2; done
    echo "synod did not start"; exit 1
}
stop_synod() { $SYNOD down --dir "$WORK/synod" >/dev/null 2>&1 || true; }
trap 'stop_etcd; stop_synod' EXIT

echo "etcdctl check perf, 3 nodes each, $(nproc) cores, $(date -u +%F)"
for load in $LOADS; do
    start_synod
    echo "== synod --load=$load"
    etcdctl --endpoints=$SYNOD_EP check perf --load="$load" 2>&1 | tr '\r' '\n' | grep -E 'PASS|FAIL|too' || true
    stop_synod; rm -rf "$WORK/synod"
    start_etcd
    echo "== etcd $(etcd --version | head -1 | awk '{print $3}') --load=$load"
    etcdctl --endpoints=$ETCD_EP check perf --load="$load" 2>&1 | tr '\r' '\n' | grep -E 'PASS|FAIL|too' || true
    stop_etcd; rm -rf "$WORK"/etcd?
done
