"""Which services a load-balancer node serves when its maps cannot hold them all.

The nodes that announce a VIP must hold the same table for it, so what a node serves depends
only on the view and its map capacities, never on what it applied before: a fresh node
picks what the nodes that have run for months picked. admit() walks the services oldest
Kubernetes Service first (creationTimestamp, then namespace/name, then frontend id; Services
without a timestamp last) and admits each one that fits in what those before it left. A new
Service never pushes out an older one; one that grows may push out younger ones, on every
node alike. Nodes with different map sizes may admit different Services: give the
load-balancer nodes the same sizes.

What a service takes (nodeagent/dataplane/README.md, "Capacity"):
- one service entry;
- one backend entry per backend in the view (reachable from this node or not: the count
  must not depend on the node);
- twice its table size in table slots: both halves of the double buffer are reserved when
  it is added, so an update needs no more slots.
And the double buffer's headroom: while a service's backends are replaced, the old entries
stay live until the new table is in place, so as many backend entries as the largest
admitted service has are kept free (`reserved`). A service that cannot fit even alone with
its own headroom (twice its backends, both halves of its table) is refused as one that can
never fit, by the data plane's own rule (Capacities.never_fits), naming the flag that would
make room.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from weir.common.tablesize import validate_table_size
from weir.nodeagent.service import Service


class Capacities(Protocol):
    """The data plane's map capacities (nodeagent.dataplane.loader.Capacities)."""

    @property
    def services(self) -> int: ...

    @property
    def backends(self) -> int: ...

    @property
    def slots(self) -> int: ...

    def never_fits(self, backends: int, slots: int) -> str: ...


@dataclass(frozen=True)
class Needs:
    services: int
    backends: int
    slots: int

    @classmethod
    def of(cls, svc: Service) -> Needs:
        n = len(svc.backends)
        return cls(1, n, 2 * svc.table_size if n else 0)


@dataclass(frozen=True)
class Admission:
    admitted: dict[str, Service] = field(default_factory=dict)  # by id, in admission order
    refused: dict[str, str] = field(default_factory=dict)  # service id -> why
    reserved: int = 0  # backend entries kept free for updates


def seniority(svc: Service) -> tuple[bool, int, str, str]:
    """Oldest Kubernetes Service first; unknown creation times after all others."""
    return (not svc.created, svc.created, svc.owner, svc.id)


def admit(services: Iterable[Service], caps: Capacities) -> Admission:
    """Which of these services the maps serve (see the module docstring)."""
    admitted: dict[str, Service] = {}
    refused: dict[str, str] = {}
    used = Needs(0, 0, 0)
    reserved = 0
    for svc in sorted(services, key=seniority):
        need = Needs.of(svc)
        try:
            validate_table_size(svc.table_size)
        except ValueError as exc:
            refused[svc.id] = str(exc)
            continue
        never = _never_fits(need, caps)
        if never:
            refused[svc.id] = f"can never fit on this node: {never}"
            continue
        headroom = max(reserved, need.backends)
        short = _short(need, used, headroom, caps)
        if short:
            refused[svc.id] = (
                f"does not fit on this node: {short}, after the Services served before it "
                "(the oldest first, on every node alike)"
            )
            continue
        admitted[svc.id] = svc
        used = Needs(
            used.services + need.services, used.backends + need.backends, used.slots + need.slots
        )
        reserved = headroom
    return Admission(admitted, refused, reserved)


def _never_fits(need: Needs, caps: Capacities) -> str:
    why = caps.never_fits(2 * need.backends, need.slots)
    if not why:
        return ""
    return (
        f"{why}; while a service's backends are replaced, old and new coexist, and both "
        "halves of its table are kept"
    )


def _short(need: Needs, used: Needs, headroom: int, caps: Capacities) -> str:
    if used.services + need.services > caps.services:
        return f"all {caps.services} service entries are taken"
    if used.backends + need.backends + headroom > caps.backends:
        free = caps.backends - used.backends - headroom
        return (
            f"its {need.backends} backends need as many backend entries, {max(free, 0)} of "
            f"{caps.backends} are left ({headroom} kept free for updates)"
        )
    if used.slots + need.slots > caps.slots:
        return (
            f"its table needs {need.slots} slots, {caps.slots - used.slots} of {caps.slots} "
            "are left"
        )
    return ""
