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
# The cache rows: the same job on a cached route (/cached, ~100% hits after the
# first request) for Portcullis, beside nginx with proxy_cache doing the same
# (key checked with the map, the consumer's key in the cache key, the cache in
# a tmpfs directory under /dev/shm). Their ratios: portcullis_cache/portcullis
# (a hit against the uncached route) and portcullis_cache/nginx_cache.
#
# Pinning: backend and the proxy under test share CPU 0 (one worker each), the
# load generator runs on CPU 1. Bounded: 6 targets x 2 loads x SECS (default 5)
# seconds, plus start-up, the cache rows (2 more targets) and the jwt row: the
# API-key route against an auth: jwt route on one more gateway (2 more targets).
# Stops only what it started.
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

# Portcullis: one worker thread, the job and nothing else; plus the cached route.
bench_cache_config "$gw" "$admin" "$backend" > "$work/portcullis.yaml"
start_portcullis "$gw" "$work/portcullis.yaml" 0

# nginx doing the same job: the key checked with a map, the secret set, the
# client's key removed, keep-alive to the backend.
# Its cache lives in tmpfs, removed on exit with the rest.
shm=$(mktemp -d -p /dev/shm portcullis-bench.XXXXXX)
trap 'cleanup; rm -rf "$shm"' EXIT
cat > "$work/nginx-gw.conf" <<NGINX
worker_processes 1; daemon off; pid $work/nginx-gw.pid; error_log $work/nginx-gw.err;
events { worker_connections 4096; }
http { access_log off;
  map \$http_x_api_key \$key_ok { default 0; "bench-key" 1; }
  upstream users { server 127.0.0.1:$backend; keepalive 256; }
  proxy_cache_path $shm levels=1:2 keys_zone=api:10m max_size=64m inactive=10m use_temp_path=off;
  server { listen 127.0.0.1:$ngx; keepalive_requests 100000;
    # The job's upstream request, for both locations.
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header x-api-key "";
    proxy_set_header x-gateway-secret "bench-secret";
    proxy_set_header x-forwarded-for \$remote_addr;
    location /cached {
      if (\$key_ok = 0) { return 401 '{"error":"invalid_api_key"}'; }
      proxy_cache api;
      proxy_cache_key "\$host\$request_uri\$http_x_api_key";
      proxy_cache_valid 200 600s;
      proxy_cache_lock on;
      add_header cache-status \$upstream_cache_status;
      proxy_pass http://users;
    }
    location /users {
      if (\$key_ok = 0) { return 401 '{"error":"invalid_api_key"}'; }
      proxy_pass http://users;
    } } }
NGINX
taskset -c 0 nginx -c "$work/nginx-gw.conf" -p "$work" & pids+=($!)
wait_port "$ngx"

# The jwt row: a second gateway with the bench route twice, by API key and by
# bearer token (auth: jwt, RS256 from a JWKS file), and one token repeated, as
# a client does until it expires: the verified-token memory's case.
jwt_gw=$(free_port); jwt_admin=$(free_port)
jwt_token=$(bench_token)
bench_jwt_config "$jwt_gw" "$jwt_admin" "$backend" > "$work/portcullis-jwt.yaml"
start_portcullis "$jwt_gw" "$work/portcullis-jwt.yaml" 0
ok=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $jwt_token" "http://127.0.0.1:$jwt_gw/tokens/1")
no=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$jwt_gw/tokens/1")
[ "$ok" = 200 ] && [ "$no" = 401 ] || { echo "the jwt route does not do the job ($ok/$no)" >&2; exit 1; }

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
# The cached route: filled by a first request, then a hit, still refused without the key.
for port in "$gw" "$ngx"; do
  curl -s -o /dev/null -H 'x-api-key: bench-key' "http://127.0.0.1:$port/cached/1"
  hit=$(curl -s -D - -o /dev/null -H 'x-api-key: bench-key' "http://127.0.0.1:$port/cached/1" | tr -d '\r' | awk -F': ' 'tolower($1)=="cache-status" {print $2}')
  no=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/cached/1")
  case "$hit" in HIT|"portcullis; hit") ;; *) echo "port $port does not cache ($hit)" >&2; exit 1;; esac
  [ "$no" = 401 ] || { echo "port $port serves the cache without a key ($no)" >&2; exit 1; }
done

