"""Fixtures for the BGP tests: root + namespaces, BIRD 2 and ExaBGP 5 must be there."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from weir.lab.netns import Topology, cleanup_prefix

from tests.requirements import BIRD, BIRDC, EXABGP, IPROUTE, require, root

PREFIX = "wbgt"  # the speaker tests: namespaces, links and bridges (wbgb: bench, wbgf: failover)


@pytest.fixture
def topo() -> Iterator[Topology]:
    require(root, BIRD, BIRDC, IPROUTE, EXABGP)
    cleanup_prefix(PREFIX)
    with Topology(PREFIX) as t:
        yield t
