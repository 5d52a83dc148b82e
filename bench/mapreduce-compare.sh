#!/usr/bin/env bash
# Word count and PageRank: synod MapReduce (2 local workers) vs Spark local[2] vs a tuned
# single-threaded Rust program (the COST baseline, McSherry et al. 2015), in one run on one
# machine. Results belong in BENCHMARKS.md with this command line.
#
#   bench/mapreduce-compare.sh                 # 1 GiB of text, R-MAT graph of 10M edges
#   TEXT=256MiB EDGES=2000000 SCALE=20 bench/mapreduce-compare.sh   # smaller
#
# Each row gives wall-clock seconds and CPU seconds (user + system, from /usr/bin/time):
# on a shared machine the CPU time is the steadier figure. synod and the baseline run
# ROUNDS times, alternately; Spark runs once, bounded by SPARK_TIMEOUT seconds.
#
# SYNOD=path/to/synod uses that binary instead of building target/release/synod.
#
# Needs: cargo, python3 with pyspark (pip install pyspark), Java 17, /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
TEXT=${TEXT:-1GiB}
EDGES=${EDGES:-10000000}
SCALE=${SCALE:-22}
ITERATIONS=${ITERATIONS:-10}
WORKERS=${WORKERS:-2}
ROUNDS=${ROUNDS:-3}
SKIP_SPARK=${SKIP_SPARK:-0}
SPARK_TIMEOUT=${SPARK_TIMEOUT:-1800}
DIR=${DIR:-/tmp/synod-mr-bench}
TARGET=${CARGO_TARGET_DIR:-target}
mkdir -p "$DIR"
if [ -z "${SYNOD:-}" ]; then
  cargo build --release -p synod >/dev/null
  SYNOD=$TARGET/release/synod
fi

echo "# machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%dT%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
if [ ! -d "$DIR/text-$TEXT" ]; then
  $SYNOD job gen text --size "$TEXT" --files 16 --output "$DIR/text-$TEXT"
fi
if [ ! -d "$DIR/graph-$EDGES" ]; then
  $SYNOD job gen graph --scale "$SCALE" --edges "$EDGES" --files 8 --output "$DIR/graph-$EDGES"
fi

# measure NAME LABEL CMD...: run CMD, print wall and CPU seconds.
measure() {
  local job=$1 label=$2; shift 2
  local t="$DIR/time.$$"
  if /usr/bin/time -f '%e %U %S' -o "$t" "$@" >/dev/null 2>"$DIR/stderr.$$"; then
    read -r wall user sys < <(tail -1 "$t")
    printf '%-10s %-26s %9.2f s wall %9.2f s cpu\n' "$job" "$label" "$wall" "$(echo "$user + $sys" | bc)"
  else
    printf '%-10s %-26s did not finish (see %s)\n' "$job" "$label" "$DIR/stderr.$$"
  fi
}

# --- word count
for r in $(seq "$ROUNDS"); do
  rm -rf "$DIR/wc-synod"
  measure wordcount "synod ($WORKERS workers)" $SYNOD job run wordcount --quiet --workers "$WORKERS" \
    --reduces 4 --input "$DIR/text-$TEXT" --output "$DIR/wc-synod"
  measure wordcount "single thread (COST)" $SYNOD job baseline wordcount \
    --input "$DIR/text-$TEXT" --output "$DIR/wc-base.txt"
done
rm -rf "$DIR/wc-synod1"
measure wordcount "synod (1 worker)" $SYNOD job run wordcount --quiet --workers 1 --reduces 4 \
  --input "$DIR/text-$TEXT" --output "$DIR/wc-synod1"
rm -rf "$DIR/wc-synod1"
# Same answer as the baseline.
cat "$DIR"/wc-synod/part-* | sort > "$DIR/wc-synod.txt"
sort "$DIR/wc-base.txt" | cmp - "$DIR/wc-synod.txt" && echo "wordcount: synod output equals the baseline's"
if [ "$SKIP_SPARK" = 0 ]; then
  rm -rf "$DIR/wc-spark"
  measure wordcount "spark local[2]" timeout "$SPARK_TIMEOUT" \
    python3 bench/mapreduce-spark.py wordcount "$DIR/text-$TEXT" "$DIR/wc-spark" 2
fi

# --- PageRank, a fixed number of iterations for all three
for r in $(seq "$ROUNDS"); do
  rm -rf "$DIR/pr-synod"
  measure pagerank "synod ($WORKERS workers)" $SYNOD job run pagerank --quiet --workers "$WORKERS" \
    --reduces 4 --max-iterations "$ITERATIONS" --tolerance 1e-300 \
    --input "$DIR/graph-$EDGES" --output "$DIR/pr-synod"
  measure pagerank "single thread (COST)" $SYNOD job baseline pagerank \
    --max-iterations "$ITERATIONS" --tolerance 1e-300 \
    --input "$DIR/graph-$EDGES" --output "$DIR/pr-base.txt"
done
if [ "$SKIP_SPARK" = 0 ]; then
  rm -rf "$DIR/pr-spark"
  measure pagerank "spark local[2]" timeout "$SPARK_TIMEOUT" \
    python3 bench/mapreduce-spark.py pagerank "$DIR/graph-$EDGES" "$DIR/pr-spark" "$ITERATIONS" 2
fi
rm -f "$DIR/time.$$"
echo "input: text $TEXT; graph 2^$SCALE vertices, $EDGES edges, $ITERATIONS iterations"
