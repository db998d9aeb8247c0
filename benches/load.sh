#!/usr/bin/env bash
# Portcullis against the gateways a user would pick instead, on the same job, in
# one run: route by path, check the API key, inject the gateway secret, remove
# the client's key, proxy to a keep-alive backend (an nginx answering fixed
# JSON). The peers:
#   nginx        nginx with the least config for the job (key `map`, secret,
#                keep-alive upstream; no access log)
#   nginx-full   nginx doing the whole job with native modules, as Portcullis
#                does it: key `map`, secret, JSON access log (`escape=json`),
#                `limit_req` per consumer at a huge rate, request id to the
#                backend and the client
#   openresty    the architecture of Kong and APISIX (Debian's
#                libnginx-mod-http-lua): key looked up in a Lua table in
#                access_by_lua, a lua_shared_dict counter per route as the
#                limit, per-route counters served on a Prometheus /metrics,
#                JSON access log, request id
#   floor        benches/pingora_floor.rs: the same job in the least code
#                Pingora allows (what Pingora itself costs)
# Every target must pass the same checks before it is measured: 401 without
# the key, 200 with it, and at the backend the secret present and the key gone.
# Loads each at 50 and 500 connections with wrk (and oha when installed),
# targets interleaved within each load, and prints req/s, p50, p99 and the
# ratios to nginx, to the direct backend, to the floor and to the openresty
# peer, as a table and one JSON line.
#
# Pinning: backend and the proxy under test share CPU 0 (one worker each), the
# load generator runs on CPU 1. Bounded: 6 targets x 2 loads x SECS (default 5)
# seconds, plus start-up. Stops only what it started.
# Needs: nginx, wrk, libnginx-mod-http-lua (Debian packages nginx-light, wrk,
# libnginx-mod-http-lua) and a release build.
source "$(dirname "$0")/lib.sh"
SECS=${SECS:-5}
LOADS=${LOADS:-"50 500"}
need nginx wrk
[ -e /usr/lib/nginx/modules/ngx_http_lua_module.so ] ||
  { echo "missing: nginx's Lua module (apt-get install -y libnginx-mod-http-lua)" >&2; exit 1; }
release_build

backend=$(free_port); gw=$(free_port); admin=$(free_port); ngx=$(free_port); floor=$(free_port)
full=$(free_port); resty=$(free_port)
start_backend "$backend" 0
start_floor "$floor" "$backend" 0

# Portcullis: one worker thread, the job and nothing else.
bench_config "$gw" "$admin" "$backend" > "$work/portcullis.yaml"
start_portcullis "$gw" "$work/portcullis.yaml" 0

# nginx doing the same job: the key checked with a map, the secret set, the
# client's key removed, keep-alive to the backend.
cat > "$work/nginx-gw.conf" <<NGINX
worker_processes 1; daemon off; pid $work/nginx-gw.pid; error_log $work/nginx-gw.err;
events { worker_connections 4096; }
http { access_log off;
  map \$http_x_api_key \$key_ok { default 0; "bench-key" 1; }
  upstream users { server 127.0.0.1:$backend; keepalive 256; }
  server { listen 127.0.0.1:$ngx; keepalive_requests 100000;
    location /users {
      if (\$key_ok = 0) { return 401 '{"error":"invalid_api_key"}'; }
      proxy_pass http://users;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header x-api-key "";
      proxy_set_header x-gateway-secret "bench-secret";
      proxy_set_header x-forwarded-for \$remote_addr;
    } } }
NGINX
taskset -c 0 nginx -c "$work/nginx-gw.conf" -p "$work" & pids+=($!)
wait_port "$ngx"

