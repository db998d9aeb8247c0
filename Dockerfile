# syntax=docker/dockerfile:1.7
# Portcullis container image (BuildKit: `docker build`, `podman build`, `buildah bud`).
#
#   docker build -t portcullis .
#   docker run --rm -p 127.0.0.1:8000:8000 \
#     -v "$PWD/my-gateway.yaml:/etc/portcullis/gateway.yaml:ro" \
#     -e WEB_API_KEY=... -e GATEWAY_SECRET=... portcullis
#
# The bundled /etc/portcullis/gateway.yaml is the annotated reference: its peers
# are on 127.0.0.1, i.e. inside the container, so mount your own config. To try
# the gateway without any backend:
#   docker run --rm -p 127.0.0.1:8000:8000 portcullis demo --listen 0.0.0.0:8000
# deploy/compose.yaml runs the demo with Prometheus and Grafana beside it.
#
# The admin listener (metrics, /readyz, POST /reload) has no authentication and
# defaults to 127.0.0.1:9100, unreachable from outside the container. To scrape it,
# set `admin: { addr: 0.0.0.0:9100 }` in your config and publish 9100 only to the
# scraper's private network (`-p 127.0.0.1:9100:9100`, or a compose network), never
# to the world.
# `docker stop` waits 10s by default, as long as the default `shutdown_grace`:
# give it a little more (`--stop-timeout 15`) so draining is never cut short.
#
# .ci/dockerfile-check (run by .ci/run) builds this stage's context in a scratch
# copy, so a file the build needs but the context leaves out fails CI.

############################ builder ############################
FROM rust:1.95.0-bookworm AS builder

# cmake: libz-ng-sys; pkg-config + libssl-dev: openssl-sys (dynamic).
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
# llvm-profdata, of the compiler's own LLVM, for the profile-guided build.
RUN rustup component add llvm-tools

WORKDIR /build
# The whole context (.dockerignore leaves out target/, .git/ and the like): no
# per-target stubs to keep in step with Cargo.toml. The cache mounts keep the
# registry and the compiled dependencies between builds instead, so a change to
# our sources rebuilds only our crate (twice: benches/pgo_build.sh builds the
# gateway instrumented, trains it on loopback, and builds it with the profile,
# the release build README "Performance" measures).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    bash benches/pgo_build.sh /out/portcullis \
    && strip /out/portcullis

############################ runtime ############################
FROM debian:12.12-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system portcullis \
    && useradd --system --gid portcullis --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin portcullis

COPY --from=builder /out/portcullis /usr/local/bin/portcullis
COPY conf/ /etc/portcullis/

# Pingora keeps its pid file and upgrade socket in /tmp, writable by anyone.
USER portcullis
EXPOSE 8000 9100

# Healthy once ready: every listener accepts and the config is in force
# (/readyz), not merely alive. No curl in -slim: bash's /dev/tcp asks the admin
# listener, at its default 127.0.0.1:9100 inside the container; if your config
# moves `admin`, adjust the port or run with --no-healthcheck.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9100 && printf 'GET /readyz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["portcullis"]
CMD ["-c", "/etc/portcullis/gateway.yaml"]
