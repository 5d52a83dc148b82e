#!/usr/bin/env bash
# Node-to-node transport over loopback: mutual TLS 1.3 against plaintext, in one run.
#   bench/transport.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p synod
./target/release/synod --log error bench transport --runs "${1:-5}"
