#!/usr/bin/env bash
# Node CPU per write under `etcdctl check perf --load=l`: starts a 3-node synod cluster,
# runs check perf for SECS seconds, and divides the nodes' CPU time (from /proc) by the
# writes the first node's WAL counted. Usage: bench/etcd-cpu-per-write.sh [SYNOD] [SECS].
# Less sensitive to other load on the machine than writes/s. PORT_BASE (default 34000)
# moves the ports: peers BASE+1.., clients BASE+101.., admin BASE+201...
S=${1:-target/release/synod}; SECS=${2:-20}; P=${PORT_BASE:-34000}
D=$(mktemp -d /tmp/synod-cpuprobe.XXXX)
$S up --nodes 3 --dir $D/c --peer-port $((P+1)) --client-port $((P+101)) --admin-port $((P+201)) >/dev/null
for _ in $(seq 50); do ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:$((P+101)) put ready 1 >/dev/null 2>&1 && break; sleep 0.2; done
cpu() { for p in $(pgrep -f "node --config $D"); do awk '{printf "%d %d ", $14, $15}' /proc/$p/stat; done; }
b=($(cpu)); rec0=$(curl -s localhost:$((P+201))/metrics | awk '/^synod_wal_records_total/{print $2}')
timeout $SECS etcdctl --endpoints=127.0.0.1:$((P+101)),127.0.0.1:$((P+102)),127.0.0.1:$((P+103)) check perf --load=l >/dev/null 2>&1
a=($(cpu)); rec1=$(curl -s localhost:$((P+201))/metrics | awk '/^synod_wal_records_total/{print $2}')
w=$((rec1-rec0)); tot=0; sys=0; per=""
for i in 0 1 2; do u=$(( ${a[2*i]} - ${b[2*i]} )); k=$(( ${a[2*i+1]} - ${b[2*i+1]} )); d=$((u+k))
    tot=$((tot+d)); sys=$((sys+k)); per="$per $((d*10000/w))"; done
echo "writes/s $((w/SECS))  node us/write total $((tot*10000/w)) (system $((sys*100/tot))%)  per node:$per"
$S down --dir $D/c >/dev/null 2>&1; rm -rf $D
