#!/usr/bin/env bash
# CPU per request of a cache hit against the uncached route, and against nginx
# doing the same job with and without proxy_cache (cache in tmpfs): the
# gateway's (or nginx worker's) user+system time from /proc over N requests on
# 8 keep-alive connections. Unlike req/s, this holds on a busy machine: it
# counts what each request costs the server, not how much CPU it was given.
# Bounded: 4 targets x 2 rounds x N (default 20,000) requests. Stops only what
# it started. Needs: nginx, python3 and a release build.
source "$(dirname "$0")/lib.sh"
N=${N:-20000}
need nginx python3
release_build

backend=$(free_port); gw=$(free_port); admin=$(free_port); ngx=$(free_port)
start_backend "$backend" 0
bench_cache_config "$gw" "$admin" "$backend" > "$work/portcullis.yaml"
start_portcullis "$gw" "$work/portcullis.yaml" 0
gw_pid=${pids[-1]}

shm=$(mktemp -d -p /dev/shm portcullis-bench.XXXXXX)
trap 'cleanup; rm -rf "$shm"' EXIT
cat > "$work/nginx-gw.conf" <<NGINX
worker_processes 1; daemon off; master_process off; pid $work/nginx-gw.pid; error_log $work/nginx-gw.err;
events { worker_connections 4096; }
http { access_log off;
  map \$http_x_api_key \$key_ok { default 0; "bench-key" 1; }
  upstream users { server 127.0.0.1:$backend; keepalive 256; }
  proxy_cache_path $shm levels=1:2 keys_zone=api:10m max_size=64m inactive=10m use_temp_path=off;
  server { listen 127.0.0.1:$ngx; keepalive_requests 100000;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header x-api-key "";
    proxy_set_header x-gateway-secret "bench-secret";
    location /cached {
      if (\$key_ok = 0) { return 401 '{"error":"invalid_api_key"}'; }
      proxy_cache api;
      proxy_cache_key "\$host\$request_uri\$http_x_api_key";
      proxy_cache_valid 200 600s;
      proxy_pass http://users;
    }
    location /users {
      if (\$key_ok = 0) { return 401 '{"error":"invalid_api_key"}'; }
      proxy_pass http://users;
    } } }
NGINX
taskset -c 0 nginx -c "$work/nginx-gw.conf" -p "$work" & pids+=($!)
ngx_pid=${pids[-1]}
wait_port "$ngx"

python3 - "$N" "$gw:$gw_pid" "$ngx:$ngx_pid" <<'PY'
import os, socket, sys
n = int(sys.argv[1]); tick = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
def run(port, pid, path):
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    req = f"GET /{path}/1 HTTP/1.1\r\nhost: a\r\nx-api-key: bench-key\r\n\r\n".encode()
    before = cpu(pid)
    for _ in range(n // 8):
        for s in socks:
            s.sendall(req)
        for s in socks:
            data = b""
            while b'{"ok":true}' not in data:
                chunk = s.recv(4096)
                if not chunk:
                    sys.exit(f"port {port} closed the connection")
                data += chunk
    return 1e6 * (cpu(pid) - before) / n
targets = {}
for spec, name in ((sys.argv[2], "portcullis"), (sys.argv[3], "nginx")):
    port, pid = (int(x) for x in spec.split(":"))
    run(port, pid, "cached")  # fill the cache
    for path in ("users", "cached"):
        targets[f"{name}_{'cache' if path == 'cached' else 'proxy'}"] = (port, pid, path)
rounds = {k: [] for k in targets}
for _ in range(2):  # interleaved
    for k, (port, pid, path) in targets.items():
        rounds[k].append(run(port, pid, path))
us = {k: sorted(v)[0] for k, v in rounds.items()}
for k, v in us.items():
    print(f"{k:18} {v:7.1f} us CPU/request  (rounds: {', '.join(f'{x:.1f}' for x in rounds[k])})")
print(f"hit vs uncached portcullis: {us['portcullis_proxy'] / us['portcullis_cache']:.2f}x less CPU")
print(f"portcullis hit vs nginx proxy_cache hit: {us['nginx_cache'] / us['portcullis_cache']:.2f}x (nginx CPU / ours)")
PY
