# syntax=docker/dockerfile:1.7
#
# evstream container image.
#
#   docker build -t evstream .
#   docker run --rm -p 8080:8080 -e EVSTREAM_ADMIN_KEY=... evstream serve
#
# librdkafka is compiled from source by rdkafka-sys (its bundled `configure`
# script + make), so the builder only needs a C toolchain, python3 and zlib.

############################
# Build stage
############################
FROM rust:1-bookworm AS builder

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        build-essential \
        pkg-config \
        python3 \
        zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# BuildKit cache mounts keep the cargo registry and the target dir between
# builds; the binary is copied out of the (cached, not-in-image) target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p evstream \
 && install -D -m 0755 target/release/evstream /out/evstream

############################
# Runtime stage
############################
FROM debian:bookworm-slim

# ca-certificates: outbound TLS; zlib1g: librdkafka compression (dynamic libz);
# curl: container healthcheck against GET /ready.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        ca-certificates \
        curl \
        zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group \
        --home-dir /var/lib/evstream --create-home --shell /usr/sbin/nologin \
        evstream

COPY --from=builder /out/evstream /usr/local/bin/evstream

USER evstream
WORKDIR /var/lib/evstream

ENV EVSTREAM_LISTEN=0.0.0.0:8080 \
    RUST_LOG=info
EXPOSE 8080

ENTRYPOINT ["evstream"]
CMD ["serve"]
