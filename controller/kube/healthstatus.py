"""The leader's writer of what the health checks decide, on each checked Service:

- the condition `weir.dev/BackendsHealthy`: True while no backend is held out; False with
  reason BackendsUnhealthy naming the held-out backends, or FailOpen when every backend of a
  frontend fails (all kept). Written only when it changes, as a merge patch carrying the
  Service's resourceVersion (kube/statuswrite.py); removed when the Service's check is;
- Events: BackendUnhealthy (Warning) when the controller holds a backend out, naming the LB
  nodes that see it failing and why; BackendHealthy (Normal) when it takes it back; FailOpen
  (Warning) and FailOpenEnded (Normal) for a frontend. Rate-limited per Service by the
  recorder's spam filter (kube/events.py), so a flapping backend writes a bounded number.

From the HealthTracker (plane/health.py): its decision, and the published snapshot for which
frontends are checked and which Service each belongs to. Events are the differences from what
this writer saw last: a controller that starts or takes over reports the backends it finds
held out once more. Without Kubernetes (the file source) nothing of this runs: the tracker's
logs and metrics tell the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from weir.common.aio import wait_any
from weir.common.logs import get_logger
from weir.common.pb import pb
from weir.controller.core.health import BackendKey, Decision
from weir.controller.core.objects import SERVICE, Service
from weir.controller.core.state import ClusterState
from weir.controller.kube.api import SERVICES, KubeAPI
from weir.controller.kube.conditions import condition, find, replaced, without
from weir.controller.kube.events import EventRecorder
from weir.controller.kube.writeback import patch_service_status
from weir.controller.plane.health import HealthTracker

log = get_logger("weir.health")

CONDITION = "weir.dev/BackendsHealthy"
EVENT_UNHEALTHY = "BackendUnhealthy"
EVENT_HEALTHY = "BackendHealthy"
EVENT_FAIL_OPEN = "FailOpen"
EVENT_FAIL_OPEN_ENDED = "FailOpenEnded"
_CONCURRENCY = 8  # writes in flight
_DEBOUNCE = 0.05  # seconds: a burst of reports and versions makes one round
_LISTED = 20  # backends a condition's message names; the rest are counted

Key = tuple[str, str]  # the Service's (namespace, name)


@dataclass(frozen=True)
class ServiceHealth:
    """What the health checks decide about one Service's checked frontends."""

    held: frozenset[BackendKey] = frozenset()  # held out or, when fail open, failing
    fail_open: frozenset[str] = frozenset()  # frontend ids

    def condition(self) -> tuple[str, str, str]:
        """(status, reason, message) of the Service's condition."""
        if self.fail_open:
            fids = ", ".join(sorted(self.fail_open))
            return "False", "FailOpen", f"every backend of {fids} fails its health check; all kept"
        if self.held:
            names = [f"{a}:{p}" for _, a, p in sorted(self.held)]
            more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
            message = f"held out: {', '.join(names[:_LISTED])}{more}"
            return "False", "BackendsUnhealthy", message
        return "True", "BackendsHealthy", "every backend passes its health check"


def services_health(
    services: Iterable[pb.Service], decision: Decision, fail_open: set[str]
) -> dict[Key, ServiceHealth]:
    """Every Kubernetes Service with a checked frontend, and what is decided about it. Pure."""
    held_by: dict[Key, set[BackendKey]] = {}
    open_by: dict[Key, set[str]] = {}
    for svc in services:
        ns, _, name = svc.service.partition("/")
        if not name or not svc.HasField("health_check") or svc.protocol != pb.PROTOCOL_TCP:
            continue  # only TCP frontends are checked
        out = decision.failing.get(svc.id, ())
        held_by.setdefault((ns, name), set()).update((svc.id, a, p) for a, p in out)
        if svc.id in fail_open:
            open_by.setdefault((ns, name), set()).add(svc.id)
    return {
        key: ServiceHealth(frozenset(keys), frozenset(open_by.get(key, ())))
        for key, keys in held_by.items()
    }


