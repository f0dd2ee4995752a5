"""Check the import-linter contracts (pyproject.toml) against the `weir` package.

lint-imports finds modules on disk under their package's folder, and setup.py maps several
folders into `weir`: so it runs on a tree of links laid out as an install maps them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from package_tree import ROOT, package_tree


def main() -> int:
    with package_tree() as tree:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        linter = Path(sys.executable).with_name("lint-imports")
        run = subprocess.run([str(linter), "--no-cache", "--no-logo"], env=env, cwd=ROOT)
        return run.returncode


if __name__ == "__main__":
    sys.exit(main())
