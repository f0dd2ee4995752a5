"""The lab network (lab/topology.py) with Weir running on it, for tests that share one per
module:

    @pytest.fixture(scope="module")
    def lab() -> Iterator[Stack]:
        with running_lab("wst") as stack:
            yield stack
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from weir.lab.netns import Topology, cleanup_prefix
from weir.lab.stack import Stack
from weir.lab.topology import build


@contextlib.contextmanager
def running_lab(prefix: str, mode: str = "bgp") -> Iterator[Stack]:
    """Started quietly (its logs' tails shown on failure); torn down, namespaces and all."""
    cleanup_prefix(prefix)
    with Topology(prefix) as topo:
        stack = Stack(build(topo), topo.workdir(), mode)
        stack.weir.tail_lines = 30
        stack.start(progress=lambda _: None)
        yield stack
