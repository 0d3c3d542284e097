#!/usr/bin/env bash
# P3 under load: the embedded default's resident memory while its in-memory dedupe fills to the
# default --dedupe-capacity (1M keys) and then evicts, under wrk -t1 -cN (the spec's Bandwidth
# inbound webhook, Basic auth on, each webhook a new event).
#
#   bash http-edge/benches/p3.sh [WEBHOOKS=1200000] [CONNECTIONS=32] [CHUNK_SECONDS=10]
#
# Runs wrk for CHUNK_SECONDS at a time until WEBHOOKS 200s, printing after each run the webhooks
# so far and the edge's resident memory (now and its peak, VmHWM); then checks that every 200 is
# in the spool exactly once and prints the peak against the goal (≤ 64 MiB per process).
# EDGE_BIN=path measures another build of http-edge.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
webhooks=${1:-1200000}
connections=${2:-32}
chunk=${3:-10}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
[ -n "${EDGE_BIN:-}" ] || cargo build --release --locked -p http-edge --bin http-edge 2>&1 | grep -v '^ *Compiling' || true
script=http-edge/benches/bandwidth.lua
source http-edge/benches/common.sh
work=$(mktemp -d)
edge_pid=
trap '[ -z "$edge_pid" ] || kill $edge_pid 2>/dev/null || true; rm -rf "$work"' EXIT

start_edge "$work"
mib() { awk "/^$1:/ {print int(\$2 / 1024)}" "/proc/$edge_pid/status"; }
echo "edge started: RSS $(mib VmRSS) MiB"

acked=0
runs=0
while [ "$acked" -lt "$webhooks" ]; do
    runs=$((runs + 1))
    out="$work/run$runs.txt"
    WRK_RUN=p3r$runs wrk -t1 -c"$connections" -d"${chunk}s" -s $script "http://127.0.0.1:$http" >"$out"
    non200=$(field non200 "$out"); [ "$non200" = 0 ] || { cat "$out"; echo "FAIL: $non200 non-200 replies"; exit 1; }
    acked=$((acked + $(field requests "$out")))
    printf 'after %9d webhooks (%6.0f req/s): edge RSS %4d MiB, peak %4d MiB\n' \
        "$acked" "$(field rate "$out")" "$(mib VmRSS)" "$(mib VmHWM)"
done
peak=$(mib VmHWM)
kill -TERM $edge_pid; wait $edge_pid || true
check_spool "$work/data/inbound.jsonl" "$acked" "$((connections * runs))"
verdict="not met"; [ "$peak" -le 64 ] && verdict=met
echo "edge peak RSS over $acked webhooks (the dedupe holding up to its default capacity of 1M): $peak MiB; goal ≤ 64 MiB: $verdict"
