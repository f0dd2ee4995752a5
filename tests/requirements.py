"""What a test needs from the machine (root, BPF, BIRD, kubectl, grpcurl, ...).

A check returns '' when the requirement is met, else why not. An unmet requirement skips
the test with that reason on a developer's machine, and fails it under CI=true: CI runs as
root with everything scripts/setup.sh installs, so a skip there means a test silently did
not run. Every skip in tests/ goes through here (tests/test_requirements.py checks that).

    pytestmark = [pytest.mark.root, requires(root, BIRD)]   # every test of a module
    require(KUBECTL)                                         # inside a test or fixture
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from typing import NoReturn

import pytest

Check = Callable[[], str]


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def root() -> str:
    return "" if os.geteuid() == 0 else "needs root (network namespaces, BPF, bpffs mounts)"


def bpffs_mounted() -> str:
    """bpffs at /sys/fs/bpf, where the agent pins by default (scripts/setup.sh mounts it)."""
    return "" if os.path.ismount("/sys/fs/bpf") else "needs bpffs mounted at /sys/fs/bpf"


def tool(name: str, *, package: str) -> Check:
    """A command on PATH (or an executable at the path given as name)."""

    def check() -> str:
        return "" if shutil.which(name) else f"needs {name} ({package})"

    return check


def module(name: str, *, package: str) -> Check:
    """An importable Python module."""

    def check() -> str:
        found = importlib.util.find_spec(name) is not None
        return "" if found else f"needs the Python module {name} ({package})"

    return check


def unmet(reason: str) -> NoReturn:
    if on_ci():
        pytest.fail(f"{reason}; CI=true, so a missing requirement fails", pytrace=False)
    # Reported at the test, not at this line, as a skipif mark would be.
    raise pytest.skip.Exception(reason, _use_item_location=True)


def require(*checks: Check) -> None:
    """Skip the running test (fail it under CI=true) on the first unmet requirement."""
    for check in checks:
        if reason := check():
            unmet(reason)


def requires(*checks: Check) -> pytest.MarkDecorator:
    """require() as a mark, for a test or a module's pytestmark: checked as each test sets
    up (tests/conftest.py), before its fixtures build anything."""
    # with_args: a mark called with one callable would decorate it instead.
    return pytest.mark.requires.with_args(*checks)


# What the suite uses, with where it comes from.
BIRD = tool("bird", package="Debian bird2")
BIRDC = tool("birdc", package="Debian bird2")
IPROUTE = tool("ip", package="Debian iproute2")
TCPDUMP = tool("tcpdump", package="Debian tcpdump")
ETHTOOL = tool("ethtool", package="Debian ethtool")
NGINX = tool("nginx", package="Debian nginx-light")
PROMTOOL = tool("promtool", package="Debian prometheus")
PROMETHEUS = tool("prometheus", package="Debian prometheus")
# Debian 12 does not package kubectl; the machine image has one (google-cloud-cli's).
KUBECTL = tool("kubectl", package="the machine image's kubectl")
EXABGP = module("exabgp", package="the bgp extra: pip install -e '.[bgp]'")
