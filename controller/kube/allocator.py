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
- LoadBalancerIPPool status (address counts, and conditions when a deletion waits or an edit
  left held addresses out), Events for those conditions, and the pool finalizer that holds a
  pool's deletion until no Service uses it (controller/kube/poolstatus.py).

Each write's answer goes straight back into the state, so the next round never decides on
the state from before its own writes. Nothing else is stored: a new leader rebuilds
everything from the Services' statuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from weir.common.logs import get_logger
from weir.controller.core.crds import IP_POOL, IPPool
from weir.controller.core.objects import NAMESPACE, SERVICE, Ingress, Service, object_ref
from weir.controller.core.state import ClusterInputs, ClusterState
from weir.controller.kube.api import IP_POOLS, SERVICES, KubeAPI
from weir.controller.kube.conditions import condition, find, replaced, without
from weir.controller.kube.events import EventRecorder
from weir.controller.kube.ipam import (
    CONDITION,
    Allocation,
    IPAMResult,
    PoolUsage,
    allocate,
    handles,
)
from weir.controller.kube.poolstatus import current_status, desired_status, finalizers_after, news
from weir.controller.kube.writeback import patch_service_status, write_back

log = get_logger("weir.allocator")

EVENT_ALLOCATED = "IPAllocated"
EVENT_FAILED = "AllocationFailed"
WATCHED_KINDS = frozenset((SERVICE, IP_POOL, NAMESPACE))  # the state must keep them

Key = tuple[str, str]


class Allocator:
    """Leader-only loop; see the module docstring.

    events: the recorder (and its spam filter) shared with the leader's other writers; else
    one of its own, reporting as instance.

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
        events: EventRecorder | None = None,
        fence: Callable[[], Awaitable[None]] | None = None,
        debounce: float = 0.05,
        retry: float = 2.0,
        concurrency: int = 8,
        on_pools: Callable[[Mapping[str, PoolUsage]], None] | None = None,
    ) -> None:
        """on_pools: told every pool's usage after each allocation (metrics)."""
        if not WATCHED_KINDS <= state.kinds:
            raise ValueError(f"the allocator needs a state that keeps {sorted(WATCHED_KINDS)}")
        self.api, self.state = api, state
        self.default_class = default_class
        self.events = events or EventRecorder(api, instance)
        self.fence = fence
        self.debounce = debounce
        self.retry = retry
        self._slots = asyncio.Semaphore(concurrency)
        self._changes = state.changes_of(WATCHED_KINDS)
        self._on_pools = on_pools

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
        if self._on_pools is not None:
            self._on_pools(result.pools)
        writes: list[Awaitable[bool]] = []
        for key, alloc in result.allocations.items():
            if _differs(services[key], alloc):
                writes.append(self._write_service(services[key], alloc))
        for key, svc in services.items():
            if key not in result.allocations and _our_condition(svc) is not None:
                writes.append(self._release(svc))
        for pool in inputs.pools.values():
            pool_write = self._pool_write(pool, result)
            if pool_write is not None:
                writes.append(pool_write)
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

    async def _write_service(self, svc: Service, alloc: Allocation) -> bool:
        ns, name = svc.key
        old = _our_condition(svc)
        cond = _condition(alloc, svc, old)
        status = {
            "loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"} for ip in alloc.ips] or None},
            "conditions": replaced(svc.conditions, cond),
        }
        obj = await patch_service_status(self.api, self.state, svc, status)
        if obj is None:
            return False
        if not obj:
            return True
        if alloc.ok and tuple(alloc.ips) != tuple(i.ip for i in svc.ingress):
            log.info("allocated", service=f"{ns}/{name}", ips=list(alloc.ips))
            await self.events.record(
                SERVICES, obj, "Normal", EVENT_ALLOCATED, f"Assigned {alloc.message}"
            )
        elif not alloc.ok and (
            old is None or (old.get("reason"), old.get("message")) != (alloc.reason, alloc.message)
        ):
            log.warning(
                "allocation failed",
                service=f"{ns}/{name}",
                reason=alloc.reason,
                message=alloc.message,
            )
            await self.events.record(
                SERVICES, obj, "Warning", EVENT_FAILED, f"{alloc.reason}: {alloc.message}"
            )
        return True

    async def _release(self, svc: Service) -> bool:
        """A Service Weir no longer handles: take back the address and our condition."""
        ns, name = svc.key
        status = {
            "loadBalancer": {"ingress": None},
            "conditions": without(svc.conditions, CONDITION),
        }
        log.info("released", service=f"{ns}/{name}")
        return await patch_service_status(self.api, self.state, svc, status) is not None

    def _pool_write(self, pool: IPPool, result: IPAMResult) -> Awaitable[bool] | None:
        """The writes a pool needs this round, if any: its finalizer, then its status."""
        holders = result.holders.get(pool.name, ())
        finalizers = finalizers_after(pool, holders)
        status = None
        if holders or not pool.deleting:  # else it is going: the API server deletes it
            kept = result.kept.get(pool.name, ())
            status = desired_status(pool, result.pools[pool.name], holders, kept)
            if status == current_status(pool):
                status = None
        if finalizers is None and status is None:
            return None
        return self._update_pool(pool, finalizers, status)

    async def _update_pool(
        self, pool: IPPool, finalizers: list[str] | None, status: Mapping[str, Any] | None
    ) -> bool:
        if finalizers is not None and not await self._set_finalizers(pool, finalizers):
            return False
        return status is None or await self._write_pool(pool, status)

    async def _set_finalizers(self, pool: IPPool, finalizers: list[str]) -> bool:
        if pool.deleting:
            log.info("pool no longer in use: its deletion goes on", pool=pool.name)
        patch = {
            "metadata": {"resourceVersion": pool.resource_version, "finalizers": finalizers or None}
        }
        call = self.api.patch(IP_POOLS, "", pool.name, patch)
        return await write_back(self.state, f"LoadBalancerIPPool {pool.name}", call) is not None

    async def _write_pool(self, pool: IPPool, status: Mapping[str, Any]) -> bool:
        call = self.api.patch(IP_POOLS, "", pool.name, {"status": status}, subresource="status")
        obj = await write_back(self.state, f"LoadBalancerIPPool {pool.name}", call)
        if obj is None:
            return False
        for cond in news(pool, status) if obj else ():
            message = cond["message"]
            log.warning("pool condition", pool=pool.name, type=cond["type"], message=message)
            reason = cond["type"].rpartition("/")[2]
            await self.events.record(IP_POOLS, obj, "Warning", reason, message)
        return True


def _our_condition(svc: Service) -> Mapping[str, Any] | None:
    return find(svc.conditions, CONDITION)


def _held_addresses(obj: Mapping[str, Any]) -> list[Any]:
    """The ingress addresses in the status of a Service that did not parse, read leniently."""
    try:
        ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        return [i["ip"] for i in ingress if i.get("ip")]
    except (AttributeError, TypeError):
        return []


def _condition(alloc: Allocation, svc: Service, old: Mapping[str, Any] | None) -> dict:
    # Services carry no generation today; when they do, the condition says which it saw.
    status = "True" if alloc.ok else "False"
    return condition(CONDITION, status, alloc.reason, alloc.message, old, svc.generation)


def _differs(svc: Service, alloc: Allocation) -> bool:
    # An unset ipMode means VIP: servers before Kubernetes 1.30 drop the field we write.
    if tuple(Ingress(i.ip, i.ip_mode or "VIP") for i in svc.ingress) != tuple(
        Ingress(ip, "VIP") for ip in alloc.ips
    ):
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
