"""What the allocator keeps on a LoadBalancerIPPool besides its spec: status and finalizer.

- status: address counts (kube/ipam.py's PoolUsage), the spec generation they were computed
  from, and two conditions, present only while they hold:
  - weir.dev/DeletionBlocked (reason InUse): the pool is being deleted, and Services still
    hold its addresses;
  - weir.dev/AddressesKept (reason OutsideSpec): an edit left addresses that Services hold
    outside what the pool offers (cidrs, ranges, avoidBuggyIPs, selectors); they keep them.
- FINALIZER, on every pool: removed from a pool being deleted once no Service holds its
  addresses. Deleting a pool in use (kubectl delete, a CRD reinstall) waits until it is unused
  instead of taking addresses away.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from weir.controller.core.crds import IPPool
from weir.controller.kube.conditions import condition, find
from weir.controller.kube.ipam import PoolUsage

FINALIZER = "weir.dev/pool-protection"
DELETION_BLOCKED = "weir.dev/DeletionBlocked"
ADDRESSES_KEPT = "weir.dev/AddressesKept"
FIELDS = (
    "assigned",
    "assignedIPv4",
    "assignedIPv6",
    "availableIPv4",
    "availableIPv6",
    "services",
    "observedGeneration",
    "conditions",
)
_NAMED = 10  # Services named in a message; the rest are counted


def desired_status(
    pool: IPPool, usage: PoolUsage, holders: Sequence[str], kept: Sequence[str]
) -> dict[str, Any]:
    """The status the pool should have (conditions None when there are none)."""
    old = pool.status.get("conditions")
    conditions = []
    if pool.deleting and holders:
        named = ", ".join(holders[:_NAMED])
        if len(holders) > _NAMED:
            named += f" and {len(holders) - _NAMED} more"
        message = (
            f"{len(holders)} Service(s) hold addresses of this pool ({named}); it is deleted "
            "once none does"
        )
        conditions.append(
            condition(
                DELETION_BLOCKED,
                "True",
                "InUse",
                message,
                find(old, DELETION_BLOCKED),
                pool.generation,
            )
        )
    if kept:
        message = "Services keep addresses this pool no longer offers: " + "; ".join(kept)
        conditions.append(
            condition(
                ADDRESSES_KEPT,
                "True",
                "OutsideSpec",
                message,
                find(old, ADDRESSES_KEPT),
                pool.generation,
            )
        )
    return {
        "assigned": usage.assigned,
        "assignedIPv4": usage.assigned_v4,
        "assignedIPv6": usage.assigned_v6,
        "availableIPv4": usage.available_v4,
        "availableIPv6": usage.available_v6,
        "services": usage.services,
        "observedGeneration": pool.generation,
        "conditions": conditions or None,
    }


def current_status(pool: IPPool) -> dict[str, Any]:
    """The fields of desired_status() as the pool has them."""
    return {k: pool.status.get(k) for k in FIELDS}


def news(pool: IPPool, status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The conditions of status that the pool did not have yet, or had with another message:
    what deserves an Event."""
    old = pool.status.get("conditions")
    return [
        c
        for c in status.get("conditions") or ()
        if (find(old, c["type"]) or {}).get("message") != c["message"]
    ]


def finalizers_after(pool: IPPool, holders: Sequence[str]) -> list[str] | None:
    """The pool's finalizers as they should be, or None when they are right."""
    if pool.deleting:
        if FINALIZER in pool.finalizers and not holders:
            return [f for f in pool.finalizers if f != FINALIZER]
        return None
    if FINALIZER not in pool.finalizers:
        return [*pool.finalizers, FINALIZER]
    return None
