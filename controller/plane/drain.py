"""Draining a node (weirctl node drain / undrain, the SetNodeDrain RPC): where it is kept.

A drained node keeps its peers and advertisements in its BGPConfig with `drain` set
(controller/core/bgpconfig.py): its agent withdraws every route and keeps forwarding, so the
routers move its flows to the other nodes without breaking them.

- Kubernetes source (AnnotationDrainer, controller/kube/drain.py): the RPC patches the Node
  annotation `weir.dev/drain: "true"` (removes it to undrain). The annotation is the durable
  form: it survives controller restarts, and every replica sees it through its watch, so the
  drained set is the same on all of them whichever replica took the call.
  `kubectl annotate node NODE weir.dev/drain=true` does the same thing.
- File source (MemoryDrainer): the RPC keeps the node in ClusterState's in-memory drained
  set; a restart forgets it. The same annotation in the Node manifest is the durable form
  there, and such a node cannot be undrained by RPC (edit the manifest).
"""

from __future__ import annotations

from typing import Protocol

import grpc
from weir.common.logs import get_logger
from weir.controller.core.objects import ANN_DRAIN
from weir.controller.core.state import ClusterState

log = get_logger("weir.drain")


class DrainError(Exception):
    """The drain setting could not be changed; code is the gRPC status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Drainer(Protocol):
    async def set(self, node: str, drain: bool) -> None:
        """Record the setting (raises DrainError); the state changes, a version follows."""


class MemoryDrainer:
    """File source: in memory, next to the manifests' annotations."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    async def set(self, node: str, drain: bool) -> None:
        known = self.state.inputs().nodes.get(node)
        if known is None:
            raise DrainError(grpc.StatusCode.NOT_FOUND, f"no Node {node!r} in the manifests")
        if not drain and known.drain:
            raise DrainError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Node {node} is drained by its {ANN_DRAIN} annotation in the manifests; "
                "remove it there",
            )
        self.state.set_drained(node, drain)
        log.info("node drain set in memory (file source: lost on restart)", node=node, drain=drain)
