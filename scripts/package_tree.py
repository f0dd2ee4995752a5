"""The `weir` package laid out on disk as an install maps it.

Tools that find a package's modules under one folder (lint-imports, mypy) cannot follow
setup.py's mapping of several folders into `weir`: they run on a temporary tree of links
built from that mapping (setup.py's PACKAGE_DIRS).
"""

from __future__ import annotations

import ast
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_dirs() -> dict[str, str]:
    """setup.py's PACKAGE_DIRS (import name -> folder), read without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PACKAGE_DIRS":
            return ast.literal_eval(node.value)
    raise SystemExit("setup.py has no PACKAGE_DIRS")


@contextmanager
def package_tree() -> Iterator[Path]:
    """A temporary folder holding `weir/` as an install lays it out; removed on exit."""
    with tempfile.TemporaryDirectory() as tree:
        for name, folder in sorted(package_dirs().items()):  # "weir" first: the rest link in it
            link = Path(tree, *name.split("."))
            if name == "weir":
                link.mkdir()
                for child in (ROOT / folder).iterdir():
                    (link / child.name).symlink_to(child.resolve())
            else:
                link.symlink_to((ROOT / folder).resolve())
        yield Path(tree)
