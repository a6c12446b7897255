# syntax=docker/dockerfile:1.7
# ringside: one image for the sidecar (`ringside --config ...`) and the
# injection webhook (`ringside inject ...`).
#
#   docker build -t ghcr.io/ringside/ringside:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) \
#     -t ghcr.io/ringside/ringside:0.1.0 --push .
#
# (examples/kubernetes/README.md, "Build and push the image": the registry,
# the digest to give the chart, what was verified.)
#
# - The build stage runs on the build machine's platform and cross-compiles
#   for the platform buildx asks for (TARGETARCH: amd64 or arm64), so arm64
#   needs no emulation.
# - BuildKit cache mounts keep the cargo registry and target/ between builds:
#   a source edit recompiles ringside, not its dependencies.
# - The binary is built without debug info and stripped (Cargo.toml keeps
#   `debug = 1` for local profiling), and without the `demo` feature (the
#   demo and its hyper client and server: no HTTP stack but pingora's).
# - Base images are pinned by digest: change a tag and its digest together
#   (`docker buildx imagetools inspect <tag>` shows the digest).
# - OCI labels (org.opencontainers.image.*) say what the image is, which
#   version and commit it was built from, and from which base: VERSION,
#   REVISION and CREATED are build args (VERSION: Cargo.toml's, which the
#   chart's appVersion matches).

ARG RUST_IMAGE=rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

# --- build -------------------------------------------------------------------
FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS build
ARG TARGETARCH
# The Rust target and, when it is not the build machine's, Debian's cross
# compiler for it (C code: mimalloc, zlib-ng via cmake, ring). The cargo and
# cc settings for the target go to /cross.env for the build step.
RUN set -eu; \
    case "$TARGETARCH" in \
      amd64) target=x86_64-unknown-linux-gnu; gnu=x86_64-linux-gnu; pkg=x86-64-linux-gnu ;; \
      arm64) target=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu; pkg=aarch64-linux-gnu ;; \
      *) echo "unsupported TARGETARCH: $TARGETARCH (amd64 or arm64)" >&2; exit 1 ;; \
    esac; \
    tools="cmake clang"; \
    if [ "$(uname -m)" != "${target%%-*}" ]; then \
      tools="$tools gcc-$pkg g++-$pkg libc6-dev-$TARGETARCH-cross"; \
    fi; \
    apt-get update; \
    apt-get install -y --no-install-recommends $tools; \
    rm -rf /var/lib/apt/lists/*; \
    rustup target add "$target"; \
    upper=$(echo "$target" | tr 'a-z-' 'A-Z_'); lower=$(echo "$target" | tr - _); \
    { echo "export CARGO_BUILD_TARGET=$target"; \
      echo "export CARGO_TARGET_${upper}_LINKER=$gnu-gcc"; \
      echo "export CC_$lower=$gnu-gcc CXX_$lower=$gnu-g++ AR_$lower=$gnu-ar"; \
    } > /cross.env
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY vendor ./vendor
COPY src ./src
COPY examples ./examples
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eu; \
    . /cross.env; \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
      cargo build --release --locked --no-default-features --bin ringside; \
    cp "target/$CARGO_BUILD_TARGET/release/ringside" /ringside

# --- runtime -----------------------------------------------------------------
# distroless cc: glibc and libgcc, no shell, nonroot user 65532.
FROM ${RUNTIME_IMAGE}
ARG RUNTIME_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://github.com/ringside/ringside
LABEL org.opencontainers.image.title="ringside" \
      org.opencontainers.image.description="HTTP caching sidecar: RFC 9111 caching in memory, shared across replicas on a consistent-hash ring; also its Kubernetes injection webhook (ringside inject)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
COPY --from=build /ringside /usr/local/bin/ringside
USER 65532:65532
EXPOSE 8080 9090 7070 8443
ENTRYPOINT ["/usr/local/bin/ringside"]
