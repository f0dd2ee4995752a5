"""The MACs the load balancer sends each backend's packets to.

L2 DSR rewrites the destination MAC to the backend's own: the backend is on the uplink's
segment. An encapsulated packet goes to the next hop toward the backend's node: the gateway
of the route to the node, or the node itself when it is on-link (nodeagent.uplink); to this
node's own MAC when the backend's node is this node (the packet goes up its own stack,
where the backend role decapsulates it). Either way a backend is programmed only with a MAC.

A backend whose MAC cannot be resolved is left out: its service is programmed without it
and reported as not fully applied, and mac_upkeep retries it. Leaving it out beats failing
the whole service: its other backends keep taking new flows, and no flow is sent to an
address the node cannot reach. A backend whose next hop resolved once and later stops
answering keeps its last known MAC (its removal is the control plane's call, through
readiness), and so does an adopted L2 one. Backends the uplink cannot reach at all are
always left out: an L2 backend outside the uplink's subnets, an encapsulated one whose node
is not routed through the uplink, and every encapsulated one while this node cannot
encapsulate (`encap_error`, set by the balancer from the node's settings).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from weir.common.logs import get_logger
from weir.nodeagent.dataplane import BackendTarget
from weir.nodeagent.neighbors import Resolution
from weir.nodeagent.service import Backend, Service
from weir.nodeagent.uplink import Hop, Routes, UplinkError, UplinkInfo

log = get_logger("weir.agent")


class Resolver(Protocol):
    async def resolve(
        self, addresses: Iterable[str], *, reprobe: bool = False, onlink: Iterable[str] = ()
    ) -> Resolution: ...


class Router(Protocol):
    async def next_hops(self, destinations: Iterable[str]) -> Routes: ...

    async def info(self) -> UplinkInfo: ...


@dataclass(frozen=True)
class Lookup:
    """What one resolve() found: the next hop toward every node, the MAC of every
    neighbour, and this node's own MAC (for backends on this node)."""

    neighbours: Resolution
    routes: Routes
    own_mac: bytes = b""


@dataclass
class Reachable:
    """One service's backends: those with a MAC (members[i] goes to targets[i]), and those
    left out, with why."""

    members: list[Backend] = field(default_factory=list)
    targets: list[BackendTarget] = field(default_factory=list)
    excluded: dict[Backend, str] = field(default_factory=dict)
    hops: list[str] = field(default_factory=list)  # the neighbour of each target ("": own)


@dataclass(frozen=True)
class _Reach:
    mac: bytes | None
    hop: str = ""  # the neighbour the MAC is that of ("" for this node's own)
    reason: str = ""


