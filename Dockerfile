# ringside: one image for the sidecar (`ringside --config ...`) and the
# injection webhook (`ringside inject ...`).
#
#   docker build -t ghcr.io/ringside/ringside:0.1.0 .

# --- build -------------------------------------------------------------------
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src examples \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo fetch --locked
COPY src ./src
COPY examples ./examples
RUN cargo build --release --locked --bin ringside \
 && cp target/release/ringside /ringside

# --- runtime -----------------------------------------------------------------
# distroless cc: glibc and libgcc, no shell, nonroot user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /ringside /usr/local/bin/ringside
USER 65532:65532
EXPOSE 8080 9090 7070 8443
ENTRYPOINT ["/usr/local/bin/ringside"]
