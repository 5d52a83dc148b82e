#!/usr/bin/env bash
# Node CPU per write under `etcdctl check perf --load=l`: starts a 3-node synod cluster,
# runs check perf for SECS seconds, and divides the nodes' CPU time (from /proc) by the
# writes the first node's WAL counted. Usage: bench/etcd-cpu-per-write.sh [SYNOD] [SECS].
# Less sensitive to other load on the machine than writes/s.
S=${1:-target/release/synod}; SECS=${2:-20}
D=$(mktemp -d /tmp/synod-cpuprobe.XXXX)
$S up --nodes 3 --dir $D/c --peer-port 34001 --client-port 34101 --admin-port 34201 >/dev/null
for _ in $(seq 50); do ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:34101 put ready 1 >/dev/null 2>&1 && break; sleep 0.2; done
cpu() { for p in $(pgrep -f "node --config $D"); do awk '{printf "%d ", $14+$15}' /proc/$p/stat; done; }
b=($(cpu)); rec0=$(curl -s localhost:34201/metrics | awk '/^synod_wal_records_total/{print $2}')
timeout $SECS etcdctl --endpoints=127.0.0.1:34101,127.0.0.1:34102,127.0.0.1:34103 check perf --load=l >/dev/null 2>&1
a=($(cpu)); rec1=$(curl -s localhost:34201/metrics | awk '/^synod_wal_records_total/{print $2}')
w=$((rec1-rec0)); tot=0; per=""
for i in 0 1 2; do d=$(( ${a[$i]} - ${b[$i]} )); tot=$((tot+d)); per="$per $((d*10000/w))"; done
echo "writes/s $((w/SECS))  node us/write total $((tot*10000/w))  per node:$per"
$S down --dir $D/c >/dev/null 2>&1; rm -rf $D
