"""The MACs of the load balancer's backends: DSR in L2 mode rewrites each packet's
destination MAC to its backend's, so a backend is programmed only with a MAC.

A backend whose MAC cannot be resolved is left out: its service is programmed without it
and reported as not fully applied, and mac_upkeep retries it. Leaving it out beats failing
the whole service: its other backends keep taking new flows, and no flow is sent to an
address the node cannot reach. A backend that resolved once and later stops answering keeps
its last known MAC (its removal is the control plane's call, through readiness), and so does
an adopted one. Backends outside the uplink's subnets are always left out: an L2 rewrite
cannot reach them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from weir.common.logs import get_logger
from weir.nodeagent.dataplane import BackendTarget
from weir.nodeagent.neighbors import NeighborError, Resolution
from weir.nodeagent.service import Backend, Service

log = get_logger("weir.agent")


class Resolver(Protocol):
    async def resolve(self, addresses: Iterable[str], *, reprobe: bool = False) -> Resolution: ...


@dataclass
class Reachable:
    """One service's backends: those with a MAC (members[i] goes to targets[i]), and those
    left out, with why."""

    members: list[Backend] = field(default_factory=list)
    targets: list[BackendTarget] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)  # address -> reason


class BackendMacs:
    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self.uplink_ok = True
        self._known: dict[str, bytes] = {}  # last MAC programmed per backend address
        self._excluded: dict[str, dict[str, str]] = {}  # service id -> address -> reason

    @property
    def excluded(self) -> Mapping[str, Mapping[str, str]]:
        """Service id -> the backends it is programmed without -> why."""
        return self._excluded

    async def resolve(self, addresses: set[str], *, reprobe: bool = False) -> Resolution:
        try:
            res = await self._resolver.resolve(addresses, reprobe=reprobe)
        except NeighborError as exc:
            # The uplink itself is broken: every backend is unresolved, known MACs still serve.
            self.uplink_ok = False
            log.error("cannot resolve backends", error=str(exc))
            return Resolution(errors=dict.fromkeys(addresses, str(exc)))
        self.uplink_ok = True
        return res

    def reachable(self, service: Service, res: Resolution) -> Reachable:
        out = Reachable()
        for b in service.backends:
            mac = res.macs.get(b.address)
            if mac is None and b.address not in res.offlink:
                mac = self._known.get(b.address)  # stopped answering: keep the last known MAC
            if mac is None:
                reason = res.errors.get(b.address, "MAC unknown")
                if b.address not in reason:
                    reason = f"backend {b.address}: {reason}"
                out.excluded[b.address] = reason
                continue
            out.members.append(b)
            out.targets.append(BackendTarget(address=b.address, port=b.port, mac=mac))
        return out

    def programmed(self, service_id: str, backends: Reachable) -> None:
        """The service was written with these backends."""
        for t in backends.targets:
            self._known[t.address] = t.mac
        if backends.excluded:
            self._excluded[service_id] = backends.excluded
        else:
            self._excluded.pop(service_id, None)

    def forget(self, service_id: str) -> None:
        """The service is not programmed (any more): none of its backends is left out."""
        self._excluded.pop(service_id, None)

    def adopt(self, targets: Iterable[BackendTarget]) -> int:
        """MACs the pinned maps hold, from an earlier run. Returns how many are known."""
        for t in targets:
            self._known.setdefault(t.address, t.mac)
        return len(self._known)

    def in_use(self, addresses: set[str]) -> set[str]:
        """Keep the MACs of these backend addresses only; returns those known."""
        for gone in set(self._known) - addresses:
            del self._known[gone]
        return set(self._known)

    def moved(self, res: Resolution) -> set[str]:
        """Addresses whose MAC now differs from the one programmed."""
        return {a for a, mac in res.macs.items() if self._known.get(a) != mac}


def excluded_message(excluded: Mapping[str, str]) -> str:
    reasons = "; ".join(excluded[a] for a in sorted(excluded))
    return f"applied without {len(excluded)} backend(s) whose MAC is unknown: {reasons}"
