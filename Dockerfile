# syntax=docker/dockerfile:1
# cae-proxy container image: `docker build -t cae-proxy .` at the repository root.
# Configuration goes in /etc/cae-proxy/ (mount a file or a ConfigMap there), state in
# /var/lib/cae-proxy (mount a volume: it holds the revocation store). See docs/deploy/.

ARG RUST_VERSION=1.88
ARG DEBIAN_RELEASE=bookworm

# ---- build ------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The cargo registry and target directory are cache mounts: rebuilds after a source change
# reuse compiled dependencies. The binary is copied out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cae-proxy \
 && install -m 0755 target/release/cae-proxy /usr/local/bin/cae-proxy

# ---- runtime ----------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim
# ca-certificates: system roots for https identity providers, transmitters and upstreams.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 cae \
 && useradd --system --uid 10001 --gid cae --no-create-home \
        --home-dir /var/lib/cae-proxy --shell /usr/sbin/nologin cae \
 && install -d -m 0755 /etc/cae-proxy \
 && install -d -o cae -g cae -m 0750 /var/lib/cae-proxy
COPY --from=build /usr/local/bin/cae-proxy /usr/local/bin/cae-proxy
# Example configurations, for reference only (the image ships no active configuration).
COPY config/ /usr/share/doc/cae-proxy/examples/

ENV CAE_PROXY_CONFIG=/etc/cae-proxy/cae-proxy.toml
# Proxy, signals (SSF push) and admin listeners as in the examples; the file decides.
EXPOSE 8080 8090 9901
USER 10001:10001
WORKDIR /var/lib/cae-proxy
# SIGTERM drains in-flight requests for [server] shutdown_grace (default 30 s), then exits 0;
# give the container a stop timeout above that. SIGHUP reloads the configuration.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cae-proxy"]
CMD ["run", "--config", "/etc/cae-proxy/cae-proxy.toml"]
