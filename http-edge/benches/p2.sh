#!/usr/bin/env bash
# P2 (see benches/p2.rs): edge → core → SQS at a fixed SQS latency, separate release processes.
#   bash http-edge/benches/p2.sh [SECONDS=10] [CONNECTIONS=128] [SQS_LATENCY_MS=20]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --locked -p ingest-core --bin ingest-core
# The bench runs inside `cargo bench`, which holds the build lock: hand it the core binary.
INGEST_CORE_BIN="$PWD/target/release/ingest-core" cargo bench --locked -p http-edge --bench p2 -- "$@"
