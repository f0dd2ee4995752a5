"""The fake kube-apiserver's watches: replay of the retained history from a resourceVersion,
synthetic ADDED events without one, BOOKMARKs, and 410 Gone for a resourceVersion older than
the history (as an ERROR event, or as the HTTP status when gone_as_http) (see fakeapi.py)."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web
from weir.common.aio import Generation

from .fakeapi_store import CRD, ApiError, Store
from .fakeapi_types import Obj, ResourceType, crd_types

JSON = "application/json"


@dataclass(eq=False)
class _Watcher:
    rtype: ResourceType
    namespace: str  # "" = all namespaces
    queue: asyncio.Queue[Obj | None]  # events; None ends the stream


class Watches:
    """The open watches on a store, fed by its events."""

    def __init__(
        self,
        store: Store,
        activity: Generation,
        *,
        bookmark_interval: float = 1.0,
        gone_as_http: bool = False,
        max_watch_seconds: float = 1800.0,
    ) -> None:
        self.store = store
        self.bookmark_interval = bookmark_interval
        self.gone_as_http = gone_as_http
        self.max_watch_seconds = max_watch_seconds
        self._activity = activity
        self._watchers: set[_Watcher] = set()
        store.listen(self._publish)

    def count(self, resource: str | None = None) -> int:
        return sum(1 for w in self._watchers if resource in (None, w.rtype.plural))

    def expire(self, *, gone: bool = True) -> None:
        """End every open watch, with an ERROR 410 event first when gone (as the server does
        with a watcher that fell too far behind), else by just closing the stream."""
        for w in list(self._watchers):
            if gone:
                w.queue.put_nowait(self._gone_event(self.store.rv))
            w.queue.put_nowait(None)

    def send_bookmarks(self) -> None:
        for w in list(self._watchers):
            w.queue.put_nowait(self._bookmark(w.rtype))

    def _publish(self, rtype: ResourceType, etype: str, obj: Obj) -> None:
        namespace = obj["metadata"].get("namespace", "")
        for w in list(self._watchers):
            if w.rtype.key == rtype.key and w.namespace in ("", namespace):
                w.queue.put_nowait({"type": etype, "object": obj})
        if rtype.kind == CRD and etype == "DELETED":
            # Its resources are no longer served: their watches end (after the DELETED
            # events of every resource, which came first).
            gone = {t.key for t in crd_types(obj)}
            for w in list(self._watchers):
                if w.rtype.key in gone:
                    w.queue.put_nowait(None)

    def _gone_event(self, rv: int) -> Obj:
        err = ApiError(
            410, "Expired", f"too old resource version: {rv} ({self.store.compacted + 1})"
        )
        return {"type": "ERROR", "object": err.status()}

    def _bookmark(self, rtype: ResourceType) -> Obj:
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": rtype.kind,
                "apiVersion": rtype.api_version,
                "metadata": {"resourceVersion": str(self.store.rv)},
            },
        }

    def _start(self, rtype: ResourceType, namespace: str, rv_text: str | None) -> _Watcher:
        """Register a watcher and queue its initial events, atomically."""
        store = self.store
        w = _Watcher(rtype, namespace, asyncio.Queue())
        if rv_text in (None, "", "0"):
            objs = store.objects_in(rtype, namespace)
            for o in sorted(objs, key=lambda o: int(o["metadata"]["resourceVersion"])):
                w.queue.put_nowait({"type": "ADDED", "object": copy.deepcopy(o)})
        else:
            try:
                rv = int(rv_text)
            except ValueError as e:
                raise ApiError(400, "BadRequest", f"invalid resource version {rv_text!r}") from e
            if rv < store.compacted:
                if self.gone_as_http:
                    raise ApiError(
                        410, "Expired", f"too old resource version: {rv} ({store.compacted + 1})"
                    )
                w.queue.put_nowait(self._gone_event(rv))
                w.queue.put_nowait(None)
                return w
            for erv, key, etype, o in store.history:
                if (
                    erv > rv
                    and key == rtype.key
                    and namespace in ("", o["metadata"].get("namespace", ""))
                ):
                    w.queue.put_nowait({"type": etype, "object": o})
        self._watchers.add(w)
        self._activity.bump()
        return w

    async def serve(
        self, request: web.Request, rtype: ResourceType, namespace: str, q: Mapping[str, str]
    ) -> web.StreamResponse:
        bookmarks = truthy(q.get("allowWatchBookmarks"))
        timeout = self.max_watch_seconds
        if q.get("timeoutSeconds"):
            timeout = min(timeout, float(q["timeoutSeconds"]))
        w = self._start(rtype, namespace, q.get("resourceVersion"))
        resp = web.StreamResponse(headers={"Content-Type": JSON})
        resp.enable_chunked_encoding()
        deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + self.bookmark_interval
        try:
            await resp.prepare(request)
            while (left := deadline - time.monotonic()) > 0:
                wait = min(left, next_bookmark - time.monotonic()) if bookmarks else left
                try:
                    event = await asyncio.wait_for(w.queue.get(), max(wait, 0))
                except TimeoutError:
                    if bookmarks and time.monotonic() >= next_bookmark:
                        event = self._bookmark(rtype)
                        next_bookmark = time.monotonic() + self.bookmark_interval
                    else:
                        continue
                if event is None:
                    break
                if event["type"] == "BOOKMARK" and not bookmarks:
                    continue
                await resp.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away
        finally:
            self._watchers.discard(w)
            self._activity.bump()
        return resp


def truthy(value: str | None) -> bool:
    """Go's strconv.ParseBool, which the real server uses for query booleans."""
    return value in ("1", "t", "T", "TRUE", "true", "True")
