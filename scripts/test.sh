#!/usr/bin/env bash
# The test command: sets everything up (idempotent), then runs ruff (lint and format), the
# import contracts, mypy and the suite. Extra arguments go to pytest, e.g.
# scripts/test.sh -k maglev
# A test whose requirement (root, BPF, BIRD, kubectl, ...) is missing skips, or fails when
# CI=true is set (.ci/run sets it): see tests/requirements.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${WEIR_VENV:-$PWD/.venv}
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/python" scripts/lint_imports.py
"$VENV/bin/python" scripts/typecheck.py
exec "$VENV/bin/python" -m pytest -ra "$@"
