#!/usr/bin/env bash
# The two-core failover scenario (a core SIGKILLed, or frozen) at scale, on the release build
# (see benches/failover.rs):
#   bash http-edge/benches/failover.sh [EVENTS=8000] [CONCURRENCY=16] [RATE_PER_SEC=600] [RESTART_AFTER_SECS=6] [kill|freeze]
# Needs redis-server (apt-get install -y redis-server) and the loopback addresses 127.0.0.2/3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install -y redis-server)"; exit 1; }
cargo build --release --locked -p ingest-core --bin ingest-core
# The bench runs inside `cargo bench`, which holds the build lock: hand it the core binary.
INGEST_CORE_BIN="$PWD/target/release/ingest-core" cargo bench --locked -p http-edge --bench failover -- "$@"
