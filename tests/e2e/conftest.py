"""The end-to-end tests' shared lab."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from weir.lab.netns import Topology, cleanup_prefix
from weir.lab.stack import Stack
from weir.lab.topology import build

PREFIX = "wes"


@pytest.fixture(scope="package")
def running() -> Iterator[Stack]:
    """The lab network (lab/topology.py) with Weir running, started quietly (its logs' tails
    shown on failure) once, some 20 s, for the modules that leave it as they found it
    (test_outages, test_pods, test_status: a test that breaks something puts it back); torn
    down, namespaces and all, after the last test of this package."""
    cleanup_prefix(PREFIX)
    with Topology(PREFIX) as topo:
        stack = Stack(build(topo), topo.workdir(), "bgp")
        stack.weir.tail_lines = 30
        stack.start(progress=lambda _: None)
        yield stack
