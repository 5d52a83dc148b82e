#!/usr/bin/env bash
# Windowed counts: synod's stream processor, the hand-written single-threaded baseline and
# Apache Flink (PyFlink local mini-cluster) back to back in the same run, ROUNDS times.
# Needs Java 17 and `pip install apache-flink` (in a venv given as PYFLINK_PYTHON,
# default: python3). synod and the baseline process EVENTS records; Flink runs for
# FLINK_SECONDS of record flow and reports its steady-state rate from its own counters.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-50000000}
ROUNDS=${ROUNDS:-3}
FLINK_SECONDS=${FLINK_SECONDS:-60}
PY=${PYFLINK_PYTHON:-python3}
cargo build --release -p synod-dataflow --example stream_steady >/dev/null
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round =="
  ./target/release/examples/stream_steady on "$EVENTS"
  ./target/release/examples/stream_steady off "$EVENTS"
  ./target/release/examples/stream_steady baseline "$EVENTS"
  for mode in ${FLINK_MODES:-on off}; do
    "$PY" bench/stream_flink.py --seconds "$FLINK_SECONDS" "$mode" 2>&1 | grep '^flink' || echo "flink $mode: failed"
  done
done
