"""What the writers of CRD status (BGPPeer, BGPAdvertisement) share: what is due of what
they want written, with the objects listed by name, and a pass retried at once when it
loses a race."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
from weir.common.logs import get_logger
from weir.controller.kube.api import ApiError, KubeAPI, Resource

log = get_logger("weir.status")

T = TypeVar("T")


async def due_and_listed(
    api: KubeAPI,
    res: Resource,
    desired: Mapping[str, T],
    written: dict[str, T],
    unwritten: T | None,
    *,
    every: bool = False,
) -> tuple[dict[str, T], dict[str, dict[str, Any]]] | None:
    """What of desired differs from what was written (unwritten: as good as nothing
    written), or all of it with every, and the objects as listed now when anything is due;
    None when the list failed. written forgets the objects no longer desired."""
    for gone in set(written) - set(desired):
        del written[gone]
    todo = {n: v for n, v in desired.items() if every or written.get(n, unwritten) != v}
    if not todo:
        return todo, {}
    objs = await list_by_name(api, res)
    return None if objs is None else (todo, objs)


async def list_by_name(api: KubeAPI, res: Resource) -> dict[str, dict[str, Any]] | None:
    """Every object of a cluster-scoped kind by name; None (logged) when the list failed."""
    try:
        items, _ = await api.list_all(res)
    except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
        log.warning("listing failed", kind=res.kind, error=repr(e))
        return None
    return {obj["metadata"]["name"]: obj for obj in items}


async def retried(write: Callable[[], Awaitable[bool]], tries: int) -> bool:
    """write(), again up to `tries` times while it returns False; False if it never did.

    A pass fails mostly on a 409 (the object changed since the list): it goes again at once
    from a fresh list, after a short random pause so that two writers do not collide again
    in step."""
    written = await write()
    for _ in range(tries):
        if written:
            break
        await asyncio.sleep(random.uniform(0.02, 0.2))
        written = await write()
    return written
