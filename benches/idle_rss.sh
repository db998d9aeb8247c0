#!/usr/bin/env bash
# Memory with many idle keep-alive clients (issue 6: under 64 MiB with 10,000).
# Starts an nginx backend and Portcullis (release, bench config), opens CONNS
# (default 10000) client connections that each make one proxied request and then
# stay open and idle, and prints the gateway's RSS before and with them open.
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
pid=${pids[-1]}
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
# Warm up the upstream pool and the allocator with ordinary traffic first.
keepalive_requests "$gw" 1000
before=$(rss)
python3 - "$gw" "$CONNS" "$pid" "$work/rss_with" <<'PY'
import socket, sys, time
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
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
fds = len(__import__("os").listdir(f"/proc/{pid}/fd"))
rss = int([l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0])
print(f"{n} idle keep-alive clients open: gateway fds {fds}, RSS {rss/1024:.1f} MiB")
open(sys.argv[4], "w").write(str(rss))
PY
with=$(cat "$work/rss_with")
python3 -c "
b, w, n = $before, $with, $CONNS
print(f'RSS before {b/1024:.1f} MiB, with {n} idle clients {w/1024:.1f} MiB, {(w-b)/n*1024:.0f} bytes per connection')
print('VERDICT:', 'PASS (under 64 MiB)' if w < 64*1024 else 'FAIL (64 MiB or more)')
"
