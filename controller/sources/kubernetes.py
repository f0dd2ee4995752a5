"""The Kubernetes source: list, then watch, every kind Weir reads, into a StateSink.

One reflector per kind, as client-go's: list (paginated) and hand the whole list to
`sink.replace`, then watch from the list's resourceVersion with bookmarks, feeding each event
to `sink.upsert` / `sink.delete` and remembering the resourceVersion of every event and
bookmark. When the server ends a watch, watch again from there. When the resourceVersion is
too old (410 Gone, as an ERROR event or as an HTTP status), relist: the state compares the
relist with what it has, so a relist that changes nothing makes no new snapshot version.

A watch that goes quiet (no event and no bookmark for `quiet_after` seconds, while the API
server sends a bookmark about every minute) is taken for dead: a load balancer or a network
that stopped forwarding without closing the connection. Its connection is dropped and the
kind relisted, so the controller is blind for that long at most, not until the watch's own
timeout (five to ten minutes).
Other failures (server down, 5xx, 429, broken streams, garbage) back off with jitter and
retry, while the state keeps the last good objects, so the controller keeps serving them. A
kind that cannot be listed is reported through the sink's source errors (weirctl errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from weir.common.logs import get_logger
from weir.common.pb import pb
from weir.controller.kube.api import (
    BGP_ADVERTISEMENTS,
    BGP_PEERS,
    ENDPOINT_SLICES,
    IP_POOLS,
    NAMESPACES,
    NODES,
    SECRETS,
    SERVICES,
    ApiError,
    KubeAPI,
    Resource,
    read_event,
)
from weir.controller.sources.base import StateSink

log = get_logger("weir.source.kubernetes")
_T = TypeVar("_T")

# Namespaces are read for the pools' namespaceSelector (IPAM); reduce does not use them.
CLUSTER_RESOURCES = (
    SERVICES,
    ENDPOINT_SLICES,
    NODES,
    IP_POOLS,
    BGP_PEERS,
    BGP_ADVERTISEMENTS,
    NAMESPACES,
)


@dataclass
class Backoff:
    """Exponential backoff with jitter: each wait is in [d/2, d], d doubling up to cap."""

    base: float = 0.5
    cap: float = 30.0
    attempts: int = 0

    def next_delay(self) -> float:
        d = min(self.cap, self.base * 2**self.attempts)
        self.attempts += 1
        return d / 2 + random.uniform(0, d / 2)

    def reset(self) -> None:
        self.attempts = 0


@dataclass(frozen=True)
class Watched:
    resource: Resource
    namespace: str = ""  # "" = all namespaces (or a cluster-scoped kind)


@dataclass
class _Reflector:
    watched: Watched
    rv: str = ""  # where the next watch starts; "" = list first
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)  # resync() callers


class KubernetesSource:
    """Implements sources.base.Source over the Kubernetes API.

    secrets_namespace: Secrets (BGP passwords) are read from this namespace only, so the
    controller needs no cluster-wide Secret access.
    """

    def __init__(
        self,
        api: KubeAPI,
        secrets_namespace: str,
        *,
        page_size: int = 500,
        watch_timeout: tuple[int, int] = (300, 600),
        quiet_after: float = 120.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        watched: Sequence[Watched] | None = None,
    ) -> None:
        self.api = api
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.quiet_after = quiet_after
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        if watched is None:
            watched = (
                *(Watched(r) for r in CLUSTER_RESOURCES),
                Watched(SECRETS, secrets_namespace),
            )
        self._reflectors = {w.resource.kind: _Reflector(w) for w in watched}

    async def run(self, sink: StateSink) -> None:
        async with asyncio.TaskGroup() as tg:
            for kind, r in self._reflectors.items():
                tg.create_task(self._reflect(r, sink), name=f"reflect-{kind}")

    async def resync(self, kinds: Iterable[str]) -> None:
        """Relist these kinds now (a consistent read), and return once the sink has the new
        lists. A new leader calls this so that it never decides on a lagging watch."""
        loop = asyncio.get_running_loop()
        waiters = []
        for kind in kinds:
            r = self._reflectors.get(kind)
            if r is not None:
                fut = loop.create_future()
                r.waiters.append(fut)
                r.wake.set()
                waiters.append(fut)
        await asyncio.gather(*waiters)

    async def _reflect(self, r: _Reflector, sink: StateSink) -> None:
        w = r.watched
        res = w.resource
        origin = f"kubernetes/{res.kind}"
        backoff = Backoff(self.backoff_base, self.backoff_cap)
        listed_ok = False
        while True:
            try:
                if not r.rv or r.waiters:
                    waiters, r.waiters = r.waiters, []
                    r.wake.clear()
                    try:
                        items, r.rv = await self._list(w)
                    except BaseException:
                        r.rv = ""
                        r.waiters += waiters  # still owed a list
                        raise
                    # Followed before the list goes in: the reports' ages resume first.
                    sink.following(res.kind, True)
                    sink.replace(frozenset((res.kind,)), items, origin)
                    for fut in waiters:
                        if not fut.done():
                            fut.set_result(None)
                    if not listed_ok:
                        log.info("listed", kind=res.kind, count=len(items), resource_version=r.rv)
                    sink.clear_errors(origin)
                    listed_ok = True
                    backoff.reset()
                started = time.monotonic()
                events = await _unless_woken(self._watch(r, sink), r.wake)
                if events is None:
                    continue  # resync asked for: relist
                if events or time.monotonic() - started > 5:
                    backoff.reset()
                else:  # a server that ends watches at once must not make us spin
                    await _sleep_unless_woken(backoff.next_delay(), r.wake)
            except ApiError as e:
                if e.gone:
                    log.info("resource version expired; relisting", kind=res.kind, rv=r.rv)
                    r.rv = ""
                    continue
                self._failed(w, sink, origin, e, listing=not r.rv)
                await _sleep_unless_woken(backoff.next_delay(), r.wake)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
                self._failed(w, sink, origin, e, listing=not r.rv)
                await _sleep_unless_woken(backoff.next_delay(), r.wake)

    def _failed(
        self, w: Watched, sink: StateSink, origin: str, err: Exception, *, listing: bool
    ) -> None:
        what = "list" if listing else "watch"
        log.warning(f"cannot {what}; retrying", kind=w.resource.kind, error=str(err) or repr(err))
        sink.following(w.resource.kind, False)
        if listing:
            sink.report_error(
                pb.ObjectError(
                    kind=w.resource.kind,
                    namespace=w.namespace,
                    name="",
                    message=f"cannot list {w.resource.plural}: {err}",
                ),
                origin,
            )

    async def _list(self, w: Watched) -> tuple[list[dict[str, Any]], str]:
        items, rv = await self.api.list_all(w.resource, w.namespace, page_size=self.page_size)
        if not rv:
            raise ValueError(f"list of {w.resource.plural} has no resourceVersion")
        return items, rv

    async def _watch(self, r: _Reflector, sink: StateSink) -> int:
        """Watch from r.rv until the server ends the stream, moving r.rv along with every
        event and bookmark; -> the number of events seen. A watch gone quiet ends with r.rv
        cleared (relist)."""
        res = r.watched.resource
        timeout = random.randint(*self.watch_timeout)
        loop = asyncio.get_running_loop()
        events = 0
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(self.quiet_after) as quiet:
                resp = await self.api.watch(res, r.watched.namespace, r.rv, timeout)
                sink.following(res.kind, True)
                while True:
                    quiet.reschedule(loop.time() + self.quiet_after)
                    event = await read_event(resp)
                    if event is None:
                        break
                    etype, obj = event.get("type"), event["object"]
                    if etype == "ERROR":
                        raise ApiError(
                            int(obj.get("code") or 500),
                            obj.get("reason", ""),
                            obj.get("message", ""),
                        )
                    meta = obj.get("metadata") or {}
                    events += 1
                    if etype in ("ADDED", "MODIFIED"):
                        sink.upsert(res.typed(obj))
                    elif etype == "DELETED":
                        sink.delete(res.kind, meta.get("namespace") or "", meta.get("name") or "")
                    elif etype != "BOOKMARK":
                        log.warning("unknown watch event type", kind=res.kind, type=etype)
                    r.rv = str(meta.get("resourceVersion") or r.rv)
        except TimeoutError:
            if not quiet.expired():
                raise  # the client's own timeouts: a failure as any other
            log.warning(
                "watch gone quiet: no event or bookmark; relisting",
                kind=res.kind,
                seconds=self.quiet_after,
            )
            if resp is not None:
                resp.close()  # the connection is dead: never reuse it
            r.rv = ""
            sink.following(res.kind, False)
        finally:
            if resp is not None:
                resp.release()
        return events


async def _unless_woken(coro: Coroutine[Any, Any, _T], wake: asyncio.Event) -> _T | None:
    """Run coro, but cancel it and return None as soon as wake is set."""
    work = asyncio.ensure_future(coro)
    woken = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait((work, woken), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (work, woken):
            t.cancel()
        await asyncio.gather(work, woken, return_exceptions=True)
    if work.cancelled() or not work.done():
        return None
    return work.result()


async def _sleep_unless_woken(delay: float, wake: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await wake.wait()
