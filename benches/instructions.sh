#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: repeatable whatever
# else the machine is doing, so it shows what a change to the hot path saves
# where wall-clock ratios drown in noise. Runs Portcullis (release, one thread)
# under valgrind twice, for N1 and N2 keep-alive requests through the bench job
# (route, key check, secret, nginx backend), and prints (Ir2 - Ir1) / (N2 - N1):
# start-up and shutdown cancel out. Then the same for the Pingora floor
# (benches/pingora_floor.rs), so the difference is what our code adds
# (FLOOR_TOO=0 skips it).
#
#   bash benches/instructions.sh        N1=200 N2=1200 bash benches/instructions.sh
#   CG_OUT=/tmp/cg.out bash benches/instructions.sh && callgrind_annotate /tmp/cg.out
#   python3 benches/cg_per_request.py /tmp/cg.out 1500    per request, per function
#   PORTCULLIS_BIN=a FLOOR_BIN=b bash benches/instructions.sh    measure copies of builds
#   JOB=jwt bash benches/instructions.sh    the same job on an auth: jwt route, one
#                                           RS256 token repeated (no floor)
#   JOB=cache bash benches/instructions.sh  the same job on a cached route: every
#                                           request after the first is a hit (no floor)
source "$(dirname "$0")/lib.sh"
need nginx valgrind python3
release_build
N1=${N1:-300} N2=${N2:-1800}
backend=$(free_port)
start_backend "$backend" 0

count() { # requests [floor] -> total instructions
  local gw admin; gw=$(free_port) admin=$(free_port)
  if [ "${JOB:-}" = jwt ]; then
    bench_jwt_config "$gw" "$admin" "$backend" > "$work/cg.yaml"
  elif [ "${JOB:-}" = cache ]; then
    bench_cache_config "$gw" "$admin" "$backend" > "$work/cg.yaml"
  else
    bench_config "$gw" "$admin" "$backend" > "$work/cg.yaml"
  fi
  local cmd=("$BIN" -c "$work/cg.yaml")
  [ -z "${2:-}" ] || cmd=("$FLOOR" "127.0.0.1:$gw" "127.0.0.1:$backend")
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.$1" "${cmd[@]}" \
    >/dev/null 2>"$work/cg.$1.err" &
  local vg=$!
  for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/"$gw") 2>/dev/null && break; sleep 0.1; done
  keepalive_requests "$gw" "$1"
  kill -TERM "$vg"; wait "$vg" || true
  grep -oP '^(summary|totals): \K[0-9]+' "$work/cg.$1" | head -1
}
if [ "${JOB:-}" = jwt ]; then
  export REQ_PATH=/tokens/1 REQ_AUTH="authorization: Bearer $(bench_token)" FLOOR_TOO=0
elif [ "${JOB:-}" = cache ]; then
  export REQ_PATH=/cached/1 FLOOR_TOO=0
fi
ir1=$(count "$N1") ir2=$(count "$N2")
# CG_OUT=file keeps the larger run's profile for callgrind_annotate, and the
# smaller one as file.short: benches/cg_per_request.py subtracts them into
# instructions per request for each function.
[ -z "${CG_OUT:-}" ] || { cp "$work/cg.$N2" "$CG_OUT"; cp "$work/cg.$N1" "$CG_OUT.short"; }
per_request() { python3 -c "print(round(($2 - $1) / ($N2 - $N1)))"; }
ours=$(per_request "$ir1" "$ir2")
python3 -c "print(f'instructions per request: {$ours:,}  ({$N1} and {$N2} requests: {$ir1:,} and {$ir2:,})')"
[ "${FLOOR_TOO:-1}" != 0 ] || exit 0
floor=$(per_request "$(count "$N1" floor)" "$(count "$N2" floor)")
python3 -c "print(f'Pingora floor: {$floor:,} per request; Portcullis adds {$ours - $floor:,} ({$ours / $floor - 1:.0%})')"
