#!/usr/bin/env bash
# Memory with many idle keep-alive clients (issue 16: Portcullis' RSS at most
# nginx's for the same 10,000). Starts an nginx backend, Portcullis (release,
# bench config) and an nginx gateway doing the same job; for each gateway in
# turn opens CONNS (default 10000) client connections that each make one proxied
# request and then stay open and idle, and prints its RSS before and with them
# open (nginx: master and worker together), then the ratio.
# Loopback only; stops everything it started.
#
#   bash benches/idle_rss.sh          CONNS=2000 bash benches/idle_rss.sh
source "$(dirname "$0")/lib.sh"
need nginx python3
release_build
CONNS=${CONNS:-10000}
ulimit -n $(( CONNS * 2 + 1024 )) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
backend=$(free_port) gw=$(free_port) admin=$(free_port)
start_backend "$backend" 0
bench_config "$gw" "$admin" "$backend" "limits: { max_connections: $(( CONNS + 100 )) }" \
  > "$work/portcullis.yaml"
start_portcullis "$gw" "$work/portcullis.yaml" 0
portcullis_pid=${pids[-1]}

# nginx doing the same job (key map, secret, keep-alive upstream), one worker,
# beside it for comparison. Its RSS is the master's and the worker's together.
ngx=$(free_port)
cat > "$work/nginx-gw.conf" <<NGINX
worker_processes 1; daemon off; pid $work/nginx-gw.pid; error_log $work/nginx-gw.err;
worker_rlimit_nofile $(( CONNS * 2 + 1024 ));
events { worker_connections $(( CONNS + 1024 )); }
http { access_log off; keepalive_timeout 600s;
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

# RSS in KiB of a process and its children (nginx: master + worker).
rss() { # pid
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$(( total + $(awk '/VmRSS/ {print $2}' "/proc/$p/status") ))
  done
  echo "$total"
}

measure() { # name port pid
  # Warm up the upstream pool and the allocator with ordinary traffic first.
  keepalive_requests "$2" 1000
  local before with
  before=$(rss "$3")
  rm -f "$work/with"
  python3 - "$2" "$CONNS" "$work/with" <<'PY' &
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /users/1 HTTP/1.1\r\nhost: a\r\nx-api-key: bench-key\r\n\r\n")
    data = b""
    while b'{"ok":true}' not in data:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(f"connection {i} closed by the gateway")
        data += chunk
    conns.append(s)
time.sleep(2)
open(sys.argv[3], "w").write("ready")
# hold the connections until the caller has read the RSS
while open(sys.argv[3]).read().strip() != "done":
    time.sleep(0.1)
PY
  local client=$!
  until [ "$(cat "$work/with" 2>/dev/null)" = ready ]; do
    kill -0 "$client" 2>/dev/null || { echo "$1: the clients failed" >&2; exit 1; }
    sleep 0.2
  done
  with=$(rss "$3")
  printf done > "$work/with"
  wait "$client"
  rm -f "$work/with"
  python3 -c "
b, w, n = $before, $with, $CONNS
print(f'$1: RSS before {b/1024:.1f} MiB, with {n} idle clients {w/1024:.1f} MiB, {(w-b)/n*1024:.0f} bytes per connection')
"
  echo "$with" > "$work/rss_$1"
}

measure portcullis "$gw" "$portcullis_pid"
measure nginx "$ngx" "$(cat "$work/nginx-gw.pid")"
python3 -c "
p, n = $(cat "$work/rss_portcullis"), $(cat "$work/rss_nginx")
print(f'Portcullis / nginx RSS with $CONNS idle clients: {p/n:.2f}')
print('VERDICT:', 'PASS (Portcullis at most nginx)' if p <= n else 'FAIL (Portcullis above nginx)')
"
