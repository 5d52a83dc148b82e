#!/usr/bin/env bash
# One whole `etcdctl check perf --load=l` against a 3-node synod cluster, with the writes
# committed per second (from the first node's WAL counter), `vmstat 1` and the nodes' CPU
# time (user and system, from /proc) beside it: shows stalls that a mean hides, and whether
# the run is CPU-bound (idle near 0) or waits on something else.
# Usage: bench/etcd-write-timeline.sh [SYNOD] [OUT_DIR]. Ports 22001-22203.
# Environment variables (SYNOD_*) pass through to the nodes. PERF=1 also records the
# nodes with `perf record -e cpu-clock -g` into OUT/perf.data.
S=${1:-target/release/synod}; OUT=${2:-$(mktemp -d /tmp/synod-timeline.XXXX)}
mkdir -p "$OUT"; D=$(mktemp -d /tmp/synod-tl.XXXX)
export ETCDCTL_API=3
$S up --nodes 3 --dir $D/c --peer-port 22001 --client-port 22101 --admin-port 22201 >/dev/null
for _ in $(seq 50); do etcdctl --endpoints=127.0.0.1:22101 put ready 1 >/dev/null 2>&1 && break; sleep 0.2; done
cpu() { for p in $(pgrep -f "node --config $D"); do awk '{printf "%d+%d ", $14, $15}' /proc/$p/stat; done; }
wal() { curl -s localhost:22201/metrics | awk '/^synod_wal_records_total/{print $2}'; }
echo "load: $(uptime)" >"$OUT/summary"
echo "cpu before (utime+stime ticks per node): $(cpu)" >>"$OUT/summary"
vmstat 1 >"$OUT/vmstat" & VM=$!
if [ -n "$PERF" ]; then
    perf record -q -e cpu-clock -F 499 -g -o "$OUT/perf.data" -p "$(pgrep -d, -f "node --config $D")" 2>/dev/null & PR=$!
fi
( prev=$(wal); while sleep 1; do now=$(wal); echo "$(date +%T) $((now-prev))"; prev=$now; done ) >"$OUT/per-second" & TL=$!
timeout 100 etcdctl --endpoints=127.0.0.1:22101,127.0.0.1:22102,127.0.0.1:22103 check perf --load=l >"$OUT/checkperf" 2>&1
kill $VM $TL 2>/dev/null
[ -n "$PERF" ] && kill -INT $PR && wait $PR
echo "cpu after: $(cpu)" >>"$OUT/summary"
echo "load after: $(uptime)" >>"$OUT/summary"
for a in 22201 22202 22203; do  # batches vs syncs: how many batches wrote nothing
    curl -s localhost:$a/metrics | grep -E '^synod_actor_(batches|syncs)_total\{.*raft|^synod_fsync_seconds_(sum|count)' | tr '\n' ' ' >>"$OUT/summary"; echo >>"$OUT/summary"
done
$S down --dir $D/c >/dev/null 2>&1; rm -rf $D
tr "\r" "\n" <"$OUT/checkperf" | grep -v "^ *[0-9]* / 60" | tail -n 6; cat "$OUT/summary"
echo "writes per second, sorted (min, 10th pct, median):"
awk '{print $2}' "$OUT/per-second" | sort -n | awk '{a[NR]=$1} END {print a[1], a[int(NR/10)+1], a[int(NR/2)+1]}'
echo "output in $OUT"
