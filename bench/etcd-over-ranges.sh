#!/bin/bash
# etcd KV over ranges vs the single MVCC Raft group, back to back.
S=${SYNOD:-target/debug/synod}
D=/tmp/rangesetcd-bench
EP=127.0.0.1:12379,127.0.0.1:12380,127.0.0.1:12381
for round in 1 2; do
  for mode in plain ranges; do
    extra=""; [ $mode = ranges ] && extra="--ranges --range-split-keys 64"
    $S up --fresh --dir $D --peer-port 17001 --client-port 12379 --admin-port 19001 $extra >/dev/null 2>&1 || { echo "up failed $mode"; continue; }
    for op in put range-l; do
      echo "== round $round $mode $op"
      $S bench etcd --endpoints $EP --op $op --clients 16 --conns 4 --duration 5s --keys 1000 --value-size 64 2>&1 | tail -6
    done
    $S txn --dir $D ranges 2>/dev/null | grep -c "r[0-9]" | sed 's/^/ranges listed: /'
    $S down --dir $D >/dev/null 2>&1
  done
done
