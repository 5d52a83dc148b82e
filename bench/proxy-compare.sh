#!/usr/bin/env bash
# The synod mesh proxy against nginx and HAProxy, round-robin over the same three
# `synod mesh backend` upstreams on this machine, with the same load generator (wrk), in
# one run. Each round runs every proxy once, in turn; the table reports medians over the
# rounds and ratios to nginx.
#
#   bench/proxy-compare.sh [rounds] [seconds] [connections]
#
# Then, with oha, latency at fixed offered loads (RATES, default "5000 10000 20000").
#
# SYNOD_WORKERS is a space-separated list of the proxy's `workers` settings to run, each
# as its own contender (default "2"): N > 0 is N per-thread event loops fed by one
# acceptor (nginx's model), 0 is one multi-threaded tokio runtime with two threads. These
# serve HTTP/1.1 with the proxy's lean codec (`lean_http1`, the default). SYNOD_HYPER=1
# (the default; 0 leaves it out) adds "synod-hyper", the same binary with two workers and
# `lean_http1 = false`, i.e. hyper's server and client connections, for a before/after
# comparison in one run.
#
# Besides wrk's throughput and latency, each run reports the proxy's CPU time per request
# (user + system, from /proc, summed over the process and its children), which depends far
# less on what else the machine is doing than req/s does.
#
# Needs nginx, haproxy and wrk (Debian: apt-get install -y nginx haproxy wrk). A proxy
# whose binary is missing is skipped. Every proxy gets two worker threads; keep-alive is on
# both to the client and to the upstreams.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
SECONDS_PER_RUN="${2:-5}"
CONNECTIONS="${3:-50}"
BASE="${BASE_PORT:-19100}"
THREADS=2

command -v wrk >/dev/null || { echo "wrk not found (apt-get install -y wrk)" >&2; exit 1; }
# SYNOD=path (or SYNOD_BIN=path) skips the build and benchmarks that binary instead.
if [ -n "${SYNOD_BIN:-${SYNOD:-}}" ]; then
  SYNOD="${SYNOD_BIN:-$SYNOD}"
else
  cargo build --release -q -p synod
  SYNOD=./target/release/synod
fi
WORK="$(mktemp -d /tmp/synod-proxy-compare.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

UPSTREAMS=()
for i in 1 2 3; do
  port=$((BASE + i))
  "$SYNOD" --log error mesh backend --listen "127.0.0.1:$port" --id "b$i" >/dev/null &
  PIDS+=($!)
  UPSTREAMS+=("127.0.0.1:$port")
done

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# --- synod mesh proxy ---------------------------------------------------------------
PROXIES=()
offset=10
synod_config() { # workers port lean
  echo "workers = $1"
  echo "[[service]]"
  echo "name = \"bench\""
  echo "listen = \"127.0.0.1:$2\""
  echo "lb = \"round-robin\""
  echo "lean_http1 = $3"
  printf 'instances = ['
  sep=""
  for u in "${UPSTREAMS[@]}"; do printf '%s{ address = "%s" }' "$sep" "$u"; sep=", "; done
  echo "]"
}
SYNOD_WORKERS="${SYNOD_WORKERS:-2}"
for workers in $SYNOD_WORKERS; do
  port=$((BASE + offset))
  offset=$((offset + 3))
  synod_config "$workers" "$port" true > "$WORK/synod-$workers.toml"
  TOKIO_WORKER_THREADS=$THREADS "$SYNOD" --log error mesh proxy --config "$WORK/synod-$workers.toml" >/dev/null &
  PIDS+=($!)
  if [ "$workers" = 0 ]; then name=synod-rt; else name="synod-w$workers"; fi
  PROXIES+=("$name:$port:$!")
done
if [ "${SYNOD_HYPER:-1}" = 1 ]; then
  port=$((BASE + 22))
  synod_config 2 "$port" false > "$WORK/synod-hyper.toml"
  TOKIO_WORKER_THREADS=$THREADS "$SYNOD" --log error mesh proxy --config "$WORK/synod-hyper.toml" >/dev/null &
  PIDS+=($!)
  PROXIES+=("synod-hyper:$port:$!")
fi

# SYNOD_BASE_BIN=path adds that binary (an older build, say) with `workers = 2` as one
# more contender, "base-w2", for a before/after comparison in the same run.
if [ -n "${SYNOD_BASE_BIN:-}" ]; then
  port=$((BASE + 20))
  sed "s/127.0.0.1:$((BASE + 10))\"/127.0.0.1:$port\"/; s/^workers = .*/workers = 2/" \
    "$WORK/synod-$(echo $SYNOD_WORKERS | awk '{ print $1 }').toml" | grep -v '^lean_http1' > "$WORK/base.toml"
  TOKIO_WORKER_THREADS=$THREADS "$SYNOD_BASE_BIN" --log error mesh proxy --config "$WORK/base.toml" >/dev/null &
  PIDS+=($!)
  PROXIES+=("base-w2:$port:$!")
fi

