#!/usr/bin/env bash
# Installs the real servers that ingest-core's integration tests start on free ports:
# Debian's redis-server and moto's SQS server (in .venv-moto/ at the repository root).
# Idempotent; runs as root on a fresh Debian machine. Exports nothing, so it can be sourced
# or run: the tests find the binaries on their own (or through MOTO_SERVER / REDIS_SERVER).
# Starts no server: each test binary starts its own.
(
    set -euo pipefail
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

    if ! command -v redis-server >/dev/null 2>&1; then
        echo "services: installing redis-server (apt)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends redis-server >/dev/null
        # Where systemd runs, Debian's package starts an instance on 6379; the tests do not use it.
        if command -v systemctl >/dev/null 2>&1; then
            systemctl disable --now redis-server >/dev/null 2>&1 || true
        fi
    fi

    venv="$root/.venv-moto"
    if [ ! -x "$venv/bin/moto_server" ]; then
        echo "services: installing moto[server] into $venv"
        # Debian's python3 needs python3-venv for ensurepip; other Pythons bring it.
        if ! python3 -m venv "$venv" 2>/dev/null; then
            rm -rf "$venv"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$venv"
        fi
        "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]'
    fi

    echo "services: redis-server at $(command -v redis-server) ($(redis-server --version | awk '{print $3}'))"
    echo "services: moto_server at $venv/bin/moto_server ($("$venv/bin/python" -c 'import moto; print("moto", moto.__version__)'))"
)