# The JSON access-log line both full peers write, with the fields Portcullis
# logs (buffered as Portcullis' writer thread is).
log_format="log_format json escape=json '{\"time\":\"\$time_iso8601\",\"request_id\":\"\$request_id\",\"consumer\":\"\$consumer\",\"route\":\"users\",\"method\":\"\$request_method\",\"path\":\"\$uri\",\"status\":\$status,\"bytes\":\$body_bytes_sent,\"duration_ms\":\$request_time,\"upstream_ms\":\"\$upstream_response_time\",\"client\":\"\$remote_addr\"}';"
proxy_job='proxy_pass http://users;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header x-api-key "";
      proxy_set_header x-gateway-secret "bench-secret";
      proxy_set_header x-forwarded-for $proxy_add_x_forwarded_for;
      proxy_set_header x-request-id $request_id;
      add_header x-request-id $request_id always;'

# nginx doing the whole job with its own modules.
cat > "$work/nginx-full.conf" <<NGINX
worker_processes 1; daemon off; pid $work/nginx-full.pid; error_log $work/nginx-full.err;
events { worker_connections 4096; }
http {
  $log_format
  access_log $work/nginx-full.access.log json buffer=64k flush=1s;
  map \$http_x_api_key \$consumer { default ""; "bench-key" bench; }
  # A limit nothing reaches: the cost of counting, not of refusing.
  limit_req_zone \$consumer zone=users:1m rate=100000000r/s;
  upstream users { server 127.0.0.1:$backend; keepalive 256; }
  server { listen 127.0.0.1:$full; keepalive_requests 100000;
    location /users {
      if (\$consumer = "") { return 401 '{"error":"invalid_api_key"}'; }
      limit_req zone=users burst=100000000 nodelay;
      $proxy_job
    } } }
NGINX
taskset -c 0 nginx -c "$work/nginx-full.conf" -p "$work" & pids+=($!)
wait_port "$full"

# The OpenResty architecture (Kong, APISIX) on Debian's nginx Lua module.
cat > "$work/openresty.conf" <<NGINX
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 1; daemon off; pid $work/openresty.pid; error_log $work/openresty.err;
events { worker_connections 4096; }
http {
  lua_package_path "/usr/share/lua/5.1/?.lua;;";
  lua_shared_dict limits 1m;
  lua_shared_dict metrics 1m;
  init_by_lua_block {
    keys = { ["bench-key"] = "bench" }   -- consumer by key, as Kong's key-auth caches it
    limit_per_second = 100000000         -- nothing reaches it
  }
  $log_format
  access_log $work/openresty.access.log json buffer=64k flush=1s;
  upstream users { server 127.0.0.1:$backend; keepalive 256; }
  server { listen 127.0.0.1:$resty; keepalive_requests 100000;
    set \$consumer "";
    location /users {
      access_by_lua_block {
        local consumer = keys[ngx.var.http_x_api_key or ""]
        if not consumer then
          ngx.status = 401
          ngx.header["content-type"] = "application/json"
          ngx.print('{"error":"invalid_api_key"}')
          return ngx.exit(401)
        end
        ngx.var.consumer = consumer
        local window = "users:" .. ngx.time()
        local n = ngx.shared.limits:incr(window, 1, 0, 2)
        if n and n > limit_per_second then return ngx.exit(429) end
      }
      $proxy_job
      log_by_lua_block {
        ngx.shared.metrics:incr('gateway_requests_total{route="users",status="' .. ngx.status .. '"}', 1, 0)
      }
    }
    location = /metrics {
      content_by_lua_block {
        local m = ngx.shared.metrics
        ngx.header["content-type"] = "text/plain; version=0.0.4"
        for _, k in ipairs(m:get_keys(0)) do ngx.say(k, " ", m:get(k)) end
      }
    } } }
NGINX
taskset -c 0 nginx -c "$work/openresty.conf" -p "$work" & pids+=($!)
wait_port "$resty"

# Checks the job is done before measuring it: 401 without the key, 200 with
# it, and at the backend the secret present and the client's key removed.
for port in "$gw" "$ngx" "$full" "$resty" "$floor"; do
  ok=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-api-key: bench-key' "http://127.0.0.1:$port/users/1")
  no=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/users/1")
  secret=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-api-key: bench-key' "http://127.0.0.1:$port/users/secret-check")
  [ "$ok" = 200 ] && [ "$no" = 401 ] && [ "$secret" = 200 ] ||
    { echo "port $port does not do the job (key $ok, no key $no, secret check $secret)" >&2; exit 1; }
