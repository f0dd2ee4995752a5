"""Type-check the `weir` package with mypy (configured in pyproject.toml).

mypy finds a package's modules under one folder, and setup.py maps several folders into
`weir`: so it checks a tree of links laid out as an install maps them, and its report names
the repository's files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from package_tree import ROOT, package_tree


def main() -> int:
    with package_tree() as tree:
        env = {**os.environ, "MYPYPATH": str(tree)}
        mypy = Path(sys.executable).with_name("mypy")
        args = [str(mypy), "--config-file", str(ROOT / "pyproject.toml"), "-p", "weir"]
        run = subprocess.run(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for line in run.stdout.splitlines():
            if line.startswith(str(tree)):
                path, sep, rest = line.partition(":")
                line = f"{Path(path).resolve().relative_to(ROOT)}{sep}{rest}"
            print(line)
        return run.returncode


if __name__ == "__main__":
    sys.exit(main())
