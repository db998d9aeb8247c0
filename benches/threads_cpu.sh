#!/usr/bin/env bash
# CPU time per proxied request (user + system, from /proc) of Portcullis at
# `threads: 1` and `threads: 2`, the bench job under wrk at CONNS (default 50)
# connections for SECS (default 5) seconds, ROUNDS (default 3) interleaved
# rounds; prints each round and the medians. CPU per request is steadier than
# req/s on a shared machine, but still moves with what else runs.
# Bounded; loopback only; stops what it started.
source "$(dirname "$0")/lib.sh"
need nginx wrk
release_build
SECS=${SECS:-5} CONNS=${CONNS:-50} ROUNDS=${ROUNDS:-3}
backend=$(free_port)
start_backend "$backend" 0
tick=$(getconf CLK_TCK)

# One round: a fresh gateway with `threads: $1`, loaded; prints µs per request.
round() { # threads
  local gw admin pid out reqs t0 t1
  gw=$(free_port) admin=$(free_port)
  bench_config "$gw" "$admin" "$backend" | sed "s/^threads: 1$/threads: $1/" > "$work/t$1.yaml"
  "$BIN" -c "$work/t$1.yaml" >/dev/null 2>"$work/t$1.err" & pid=$!
  wait_port "$gw"
  keepalive_requests "$gw" 200
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  out=$(wrk -t1 -c"$CONNS" -d"${SECS}s" -H 'x-api-key: bench-key' "http://127.0.0.1:$gw/users/1")
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  python3 -c "print(round(($t1 - $t0) / $tick * 1e6 / $reqs, 1))"
}

declare -A runs
for r in $(seq "$ROUNDS"); do
  for threads in 1 2; do
    us=$(round "$threads")
    runs[$threads]+="$us "
    echo "round $r threads $threads: $us µs CPU per request"
  done
done
for threads in 1 2; do
  # shellcheck disable=SC2086
  echo "threads $threads: median $(median ${runs[$threads]}) µs CPU per request"
done
