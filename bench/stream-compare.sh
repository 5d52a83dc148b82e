#!/usr/bin/env bash
# Windowed counts: synod's stream processor against Apache Flink (PyFlink local mini-cluster)
# in the same run on the same machine. Needs Java 17 and `pip install apache-flink` (in a venv
# given as PYFLINK_PYTHON, default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-20000000}
PY=${PYFLINK_PYTHON:-python3}
cargo build --release -p synod-dataflow --example stream_bench >/dev/null
echo "== synod (release; 2 sources, 2 window tasks) =="
./target/release/examples/stream_bench "$EVENTS" 10000
echo "== Apache Flink =="
for mode in on off; do
  "$PY" bench/stream_flink.py "$EVENTS" "$mode" 2>&1 | grep '^flink' || echo "flink $mode: failed"
done
