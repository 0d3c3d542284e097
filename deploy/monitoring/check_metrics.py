#!/usr/bin/env python3
"""Checks deploy/monitoring/ against itself and against what the binaries export.

  check_metrics.py static                      rules.yml == prometheusrule.yaml's spec; every
                                               alert has a summary, a description and a
                                               runbook_url whose anchor is a heading of
                                               deploy/README.md
  check_metrics.py exported METRICS_FILE [RULES [DASHBOARD]]
                                               every metric named in the rules and the dashboard
                                               is a sample name in METRICS_FILE (a scrape of
                                               /metrics after traffic)
  check_metrics.py traffic BASE_URL            sends webhooks of each carrier (signed with the
                                               secrets check.sh configures), a bad one and
                                               unauthenticated ones; checks the replies
"""
import base64
import hashlib
import hmac
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"

# PromQL words that look like metric names but are not (functions, keywords, label names).
NOT_METRICS = {
    "sum", "rate", "max", "min", "count", "by", "and", "or", "unless", "histogram_quantile",
    "le", "carrier", "status", "backend", "kind", "outcome", "label_values", "on", "ignoring",
}


def fail(message):
    print(f"check_metrics.py: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def alerts(rules):
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def static():
    plain = yaml.safe_load((HERE / "rules.yml").read_text())
    crd = yaml.safe_load((HERE / "prometheusrule.yaml").read_text())
    if crd.get("apiVersion") != "monitoring.coreos.com/v1" or crd.get("kind") != "PrometheusRule":
        fail("prometheusrule.yaml is not a monitoring.coreos.com/v1 PrometheusRule")
    if crd.get("spec") != plain:
        fail("prometheusrule.yaml's spec differs from rules.yml: edit both together")
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in README.read_text().splitlines()
        if line.startswith("#")
    }
    names = set()
    for rule in alerts(plain):
        name = rule["alert"]
        if name in names:
            fail(f"alert {name} defined twice")
        names.add(name)
        notes = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not str(notes.get(key, "")).strip():
                fail(f"alert {name} has no {key}")
        anchor = notes["runbook_url"].rpartition("#")[2]
        if anchor != name.lower():
            fail(f"alert {name}: runbook_url anchor #{anchor} is not #{name.lower()}")
        if anchor not in anchors:
            fail(f"alert {name}: deploy/README.md has no heading for #{anchor}")
        if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
            fail(f"alert {name}: severity must be warning or critical")
    print(f"check_metrics.py: {len(names)} alerts: PrometheusRule == rules.yml, each with "
          "summary, description and a runbook section in deploy/README.md")