class BackendMacs:
    def __init__(self, resolver: Resolver, router: Router | None = None) -> None:
        self._resolver = resolver
        self._router = router
        self.uplink_ok = True
        # Why no encapsulated backend can be reached now (None: they can).
        self.encap_error: str | None = None
        self._known: dict[str, bytes] = {}  # last MAC programmed per neighbour address
        # service id -> backend programmed -> (its neighbour, the MAC programmed)
        self._members: dict[str, dict[Backend, tuple[str, bytes]]] = {}
        self._excluded: dict[str, dict[Backend, str]] = {}  # service id -> left out -> why

    @property
    def excluded(self) -> Mapping[str, Mapping[Backend, str]]:
        """Service id -> the backends it is programmed without -> why."""
        return self._excluded

    async def resolve(self, backends: Iterable[Backend], *, reprobe: bool = False) -> Lookup:
        """Route every encapsulated backend's node, then resolve every neighbour's MAC."""
        backends = set(backends)
        direct = {b.address for b in backends if b.forwarding == "l2"}
        nodes = {b.node for b in backends if b.forwarding == "encap" and b.node}
        try:
            routes = Routes()
            own = b""
            if nodes:
                if self._router is None:
                    raise UplinkError("no uplink to route encapsulated backends on")
                routes = await self._router.next_hops(nodes)
                if any(h.local for h in routes.hops.values()):
                    own = (await self._router.info()).mac
            hops = {h.address for h in routes.hops.values() if not h.local}
            neighbours = await self._resolver.resolve(direct, reprobe=reprobe, onlink=hops)
        except UplinkError as exc:
            # The uplink itself is broken: every backend is unresolved, known MACs still serve.
            self.uplink_ok = False
            log.error("cannot resolve backends", error=str(exc))
            errors = dict.fromkeys(direct | nodes, str(exc))
            return Lookup(Resolution(errors=errors), Routes(errors=errors))
        self.uplink_ok = True
        return Lookup(neighbours, routes, own)

    def reachable(self, service: Service, found: Lookup) -> Reachable:
        out = Reachable()
        for b in service.backends:
            reach = self._reach(b, found)
            if reach.mac is None:
                out.excluded[b] = reach.reason
                continue
            out.members.append(b)
            node = b.node if b.forwarding == "encap" else ""
            out.targets.append(BackendTarget(b.address, b.port, reach.mac, node))
            out.hops.append(reach.hop)
        return out

    def _reach(self, b: Backend, found: Lookup) -> _Reach:
        res = found.neighbours
        if b.forwarding == "l2":
            hop, final, context = b.address, b.address in res.offlink, f"backend {b.address}"
        else:
            if not b.node:
                return _Reach(None, reason=f"backend {b}: its node has no address")
            if self.encap_error:
                return _Reach(None, reason=f"backend {b}: {self.encap_error}")
            route: Hop | None = found.routes.hops.get(b.node)
            if route is None:
                why = found.routes.errors.get(b.node, "no route")
                return _Reach(None, reason=f"backend {b}: {why}")
            if route.local:
                return _Reach(found.own_mac or None, reason=f"backend {b}: own MAC unknown")
            hop, final = route.address, False
            context = f"backend {b} (next hop {hop})"
        mac = res.macs.get(hop)
        if mac is None and not final:
            mac = self._known.get(hop)  # stopped answering: keep the last known MAC
        if mac is None:
            reason = res.errors.get(hop, "MAC unknown")
            if not reason.startswith("backend "):
                reason = f"{context}: {reason}"
            return _Reach(None, reason=reason)
        return _Reach(mac, hop)

    def programmed(self, service_id: str, backends: Reachable) -> None:
        """The service was written with these backends."""
        members = list(zip(backends.members, backends.hops, backends.targets, strict=True))
        self._members[service_id] = {b: (hop, t.mac) for b, hop, t in members}
        self._known.update((hop, t.mac) for _, hop, t in members if hop)
        if backends.excluded:
            self._excluded[service_id] = backends.excluded
        else:
            self._excluded.pop(service_id, None)

    def forget(self, service_id: str) -> None:
        """The service is not programmed (any more): none of its backends is left out."""
        self._excluded.pop(service_id, None)
        self._members.pop(service_id, None)

    def adopt(self, targets: Iterable[BackendTarget]) -> int:
        """MACs of L2 backends the pinned maps hold, from an earlier run (an encapsulated
        one's MAC is its next hop's, whose address the maps do not hold). Returns how many
        are known."""
        for t in targets:
            if not t.node:
                self._known.setdefault(t.address, t.mac)
        return len(self._known)

    def in_use(self) -> set[Backend]:
        """Every backend programmed now; the MACs of other neighbours are forgotten."""
        hops = {hop for members in self._members.values() for hop, _ in members.values()}
        self._known = {hop: mac for hop, mac in self._known.items() if hop in hops}
        return {b for members in self._members.values() for b in members}

    def resolved(self, backends: Iterable[Backend], found: Lookup) -> set[Backend]:
        """The backends that have a MAC now."""
        return {b for b in backends if self._reach(b, found).mac is not None}

    def moved(self, found: Lookup) -> list[str]:
        """Services with a programmed backend whose MAC is not the one programmed now
        (a pod recreated with the same IP, another next hop), sorted."""
        return sorted(
            sid
            for sid, members in self._members.items()
            if any(self._reach(b, found).mac != mac for b, (_, mac) in members.items())
        )


def excluded_message(excluded: Mapping[Backend, str]) -> str:
    reasons = "; ".join(excluded[b] for b in sorted(excluded))
    return f"applied without {len(excluded)} backend(s) that cannot be reached: {reasons}"
