#!/usr/bin/env bash
# What a rate limit costs: wrk through Portcullis to an nginx backend on three
# routes (no limit; a local-store limit; a Redis-store limit, each never reached)
# and prints median req/s over interleaved rounds and the ratios limited/unlimited.
# Bounded: ROUNDS (3) x 3 runs of SECS (5) seconds.
# Needs: nginx, redis-server, wrk (Debian packages) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
BIN=target/release/portcullis
[ -x "$BIN" ] || cargo build --release
for tool in nginx redis-server wrk; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install -y nginx-light redis-server wrk)" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

backend=$(free_port); redis=$(free_port)
cat > "$work/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:$backend; keepalive_requests 100000;
    location / { default_type application/json; return 200 '{"ok":true}'; } } }
NGINX
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)
redis-server --port "$redis" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
wait_port "$backend"; wait_port "$redis"

start_gateway() { # name, store section
  local port admin; port=$(free_port); admin=$(free_port)
  cat > "$work/$1.yaml" <<YAML
listen: [{ addr: "127.0.0.1:$port" }]
admin: { addr: "127.0.0.1:$admin" }
threads: 1
log: { level: warn }
consumers: [{ name: bench, keys: ["bench-key"] }]
$2
upstreams: { b: { peers: ["127.0.0.1:$backend"] } }
routes:
  - { name: free, path: /free, upstream: b }
  - { name: limited, path: /limited, upstream: b, rate_limit: { requests: 100000000, per: 1s } }
YAML
  taskset -c 0 "$BIN" -c "$work/$1.yaml" >/dev/null 2>"$work/$1.err" & pids+=($!)
  wait_port "$port"
  echo "$port"
}
local_port=$(start_gateway local "")
redis_port=$(start_gateway redis "rate_limit: { store: redis, redis: { url: \"redis://127.0.0.1:$redis/0\", timeout: 200ms } }")

run() { # url -> req/s
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" -H 'x-api-key: bench-key' "$1" | awk '/Requests\/sec/ {print $2}'
}
# Interleaved rounds, medians: the machine is shared and noisy.
declare -a free_runs local_runs redis_runs
for _ in $(seq "$ROUNDS"); do
  free_runs+=("$(run "http://127.0.0.1:$local_port/free")")
  local_runs+=("$(run "http://127.0.0.1:$local_port/limited")")
  redis_runs+=("$(run "http://127.0.0.1:$redis_port/limited")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
free=$(median "${free_runs[@]}")
local_rps=$(median "${local_runs[@]}")
redis_rps=$(median "${redis_runs[@]}")
ratio() { python3 -c "print(f'{$1/$2:.3f}')"; }
printf '%-28s %12s %8s\n' route req/s ratio
printf '%-28s %12s %8s\n' "no limit" "$free" 1.000
printf '%-28s %12s %8s\n' "limit, local store" "$local_rps" "$(ratio "$local_rps" "$free")"
printf '%-28s %12s %8s\n' "limit, redis store" "$redis_rps" "$(ratio "$redis_rps" "$free")"
echo "{\"connections\":$CONNS,\"seconds\":$SECS,\"rounds\":$ROUNDS,\"free_rps\":$free,\"local_rps\":$local_rps,\"redis_rps\":$redis_rps,\"local_ratio\":$(ratio "$local_rps" "$free"),\"redis_ratio\":$(ratio "$redis_rps" "$free")}"
