#!/usr/bin/env bash
# Soak: `portcullis demo` (release) under moderate wrk load for SOAK_SECS
# (default 600 s), sampling the gateway's RSS and open file descriptors every
# SAMPLE_SECS (default 10 s). After a warm-up (WARMUP_SECS, default 60 s) the
# last samples must not exceed the first ones beyond noise: RSS by more than
# 10% + 4 MiB, descriptors by more than 16. Prints the series and a verdict;
# exits 1 on growth. Loopback only; stops everything it started.
#
#   bash benches/soak.sh            # 10 minutes
#   SOAK_SECS=120 bash benches/soak.sh
source "$(dirname "$0")/lib.sh"
need wrk python3 curl
release_build
SOAK_SECS=${SOAK_SECS:-600} SAMPLE_SECS=${SAMPLE_SECS:-10} WARMUP_SECS=${WARMUP_SECS:-60}
port=$(free_port) admin=$(free_port)
"$BIN" demo --listen "127.0.0.1:$port" --admin "127.0.0.1:$admin" >"$work/demo.out" 2>"$work/demo.err" & pids+=($!)
gw=$!
wait_port "$port"
key=$(grep -oP 'API key\s+\K\S+' "$work/demo.out")

# A mix of the demo's answers: proxied, aggregated, refused (401, 404), answered
# by the gateway; each connection waits 2 ms between requests (moderate load).
cat > "$work/mix.lua" <<LUA
local paths = { "/users/1", "/orders?user_id=1", "/overview/users/2", "/users/9999", "/health", "/nowhere" }
local n = 0
request = function()
  n = n + 1
  local path = paths[(n % #paths) + 1]
  local headers = { ["x-api-key"] = "$key" }
  if n % 10 == 0 then headers = {} end
  return wrk.format("GET", path, headers)
end
delay = function() return 2 end
LUA
wrk -t1 -c16 -d"${SOAK_SECS}s" --timeout 5s -s "$work/mix.lua" "http://127.0.0.1:$port" >"$work/wrk.out" 2>&1 & pids+=($!)
load=$!

echo "time_s rss_kib fds"
samples="$work/samples"
: > "$samples"
start=$(date +%s)
while kill -0 "$load" 2>/dev/null; do
  t=$(( $(date +%s) - start ))
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$gw/status")
  fds=$(ls "/proc/$gw/fd" | wc -l)
  echo "$t $rss $fds" | tee -a "$samples"
  sleep "$SAMPLE_SECS"
done
wait "$load" || true
grep -E 'Requests/sec|requests in|Non-2xx|Socket errors' "$work/wrk.out" || true
kill -0 "$gw" 2>/dev/null || { echo "VERDICT: FAIL (the gateway died)"; exit 1; }

python3 - "$samples" "$WARMUP_SECS" <<'PY'
import sys, statistics
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
warm = [r for r in rows if r[0] >= int(sys.argv[2])]
if len(warm) < 6:
    print(f"VERDICT: INCONCLUSIVE ({len(warm)} samples after warm-up; run longer)")
    sys.exit(0)
first, last = warm[:3], warm[-3:]
rss0, rss1 = statistics.median(r[1] for r in first), statistics.median(r[1] for r in last)
fd0, fd1 = statistics.median(r[2] for r in first), statistics.median(r[2] for r in last)
print(f"after warm-up: RSS {rss0/1024:.1f} -> {rss1/1024:.1f} MiB, fds {fd0:.0f} -> {fd1:.0f}"
      f" (peak RSS {max(r[1] for r in rows)/1024:.1f} MiB)")
grew = rss1 > rss0 * 1.10 + 4096 or fd1 > fd0 + 16
print("VERDICT:", "FAIL (growth beyond noise)" if grew else "PASS (no growth beyond noise)")
sys.exit(1 if grew else 0)
PY
