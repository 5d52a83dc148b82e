#!/usr/bin/env bash
# Word count and PageRank: synod MapReduce (2 local workers) vs Spark local[2] vs a tuned
# single-threaded Rust program (the COST baseline, McSherry et al. 2015), in one run on one
# machine. Results belong in BENCHMARKS.md with this command line.
#
#   bench/mapreduce-compare.sh                 # 1 GiB of text, R-MAT graph of 10M edges
#   TEXT=256MiB EDGES=2000000 SCALE=20 bench/mapreduce-compare.sh   # smaller
#
# Needs: cargo, python3 with pyspark (pip install pyspark), Java 17.
set -euo pipefail
cd "$(dirname "$0")/.."
TEXT=${TEXT:-1GiB}
EDGES=${EDGES:-10000000}
SCALE=${SCALE:-22}
ITERATIONS=${ITERATIONS:-10}
WORKERS=${WORKERS:-2}
SKIP_SPARK=${SKIP_SPARK:-0}
DIR=${DIR:-/tmp/synod-mr-bench}
mkdir -p "$DIR"
cargo build --release -p synod >/dev/null
SYNOD=target/release/synod
now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc; }

echo "# machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%d)"
if [ ! -d "$DIR/text-$TEXT" ]; then
  $SYNOD job gen text --size "$TEXT" --files 16 --output "$DIR/text-$TEXT"
fi
if [ ! -d "$DIR/graph-$EDGES" ]; then
  $SYNOD job gen graph --scale "$SCALE" --edges "$EDGES" --files 8 --output "$DIR/graph-$EDGES"
fi

row() { printf '%-10s %-26s %8.2f s\n' "$1" "$2" "$3"; }

# --- word count
rm -rf "$DIR/wc-synod" "$DIR/wc-spark"
t=$(now); $SYNOD job run wordcount --quiet --workers "$WORKERS" --reduces 4 \
  --input "$DIR/text-$TEXT" --output "$DIR/wc-synod" >/dev/null; wc_synod=$(elapsed "$t")
t=$(now); $SYNOD job baseline wordcount --input "$DIR/text-$TEXT" --output "$DIR/wc-base.txt" >/dev/null
wc_base=$(elapsed "$t")
t=$(now); $SYNOD job run wordcount --quiet --workers 1 --reduces 4 \
  --input "$DIR/text-$TEXT" --output "$DIR/wc-synod1" >/dev/null; wc_synod1=$(elapsed "$t")
rm -rf "$DIR/wc-synod1"
# Same answer as the baseline.
cat "$DIR"/wc-synod/part-* | sort > "$DIR/wc-synod.txt"
sort "$DIR/wc-base.txt" | cmp - "$DIR/wc-synod.txt" && echo "wordcount: synod output equals the baseline's"
row wordcount "synod ($WORKERS workers)" "$wc_synod"
row wordcount "synod (1 worker)" "$wc_synod1"
row wordcount "single thread (COST)" "$wc_base"
if [ "$SKIP_SPARK" = 0 ]; then
  t=$(now); python3 bench/mapreduce-spark.py wordcount "$DIR/text-$TEXT" "$DIR/wc-spark" 2 >/dev/null 2>&1
  row wordcount "spark local[2]" "$(elapsed "$t")"
fi

# --- PageRank, a fixed number of iterations for all three
rm -rf "$DIR/pr-synod" "$DIR/pr-spark"
t=$(now); $SYNOD job run pagerank --quiet --workers "$WORKERS" --reduces 4 \
  --max-iterations "$ITERATIONS" --tolerance 1e-300 \
  --input "$DIR/graph-$EDGES" --output "$DIR/pr-synod" >/dev/null; pr_synod=$(elapsed "$t")
t=$(now); $SYNOD job baseline pagerank --max-iterations "$ITERATIONS" --tolerance 1e-300 \
  --input "$DIR/graph-$EDGES" --output "$DIR/pr-base.txt" >/dev/null; pr_base=$(elapsed "$t")
row pagerank "synod ($WORKERS workers)" "$pr_synod"
row pagerank "single thread (COST)" "$pr_base"
if [ "$SKIP_SPARK" = 0 ]; then
  t=$(now); python3 bench/mapreduce-spark.py pagerank "$DIR/graph-$EDGES" "$DIR/pr-spark" "$ITERATIONS" 2 >/dev/null 2>&1
  row pagerank "spark local[2]" "$(elapsed "$t")"
fi
echo "input: text $TEXT; graph 2^$SCALE vertices, $EDGES edges, $ITERATIONS iterations"