def events_between(
    old: ServiceHealth, new: ServiceHealth, decision: Decision
) -> list[tuple[str, str, str]]:
    """The Events (type, reason, message) for a change of a Service's health. Pure."""
    out = []
    for key in sorted(new.held - old.held):
        fid, address, port = key
        seen = decision.seen.get(key, ())
        who = ", ".join(f"{f.node} ({f.reason})" for f in seen)
        kept = "kept: fail open" if fid in new.fail_open else "held out"
        message = (
            f"backend {address}:{port} of {fid} fails its health check on "
            f"{len(seen)} of {decision.checkers.get(fid, 0)} checking nodes: {who}; {kept}"
        )
        out.append(("Warning", EVENT_UNHEALTHY, message))
    for fid, address, port in sorted(old.held - new.held):
        message = f"backend {address}:{port} of {fid} passes its health check again; back in"
        out.append(("Normal", EVENT_HEALTHY, message))
    for fid in sorted(new.fail_open - old.fail_open):
        message = f"every backend of {fid} fails its health check: all kept (fail open)"
        out.append(("Warning", EVENT_FAIL_OPEN, message))
    for fid in sorted(old.fail_open - new.fail_open):
        message = f"{fid} is no longer failing open: held-out backends get no traffic"
        out.append(("Normal", EVENT_FAIL_OPEN_ENDED, message))
    return out


class HealthStatusWriter:
    """Leader-only loop; see the module docstring."""

    def __init__(
        self,
        api: KubeAPI,
        state: ClusterState,
        tracker: HealthTracker,
        events: EventRecorder,
        retry: float = 2.0,  # seconds before failed writes are tried again
    ) -> None:
        self.api, self.state, self.tracker, self.events = api, state, tracker, events
        self.retry = retry
        self._slots = asyncio.Semaphore(_CONCURRENCY)
        self._services = state.changes_of(frozenset((SERVICE,)))
        self._last: dict[Key, ServiceHealth] = {}  # what the Events so far told

    async def run(self) -> None:
        seen = (-1, -1)
        failed = False
        while True:
            try:
                async with asyncio.timeout(self.retry if failed else None):
                    await wait_any(zip((self.tracker.changes, self._services), seen, strict=True))
            except TimeoutError:
                pass  # retry the writes that failed
            await asyncio.sleep(_DEBOUNCE)
            seen = (self.tracker.changes.value, self._services.value)
            failed = not await self.round()

    async def round(self) -> bool:
        """Record the Events and write the conditions once; False when a write failed."""
        cluster = self.tracker.store.cluster()
        if cluster is None or SERVICE not in self.state.listed_kinds:
            return True
        decision = self.tracker.decision
        now = services_health(cluster.services, decision, self.tracker.fail_open())
        services = self.state.inputs().services
        events: list[Awaitable[bool]] = []  # best effort: never retried
        writes: list[Awaitable[bool]] = []
        for key, new in sorted(now.items()):  # a Service no longer checked gets no Event
            svc = services.get(key)
            told = events_between(self._last.get(key, ServiceHealth()), new, decision)
            if svc is not None and told:
                events.append(self._record(svc, told))
        self._last = now
        for key, svc in services.items():
            cond = find(svc.conditions, CONDITION)
            health = now.get(key)
            if health is not None and _differs(cond, health):
                status, reason, message = health.condition()
                new_cond = condition(CONDITION, status, reason, message, cond)
                writes.append(self._write(svc, replaced(svc.conditions, new_cond)))
            elif health is None and cond is not None:  # no longer checked
                writes.append(self._write(svc, without(svc.conditions, CONDITION)))
        if not writes and not events:
            return True
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._limited(w)) for w in writes]
            for e in events:
                tg.create_task(self._limited(e))
        return all(t.result() for t in tasks)

    async def _limited(self, write: Awaitable[bool]) -> bool:
        async with self._slots:
            return await write

    async def _record(self, svc: Service, events: list[tuple[str, str, str]]) -> bool:
        """One Service's Events, in order."""
        for kind, reason, message in events:
            log.info("health event", service=f"{svc.namespace}/{svc.name}", reason=reason)
            await self.events.record(SERVICES, _meta(svc), kind, reason, message)
        return True

    async def _write(self, svc: Service, conditions: list[Any] | None) -> bool:
        obj = await patch_service_status(self.api, self.state, svc, {"conditions": conditions})
        return obj is not None


def _differs(cond: Mapping[str, Any] | None, health: ServiceHealth) -> bool:
    if cond is None:
        return True
    return (cond.get("status"), cond.get("reason"), cond.get("message")) != health.condition()


def _meta(svc: Service) -> dict[str, Any]:
    """The Service's metadata as an Event's involvedObject takes it."""
    return {
        "metadata": {
            "name": svc.name,
            "namespace": svc.namespace,
            "uid": svc.uid,
            "resourceVersion": svc.resource_version,
        }
    }
