# syntax=docker/dockerfile:1
# cae-proxy container image: `docker build -t cae-proxy .` at the repository root (BuildKit).
# Configuration goes in /etc/cae-proxy/ (mount a file or a ConfigMap there), state in
# /var/lib/cae-proxy (mount a volume: it holds the revocation store). See docs/deploy/README.md.
#
# The runtime image is distroless (no shell, no package manager): glibc of the same Debian release
# as the build stage, CA certificates, /etc/passwd with the `nonroot` user (65532), tzdata.
# Pin both base images by digest for reproducible builds, e.g.
#   --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:<digest>

ARG RUST_VERSION=1.88
ARG BUILD_IMAGE=rust:${RUST_VERSION}-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---- build ------------------------------------------------------------------------------
FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY . .
# The cargo registry and target directory are cache mounts: rebuilds after a source change
# reuse compiled dependencies. The binary is copied out of the cache in the same step, with the
# directories the runtime image needs (it has no shell to create them).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cae-proxy \
 && install -D -m 0755 target/release/cae-proxy /out/bin/cae-proxy \
 && install -d -m 0755 /out/etc/cae-proxy \
 && install -d -m 0750 /out/var/lib/cae-proxy

# ---- runtime ----------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
ARG RUNTIME_IMAGE
LABEL org.opencontainers.image.title="cae-proxy" \
      org.opencontainers.image.description="Continuous Access Evaluation gateway: validates bearer JWTs, enforces shared-signals revocations, answers claims challenges" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.documentation="docs/deploy/README.md" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
COPY --from=build /out/bin/cae-proxy /usr/local/bin/cae-proxy
COPY --from=build /out/etc/cae-proxy /etc/cae-proxy
COPY --from=build --chown=65532:65532 /out/var/lib/cae-proxy /var/lib/cae-proxy
# Example configurations, for reference only (the image ships no active configuration).
COPY config/ /usr/share/doc/cae-proxy/examples/

ENV CAE_PROXY_CONFIG=/etc/cae-proxy/cae-proxy.toml
# Proxy, signals (SSF push) and admin listeners as in the examples; the file decides.
EXPOSE 8080 8090 9901
# Numeric, so that Kubernetes' runAsNonRoot can verify it: distroless's `nonroot` user.
USER 65532:65532
WORKDIR /var/lib/cae-proxy
# SIGTERM drains in-flight requests for [server] shutdown_grace (default 30 s), then exits 0;
# give the container a stop timeout above that. SIGHUP reloads the configuration.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cae-proxy"]
CMD ["run", "--config", "/etc/cae-proxy/cae-proxy.toml"]
