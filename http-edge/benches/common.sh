# Helpers shared by p1.sh and p3.sh (sourced from the repository's root).
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { sed -n "s/.*RESULT.* $1=\([0-9.]*\).*/\1/p" "$2"; }
# CPU time (user + system) of a process so far, in /proc's ticks (100 per second).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# The machine's idle (+ iowait), stolen (time the hypervisor gave these CPUs to someone else) and
# total CPU time so far, in ticks: a run with much steal measured a slower machine.
host_ticks() { awk '/^cpu / {print $5 + $6, $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
wait_ready() { for _ in $(seq 200); do curl -sf "$1" >/dev/null && return 0; sleep 0.05; done; echo "not ready: $1"; exit 1; }
# Every 200 in the spool exactly once: check_spool SPOOL ACKED IN_FLIGHT fails on an event spooled
# twice, or on fewer events than 200s (or more than 200s + IN_FLIGHT: calls a run ended with,
# whose reply wrk did not wait for, may be spooled too).
check_spool() {
    python3 - "$@" <<'PY'
import json, sys
ids = [json.loads(l)["eventId"] for l in open(sys.argv[1])]
acked, in_flight = int(sys.argv[2]), int(sys.argv[3])
print(f"spool: {len(ids)} events, {len(set(ids))} distinct event ids; 200 replies counted by wrk: {acked}")
if len(set(ids)) != len(ids):
    sys.exit("FAIL: an event is in the spool twice")
if not acked <= len(ids) <= acked + in_flight:
    sys.exit(f"FAIL: {acked} acknowledged but {len(ids)} spooled")
PY
}
# The whole path under test: http-edge with the core embedded, Bandwidth Basic auth on
# (bench:bench, as bandwidth.lua sends), the per-client rate limit on but far above wrk's rate
# (wrk is one client), default log level; its spool in DIR/data, its log in DIR/edge.log.
# start_edge DIR sets http, grpc, admin (ports) and edge_pid, and returns once it is ready.
# EDGE_BIN=path runs another build.
start_edge() {
    http=$(port); grpc=$(port); admin=$(port)
    "${EDGE_BIN:-target/release/http-edge}" --embedded-core --bandwidth-basic-auth bench:bench \
        --rate-limit-per-sec 10000000 --rate-limit-burst 10000000 \
        --listen 127.0.0.1:$http --grpc-listen 127.0.0.1:$grpc --admin-listen 127.0.0.1:$admin \
        --data-dir "$1/data" 2>"$1/edge.log" &
    edge_pid=$!
    wait_ready "http://127.0.0.1:$http/readyz"
}