def referenced(rules_path, dashboard_path):
    """Metric names in the rules' and the dashboard's expressions, with where they are used."""
    exprs = [(f"alert {r['alert']}", r["expr"]) for r in alerts(yaml.safe_load(Path(rules_path).read_text()))]
    dashboard = json.loads(Path(dashboard_path).read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append((f"panel {panel['title']!r}", target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append((f"variable {variable['name']}", query["query"]))
    names = {}
    for where, expr in exprs:
        # Drop label matchers, strings and ranges, then every identifier left that is not
        # followed by "(" (a function) is a metric name or a keyword.
        bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
        bare = re.sub(r"\{[^}]*\}", "", bare)
        bare = re.sub(r"\[[^\]]*\]", "", bare)
        bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)
        for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", bare):
            word = m.group(0)
            is_function = bare[m.end():].lstrip().startswith("(")
            is_variable = m.start() > 0 and bare[m.start() - 1] == "$"
            is_number = m.start() > 0 and (bare[m.start() - 1].isdigit() or bare[m.start() - 1] == ".")
            if word in NOT_METRICS or is_function or is_variable or is_number:
                continue
            names.setdefault(word, set()).add(where)
    return names


def exported(metrics_path, rules_path, dashboard_path):
    text = Path(metrics_path).read_text()
    samples = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            samples.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    if not samples:
        fail(f"{metrics_path} holds no samples")
    names = referenced(rules_path, dashboard_path)
    if len(names) < 4:
        fail(f"found only {sorted(names)} in the rules and the dashboard: the parser is broken")
    # A name is exported when a sample of exactly that name is (histograms export only
    # NAME_bucket/_sum/_count, counters NAME_total): `ingest_publish_duration_seconds` alone would
    # be wrong in a query, and is reported.
    missing = {n: w for n, w in names.items() if n not in samples}
    if missing:
        for name, where in sorted(missing.items()):
            print(f"  {name} (used in {', '.join(sorted(where))}) is not exported", file=sys.stderr)
        fail(f"{len(missing)} metric name(s) in the rules or the dashboard are not exported")
    print(f"check_metrics.py: all {len(names)} metric names used by the rules and the dashboard "
          f"are exported: {', '.join(sorted(names))}")


# --- traffic ------------------------------------------------------------------------------------
# The secrets check.sh starts the edge with (test values only).
BANDWIDTH = ("bw", "bw-secret")
INTELIQUENT_TOKEN = "iq-token"
TWILIO_TOKEN = "tw-token"
MESSAGEBIRD_KEY = "mb-key"


def call(method, url, body=b"", headers=None):
    request = urllib.request.Request(url, data=body if method != "GET" else None, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def traffic(base):
    expected = []

    def expect(what, status, want):
        expected.append((what, status, want))

    for n in range(3):
        bw = json.dumps([{"type": "message-received", "time": "2024-01-15T10:30:00Z", "to": "+15551234567",
                          "message": {"id": f"bw-{n}", "from": "+15559876543", "to": ["+15551234567"], "text": "hi"}}]).encode()
        auth = "Basic " + base64.b64encode(":".join(BANDWIDTH).encode()).decode()
        expect(f"bandwidth {n}", call("POST", f"{base}/bandwidth/15551234567", bw,
                                      {"Content-Type": "application/json", "Authorization": auth}), 200)

        iq = json.dumps({"messageId": f"iq-{n}", "type": "delivery_receipt", "status": "delivered",
                         "timestamp": "2024-01-15T10:30:05Z"}).encode()
        expect(f"inteliquent {n}", call("POST", f"{base}/webhooks/inteliquent", iq,
                                        {"Content-Type": "application/json", "Authorization": f"Bearer {INTELIQUENT_TOKEN}"}), 200)

        mb = json.dumps({"id": f"mb-{n}", "recipient": "15551234567", "originator": "15559876543", "body": "hi"}).encode()
        sig = "sha256=" + hmac.new(MESSAGEBIRD_KEY.encode(), mb, hashlib.sha256).hexdigest()
        expect(f"messagebird {n}", call("POST", f"{base}/messagebird", mb,
                                        {"Content-Type": "application/json", "MessageBird-Signature": sig}), 200)

        params = {"MessageSid": f"SM{n}", "AccountSid": "AC1", "From": "+15559876543", "To": "+15551234567", "Body": "hi"}
        url = f"{base}/twilio"
        signed = url + "".join(k + params[k] for k in sorted(params))
        tsig = base64.b64encode(hmac.new(TWILIO_TOKEN.encode(), signed.encode(), hashlib.sha1).digest()).decode()
        expect(f"twilio {n}", call("POST", url, urllib.parse.urlencode(params).encode(),
                                   {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": tsig}), 200)

    bad = b'[{"type": "message-received", "message": {"id": "bw-bad"}}]'
    auth = "Basic " + base64.b64encode(":".join(BANDWIDTH).encode()).decode()
    expect("bandwidth without a sender", call("POST", f"{base}/bandwidth/15551234567", bad,
                                              {"Content-Type": "application/json", "Authorization": auth}), 400)
    expect("bandwidth unauthenticated", call("POST", f"{base}/bandwidth/15551234567", bad,
                                             {"Content-Type": "application/json"}), 401)
    expect("inteliquent wrong token", call("POST", f"{base}/webhooks/inteliquent", b"{}",
                                           {"Content-Type": "application/json", "Authorization": "Bearer forged"}), 403)
    wrong = [(what, got, want) for what, got, want in expected if got != want]
    for what, got, want in wrong:
        print(f"  {what}: {got}, expected {want}", file=sys.stderr)
    if wrong:
        fail("the traffic did not get the replies it should")
    print(f"check_metrics.py: {len(expected)} webhooks sent, each answered as expected")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "static":
        static()
    elif len(sys.argv) >= 3 and sys.argv[1] == "exported":
        exported(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else HERE / "rules.yml",
                 sys.argv[4] if len(sys.argv) > 4 else HERE / "dashboard.json")
    elif len(sys.argv) == 3 and sys.argv[1] == "traffic":
        traffic(sys.argv[2])
    else:
        fail(__doc__)