# wrk with latency percentiles -> "req/s p50_ms p99_ms"
to_ms() { python3 -c "
import re,sys
v=sys.argv[1]; m=re.match(r'([0-9.]+)(us|ms|s)',v)
n,u=float(m.group(1)),m.group(2)
print(round(n/1000 if u=='us' else n*1000 if u=='s' else n,3))" "$1"; }
measure() { # url conns [header]
  local out rps p50 p99
  out=$(taskset -c 1 wrk -t1 -c"$2" -d"${SECS}s" --latency -H "${3:-x-api-key: bench-key}" "$1")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}

# Every target on one URL; all interleaved within each load. The cache rows
# hit a cached route (nginx: proxy_cache in tmpfs); the jwt row is a second
# gateway's API-key route against its token route with one token repeated.
declare -A port=([direct]=$backend [nginx]=$ngx [nginx-full]=$full [openresty]=$resty [floor]=$floor
  [portcullis]=$gw [nginx_cache]=$ngx [portcullis_cache]=$gw [apikey]=$jwt_gw [jwt]=$jwt_gw)
declare -A path=([nginx_cache]=/cached/1 [portcullis_cache]=/cached/1 [jwt]=/tokens/1)
declare -A header=([jwt]="authorization: Bearer $jwt_token")
peers="direct nginx nginx-full openresty floor portcullis"
targets="$peers nginx_cache portcullis_cache apikey jwt"
declare -A result
for conns in $LOADS; do
  for target in $targets; do
    result[${target}_$conns]=$(measure "http://127.0.0.1:${port[$target]}${path[$target]:-/users/1}" \
      "$conns" "${header[$target]:-}")
  done
done

printf '%-16s %6s %12s %9s %9s %8s %8s %8s %8s\n' target conns req/s p50_ms p99_ms "/nginx" "/direct" "/floor" "/resty"
json="{\"tool\":\"wrk\",\"seconds\":$SECS"
for conns in $LOADS; do
  read -r d_rps _ _ <<<"${result[direct_$conns]}"
  read -r n_rps _ _ <<<"${result[nginx_$conns]}"
  read -r f_rps _ _ <<<"${result[floor_$conns]}"
  read -r r_rps _ _ <<<"${result[openresty_$conns]}"
  for target in $peers nginx_cache portcullis_cache; do
    read -r rps p50 p99 <<<"${result[${target}_$conns]}"
    printf '%-16s %6s %12s %9s %9s %8s %8s %8s %8s\n' "$target" "$conns" "$rps" "$p50" "$p99" \
      "$(ratio "$rps" "$n_rps")" "$(ratio "$rps" "$d_rps")" "$(ratio "$rps" "$f_rps")" "$(ratio "$rps" "$r_rps")"
    json+=",\"${target}_${conns}\":{\"rps\":$rps,\"p50_ms\":$p50,\"p99_ms\":$p99}"
  done
  read -r p_rps _ _ <<<"${result[portcullis_$conns]}"
  read -r x_rps _ _ <<<"${result[nginx-full_$conns]}"
  json+=",\"ratio_nginx_$conns\":$(ratio "$p_rps" "$n_rps"),\"ratio_direct_$conns\":$(ratio "$p_rps" "$d_rps")"
  json+=",\"ratio_floor_$conns\":$(ratio "$p_rps" "$f_rps"),\"floor_ratio_nginx_$conns\":$(ratio "$f_rps" "$n_rps")"
  json+=",\"ratio_openresty_$conns\":$(ratio "$p_rps" "$r_rps"),\"ratio_nginx_full_$conns\":$(ratio "$p_rps" "$x_rps")"
  read -r pc_rps _ _ <<<"${result[portcullis_cache_$conns]}"
  read -r nc_rps _ _ <<<"${result[nginx_cache_$conns]}"
  printf '%-16s %6s  hit/uncached %s  hit/nginx_cache %s\n' cache_ratios "$conns" \
    "$(ratio "$pc_rps" "$p_rps")" "$(ratio "$pc_rps" "$nc_rps")"
  json+=",\"cache_ratio_uncached_$conns\":$(ratio "$pc_rps" "$p_rps"),\"cache_ratio_nginx_cache_$conns\":$(ratio "$pc_rps" "$nc_rps")"
done

# The jwt row: the same gateway's API-key route against its token route
# (target: jwt/api_key >= 0.95).
printf '%-16s %6s %12s %9s %9s %10s\n' target conns req/s p50_ms p99_ms "/api_key"
for conns in $LOADS; do
  read -r k_rps _ _ <<<"${result[apikey_$conns]}"
  for target in apikey jwt; do
    read -r rps p50 p99 <<<"${result[${target}_$conns]}"
    printf '%-16s %6s %12s %9s %9s %10s\n' "$target" "$conns" "$rps" "$p50" "$p99" "$(ratio "$rps" "$k_rps")"
    json+=",\"${target}_${conns}\":{\"rps\":$rps,\"p50_ms\":$p50,\"p99_ms\":$p99}"
  done
  read -r j_rps _ _ <<<"${result[jwt_$conns]}"
  json+=",\"ratio_jwt_apikey_$conns\":$(ratio "$j_rps" "$k_rps")"
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
