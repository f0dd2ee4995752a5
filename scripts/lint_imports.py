"""Check the import-linter contracts (pyproject.toml) against the `weir` package.

lint-imports finds modules on disk under their package's folder, and setup.py maps several
folders into `weir`: so build a temporary tree of links laid out as an install maps them
(setup.py's PACKAGE_DIRS) and run lint-imports on it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_dirs() -> dict[str, str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PACKAGE_DIRS":
            return ast.literal_eval(node.value)
    raise SystemExit("setup.py has no PACKAGE_DIRS")


def main() -> int:
    with tempfile.TemporaryDirectory() as tree:
        for name, folder in sorted(package_dirs().items()):  # "weir" first: the rest link in it
            link = Path(tree, *name.split("."))
            if name == "weir":
                link.mkdir()
                for child in (ROOT / folder).iterdir():
                    (link / child.name).symlink_to(child.resolve())
            else:
                link.symlink_to((ROOT / folder).resolve())
        env = {**os.environ, "PYTHONPATH": tree}
        linter = Path(sys.executable).with_name("lint-imports")
        run = subprocess.run([str(linter), "--no-cache", "--no-logo"], env=env, cwd=ROOT)
        return run.returncode


if __name__ == "__main__":
    sys.exit(main())
