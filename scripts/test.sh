#!/usr/bin/env bash
# The test command: sets everything up (idempotent), then runs ruff and the suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k maglev
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${WEIR_VENV:-$PWD/.venv}
"$VENV/bin/ruff" check .
exec "$VENV/bin/python" -m pytest -ra "$@"
