"""Draining a node with the Kubernetes source: the Node annotation weir.dev/drain (see
controller/plane/drain.py)."""

from __future__ import annotations

import aiohttp
import grpc
from weir.common.logs import get_logger
from weir.controller.core.objects import ANN_DRAIN
from weir.controller.kube.api import NODES, ApiError, KubeAPI
from weir.controller.plane.drain import DrainError

log = get_logger("weir.drain")


class AnnotationDrainer:
    """Kubernetes source: the Node annotation. The state learns it from the watch, as every
    replica does: the answer of the patch is not fed in directly, as an older event of the
    same Node (a kubelet status update) still on its way would then undo it for a moment."""

    def __init__(self, api: KubeAPI) -> None:
        self.api = api

    async def set(self, node: str, drain: bool) -> None:
        patch = {"metadata": {"annotations": {ANN_DRAIN: "true" if drain else None}}}
        try:
            await self.api.patch(NODES, "", node, patch)
        except ApiError as e:
            code = {
                404: grpc.StatusCode.NOT_FOUND,
                403: grpc.StatusCode.PERMISSION_DENIED,
                401: grpc.StatusCode.PERMISSION_DENIED,
            }.get(e.status, grpc.StatusCode.UNAVAILABLE)
            raise DrainError(code, f"patching Node {node}: {e}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise DrainError(grpc.StatusCode.UNAVAILABLE, f"patching Node {node}: {e!r}") from None
        log.info("node drain annotated", node=node, drain=drain)
