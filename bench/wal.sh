#!/usr/bin/env bash
# Group commit against the disk's own synchronous-write rate, in one run on one machine.
#   bench/wal.sh [seconds-per-point]
# The peer is `dd oflag=dsync`: one 4 KiB write plus one sync per write, which is what an
# append costs without batching. synod's group commit shares one fdatasync per batch.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
dir=$(mktemp -d "${TMPDIR:-/tmp}/synod-wal-bench.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cargo build --release -q -p synod
echo "== peer: dd if=/dev/zero bs=4k count=2000 oflag=dsync (on $(df -P "$dir" | awk 'NR==2{print $1}'))"
for run in 1 2 3; do
  out=$(dd if=/dev/zero of="$dir/dd.bin" bs=4k count=2000 oflag=dsync 2>&1 | tail -1)
  secs_taken=$(echo "$out" | sed -E 's/.* copied, ([0-9.]+) s.*/\1/')
  awk -v s="$secs_taken" -v r="$run" 'BEGIN { printf "dd run %d: %.0f synchronous 4 KiB writes/s\n", r, 2000 / s }'
done
echo "== synod bench wal"
./target/release/synod --log error bench wal --duration "${secs}s" --dir "$dir/synod"
