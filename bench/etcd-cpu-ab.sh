#!/usr/bin/env bash
# Interleaved A/B rounds of bench/etcd-cpu-per-write.sh with one binary: each argument is
# a variant, a space-separated list of VAR=value settings for the nodes (use X=default for
# none). Usage: ROUNDS=3 SECS=20 bench/etcd-cpu-ab.sh BIN VARIANT... e.g.
#   bench/etcd-cpu-ab.sh target/release/synod X=default SYNOD_GROUP_COMMIT_LINGER_US=150
# Ports from PORT_BASE (default 21000). Prints the load average before every run.
cd "$(dirname "$0")/.."
BIN=$1; shift; ROUNDS=${ROUNDS:-3}; SECS=${SECS:-20}; P=${PORT_BASE:-21000}
for r in $(seq "$ROUNDS"); do
    for v in "$@"; do
        # The previous cluster's ports must be free before the next one binds them.
        for _ in $(seq 100); do ss -ltn | grep -qE ":($((P+1))|$((P+101))|$((P+201))) " || break; sleep 0.2; done
        echo "[$r] $v | $(uptime | sed 's/.*load/load/')"
        # shellcheck disable=SC2086 # a variant is several words on purpose
        env $v PORT_BASE=$P bash bench/etcd-cpu-per-write.sh "$BIN" "$SECS"
    done
done
