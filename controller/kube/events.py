"""Kubernetes Events the leader records about the objects it writes (Services, pools).

Best effort: a refused or failed create is logged, never retried. Bounded like the real event
recorder's spam filter: each object has a bucket of BURST events that refills one event per
REFILL seconds; an event beyond it is dropped, and the next one recorded about that object
says how many were dropped. So a flapping backend cannot write an unbounded stream of Events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from weir.common.logs import get_logger
from weir.controller.kube.api import EVENTS, ApiError, KubeAPI, Resource
from weir.controller.kube.conditions import now

log = get_logger("weir.events")

COMPONENT = "weir-controller"
MAX_MESSAGE = 1024  # what the API server accepts in an Event's message
BURST = 25  # events per object at once (client-go's spam filter burst)
REFILL = 300.0  # seconds per event after that (client-go's spam filter rate)
_MAX_BUCKETS = 4096  # past this, full buckets are forgotten (they hold nothing)


@dataclass
class _Bucket:
    tokens: float
    at: float  # when tokens was computed
    dropped: int = 0  # events dropped since the last one recorded


class EventRecorder:
    def __init__(
        self,
        api: KubeAPI,
        instance: str,
        *,
        burst: int = BURST,
        refill: float = REFILL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api, self.instance = api, instance
        self.burst, self.refill, self.clock = burst, refill, clock
        self._buckets: dict[tuple[str, str, str], _Bucket] = {}

    async def record(
        self, res: Resource, obj: Mapping[str, Any], kind: str, reason: str, message: str
    ) -> bool:
        """An Event about obj (its metadata as the API answered); False when the spam filter
        dropped it. Events about cluster-scoped objects go to the default namespace, as
        kubectl looks for them there."""
        meta = obj.get("metadata") or {}
        name = meta.get("name", "")
        ns = meta.get("namespace") or "default"
        dropped = self._take((res.kind, ns, name))
        if dropped is None:
            return False
        if dropped:
            message = f"{message} ({dropped} earlier events about this object not recorded)"
        involved = {
            "apiVersion": res.api_version,
            "kind": res.kind,
            "name": name,
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        if res.namespaced:
            involved["namespace"] = ns
        stamp = now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{time.time_ns():x}", "namespace": ns},
            "involvedObject": involved,
            "type": kind,
            "reason": reason,
            "message": message[:MAX_MESSAGE],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self.api.create(EVENTS, ns, event)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:  # best effort
            what = f"{res.kind} {name}"
            log.warning("cannot record event", object=what, reason=reason, error=str(e))
        return True

    def _take(self, key: tuple[str, str, str]) -> int | None:
        """Take a token for the object: the events dropped before it, or None (no token)."""
        t = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._forget_full(t)
            bucket = self._buckets[key] = _Bucket(self.burst, t)
        bucket.tokens = min(self.burst, bucket.tokens + (t - bucket.at) / self.refill)
        bucket.at = t
        if bucket.tokens < 1:
            if not bucket.dropped:
                log.warning("too many events about one object; dropping some", object=key)
            bucket.dropped += 1
            return None
        bucket.tokens -= 1
        dropped, bucket.dropped = bucket.dropped, 0
        return dropped

    def _forget_full(self, t: float) -> None:
        for key, b in list(self._buckets.items()):
            if not b.dropped and b.tokens + (t - b.at) / self.refill >= self.burst:
                del self._buckets[key]