done
curl -s "http://127.0.0.1:$resty/metrics" | grep -q 'route="users",status="200"' ||
  { echo "the openresty peer counts no requests on /metrics" >&2; exit 1; }

# wrk with latency percentiles -> "req/s p50_ms p99_ms"
to_ms() { python3 -c "
import re,sys
v=sys.argv[1]; m=re.match(r'([0-9.]+)(us|ms|s)',v)
n,u=float(m.group(1)),m.group(2)
print(round(n/1000 if u=='us' else n*1000 if u=='s' else n,3))" "$1"; }
measure() { # url conns
  local out rps p50 p99
  out=$(taskset -c 1 wrk -t1 -c"$2" -d"${SECS}s" --latency -H 'x-api-key: bench-key' "$1")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}

declare -A port=([direct]=$backend [nginx]=$ngx [nginx-full]=$full [openresty]=$resty [floor]=$floor [portcullis]=$gw)
targets="direct nginx nginx-full openresty floor portcullis"
declare -A result
for conns in $LOADS; do
  for target in $targets; do
    result[${target}_$conns]=$(measure "http://127.0.0.1:${port[$target]}/users/1" "$conns")
  done
done

printf '%-12s %6s %12s %9s %9s %8s %8s %8s %8s\n' target conns req/s p50_ms p99_ms "/nginx" "/direct" "/floor" "/resty"
json="{\"tool\":\"wrk\",\"seconds\":$SECS"
for conns in $LOADS; do
  read -r d_rps _ _ <<<"${result[direct_$conns]}"
  read -r n_rps _ _ <<<"${result[nginx_$conns]}"
  read -r f_rps _ _ <<<"${result[floor_$conns]}"
  read -r r_rps _ _ <<<"${result[openresty_$conns]}"
  for target in $targets; do
    read -r rps p50 p99 <<<"${result[${target}_$conns]}"
    printf '%-12s %6s %12s %9s %9s %8s %8s %8s %8s\n' "$target" "$conns" "$rps" "$p50" "$p99" \
      "$(ratio "$rps" "$n_rps")" "$(ratio "$rps" "$d_rps")" "$(ratio "$rps" "$f_rps")" "$(ratio "$rps" "$r_rps")"
    json+=",\"${target}_${conns}\":{\"rps\":$rps,\"p50_ms\":$p50,\"p99_ms\":$p99}"
  done
  read -r p_rps _ _ <<<"${result[portcullis_$conns]}"
  read -r x_rps _ _ <<<"${result[nginx-full_$conns]}"
  json+=",\"ratio_nginx_$conns\":$(ratio "$p_rps" "$n_rps"),\"ratio_direct_$conns\":$(ratio "$p_rps" "$d_rps")"
  json+=",\"ratio_floor_$conns\":$(ratio "$p_rps" "$f_rps"),\"floor_ratio_nginx_$conns\":$(ratio "$f_rps" "$n_rps")"
  json+=",\"ratio_openresty_$conns\":$(ratio "$p_rps" "$r_rps"),\"ratio_nginx_full_$conns\":$(ratio "$p_rps" "$x_rps")"
done
echo "$json}"

if command -v oha >/dev/null; then
  for conns in $LOADS; do
    for target in "nginx:$ngx" "nginx-full:$full" "openresty:$resty" "floor:$floor" "portcullis:$gw"; do
      rps=$(taskset -c 1 oha -z "${SECS}s" -c "$conns" --no-tui -H 'x-api-key: bench-key' \
        "http://127.0.0.1:${target#*:}/users/1" | awk '/Requests\/sec/ {print $2}')
      echo "oha ${target%%:*} c=$conns: $rps req/s"
    done
  done
fi
