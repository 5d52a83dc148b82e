#!/usr/bin/env bash
# Node CPU per write under `etcdctl check perf --load=l`: starts a 3-node synod cluster,
# runs check perf for SECS seconds, and divides the nodes' CPU time (from /proc) by the
# writes the first node's WAL counted. Usage: bench/etcd-cpu-per-write.sh [SYNOD] [SECS].
# Less sensitive to other load on the machine than writes/s. PORT_BASE (default 34000)
# moves the ports: peers BASE+1.., clients BASE+101.., admin BASE+201...
# Also per write: the Raft fdatasyncs of all three nodes; the nodes' context switches
# (voluntary + involuntary, summed over every thread from /proc/PID/task/*/status); the
# CPU of etcdctl itself; and the whole machine's busy CPU (from /proc/stat, which also
# counts kernel threads such as jbd2 and kworkers, interrupts, and anything else running).
# SYNOD_* environment variables pass through to the nodes (A/B runs of one binary).
S=${1:-target/release/synod}; SECS=${2:-20}; P=${PORT_BASE:-34000}
D=$(mktemp -d /tmp/synod-cpuprobe.XXXX)
$S up --nodes 3 --dir $D/c --peer-port $((P+1)) --client-port $((P+101)) --admin-port $((P+201)) >/dev/null
for _ in $(seq 50); do ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:$((P+101)) put ready 1 >/dev/null 2>&1 && break; sleep 0.2; done
pids() { pgrep -f "node --config $D"; }
cpu() { for p in $(pids); do awk '{printf "%d %d ", $14, $15}' /proc/$p/stat; done; }
switches() { for p in $(pids); do cat /proc/$p/task/*/status 2>/dev/null; done | awk '/ctxt_switches/{n+=$2} END {print n+0}'; }
syncs() { for a in 1 2 3; do curl -s localhost:$((P+200+a))/metrics; done | awk '/^synod_actor_syncs_total\{.*raft/{n+=$2} END {print n+0}'; }
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
wal() { curl -s localhost:$((P+201))/metrics | awk '/^synod_wal_records_total/{print $2}'; }
b=($(cpu)); rec0=$(wal); cs0=$(switches); sy0=$(syncs); m0=$(busy)
ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:$((P+101)),127.0.0.1:$((P+102)),127.0.0.1:$((P+103)) check perf --load=l >/dev/null 2>&1 & E=$!
sleep $SECS
ec=$(awk '{print $14+$15}' /proc/$E/stat 2>/dev/null); kill $E 2>/dev/null; wait $E 2>/dev/null
a=($(cpu)); rec1=$(wal); cs1=$(switches); sy1=$(syncs); m1=$(busy)
w=$((rec1-rec0)); tot=0; sys=0; per=""
for i in 0 1 2; do u=$(( ${a[2*i]} - ${b[2*i]} )); k=$(( ${a[2*i+1]} - ${b[2*i+1]} )); d=$((u+k))
    tot=$((tot+d)); sys=$((sys+k)); per="$per $((d*10000/w))"; done
echo "writes/s $((w/SECS))  node us/write total $((tot*10000/w)) (system $((sys*100/tot))%)  per node:$per" \
    " fsyncs/write $(awk -v s=$((sy1-sy0)) -v w=$w 'BEGIN{printf "%.2f", s/w}')" \
    " switches/write $(awk -v s=$((cs1-cs0)) -v w=$w 'BEGIN{printf "%.1f", s/w}')" \
    " etcdctl us/write $((${ec:-0}*10000/w))  machine us/write $(((m1-m0)*10000/w))"
$S down --dir $D/c >/dev/null 2>&1; rm -rf $D
