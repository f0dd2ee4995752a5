"""The leader's writer: IPAM decisions into Service status, Events and pool status.

Runs only on the elected leader. It reads the typed cluster state (Services, pools) plus an
AllocatorView of the raw bits the writes need (resourceVersions, the conditions already on
each Service, IP family policies, namespace labels, pool status), runs controller.ipam, and
writes what differs:

- Service `status.loadBalancer.ingress` ([{ip, ipMode: VIP}]) and the condition
  `weir.dev/IPAllocated` (True with reason IPAllocated, or False with the failure's reason),
  as a JSON merge patch on the status subresource carrying metadata.resourceVersion, so a
  decision made on a stale view fails with 409 instead of overwriting newer state;
- Events on the Service: IPAllocated (Normal) when its addresses change, AllocationFailed
  (Warning) when a failure appears or changes;
- LoadBalancerIPPool status: address counts.

Each write's answer goes straight back into the sink (state and view), so the next round
never decides on the state from before its own writes. Nothing else is stored: a new leader
rebuilds everything from the Services' statuses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from weir.common.logs import get_logger
from weir.common.pb import pb
from weir.controller.core.objects import IP_POOL, SERVICE
from weir.controller.core.state import ClusterState
from weir.controller.kube.api import (
    EVENTS,
    IP_POOLS,
    SERVICES,
    ApiError,
    KubeAPI,
    WriteFailure,
    write,
)
from weir.controller.kube.ipam import Allocation, FamilyPolicy, PoolUsage, allocate, handles
from weir.controller.sources.base import StateSink

log = get_logger("weir.allocator")

CONDITION = "weir.dev/IPAllocated"
EVENT_ALLOCATED = "IPAllocated"
EVENT_FAILED = "AllocationFailed"
NAMESPACE = "Namespace"
COMPONENT = "weir-controller"
WATCHED_KINDS = frozenset((SERVICE, IP_POOL, NAMESPACE))

Key = tuple[str, str]


@dataclass(frozen=True)
class ServiceRecord:
    """What the allocator needs of a Service beyond its typed form."""

    resource_version: str
    generation: int
    uid: str
    ingress: tuple[tuple[str, str], ...]  # (ip, ipMode) of entries with an ip
    conditions: tuple[Mapping[str, Any], ...]  # all of status.conditions, as read
    families: FamilyPolicy

    def condition(self) -> Mapping[str, Any] | None:
        return next((c for c in self.conditions if c.get("type") == CONDITION), None)


@dataclass(frozen=True)
class PoolRecord:
    generation: int
    status: Mapping[str, Any]


class AllocatorView:
    """A StateSink keeping the raw parts of Services, pools and Namespaces the writes need.

    Fed by the Kubernetes source next to the cluster state (FanOutSink), on every replica, so
    a newly elected leader starts from a current view. Objects it cannot read are dropped.
    """

    def __init__(self) -> None:
        self.services: dict[Key, ServiceRecord] = {}
        self.pools: dict[str, PoolRecord] = {}
        self.namespace_labels: dict[str, Mapping[str, str]] = {}
        self.listed: set[str] = set()
        self.generation = 0
        self._changed = asyncio.Event()

    async def wait_changed(self, after: int) -> int:
        while self.generation <= after:
            await self._changed.wait()
        return self.generation

    def _bump(self) -> None:
        self.generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def replace(
        self, kinds: frozenset[str], objects: Iterable[Mapping[str, Any]], origin: str = ""
    ) -> None:
        kinds = kinds & WATCHED_KINDS
        if not kinds:
            return
        fresh = {k: {} for k in kinds}
        for obj in objects:
            if obj.get("kind") in kinds:
                parsed = _record(obj)
                if parsed is not None:
                    fresh[obj["kind"]][parsed[0]] = parsed[1]
        for kind in kinds:
            self._table(kind).clear()
            self._table(kind).update(fresh[kind])
        self.listed |= kinds
        self._bump()

    def upsert(self, obj: Mapping[str, Any]) -> None:
        kind = obj.get("kind")
        if kind not in WATCHED_KINDS:
            return
        parsed = _record(obj)
        if parsed is None:
            return
        table = self._table(kind)
        if table.get(parsed[0]) != parsed[1]:
            table[parsed[0]] = parsed[1]
            self._bump()

    def delete(self, kind: str, namespace: str, name: str) -> None:
        if kind in WATCHED_KINDS:
            key = (namespace, name) if kind == SERVICE else name
            if self._table(kind).pop(key, None) is not None:
                self._bump()

    def report_error(self, err: pb.ObjectError, origin: str = "") -> None:
        pass  # the cluster state reports errors

    def clear_errors(self, origin: str) -> None:
        pass

    def _table(self, kind: str) -> dict:
        return {SERVICE: self.services, IP_POOL: self.pools, NAMESPACE: self.namespace_labels}[kind]

    def families(self) -> dict[Key, FamilyPolicy]:
        return {k: r.families for k, r in self.services.items()}


def _record(obj: Mapping[str, Any]) -> tuple[Any, Any] | None:
    """(key, record) of one object, or None when it is not shaped as the API serves it."""
    try:
        meta = obj["metadata"]
        kind = obj["kind"]
        if kind == NAMESPACE:
            return meta["name"], dict(meta.get("labels") or {})
        status = obj.get("status") or {}
        if kind == IP_POOL:
            return meta["name"], PoolRecord(int(meta.get("generation") or 0), dict(status))
        spec = obj.get("spec") or {}
        ingress = tuple(
            (i["ip"], i.get("ipMode") or "")
            for i in ((status.get("loadBalancer") or {}).get("ingress") or [])
            if i.get("ip")
        )
        policy = FamilyPolicy(
            tuple(spec.get("ipFamilies") or ("IPv4",)), spec.get("ipFamilyPolicy") or "SingleStack"
        )
        record = ServiceRecord(
            resource_version=str(meta.get("resourceVersion") or ""),
            generation=int(meta.get("generation") or 0),
            uid=str(meta.get("uid") or ""),
            ingress=ingress,
            conditions=tuple(c for c in status.get("conditions") or [] if isinstance(c, Mapping)),
            families=policy,
        )
        return (meta.get("namespace") or "default", meta["name"]), record
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Allocator:
    """Leader-only loop; see the module docstring.

    sink: where the answers of writes go (the FanOutSink of state and view).
    fence: awaited once before the first round, to make the view current (a relist).
    """

    def __init__(
        self,
        api: KubeAPI,
        state: ClusterState,
        view: AllocatorView,
        sink: StateSink,
        *,
        default_class: bool = False,
        instance: str = "",
        fence: Callable[[], Awaitable[None]] | None = None,
        debounce: float = 0.05,
        retry: float = 2.0,
        concurrency: int = 8,
    ) -> None:
        self.api, self.state, self.view, self.sink = api, state, view, sink
        self.default_class = default_class
        self.instance = instance
        self.fence = fence
        self.debounce = debounce
        self.retry = retry
        self._slots = asyncio.Semaphore(concurrency)

    async def run(self) -> None:
        while not WATCHED_KINDS <= self.view.listed:
            await self.view.wait_changed(self.view.generation)
        if self.fence is not None:
            await self.fence()
        log.info("allocator running")
        seen = -1
        failed = False
        while True:
            try:
                async with asyncio.timeout(self.retry if failed else None):
                    seen = await self.view.wait_changed(seen)
            except TimeoutError:
                pass  # retry the writes that failed
            if self.debounce:
                await asyncio.sleep(self.debounce)
            seen = self.view.generation
            failed = not await self.round()

    async def round(self) -> bool:
        """Compute and write once; False when some write failed (to be retried)."""
        inputs = self.state.inputs()
        ours = {k for k, s in inputs.services.items() if handles(s, self.default_class)}
        reserved = {
            ip: f"{ns}/{name}"
            for (ns, name), rec in self.view.services.items()
            if (ns, name) not in ours
            for ip, _ in rec.ingress
        }
        try:
            result = allocate(
                inputs.services.values(),
                inputs.pools.values(),
                default_class=self.default_class,
                families=self.view.families(),
                namespace_labels=self.view.namespace_labels,
                reserved=reserved,
            )
        except Exception:  # an IPAM bug must not take the controller down: retry later
            log.exception("allocation failed; keeping the current statuses")
            return False
        writes: list[Awaitable[bool]] = []
        for key, alloc in result.allocations.items():
            rec = self.view.services.get(key)
            if rec is not None and _differs(rec, alloc):
                writes.append(self._write_service(key, rec, alloc))
        for key, rec in self.view.services.items():
            if key not in result.allocations and key in inputs.services and rec.condition():
                writes.append(self._release(key, rec))
        for name, usage in result.pools.items():
            pool = self.view.pools.get(name)
            if pool is not None and _pool_status(usage, pool.generation) != {
                k: pool.status.get(k) for k in _POOL_FIELDS
            }:
                writes.append(self._write_pool(name, usage, pool.generation))
        ok = True
        if writes:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._limited(w)) for w in writes]
            ok = all(t.result() for t in tasks)
        return ok

    async def _limited(self, write: Awaitable[bool]) -> bool:
        async with self._slots:
            return await write

    async def _patch(self, what: str, call: Awaitable[dict[str, Any]]) -> dict[str, Any] | None:
        obj = await write(call, what)
        if obj is WriteFailure.GONE:
            return {}
        if isinstance(obj, WriteFailure):
            return None
        self.sink.upsert(obj)
        return obj

    async def _write_service(self, key: Key, rec: ServiceRecord, alloc: Allocation) -> bool:
        ns, name = key
        old = rec.condition()
        cond = _condition(alloc, rec, old)
        status = {
            "loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"} for ip in alloc.ips] or None},
            "conditions": [*(c for c in rec.conditions if c is not old), cond],
        }
        patch = {"metadata": {"resourceVersion": rec.resource_version}, "status": status}
        obj = await self._patch(
            f"Service {ns}/{name}",
            self.api.patch(SERVICES, ns, name, patch, subresource="status"),
        )
        if obj is None:
            return False
        if not obj:
            return True
        if alloc.ok and tuple(alloc.ips) != tuple(ip for ip, _ in rec.ingress):
            log.info("allocated", service=f"{ns}/{name}", ips=list(alloc.ips))
            await self._event(key, obj, "Normal", EVENT_ALLOCATED, f"Assigned {alloc.message}")
        elif not alloc.ok and (
            old is None or (old.get("reason"), old.get("message")) != (alloc.reason, alloc.message)
        ):
            log.warning(
                "allocation failed",
                service=f"{ns}/{name}",
                reason=alloc.reason,
                message=alloc.message,
            )
            await self._event(key, obj, "Warning", EVENT_FAILED, f"{alloc.reason}: {alloc.message}")
        return True

    async def _release(self, key: Key, rec: ServiceRecord) -> bool:
        """A Service Weir no longer handles: take back the address and our condition."""
        ns, name = key
        others = [c for c in rec.conditions if c.get("type") != CONDITION]
        patch = {
            "metadata": {"resourceVersion": rec.resource_version},
            "status": {"loadBalancer": {"ingress": None}, "conditions": others or None},
        }
        log.info("released", service=f"{ns}/{name}")
        return (
            await self._patch(
                f"Service {ns}/{name}",
                self.api.patch(SERVICES, ns, name, patch, subresource="status"),
            )
            is not None
        )

    async def _write_pool(self, name: str, usage: PoolUsage, generation: int) -> bool:
        patch = {"status": _pool_status(usage, generation)}
        return (
            await self._patch(
                f"LoadBalancerIPPool {name}",
                self.api.patch(IP_POOLS, "", name, patch, subresource="status"),
            )
            is not None
        )

    async def _event(
        self, key: Key, obj: Mapping[str, Any], kind: str, reason: str, message: str
    ) -> None:
        ns, name = key
        meta = obj.get("metadata") or {}
        now = _now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{time.time_ns():x}", "namespace": ns},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Service",
                "namespace": ns,
                "name": name,
                "uid": meta.get("uid", ""),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.api.create(EVENTS, ns, event)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:  # best effort
            log.warning("cannot record event", service=f"{ns}/{name}", reason=reason, error=str(e))


_POOL_FIELDS = (
    "assigned",
    "assignedIPv4",
    "assignedIPv6",
    "availableIPv4",
    "availableIPv6",
    "services",
    "observedGeneration",
)


def _pool_status(usage: PoolUsage, generation: int) -> dict[str, int]:
    return {
        "assigned": usage.assigned,
        "assignedIPv4": usage.assigned_v4,
        "assignedIPv6": usage.assigned_v6,
        "availableIPv4": usage.available_v4,
        "availableIPv6": usage.available_v6,
        "services": usage.services,
        "observedGeneration": generation,
    }


def _condition(alloc: Allocation, rec: ServiceRecord, old: Mapping[str, Any] | None) -> dict:
    status = "True" if alloc.ok else "False"
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    cond = {
        "type": CONDITION,
        "status": status,
        "reason": alloc.reason,
        "message": alloc.message[:32768],
        "lastTransitionTime": since or _now(),
    }
    if rec.generation:  # Services carry no generation today; when they do, say which we saw
        cond["observedGeneration"] = rec.generation
    return cond


def _differs(rec: ServiceRecord, alloc: Allocation) -> bool:
    want = tuple((ip, "VIP") for ip in alloc.ips)
    if rec.ingress != want:
        return True
    old = rec.condition()
    if old is None:
        return True
    return (
        old.get("status"),
        old.get("reason"),
        old.get("message"),
        old.get("observedGeneration") or 0,
    ) != ("True" if alloc.ok else "False", alloc.reason, alloc.message, rec.generation)
