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
# BENCH=path/to/mapreduce_bench runs synod and the baseline with the release example
# crates/dataflow/examples/mapreduce_bench.rs instead (the same master, worker, shuffle and
# job code, the workers as threads of one process over loopback TCP) when the CLI is not
# built. JOBS="pagerank" runs one job only.
#
# Spark's CPU time is its JVM's (read from /proc by the script) plus Python's. Each
# output is checked: word counts equal (synod, Spark and the baseline), ranks within 1e-12.
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
JOBS=${JOBS:-wordcount pagerank}
if [ -n "${BENCH:-}" ]; then
  SYNOD=
elif [ -z "${SYNOD:-}" ]; then
  cargo build --release -p synod >/dev/null
  SYNOD=$TARGET/release/synod
fi
# The synod and baseline command lines, and where their outputs land.
if [ -n "${BENCH:-}" ]; then
  wc_synod() { echo env MR_ONLY=synod "$BENCH" wordcount "$DIR/text-$TEXT" "$DIR/wc-synod" "$1"; }
  wc_base() { echo env MR_ONLY=baseline "$BENCH" wordcount "$DIR/text-$TEXT" "$DIR/wc-basedir" 1; }
  pr_synod() { echo env MR_ONLY=synod "$BENCH" pagerank "$DIR/graph-$EDGES" "$DIR/pr-synod" "$1" "$ITERATIONS"; }
  pr_base() { echo env MR_ONLY=baseline "$BENCH" pagerank "$DIR/graph-$EDGES" "$DIR/pr-basedir" 1 "$ITERATIONS"; }
  WC_SYNOD_PARTS="$DIR/wc-synod/mr"; WC_BASE="$DIR/wc-basedir/base.txt"
  PR_SYNOD_RANKS="$DIR/pr-synod/mr/ranks"; PR_BASE="$DIR/pr-basedir/base.txt"
else
  wc_synod() { echo "$SYNOD" job run wordcount --quiet --workers "$1" --reduces 4 \
    --input "$DIR/text-$TEXT" --output "$DIR/wc-synod"; }
  wc_base() { echo "$SYNOD" job baseline wordcount --input "$DIR/text-$TEXT" --output "$DIR/wc-base.txt"; }
  pr_synod() { echo "$SYNOD" job run pagerank --quiet --workers "$1" --reduces 4 \
    --max-iterations "$ITERATIONS" --tolerance 1e-300 --input "$DIR/graph-$EDGES" --output "$DIR/pr-synod"; }
  pr_base() { echo "$SYNOD" job baseline pagerank --max-iterations "$ITERATIONS" --tolerance 1e-300 \
    --input "$DIR/graph-$EDGES" --output "$DIR/pr-base.txt"; }
  WC_SYNOD_PARTS="$DIR/wc-synod"; WC_BASE="$DIR/wc-base.txt"
  PR_SYNOD_RANKS="$DIR/pr-synod/ranks"; PR_BASE="$DIR/pr-base.txt"
fi
GEN=${SYNOD:-}

echo "# machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%dT%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -z "$GEN" ] && { [ ! -d "$DIR/text-$TEXT" ] || [ ! -d "$DIR/graph-$EDGES" ]; }; then
  echo "BENCH= needs the inputs generated first (synod job gen, or $BENCH gen-text/gen-graph)" >&2
  exit 1
fi
if [ ! -d "$DIR/text-$TEXT" ]; then
  $GEN job gen text --size "$TEXT" --files 16 --output "$DIR/text-$TEXT"
fi
if [ ! -d "$DIR/graph-$EDGES" ]; then
  $GEN job gen graph --scale "$SCALE" --edges "$EDGES" --files 8 --output "$DIR/graph-$EDGES"
fi

# measure NAME LABEL CMD...: run CMD, print wall and CPU seconds. A command that prints a
# line `jvm_cpu_seconds X` (the Spark script: its JVM is not a waited-for child, so
# /usr/bin/time does not see it) has X added to its CPU time.
measure() {
  local job=$1 label=$2; shift 2
  local t="$DIR/time.$$"
  if /usr/bin/time -f '%e %U %S' -o "$t" "$@" >"$DIR/stdout.$$" 2>"$DIR/stderr.$$"; then
    read -r wall user sys < <(tail -1 "$t")
    local jvm
    jvm=$(awk '/^jvm_cpu_seconds/ {print $2}' "$DIR/stdout.$$")
    printf '%-10s %-26s %9.2f s wall %9.2f s cpu\n' "$job" "$label" "$wall" "$(echo "$user + $sys + ${jvm:-0}" | bc)"
  else
    printf '%-10s %-26s did not finish (see %s)\n' "$job" "$label" "$DIR/stderr.$$"
  fi
}

# --- word count
if [[ " $JOBS " == *" wordcount "* ]]; then
for r in $(seq "$ROUNDS"); do
  rm -rf "$DIR/wc-synod"
  # shellcheck disable=SC2046
  measure wordcount "synod ($WORKERS workers)" $(wc_synod "$WORKERS")
  # shellcheck disable=SC2046
  measure wordcount "single thread (COST)" $(wc_base)
done
# Same answer as the baseline.
cat "$WC_SYNOD_PARTS"/part-* | sort > "$DIR/wc-synod.txt"
sort "$WC_BASE" | cmp - "$DIR/wc-synod.txt" && echo "wordcount: synod output equals the baseline's"
rm -rf "$DIR/wc-synod"
# shellcheck disable=SC2046
measure wordcount "synod (1 worker)" $(wc_synod 1)
rm -rf "$DIR/wc-synod"
if [ "$SKIP_SPARK" = 0 ]; then
  rm -rf "$DIR/wc-spark"
  measure wordcount "spark local[2]" timeout "$SPARK_TIMEOUT" \
    python3 bench/mapreduce-spark.py wordcount "$DIR/text-$TEXT" "$DIR/wc-spark" 2
  if [ -d "$DIR/wc-spark" ]; then
    python3 bench/mapreduce-spark.py check-counts "$DIR/wc-spark" "$WC_BASE" || echo "CHECK FAILED"
  fi
fi
fi

# --- PageRank, a fixed number of iterations for all three
if [[ " $JOBS " == *" pagerank "* ]]; then
for r in $(seq "$ROUNDS"); do
  rm -rf "$DIR/pr-synod"
  # shellcheck disable=SC2046
  measure pagerank "synod ($WORKERS workers)" $(pr_synod "$WORKERS")
  # shellcheck disable=SC2046
  measure pagerank "single thread (COST)" $(pr_base)
done
python3 bench/mapreduce-spark.py check-ranks "$PR_SYNOD_RANKS" "$PR_BASE" 1e-12 || echo "CHECK FAILED"
if [ "$SKIP_SPARK" = 0 ]; then
  rm -rf "$DIR/pr-spark"
  measure pagerank "spark local[2]" timeout "$SPARK_TIMEOUT" \
    python3 bench/mapreduce-spark.py pagerank "$DIR/graph-$EDGES" "$DIR/pr-spark" "$ITERATIONS" 2 1e-300
  if [ -d "$DIR/pr-spark" ]; then
    python3 bench/mapreduce-spark.py check-ranks "$DIR/pr-spark" "$PR_BASE" 1e-12 || echo "CHECK FAILED"
  fi
fi
fi
rm -f "$DIR/time.$$" "$DIR/stdout.$$"
echo "input: text $TEXT; graph 2^$SCALE vertices, $EDGES edges, $ITERATIONS iterations"