# --- nginx --------------------------------------------------------------------------
if command -v nginx >/dev/null; then
  NGINX_PORT=$((BASE + 11))
  mkdir -p "$WORK/nginx"
  {
    [ "$(id -u)" = 0 ] && echo "user root;"
    echo "worker_processes $THREADS;"
    echo "pid $WORK/nginx/nginx.pid;"
    echo "error_log $WORK/nginx/error.log error;"
    echo "events { worker_connections 4096; }"
    echo "http {"
    echo "  access_log off;"
    echo "  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;"
    echo "  fastcgi_temp_path $WORK/nginx; uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;"
    echo "  upstream backends {"
    for u in "${UPSTREAMS[@]}"; do echo "    server $u;"; done
    echo "    keepalive 128;"
    echo "  }"
    echo "  server {"
    echo "    listen 127.0.0.1:$NGINX_PORT;"
    echo "    location / {"
    echo "      proxy_pass http://backends;"
    echo "      proxy_http_version 1.1;"
    echo "      proxy_set_header Connection \"\";"
    echo "    }"
    echo "  }"
    echo "}"
  } > "$WORK/nginx.conf"
  nginx -p "$WORK/nginx" -c "$WORK/nginx.conf" -g 'daemon off;' &
  PIDS+=($!)
  PROXIES+=("nginx:$NGINX_PORT:$!")
else
  echo "nginx not found: skipped" >&2
fi

# --- HAProxy ------------------------------------------------------------------------
if command -v haproxy >/dev/null; then
  HAPROXY_PORT=$((BASE + 12))
  {
    echo "global"
    echo "  nbthread $THREADS"
    echo "  maxconn 4096"
    echo "defaults"
    echo "  mode http"
    echo "  timeout connect 5s"
    echo "  timeout client 30s"
    echo "  timeout server 30s"
    echo "  option http-keep-alive"
    echo "  http-reuse always"
    echo "frontend bench"
    echo "  bind 127.0.0.1:$HAPROXY_PORT"
    echo "  default_backend backends"
    echo "backend backends"
    echo "  balance roundrobin"
    n=1
    for u in "${UPSTREAMS[@]}"; do echo "  server b$n $u"; n=$((n + 1)); done
  } > "$WORK/haproxy.cfg"
  haproxy -f "$WORK/haproxy.cfg" -db &
  PIDS+=($!)
  PROXIES+=("haproxy:$HAPROXY_PORT:$!")
else
  echo "haproxy not found: skipped" >&2
fi

for u in "${UPSTREAMS[@]}"; do wait_port "${u##*:}"; done
for p in "${PROXIES[@]}"; do port="${p#*:}"; wait_port "${port%%:*}"; done

# CPU time (clock ticks) of a process and its children (nginx's workers).
TICK="$(getconf CLK_TCK)"
cpu_ticks() {
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    if [ -r "/proc/$pid/stat" ]; then
      total=$((total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")))
    fi
  done
  echo "$total"
}

# wrk's latency in milliseconds from "99%  1.23ms".
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
    printf "%.3f", n }'
}

echo "rounds=$ROUNDS seconds=$SECONDS_PER_RUN connections=$CONNECTIONS wrk_threads=$THREADS cores=$(nproc) $("$SYNOD" --version 2>/dev/null || true)"
loadavg() { cut -d' ' -f1 /proc/loadavg; }
: > "$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
  for p in "${PROXIES[@]}"; do
    name="${p%%:*}"; rest="${p#*:}"; port="${rest%%:*}"; pid="${rest##*:}"
    # A short warm-up fills the connection pools.
    wrk -t"$THREADS" -c"$CONNECTIONS" -d1s "http://127.0.0.1:$port/" >/dev/null
    before="$(cpu_ticks "$pid")"
    out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "http://127.0.0.1:$port/")"
    after="$(cpu_ticks "$pid")"
    rps="$(echo "$out" | awk '/^Requests\/sec:/ { print $2 }')"
    requests="$(echo "$out" | awk '/requests in/ { print $1 }')"
    p50="$(to_ms "$(echo "$out" | awk '$1 == "50%" { print $2 }')")"
    p99="$(to_ms "$(echo "$out" | awk '$1 == "99%" { print $2 }')")"
    cpu_us="$(awk -v t=$((after - before)) -v hz="$TICK" -v n="$requests" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')"
    errors="$(echo "$out" | awk '/Non-2xx|Socket errors/ { s = s $0 "; " } END { print s }')"
    echo "round $round $name: $rps req/s, p50 ${p50} ms, p99 ${p99} ms, ${cpu_us} CPU-us/req, load $(loadavg) ${errors}"
    echo "$name $rps $p50 $p99 $cpu_us" >> "$WORK/results"
  done
done

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
printf "%-11s %10s %8s %8s %12s %8s %8s\n" proxy "req/s" "p50 ms" "p99 ms" "CPU-us/req" "req/s÷" "p99÷"
base_rps=""; base_p99=""
if grep -q '^nginx ' "$WORK/results"; then
  base_rps="$(awk '$1 == "nginx" { print $2 }' "$WORK/results" | median)"
  base_p99="$(awk '$1 == "nginx" { print $4 }' "$WORK/results" | median)"
