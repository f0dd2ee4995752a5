"""The lab's network with Weir running and BGP routing, for a test module to share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from weir.lab.netns import Topology, cleanup_prefix
from weir.lab.stack import Stack
from weir.lab.topology import build


@contextlib.contextmanager
def bgp_lab(prefix: str, tail_lines: int) -> Iterator[Stack]:
    """Everything under namespaces named prefix (what a killed run left removed first);
    each log's last tail_lines printed at the end (shown when a test failed)."""
    cleanup_prefix(prefix)
    with Topology(prefix) as topo:
        stack = Stack(build(topo), topo.workdir(), "bgp")
        stack.weir.tail_lines = tail_lines
        stack.start(progress=lambda _: None)
        yield stack
