"""The leader's writer: IPAM decisions into Service status, Events and pool status.

Runs only on the elected leader. It reads the typed cluster state (Services with their
resourceVersions, conditions and IP family policies; pools with their status; Namespaces),
runs kube/ipam.py, and writes what differs:

- Service `status.loadBalancer.ingress` ([{ip, ipMode: VIP}]) and the condition
  `weir.dev/IPAllocated` (True with reason IPAllocated, or False with the failure's reason),
  as a JSON merge patch on the status subresource carrying metadata.resourceVersion, so a
  decision made on a stale view fails with 409 instead of overwriting newer state;
- Events on the Service: IPAllocated (Normal) when its addresses change, AllocationFailed
  (Warning) when a failure appears or changes;
- LoadBalancerIPPool status: address counts.

Each write's answer goes straight back into the state, so the next round never decides on
the state from before its own writes. Nothing else is stored: a new leader rebuilds
everything from the Services' statuses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
from weir.common.logs import get_logger
from weir.controller.core.crds import IP_POOL
from weir.controller.core.objects import NAMESPACE, SERVICE, Ingress, Service, object_ref
from weir.controller.core.state import ClusterInputs, ClusterState
from weir.controller.kube.api import (
    EVENTS,
    IP_POOLS,
    SERVICES,
    ApiError,
    KubeAPI,
    WriteFailure,
    write,
)
from weir.controller.kube.ipam import Allocation, PoolUsage, allocate, handles

log = get_logger("weir.allocator")

CONDITION = "weir.dev/IPAllocated"
EVENT_ALLOCATED = "IPAllocated"
EVENT_FAILED = "AllocationFailed"
COMPONENT = "weir-controller"
WATCHED_KINDS = frozenset((SERVICE, IP_POOL, NAMESPACE))  # the state must keep them

Key = tuple[str, str]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Allocator:
    """Leader-only loop; see the module docstring.

    state: it must keep WATCHED_KINDS; it receives the answers of the writes too.
    fence: awaited once before the first round, to make the state current (a relist).
    """

    def __init__(
        self,
        api: KubeAPI,
        state: ClusterState,
        *,
        default_class: bool = False,
        instance: str = "",
        fence: Callable[[], Awaitable[None]] | None = None,
        debounce: float = 0.05,
        retry: float = 2.0,
        concurrency: int = 8,
    ) -> None:
        if not WATCHED_KINDS <= state.kinds:
            raise ValueError(f"the allocator needs a state that keeps {sorted(WATCHED_KINDS)}")
        self.api, self.state = api, state
        self.default_class = default_class
        self.instance = instance
        self.fence = fence
        self.debounce = debounce
        self.retry = retry
        self._slots = asyncio.Semaphore(concurrency)
        self._changes = state.changes_of(WATCHED_KINDS)

    async def run(self) -> None:
        seen = self._changes.value
        while not WATCHED_KINDS <= self.state.listed_kinds:
            seen = await self._changes.wait_past(seen)
        if self.fence is not None:
            await self.fence()
        log.info("allocator running")
        seen = -1
        failed = False
        while True:
            try:
                async with asyncio.timeout(self.retry if failed else None):
                    seen = await self._changes.wait_past(seen)
            except TimeoutError:
                pass  # retry the writes that failed
            if self.debounce:
                await asyncio.sleep(self.debounce)
            seen = self._changes.value
            failed = not await self.round()

    async def round(self) -> bool:
        """Compute and write once; False when some write failed (to be retried)."""
        inputs = self.state.inputs()
        services = inputs.services
        ours = {k for k, s in services.items() if handles(s, self.default_class)}
        try:
            result = allocate(
                services.values(),
                inputs.pools.values(),
                default_class=self.default_class,
                namespace_labels={name: ns.labels for name, ns in inputs.namespaces.items()},
                reserved=self._reserved(inputs, ours),
            )
        except Exception:  # an IPAM bug must not take the controller down: retry later
            log.exception("allocation failed; keeping the current statuses")
            return False
        writes: list[Awaitable[bool]] = []
        for key, alloc in result.allocations.items():
            if _differs(services[key], alloc):
                writes.append(self._write_service(services[key], alloc))
        for key, svc in services.items():
            if key not in result.allocations and _our_condition(svc) is not None:
                writes.append(self._release(svc))
        for name, usage in result.pools.items():
            pool = inputs.pools[name]
            if _pool_status(usage, pool.generation) != {
                k: pool.status.get(k) for k in _POOL_FIELDS
            }:
                writes.append(self._write_pool(name, usage, pool.generation))
        ok = True
        if writes:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._limited(w)) for w in writes]
            ok = all(t.result() for t in tasks)
        return ok

    def _reserved(self, inputs: ClusterInputs, ours: set[Key]) -> dict[str, str]:
        """Addresses held by Services this allocator does not allocate for: other classes,
        and those the state could not parse (their status still holds the addresses)."""
        reserved = {
            ingress.ip: f"{ns}/{name}"
            for (ns, name), svc in inputs.services.items()
            if (ns, name) not in ours
            for ingress in svc.ingress
        }
        for raw in self.state.unparsed(SERVICE):
            ref = object_ref(raw)
            reserved.update((ip, f"{ref.namespace}/{ref.name}") for ip in _held_addresses(raw))
        return reserved

    async def _limited(self, write: Awaitable[bool]) -> bool:
        async with self._slots:
            return await write

    async def _patch(self, what: str, call: Awaitable[dict[str, Any]]) -> dict[str, Any] | None:
        obj = await write(call, what)
        if obj is WriteFailure.GONE:
            return {}
        if isinstance(obj, WriteFailure):
            return None
        self.state.upsert(obj)
        return obj

    async def _write_service(self, svc: Service, alloc: Allocation) -> bool:
        ns, name = svc.key
        old = _our_condition(svc)
        cond = _condition(alloc, svc, old)
        status = {
            "loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"} for ip in alloc.ips] or None},
            "conditions": [*(c for c in svc.conditions if c is not old), cond],
        }
        patch = {"metadata": {"resourceVersion": svc.resource_version}, "status": status}
        obj = await self._patch(
            f"Service {ns}/{name}",
            self.api.patch(SERVICES, ns, name, patch, subresource="status"),
        )
        if obj is None:
            return False
        if not obj:
            return True
        if alloc.ok and tuple(alloc.ips) != tuple(i.ip for i in svc.ingress):
            log.info("allocated", service=f"{ns}/{name}", ips=list(alloc.ips))
            await self._event(svc.key, obj, "Normal", EVENT_ALLOCATED, f"Assigned {alloc.message}")
        elif not alloc.ok and (
            old is None or (old.get("reason"), old.get("message")) != (alloc.reason, alloc.message)
        ):
            log.warning(
                "allocation failed",
                service=f"{ns}/{name}",
                reason=alloc.reason,
                message=alloc.message,
            )
            await self._event(
                svc.key, obj, "Warning", EVENT_FAILED, f"{alloc.reason}: {alloc.message}"
            )
        return True

    async def _release(self, svc: Service) -> bool:
        """A Service Weir no longer handles: take back the address and our condition."""
        ns, name = svc.key
        others = [c for c in svc.conditions if c.get("type") != CONDITION]
        patch = {
            "metadata": {"resourceVersion": svc.resource_version},
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


def _our_condition(svc: Service) -> Mapping[str, Any] | None:
    return next((c for c in svc.conditions if c.get("type") == CONDITION), None)


def _held_addresses(obj: Mapping[str, Any]) -> list[Any]:
    """The ingress addresses in the status of a Service that did not parse, read leniently."""
    try:
        ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        return [i["ip"] for i in ingress if i.get("ip")]
    except (AttributeError, TypeError):
        return []


def _condition(alloc: Allocation, svc: Service, old: Mapping[str, Any] | None) -> dict:
    status = "True" if alloc.ok else "False"
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    cond = {
        "type": CONDITION,
        "status": status,
        "reason": alloc.reason,
        "message": alloc.message[:32768],
        "lastTransitionTime": since or _now(),
    }
    if svc.generation:  # Services carry no generation today; when they do, say which we saw
        cond["observedGeneration"] = svc.generation
    return cond


def _differs(svc: Service, alloc: Allocation) -> bool:
    if svc.ingress != tuple(Ingress(ip, "VIP") for ip in alloc.ips):
        return True
    old = _our_condition(svc)
    if old is None:
        return True
    return (
        old.get("status"),
        old.get("reason"),
        old.get("message"),
        old.get("observedGeneration") or 0,
    ) != ("True" if alloc.ok else "False", alloc.reason, alloc.message, svc.generation)
