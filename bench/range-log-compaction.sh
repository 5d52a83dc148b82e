#!/bin/bash
# Range Raft logs with and without compaction: the same writes on a fresh 3-node
# `synod up --ranges` cluster, then n3 is SIGKILLed and restarted. Reported per mode:
# the log entries n1 keeps over all its ranges, the size of n1's range store, and the
# wall time from n3's restart until it has applied as far as n1 on every range.
# Usage: bench/range-log-compaction.sh [writes]   (SYNOD=path picks the binary)
set -u
S=${SYNOD:-target/debug/synod}
N=${1:-2000}
D=/tmp/range-log-compaction
A1=127.0.0.1:25201; A3=127.0.0.1:25203
ranges() { curl -s "http://$1/v1/txn/ranges"; }
for entries in 0 1024; do
  $S up --fresh --insecure --ranges --range-snapshot-entries $entries --dir $D \
    --peer-port 25001 --client-port 25101 --admin-port 25201 >/dev/null 2>&1 || { echo "up failed"; continue; }
  for i in $(seq 1 "$N"); do
    curl -s -o /dev/null -X PUT -d "$i" "http://$A1/v1/txn/kv/key$((i % 200))"
  done
  sleep 1
  logs=$(ranges $A1 | python3 -c 'import json,sys; print(sum(r["log_entries"] for r in json.load(sys.stdin)["ranges"]))')
  size=$(du -sk $D/n1/txn | cut -f1)
  kill -9 "$(cat $D/n3.pid)"; sleep 0.5
  start=$(date +%s%N)
  $S up --dir $D >/dev/null 2>&1
  until python3 - "$A1" "$A3" <<'PY' 2>/dev/null
import json, sys, urllib.request
get = lambda a: {r["id"]: r["applied"] for r in json.load(urllib.request.urlopen(f"http://{a}/v1/txn/ranges", timeout=2))["ranges"]}
one, three = get(sys.argv[1]), get(sys.argv[2])
sys.exit(0 if one and all(three.get(k, -1) >= v for k, v in one.items()) else 1)
PY
  do sleep 0.05; done
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  echo "snapshot_entries=$entries writes=$N: n1 keeps $logs log entries, n1/txn ${size} KiB, n3 caught up ${ms} ms after restart"
  $S down --dir $D >/dev/null 2>&1
done
