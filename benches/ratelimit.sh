#!/usr/bin/env bash
# What a rate limit costs: wrk through Portcullis to an nginx backend on three
# routes (no limit; a local-store limit; a Redis-store limit, each never reached)
# and prints median req/s over interleaved rounds and the ratios limited/unlimited.
# Bounded: ROUNDS (3) x 3 runs of SECS (5) seconds.
# Needs: nginx, redis-server, wrk (Debian packages) and a release build.
source "$(dirname "$0")/lib.sh"
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
need nginx redis-server wrk
release_build

backend=$(free_port); redis=$(free_port)
start_backend "$backend"
redis-server --port "$redis" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
wait_port "$redis"

start_gateway() { # name, store section
  local port admin; port=$(free_port); admin=$(free_port)
  { portcullis_head "$port" "$admin"; cat <<YAML
$2
upstreams: { b: { peers: ["127.0.0.1:$backend"] } }
routes:
  - { name: free, path: /free, upstream: b }
  - { name: limited, path: /limited, upstream: b, rate_limit: { requests: 100000000, per: 1s } }
YAML
} > "$work/$1.yaml"
  start_portcullis "$port" "$work/$1.yaml"
  echo "$port"
}
local_port=$(start_gateway local "")
redis_port=$(start_gateway redis "rate_limit: { store: redis, redis: { url: \"redis://127.0.0.1:$redis/0\", timeout: 200ms } }")

# Interleaved rounds, medians: the machine is shared and noisy.
declare -a free_runs local_runs redis_runs
for _ in $(seq "$ROUNDS"); do
  free_runs+=("$(wrk_rps "http://127.0.0.1:$local_port/free")")
  local_runs+=("$(wrk_rps "http://127.0.0.1:$local_port/limited")")
  redis_runs+=("$(wrk_rps "http://127.0.0.1:$redis_port/limited")")
done
free=$(median "${free_runs[@]}")
local_rps=$(median "${local_runs[@]}")
redis_rps=$(median "${redis_runs[@]}")
printf '%-28s %12s %8s\n' route req/s ratio
printf '%-28s %12s %8s\n' "no limit" "$free" 1.000
printf '%-28s %12s %8s\n' "limit, local store" "$local_rps" "$(ratio "$local_rps" "$free")"
printf '%-28s %12s %8s\n' "limit, redis store" "$redis_rps" "$(ratio "$redis_rps" "$free")"
echo "{\"connections\":$CONNS,\"seconds\":$SECS,\"rounds\":$ROUNDS,\"free_rps\":$free,\"local_rps\":$local_rps,\"redis_rps\":$redis_rps,\"local_ratio\":$(ratio "$local_rps" "$free"),\"redis_ratio\":$(ratio "$redis_rps" "$free")}"
