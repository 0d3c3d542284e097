#!/usr/bin/env bash
# P1: the whole path of the embedded default (edge → core → fsynced spool) as a ratio of a bare
# axum handler on the same route and body, both measured in this one run with the same wrk.
#
#   bash http-edge/benches/p1.sh [SECONDS] [CONNECTIONS] [ROUNDS]   (defaults: 10 s, 32, 3)
#
# Both servers run side by side; each round measures, back to back with the same wrk:
# 1. the bare handler (examples/bare_axum.rs): wrk -t1 -cN, its rate;
# 2. http-edge with the core embedded, Bandwidth Basic auth on, the per-client rate limit on (set
#    far above wrk's rate: wrk is one client), default log level: wrk -t1 -cN, its rate, p50/p99;
# and the round's ratio (the machine is shared: the median of the rounds' ratios is the figure).
# 3. then the bare handler and the edge paced at half the edge's median rate: p50/p99;
# then every 200 must be in the spool exactly once, and the peak RSS of the edge is printed, with
# the edge's CPU time (user + system) per webhook in each run and the host's idle and stolen CPU
# time in each run (this is a shared VM: steal makes it a slower machine for that run).
# EDGE_BIN=path measures another build of http-edge (a before/after comparison).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
seconds=${1:-10}
connections=${2:-32}
rounds=${3:-3}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --locked -p http-edge --bin http-edge --example bare_axum 2>&1 | grep -v '^ *Compiling' || true
script=http-edge/benches/bandwidth.lua
source http-edge/benches/common.sh
work=$(mktemp -d)
pids=()
edge_pid=
trap 'for p in "${pids[@]}" $edge_pid; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

# The bare handler and the whole path, both started once.
bare=$(port)
target/release/examples/bare_axum "127.0.0.1:$bare" & pids+=($!)
bare_pid=$!
for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$bare/" && break; sleep 0.05; done
start_edge "$work"

# One wrk run named NAME against URL (paced when WRK_RATE is set), its output in NAME.txt, and
# the edge's and the host's CPU time around it in NAME.cpu and NAME.host. The name is also the
# run's WRK_RUN, which keeps message ids unique across runs.
measure() {
    local name=$1 url=$2 cpu host
    cpu=$(cpu_ticks $edge_pid); host=$(host_ticks)
    WRK_RUN=$name wrk -t1 -c"$connections" -d"${seconds}s" -s $script "$url" >"$work/$name.txt"
    echo "$cpu $(cpu_ticks $edge_pid)" >"$work/$name.cpu"
    echo "$host $(host_ticks)" >"$work/$name.host"
}

# 1 and 2, alternating.
runs=()
for r in $(seq "$rounds"); do
    measure bare$r "http://127.0.0.1:$bare"
    measure path$r "http://127.0.0.1:$http"
    runs+=("path$r")
done
path_rate=$(for r in $(seq "$rounds"); do field rate "$work/path$r.txt"; done | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')

# 3. The same at half that rate; first the bare handler at that rate, for this host's own tail
# latency there (the p99 goal is about ours).
half=$(python3 -c "print(int(float('$path_rate') / 2))")
WRK_RATE=$half measure barehalf "http://127.0.0.1:$bare"
bare_rss=$(awk '/VmHWM/ {print $2}' /proc/$bare_pid/status)
kill $bare_pid; wait $bare_pid 2>/dev/null || true
WRK_RATE=$half measure half "http://127.0.0.1:$http"
edge_rss=$(awk '/VmHWM/ {print $2}' /proc/$edge_pid/status)
curl -sf "http://127.0.0.1:$admin/metrics" >"$work/metrics.txt" || true
kill -TERM $edge_pid; wait $edge_pid || true

# Every 200 in the spool exactly once: no duplicate, nothing missing (a run may end with up to
# CONNECTIONS calls in flight whose reply wrk did not wait for: those may be spooled too).
acked=0
for f in "${runs[@]}" half; do
    non200=$(field non200 "$work/$f.txt"); [ "$non200" = 0 ] || { cat "$work/$f.txt"; echo "FAIL: $non200 non-200 replies ($f)"; exit 1; }
    acked=$((acked + $(field requests "$work/$f.txt")))
done
check_spool "$work/data/inbound.jsonl" "$acked" "$((connections * (rounds + 1)))"
# The spool's group commits over all the runs, from the edge's metrics: the fsync is the floor
# of a webhook's latency, and events per fsync say how well concurrent webhooks share one.
python3 - "$work/metrics.txt" <<'PY'
import sys
series = {}
for l in open(sys.argv[1]):
    if 'journal="spool-inbound"' in l and not l.startswith("#"):
        name, value = l.rsplit(" ", 1)
        series[name.split("{")[0]] = float(value)
syncs = series.get("ingest_journal_sync_duration_seconds_count", 0)
if syncs:
    print(f"spool group commits: {syncs:.0f}, {series.get('ingest_journal_records_total', 0) / syncs:.1f} events "
          f"per fsync, write + fsync {1e3 * series['ingest_journal_sync_duration_seconds_sum'] / syncs:.3f} ms on average")
PY

python3 - "$work" "$bare_rss" "$edge_rss" "$rounds" <<'PY'
import re, statistics, sys
work, bare_rss, edge_rss, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def res(name):
    line = next(l for l in open(f"{work}/{name}.txt") if l.startswith("RESULT"))
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", line)}
def host(name):
    i0, s0, t0, i1, s1, t1 = map(int, open(f"{work}/{name}.host").read().split())
    return f"idle {100 * (i1 - i0) / max(t1 - t0, 1):.0f} %, steal {100 * (s1 - s0) / max(t1 - t0, 1):.0f} %"
def cpu_us(name, requests):
    before, after = map(int, open(f"{work}/{name}.cpu").read().split())
    return (after - before) * 10_000 / max(requests, 1)
ratios = []
for r in range(1, rounds + 1):
    b, p = res(f"bare{r}"), res(f"path{r}")
    ratios.append(p["rate"] / b["rate"])
    print(f"round {r}: bare axum {b['rate']:>8,.0f} req/s (p50 {b['p50_ms']:.2f}, p99 {b['p99_ms']:.2f} ms)"
          f"   whole path {p['rate']:>8,.0f} req/s (p50 {p['p50_ms']:.2f}, p99 {p['p99_ms']:.2f} ms,"
          f" edge CPU {cpu_us(f'path{r}', p['requests']):.0f} µs/webhook)   ratio {ratios[-1]:.3f}")
    print(f"         host CPUs: bare run {host(f'bare{r}')}; whole path run {host(f'path{r}')}")
h, bh = res("half"), res("barehalf")
print(f"whole path paced at half its median rate: {h['rate']:,.0f} req/s  p50 {h['p50_ms']:.2f} ms  p99 {h['p99_ms']:.2f} ms"
      f"  edge CPU {cpu_us('half', h['requests']):.0f} µs/webhook  (host CPUs: {host('half')})")
print(f"bare axum paced at the same rate, just before: {bh['rate']:,.0f} req/s  p50 {bh['p50_ms']:.2f} ms"
      f"  p99 {bh['p99_ms']:.2f} ms (this host's own latency at that rate; host CPUs: {host('barehalf')})")
print(f"ratio (whole path / bare), median of {rounds} rounds = {statistics.median(ratios):.3f}"
      f"   peak RSS: edge {edge_rss // 1024} MiB, bare {bare_rss // 1024} MiB")
PY
