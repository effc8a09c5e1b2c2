#!/usr/bin/env bash
# The README's quick start: everything a fresh machine needs, in one command each.
#   bash testnet/quickstart.sh test   # venv + install + lint + type-check + every test suite
#   bash testnet/quickstart.sh up     # venv + install + a local 4-validator testnet
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MEDLEDGER_VENV:-.venv}"
PY="${PYTHON:-python3}"

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[test]"
}

case "${1:-}" in
    test)
        setup
        echo "== ruff"; "$VENV/bin/ruff" check .
        echo "== mypy"; "$VENV/bin/mypy"
        echo "== pytest (all suites, including slow)"
        "$VENV/bin/pytest" -m "" "${@:2}"
        ;;
    up)
        setup
        exec "$VENV/bin/medledger" testnet up --validators "${VALIDATORS:-4}" "${@:2}"
        ;;
    *)
        echo "usage: $0 test|up [args...]" >&2
        exit 2
        ;;
esac
