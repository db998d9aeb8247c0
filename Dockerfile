# Portcullis container image.
#
#   docker build -t portcullis .
#   docker run --rm -p 8000:8000 \
#     -v "$PWD/my-gateway.yaml:/etc/portcullis/gateway.yaml:ro" \
#     -e WEB_API_KEY=... -e GATEWAY_SECRET=... portcullis
#
# The bundled /etc/portcullis/gateway.yaml is the annotated reference: its peers
# are on 127.0.0.1, i.e. inside the container, so mount your own config. To try
# the gateway without any backend:
#   docker run --rm -p 8000:8000 portcullis demo --listen 0.0.0.0:8000
#
# The admin listener (metrics) defaults to 127.0.0.1:9100, which is unreachable
# from outside the container: to scrape it, set `admin: { addr: 0.0.0.0:9100 }` in
# your config and publish 9100 only on a private network (it has no auth).
# `docker stop` waits 10s by default, as long as the default `shutdown_grace`:
# give it a little more (`--stop-timeout 15`) so draining is never cut short.

############################ builder ############################
FROM rust:1-bookworm AS builder

# cmake: libz-ng-sys and friends; pkg-config + libssl-dev: openssl-sys (dynamic).
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# Dependencies first, with stub sources, so this layer (the slow part: Pingora
# and its C dependencies) is rebuilt only when Cargo.toml or Cargo.lock change.
# The manifest names a [[bench]] at benches/router.rs, so it needs a stub too.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/router.rs \
    && cargo build --release --locked \
    && rm -rf src benches

# The real sources. src/demo.rs embeds conf/demo.yaml with include_str!.
COPY src/ src/
COPY conf/ conf/
COPY benches/ benches/
# COPY keeps the files' own mtimes, which may be older than the stub build:
# touch them and drop the stub's fingerprints so cargo rebuilds our crate.
RUN touch src/main.rs src/lib.rs \
    && rm -rf target/release/.fingerprint/portcullis-* \
    && cargo build --release --locked \
    && strip target/release/portcullis

############################ runtime ############################
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system portcullis \
    && useradd --system --gid portcullis --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin portcullis

COPY --from=builder /build/target/release/portcullis /usr/local/bin/portcullis
COPY conf/ /etc/portcullis/

# Pingora keeps its pid file and upgrade socket in /tmp, writable by anyone.
USER portcullis
EXPOSE 8000 9100

# No curl in -slim: bash's /dev/tcp asks the admin listener's /healthz. This works
# with the default admin address (127.0.0.1:9100, which is inside the container);
# if your config moves `admin`, adjust the port or use --no-healthcheck.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9100 && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["portcullis"]
CMD ["-c", "/etc/portcullis/gateway.yaml"]
