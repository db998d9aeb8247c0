#!/usr/bin/env bash
# What aggregation costs: wrk through Portcullis to an nginx backend on a plain
# proxied route and on an aggregate route of two parts (both to the same
# backend), median req/s over interleaved rounds and the ratio aggregate/proxied.
# Bounded: ROUNDS (3) x 2 runs of SECS (5) seconds.
# Needs: nginx, wrk (Debian packages) and a release build.
source "$(dirname "$0")/lib.sh"
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
need nginx wrk
release_build

backend=$(free_port); port=$(free_port); admin=$(free_port)
start_backend "$backend"
{ portcullis_head "$port" "$admin"; cat <<YAML
upstreams: { b: { peers: ["127.0.0.1:$backend"] } }
routes:
  - { name: proxied, path: /users, upstream: b }
  - name: overview
    path: /overview/users/{id}
    aggregate:
      user: { upstream: b, path: "/users/{id}" }
      orders: { upstream: b, path: "/orders?user_id={id}" }
YAML
} > "$work/gateway.yaml"
start_portcullis "$port" "$work/gateway.yaml"

declare -a proxied_runs aggregate_runs
for _ in $(seq "$ROUNDS"); do
  proxied_runs+=("$(wrk_rps "http://127.0.0.1:$port/users/1")")
  aggregate_runs+=("$(wrk_rps "http://127.0.0.1:$port/overview/users/1")")
done
proxied=$(median "${proxied_runs[@]}")
aggregate=$(median "${aggregate_runs[@]}")
printf '%-34s %12s %8s\n' route req/s ratio
printf '%-34s %12s %8s\n' "proxied (1 upstream request)" "$proxied" 1.000
printf '%-34s %12s %8s\n' "aggregate (2 parts in parallel)" "$aggregate" "$(ratio "$aggregate" "$proxied")"
echo "{\"connections\":$CONNS,\"seconds\":$SECS,\"rounds\":$ROUNDS,\"proxied_rps\":$proxied,\"aggregate_rps\":$aggregate,\"ratio\":$(ratio "$aggregate" "$proxied")}"