fi
for p in "${PROXIES[@]}"; do
  name="${p%%:*}"
  rps="$(awk -v n="$name" '$1 == n { print $2 }' "$WORK/results" | median)"
  p50="$(awk -v n="$name" '$1 == n { print $3 }' "$WORK/results" | median)"
  p99="$(awk -v n="$name" '$1 == n { print $4 }' "$WORK/results" | median)"
  cpu="$(awk -v n="$name" '$1 == n { print $5 }' "$WORK/results" | median)"
  if [ -n "$base_rps" ]; then
    r1="$(awk -v a="$rps" -v b="$base_rps" 'BEGIN { printf "%.2fx", a / b }')"
    r2="$(awk -v a="$p99" -v b="$base_p99" 'BEGIN { printf "%.2fx", a / b }')"
  else
    r1="-"; r2="-"
  fi
  printf "%-11s %10.0f %8.3f %8.3f %12.1f %8s %8s\n" "$name" "$rps" "$p50" "$p99" "$cpu" "$r1" "$r2"
done
echo "(req/s÷ and p99÷: medians relative to nginx's medians)"

# --- latency at fixed offered loads -------------------------------------------------
# wrk is closed-loop: at saturation each proxy's p99 is its queue, so the p99 above mostly
# restates its throughput. Latency is compared at the same offered load with an
# open-loop generator that corrects for coordinated omission (oha -q --latency-correction;
# Tene, "How NOT to measure latency"). RATES lists the loads (requests/s; "" skips this).
# oha: cargo install oha --locked (or OHA=path).
RATES="${RATES-5000 10000 20000}"
OHA="${OHA:-$(command -v oha || true)}"
[ -z "$OHA" ] && [ -x /tmp/oha/bin/oha ] && OHA=/tmp/oha/bin/oha
if [ -n "$RATES" ] && [ -z "$OHA" ]; then
  echo "oha not found (cargo install oha --locked, or OHA=path): fixed-rate latency skipped" >&2
  RATES=""
fi
[ -n "$RATES" ] && : > "$WORK/fixed"
for rate in $RATES; do
  for round in $(seq 1 "$ROUNDS"); do
    for p in "${PROXIES[@]}"; do
      name="${p%%:*}"; rest="${p#*:}"; port="${rest%%:*}"; pid="${rest##*:}"
      before="$(cpu_ticks "$pid")"
      "$OHA" -z "${SECONDS_PER_RUN}s" -c "$CONNECTIONS" -q "$rate" --latency-correction \
        --no-tui --output-format json "http://127.0.0.1:$port/" > "$WORK/oha.json"
      after="$(cpu_ticks "$pid")"
      line="$(python3 - "$WORK/oha.json" $((after - before)) "$TICK" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = d["latencyPercentiles"]
s = d["summary"]
ms = lambda v: (v or 0) * 1000
n = max(1.0, s["requestsPerSec"] * s["total"])
cpu = int(sys.argv[2]) / int(sys.argv[3]) * 1e6 / n
print("%.1f %.3f %.3f %.3f %.4f %.1f" % (s["requestsPerSec"], ms(p["p50"]), ms(p["p99"]),
                                         ms(p["p99.9"]), s["successRate"], cpu))
PY
)"
      echo "rate $rate round $round $name: $line (req/s p50 p99 p99.9 ms, success, CPU-us/req), load $(loadavg)"
      echo "$rate $name $line" >> "$WORK/fixed"
    done
  done
done
if [ -n "$RATES" ]; then
  echo
  printf "%-7s %-11s %9s %8s %8s %9s %8s %8s %8s %8s\n" rate proxy "req/s" "p50 ms" "p99 ms" "p99.9 ms" success "CPU-us" "p50÷" "p99÷"
  for rate in $RATES; do
    base="$(awk -v r="$rate" '$1 == r && $2 == "nginx" { print $5 }' "$WORK/fixed" | median)"
    base50="$(awk -v r="$rate" '$1 == r && $2 == "nginx" { print $4 }' "$WORK/fixed" | median)"
    for p in "${PROXIES[@]}"; do
      name="${p%%:*}"
      col() { awk -v r="$rate" -v n="$name" -v c="$1" '$1 == r && $2 == n { print $c }' "$WORK/fixed" | median; }
      p99="$(col 5)"; p50="$(col 4)"
      ratio="-"; ratio50="-"
      [ -n "$base" ] && ratio="$(awk -v a="$p99" -v b="$base" 'BEGIN { printf "%.2fx", a / b }')"
      [ -n "$base50" ] && ratio50="$(awk -v a="$p50" -v b="$base50" 'BEGIN { printf "%.2fx", a / b }')"
      printf "%-7s %-11s %9.0f %8.3f %8.3f %9.3f %8.4f %8.1f %8s %8s\n" "$rate" "$name" "$(col 3)" "$p50" "$p99" "$(col 6)" "$(col 7)" "$(col 8)" "$ratio50" "$ratio"
    done
  done
  echo "(medians over $ROUNDS rounds; p99÷: relative to nginx's median p99 at the same rate)"
fi
