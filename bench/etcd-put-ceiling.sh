#!/usr/bin/env bash
# What etcdctl and the gRPC front end alone can do on this machine: starts three
# `etcd_put_ceiling` servers (crates/server/examples: synod's etcd API types on tonic,
# answering every Put at once, with no Raft, MVCC or disk), runs `etcdctl check perf
# --load=LOAD` against them as bench/etcd-compare.sh does against a cluster, and prints
# check perf's verdict with the CPU per write of the servers and of etcdctl.
# Any cluster behind the same front end does at most this many writes/s here.
# Usage: bench/etcd-put-ceiling.sh [LOAD] (default l). PORT_BASE (default 23100).
# Needs: apt-get install -y etcd-client.
set -euo pipefail
cd "$(dirname "$0")/.."
LOAD=${1:-l}; P=${PORT_BASE:-23100}
command -v etcdctl >/dev/null || { echo "etcd-client is not installed: apt-get install -y etcd-client"; exit 2; }
cargo build --release -q -p synod-server --example etcd_put_ceiling
BIN=target/release/examples/etcd_put_ceiling
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
EP=""
for i in 1 2 3; do
    $BIN 127.0.0.1:$((P + i)) & PIDS+=($!)
    EP="$EP${EP:+,}127.0.0.1:$((P + i))"
done
export ETCDCTL_API=3
for _ in $(seq 50); do etcdctl --endpoints="$EP" put ready 1 >/dev/null 2>&1 && break; sleep 0.2; done
cpu() { for p in "${PIDS[@]}"; do awk '{print $14 + $15}' /proc/$p/stat; done | awk '{n += $1} END {print n}'; }
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
s0=$(cpu); m0=$(busy)
OUT=$(mktemp)
etcdctl --endpoints="$EP" check perf --load="$LOAD" >"$OUT" 2>&1 & E=$!
# etcdctl's own CPU, read just before it exits (check perf runs 60 s, then cleans up).
ec=0
while kill -0 $E 2>/dev/null; do
    ec=$(awk '{print $14 + $15}' /proc/$E/stat 2>/dev/null || echo "$ec"); sleep 0.5
done
wait $E || true
s1=$(cpu); m1=$(busy)
tr '\r' '\n' <"$OUT" | grep -E 'PASS|FAIL' || { echo "check perf printed no verdict:"; tail -5 "$OUT"; exit 1; }
rate=$(tr '\r' '\n' <"$OUT" | grep -o '[0-9]* writes/s' | head -1 | cut -d" " -f1)
w=$((rate * 60))
[ "$w" -gt 0 ] || exit 1
echo "servers us/write $(((s1 - s0) * 10000 / w))  etcdctl us/write $((ec * 10000 / w))  machine us/write $(((m1 - m0) * 10000 / w))"
rm -f "$OUT"
