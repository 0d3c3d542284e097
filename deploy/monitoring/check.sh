#!/usr/bin/env bash
# Checks deploy/monitoring/: `promtool check rules` and `promtool test rules` pass, the
# PrometheusRule equals rules.yml, every alert has a summary, a description and a runbook section
# in deploy/README.md, and every metric the rules and the dashboard use is exported by the real
# binary after real traffic (http-edge with the embedded core, carrier secrets configured, each
# carrier's webhooks signed, plus a bad and unauthenticated ones; then /metrics is scraped).
#
#   bash deploy/monitoring/check.sh [EDGE_BIN]     (default target/debug/http-edge)
set -euo pipefail

EDGE_BIN=${1:+$(realpath -m -- "$1")}
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
EDGE_BIN=${EDGE_BIN:-target/debug/http-edge}
HERE=deploy/monitoring
VENV=.venv-monitoring

fail() { echo "deploy/monitoring/check.sh: FAILED: $*" >&2; exit 1; }
[[ -x $EDGE_BIN ]] || fail "$EDGE_BIN is not built (cargo build -p http-edge)"

# --- tools ------------------------------------------------------------------------------------
if ! command -v promtool >/dev/null; then
  # Debian's prometheus package (~19 MB download, ~96 MB installed, JavaScript libraries for the
  # web UI as dependencies) is the only packaged promtool.
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
fi
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "PyYAML==6.0.2"
fi
PYTHON=$VENV/bin/python

# --- the rules, alone -------------------------------------------------------------------------
promtool check rules "$HERE/rules.yml" || fail "promtool check rules $HERE/rules.yml"
promtool test rules "$HERE/tests.yml" || fail "promtool test rules $HERE/tests.yml"
"$PYTHON" "$HERE/check_metrics.py" static

# --- the metrics they use exist ---------------------------------------------------------------
WORK=$(mktemp -d)
EDGE_PID=
cleanup() {
  if [[ -n $EDGE_PID ]]; then
    kill "$EDGE_PID" 2>/dev/null || true
    wait "$EDGE_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
read -r HTTP_PORT GRPC_PORT ADMIN_PORT < <("$PYTHON" - <<'PY'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
PY
)
BASE=http://127.0.0.1:$HTTP_PORT
# Test secrets, the same as check_metrics.py signs with.
# The core publishes to an SQS endpoint that is down (nothing listens on port 1), as during an
# outage: events are acknowledged from the outbox, so the outbox and circuit metrics the rules use
# are exported with samples, and so are all the others.
SQS=http://127.0.0.1:1/123456789012
AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_ENDPOINT_URL=http://127.0.0.1:1 \
"$EDGE_BIN" --embedded-core --listen "127.0.0.1:$HTTP_PORT" --grpc-listen "127.0.0.1:$GRPC_PORT" \
  --publisher sqs --inbound-queue "$SQS/in" --status-queue "$SQS/st" --quarantine-queue "$SQS/q" \
  --admin-listen "127.0.0.1:$ADMIN_PORT" --data-dir "$WORK/data" --public-base-url "$BASE" \
  --bandwidth-basic-auth bw:bw-secret --inteliquent-tokens iq-token \
  --twilio-auth-tokens tw-token --messagebird-signing-keys mb-key \
  >"$WORK/edge.log" 2>&1 &
EDGE_PID=$!
for _ in $(seq 100); do
  curl -fsS "$BASE/readyz" >/dev/null 2>&1 && break
  kill -0 "$EDGE_PID" 2>/dev/null || { cat "$WORK/edge.log" >&2; fail "http-edge exited at start-up"; }
  sleep 0.1
done
curl -fsS "$BASE/readyz" >/dev/null || { cat "$WORK/edge.log" >&2; fail "http-edge never became ready"; }

"$PYTHON" "$HERE/check_metrics.py" traffic "$BASE" || { tail -n 30 "$WORK/edge.log" >&2; fail "traffic"; }
curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" >"$WORK/metrics.txt" || fail "scraping /metrics"

# Self-test: a rule naming a metric nobody exports must fail the check.
"$PYTHON" - "$HERE/rules.yml" "$WORK/bogus.yml" <<'PY'
import sys, yaml
rules = yaml.safe_load(open(sys.argv[1]))
rules["groups"][0]["rules"][0]["expr"] = "sum(rate(ingest_no_such_metric_total[5m])) > 0"
yaml.safe_dump(rules, open(sys.argv[2], "w"))
PY
if "$PYTHON" "$HERE/check_metrics.py" exported "$WORK/metrics.txt" "$WORK/bogus.yml" \
  >"$WORK/selftest.log" 2>&1; then
  cat "$WORK/selftest.log" >&2
  fail "self-test: a rule over ingest_no_such_metric_total passed the check"
fi
grep -q ingest_no_such_metric_total "$WORK/selftest.log" \
  || { cat "$WORK/selftest.log" >&2; fail "self-test: failed, but not for that"; }
echo "deploy/monitoring/check.sh: self-test: a rule over an unexported metric fails the check"

"$PYTHON" "$HERE/check_metrics.py" exported "$WORK/metrics.txt" \
  || { grep '^ingest_' "$WORK/metrics.txt" | cut -c1-120 >&2; fail "rules or dashboard use metrics the binary does not export"; }
echo "deploy/monitoring/check.sh: ok"
