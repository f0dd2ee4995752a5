"""Writes whose answer goes straight back into the cluster state, so the next round
never decides on the state from before its own writes.

A Service's status is written as a JSON merge patch on the status subresource carrying
metadata.resourceVersion: a decision made on a stale view fails with 409 (retried from a
fresh read) instead of overwriting newer state. A merge patch replaces a list whole, so a
writer of status.conditions sends every condition, the other writers' as it read them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

from weir.controller.core.objects import Service
from weir.controller.core.state import ClusterState
from weir.controller.kube.api import SERVICES, KubeAPI, WriteFailure, write


async def write_back(
    state: ClusterState, what: str, call: Awaitable[dict[str, Any]]
) -> dict[str, Any] | None:
    """The object as written (into the state too); {} when it is gone; None when the write
    failed (logged by api.write; to be retried)."""
    obj = await write(call, what)
    if obj is WriteFailure.GONE:
        return {}
    if isinstance(obj, WriteFailure):
        return None
    state.upsert(obj)
    return obj


async def patch_service_status(
    api: KubeAPI, state: ClusterState, svc: Service, status: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Merge status into the Service's, if it is still the version svc was read from."""
    ns, name = svc.key
    patch = {"metadata": {"resourceVersion": svc.resource_version}, "status": status}
    call = api.patch(SERVICES, ns, name, patch, subresource="status")
    return await write_back(state, f"Service {ns}/{name}", call)
