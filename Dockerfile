# syntax=docker/dockerfile:1
# portcullis: a static-ish Rust binary on distroless (glibc, CA certificates, no shell), running as nonroot.
#   docker build --build-arg GIT_REV=$(git rev-parse --short=12 HEAD) -t ghcr.io/example/portcullis:0.1.0 .
# Base images are pinned by tag. Pin them by digest too in your build (`FROM image:tag@sha256:...`): the
# digests could not be checked from the machine this file was written on (no registry access), so none are
# written here rather than unverified ones. Distroless publishes no version tags: only a digest pins it.
#   docker run --rm -v $PWD/config/portcullis.compose.toml:/etc/portcullis/portcullis.toml:ro portcullis:0.1.0

FROM rust:1.95.0-bookworm AS build
WORKDIR /src
# TLS is rustls with bundled roots: no OpenSSL, no cmake, gcc only. .git is not copied (.dockerignore): pass
# the revision for portcullis_build_info and --version with --build-arg GIT_REV=$(git rev-parse --short=12 HEAD).
ARG GIT_REV=unknown
ENV PORTCULLIS_GIT_REV=$GIT_REV
COPY Cargo.toml Cargo.lock build.rs clippy.toml ./
COPY src ./src
# Declared in Cargo.toml (the bench target, the test-kit workspace member), so the manifest needs them; neither
# is built here.
COPY benches ./benches
COPY testkit ./testkit
# The registry and target caches survive between builds (BuildKit); the binary is copied out of them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin portcullis \
    && install -D -m 0755 target/release/portcullis /out/portcullis

FROM gcr.io/distroless/cc-debian12:nonroot
ARG GIT_REV=unknown
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="portcullis" \
      org.opencontainers.image.description="Envoy ext_authz sidecar: session cookie to IdP-revalidated identity headers" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$GIT_REV" \
      org.opencontainers.image.source="https://github.com/example/portcullis" \
      org.opencontainers.image.documentation="https://github.com/example/portcullis#deploying" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /out/portcullis /usr/local/bin/portcullis
# 65532:65532; the config and secrets are mounted read-only, nothing is written.
USER nonroot:nonroot
# 9001 Check (gRPC, keep it on the pod's loopback or the mesh), 9002 HTTP (/oauth2/, health, metrics).
EXPOSE 9001 9002
ENV PORTCULLIS_CONFIG=/etc/portcullis/portcullis.toml
# No shell or curl in the image: the binary probes its own readiness route (HTTP listener on :9002).
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/portcullis", "healthcheck", "--url", "http://127.0.0.1:9002/readyz"]
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve"]
