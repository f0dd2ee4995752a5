#!/usr/bin/env bash
# The test command: sets everything up (idempotent), then runs ruff and the suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k maglev
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${WEIR_VENV:-$PWD/.venv}
"$VENV/bin/ruff" check .
# lint-imports (contracts in pyproject.toml) finds modules on disk, under their package's
# folder: it reads a link tree of `weir` as an install maps it (setup.py's PACKAGE_DIRS).
(
    tree=$(mktemp -d)
    trap 'rm -rf "$tree"' EXIT
    "$VENV/bin/python" -c '
import ast, pathlib, sys
setup = ast.parse(pathlib.Path("setup.py").read_text())
dirs = next(ast.literal_eval(n.value) for n in setup.body
            if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "PACKAGE_DIRS")
for name, folder in sorted(dirs.items()):  # "weir" first: the others are links inside it
    link = pathlib.Path(sys.argv[1], *name.split("."))
    if name == "weir":
        link.mkdir()
        for child in pathlib.Path(folder).iterdir():
            (link / child.name).symlink_to(child.resolve())
    else:
        link.symlink_to(pathlib.Path(folder).resolve())
' "$tree"
    PYTHONPATH="$tree" "$VENV/bin/lint-imports" --no-cache --no-logo
)
exec "$VENV/bin/python" -m pytest -ra "$@"
