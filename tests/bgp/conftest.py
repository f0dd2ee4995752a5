"""Fixtures for the BGP tests: root + namespaces, BIRD 2 and ExaBGP 5 must be there."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator

import pytest
from weir.lab.netns import Topology, cleanup_prefix

PREFIX = "wbgt"  # the speaker tests: namespaces, links and bridges (wbgb: bench, wbgf: failover)


def _missing() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("bird", "birdc", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool} (Debian bird2 / iproute2)"
    if importlib.util.find_spec("exabgp") is None:
        return "needs ExaBGP 5 (pip install -e '.[bgp]')"
    return ""


@pytest.fixture
def topo() -> Iterator[Topology]:
    if reason := _missing():
        pytest.skip(reason)
    cleanup_prefix(PREFIX)
    with Topology(PREFIX) as t:
        yield t
