# Shared by the bench scripts (sourced): process bookkeeping, free ports, an
# nginx backend with a fixed JSON answer, medians and ratios.
# Everything started through `spawn` is stopped on exit; nothing else is touched.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The gateway measured is the one shipped: the profile-guided build
# (benches/pgo_build.sh, as the Dockerfile builds it). PGO=0 measures the plain
# `cargo build --release` instead.
if [ "${PGO:-1}" = 0 ]; then
  BIN=${PORTCULLIS_BIN:-target/release/portcullis}
else
  BIN=${PORTCULLIS_BIN:-target/pgo/portcullis}
fi
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

need() { # tools...
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install -y nginx-light redis-server wrk)" >&2; exit 1; }
  done
}
# Bare Pingora doing the bench job (benches/pingora_floor.rs): the reference
# that tells Pingora's own cost from ours.
FLOOR=${FLOOR_BIN:-target/release/examples/pingora_floor}
# Builds (or finds up to date) the gateway and the floor, unless PORTCULLIS_BIN
# (and FLOOR_BIN) name binaries to measure instead, e.g. copies of two builds
# to compare. The floor is a plain release build (no profile).
release_build() {
  local targets=()
  [ -n "${FLOOR_BIN:-}" ] || targets+=(--example pingora_floor)
  [ -n "${PORTCULLIS_BIN:-}" ] || [ "${PGO:-1}" != 0 ] || targets+=(--bin portcullis)
  [ ${#targets[@]} -eq 0 ] || cargo build --release --locked "${targets[@]}"
  # Two release builds and a training run the first time, seconds when
  # nothing changed.
  [ -n "${PORTCULLIS_BIN:-}" ] || [ "${PGO:-1}" = 0 ] || bash benches/pgo_build.sh "$BIN"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

# nginx answering every path with a small JSON object, on CPU $2 (default 0).
start_backend() { # port [cpu]
  cat > "$work/backend.conf" <<NGINX
worker_processes 1; daemon off; pid $work/backend.pid; error_log $work/backend.err;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:$1; keepalive_requests 100000;
    location / { default_type application/json; return 200 '{"ok":true}'; }
    # For load.sh's check that a gateway did the job: the secret injected and
    # the client's key removed (never loaded).
    location = /users/secret-check { default_type application/json;
      if (\$http_x_gateway_secret != "bench-secret") { return 403 '{"secret":false}'; }
      if (\$http_x_api_key) { return 409 '{"key_forwarded":true}'; }
      return 200 '{"ok":true}'; } } }
NGINX
  taskset -c "${2:-0}" nginx -c "$work/backend.conf" -p "$work" & pids+=($!)
  wait_port "$1"
}

# The head every bench config shares: listener, admin, one worker thread, quiet
# process log, the consumer wrk's `x-api-key: bench-key` belongs to.
portcullis_head() { # port admin_port
  cat <<YAML
listen: [{ addr: "127.0.0.1:$1" }]
admin: { addr: "127.0.0.1:$2" }
threads: 1
log: { level: warn }
consumers: [{ name: bench, keys: ["bench-key"] }]
YAML
}

# The bench job: route /users, key checked, secret injected, one nginx backend;
# an extra top-level YAML line (e.g. `limits: {...}`) may be given as $4.
bench_config() { # port admin_port backend_port [extra yaml line]
  portcullis_head "$1" "$2"
  [ -z "${4:-}" ] || echo "$4"
  cat <<YAML
upstreams:
  users:
    peers: ["127.0.0.1:$3"]
    headers: { x-gateway-secret: "bench-secret" }
routes:
  - { name: users, path: /users, upstream: users }
YAML
}

# Portcullis with config file $2, on CPU $3 (default 0); waits for port $1.
start_portcullis() { # port config [cpu]
  taskset -c "${3:-0}" "$BIN" -c "$2" >/dev/null 2>"$2.err" & pids+=($!)
  wait_port "$1"
}

# The floor on port $1 in front of backend port $2, on CPU $3 (default 0).
start_floor() { # port backend_port [cpu]
  taskset -c "${3:-0}" "$FLOOR" "127.0.0.1:$1" "127.0.0.1:$2" >/dev/null 2>"$work/floor.err" & pids+=($!)
  wait_port "$1"
}

# N (default 1) bench-job requests, one after another on one keep-alive
# connection to port $1, each read until its whole answer is in.
keepalive_requests() { # port [n]; REQ_PATH and REQ_AUTH (a header line) for another job
  python3 - "$1" "${2:-1}" "${REQ_PATH:-/users/1}" "${REQ_AUTH:-x-api-key: bench-key}" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
req = f"GET {sys.argv[3]} HTTP/1.1\r\nhost: a\r\n{sys.argv[4]}\r\n\r\n".encode()
for _ in range(int(sys.argv[2])):
    s.sendall(req)
    data = b""
    while b'{"ok":true}' not in data:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("the gateway closed the connection")
        data += chunk
PY
}

# wrk on CPU 1 for SECS seconds with CONNS connections -> req/s.
wrk_rps() { # url
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" -H 'x-api-key: bench-key' "$1" | awk '/Requests\/sec/ {print $2}'
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { python3 -c "print(f'{$1/$2:.3f}')"; }

# An RS256 key made for this run, its JWKS in $work/jwks.json (issuer `bench`,
# audience `api`), and a token signed by it valid for an hour, printed.
bench_token() {
  python3 - "$work" <<'PY'
import base64, json, subprocess, sys, time
work = sys.argv[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
subprocess.run(["openssl", "genrsa", "-out", f"{work}/jwt.key", "2048"], check=True, capture_output=True)
mod = subprocess.run(["openssl", "rsa", "-in", f"{work}/jwt.key", "-noout", "-modulus"],
                     check=True, capture_output=True, text=True).stdout.strip().split("=", 1)[1]
jwk = {"kty": "RSA", "kid": "bench-1", "alg": "RS256", "n": b64(bytes.fromhex(mod)), "e": "AQAB"}
open(f"{work}/jwks.json", "w").write(json.dumps({"keys": [jwk]}))
head = b64(json.dumps({"alg": "RS256", "kid": "bench-1", "typ": "JWT"}).encode())
now = int(time.time())
body = b64(json.dumps({"iss": "bench", "sub": "bench-client", "aud": "api", "iat": now, "exp": now + 3600}).encode())
sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", f"{work}/jwt.key", "-binary"],
                     input=f"{head}.{body}".encode(), check=True, capture_output=True).stdout
open(f"{work}/jwt.token", "w").write(f"{head}.{body}.{b64(sig)}")
PY
  cat "$work/jwt.token"
}

# bench_config plus a cache and a cached route (/cached) on the same upstream:
# every request to it after the first is a hit.
bench_cache_config() { # port admin_port backend_port
  bench_config "$1" "$2" "$3" "cache: { max_size: 64MiB }"
  echo "  - { name: cached, path: /cached, upstream: users, cache: { ttl: 600s } }"
}

# The `auth: jwt` twin of bench_config: the same job, the client's bearer
# token (bench_token) in place of the key.
bench_jwt_config() { # port admin_port backend_port
  bench_config "$1" "$2" "$3" "auth:
  jwt:
    issuers: [{ issuer: bench, audiences: [api], jwks_file: \"$work/jwks.json\", algorithms: [RS256] }]"
  echo "  - { name: tokens, path: /tokens, upstream: users, auth: jwt }"
}
