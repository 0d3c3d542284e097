#!/usr/bin/env bash
# Load test of the whole path (edge → in-process core → fsynced spool) with wrk, in dev mode,
# with Twilio webhooks; benches/p1.sh is the same path with Bandwidth and Basic auth, measured as
# a ratio of a bare axum handler.
#   bash http-edge/benches/load.sh [DURATION] [CONNECTIONS]
# Builds release binaries, starts http-edge with the core embedded on free ports and a fresh data
# directory, runs wrk, then checks every 200 is in the spool exactly once and reports peak RSS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
duration=${1:-20s}
connections=${2:-64}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release -p http-edge --bin http-edge >/dev/null
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=$(port); grpc=$(port); data=$(mktemp -d)
# As in benches/p1.sh: the default log level, and the per-client rate limit on but far above
# wrk's rate (wrk is a single client address).
target/release/http-edge --dev --rate-limit-per-sec 10000000 --rate-limit-burst 10000000 --listen 127.0.0.1:$http --grpc-listen 127.0.0.1:$grpc \
    --data-dir "$data" 2>"$data/edge.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/readyz" >/dev/null && break; sleep 0.1; done
wrk -t2 -c"$connections" -d"$duration" -s http-edge/benches/webhooks.lua "http://127.0.0.1:$http" | tee "$data/wrk.txt"
rss_kb=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
kill -TERM $pid; wait $pid || true
spooled=$(wc -l < "$data/inbound.jsonl")
unique=$(python3 -c 'import json,sys; print(len({json.loads(l)["eventId"] for l in open(sys.argv[1])}))' "$data/inbound.jsonl")
requests=$(awk '/requests in/ {print $1}' "$data/wrk.txt")
echo "spooled events: $spooled (unique event ids: $unique), wrk requests: $requests, peak RSS: $((rss_kb / 1024)) MiB"
[ "$spooled" = "$unique" ] || { echo "FAIL: duplicate lines in the spool"; exit 1; }
