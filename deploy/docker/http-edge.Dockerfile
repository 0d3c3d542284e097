# syntax=docker/dockerfile:1
# http-edge: the public HTTP edge for carrier webhooks. Build from the repository root:
#   docker build -f deploy/docker/http-edge.Dockerfile -t http-edge .

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# --- skeleton: the workspace with every .rs file stubbed -------------------------------------
# The manifests, Cargo.lock, build scripts and protos are kept as they are; every other .rs file
# becomes an empty library or an empty `main` (with a doc line, for `missing_docs`). This covers
# every member, bin, test and bench target declared in a Cargo.toml without listing them here.
# Docker caches `COPY --from=skeleton` by content, so the dependency layer is rebuilt only when a
# manifest, the lock file or a proto changes (or a source file is added or removed), not on
# every edit. (This is what cargo-chef does, without the extra tool.)
FROM ${RUST_IMAGE} AS skeleton
WORKDIR /src
COPY . .
RUN set -eu; mkdir /skeleton; \
    find . -path ./target -prune -o -type f \
        \( -name Cargo.toml -o -name Cargo.lock -o -name build.rs -o -name '*.proto' \
           -o -path './.cargo/*' -o -name rust-toolchain.toml \) -print \
    | while read -r f; do mkdir -p "/skeleton/$(dirname "$f")"; cp "$f" "/skeleton/$f"; done; \
    find . -path ./target -prune -o -type f -name '*.rs' ! -name build.rs -print \
    | while read -r f; do mkdir -p "/skeleton/$(dirname "$f")"; \
        case "$f" in */lib.rs) echo '//! stub' > "/skeleton/$f" ;; *) printf '//! stub\nfn main() {}\n' > "/skeleton/$f" ;; esac; \
      done

# --- builder ----------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# Dependencies (and the generated gRPC code) only.
COPY --from=skeleton /skeleton/ ./
RUN cargo build --release --locked -p http-edge --bin http-edge
# The real sources. COPY keeps the build context's modification times, which can be older than
# the stub build above; touch them so cargo does not take the stub artefacts as up to date.
COPY . .
RUN find . -path ./target -prune -o -type f -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p http-edge --bin http-edge \
 && mkdir -p /out/var/lib/carrier-ingest \
 && cp target/release/http-edge /out/http-edge

# --- runtime: glibc + libgcc + CA certificates, no shell, uid/gid 65532 -----------------------
FROM ${RUNTIME_IMAGE}
COPY --from=builder /out/http-edge /usr/local/bin/http-edge
# The spool directory, used only when the core runs embedded in the edge.
COPY --from=builder --chown=65532:65532 /out/var/lib/carrier-ingest /var/lib/carrier-ingest
ENV INGEST_LISTEN=0.0.0.0:8080 \
    INGEST_DATA_DIR=/var/lib/carrier-ingest \
    INGEST_LOG_FORMAT=json
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/http-edge"]
