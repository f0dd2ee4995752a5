"""Stand-ins for what the agent's roles drive (data planes, uplink, neighbours, BGP,
metrics), recording what they are asked, and builders of the views a controller sends."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from weir.common import viewhash
from weir.common.aio import Generation
from weir.common.pb import pb
from weir.nodeagent.backend_macs import BackendMacs, Reachable
from weir.nodeagent.bgp.hook import NoBGP
from weir.nodeagent.controller_client import Update, apply_message
from weir.nodeagent.dataplane import (
    AppliedService,
    BackendTarget,
    CapacityError,
    DataplaneError,
    MapUsage,
)
from weir.nodeagent.dataplane.hcpath import HcPath
from weir.nodeagent.dataplane.layout import SLOTS_PER_LINE
from weir.nodeagent.dataplane.loader import Capacities
from weir.nodeagent.dataplane.nat import LocalBackend, NatConfig, NatSettings, check_local
from weir.nodeagent.health.checker import HealthChecker
from weir.nodeagent.lb_role import LoadBalancerRole
from weir.nodeagent.neighbors import Resolution
from weir.nodeagent.service import Frontend
from weir.nodeagent.uplink import Hop, Routes, UplinkInfo

SELF = "10.88.0.11"  # this node, on its uplink
ROUTER = "10.88.0.1"
OWN_MAC = bytes.fromhex("02000000aa01")
MACS = {ROUTER: bytes.fromhex("02000000fe01"), "10.88.0.21": bytes.fromhex("02000000bb21")}
NODES = {"10.77.1.1": ROUTER, "10.77.2.1": ROUTER}  # routed through the router
LB_NODES = ["10.88.0.11", "10.88.0.12"]


# -- stand-ins -------------------------------------------------------------------------------


class FakeUplink:
    def __init__(self, address: str = f"{SELF}/24", mtu: int = 1500) -> None:
        self.address, self.mtu = address, mtu

    async def info(self) -> UplinkInfo:
        return UplinkInfo("eth0", 2, self.mtu, OWN_MAC, (ipaddress.ip_interface(self.address),))

    async def next_hops(self, destinations) -> Routes:
        out = Routes()
        for dst in destinations:
            if dst == SELF:
                out.hops[dst] = Hop(dst, local=True)
            elif dst in NODES:
                out.hops[dst] = Hop(NODES[dst])
            else:
                out.errors[dst] = f"no route to {dst}"
        return out


class FakeNeighbours:
    async def resolve(self, addresses, *, reprobe=False, onlink=()) -> Resolution:
        wanted = set(addresses) | set(onlink)
        errors = {a: f"no ARP/ND answer from {a}" for a in wanted if a not in MACS}
        return Resolution({a: MACS[a] for a in wanted if a in MACS}, errors)


def capacities(services: int = 16, backends: int = 64, slots: int = 16384) -> Capacities:
    return Capacities(services, backends, slots // SLOTS_PER_LINE, ct_buckets=64)


@dataclass
class FakeDataplane:
    """What the load-balancer role's data plane holds, the order it was written in, and
    the real one's refusals: a write beyond `caps` (old and new backend entries coexist
    while a service changes) and every write of a service in `broken`."""

    services: dict[str, tuple[Frontend, tuple[BackendTarget, ...]]] = field(default_factory=dict)
    encap: tuple[str, int, int] | None = None
    closed: bool = False
    xdp_mode: str = "generic"
    caps: Capacities = field(default_factory=capacities)
    writes: list[str] = field(default_factory=list)  # service ids, in the order written
    broken: set[str] = field(default_factory=set)
    taken: int = 0  # backend entries no service names that are not free yet (retired ones)

    def applied(self) -> dict[str, AppliedService]:
        empty = np.zeros(0, dtype=np.uint32)
        return {
            sid: AppliedService(fe, bes, empty, "", 0, 0)
            for sid, (fe, bes) in self.services.items()
        }

    def set_seed(self, seed: int) -> None:
        pass

    def set_encap(self, node_address: str, port: int, mtu: int) -> None:
        self.encap = (node_address, port, mtu)

    def apply_service(self, fe: Frontend, backends, table) -> bool:
        if fe.id in self.broken:
            raise DataplaneError(f"service {fe.id}: the kernel says no")
        before = self.services.get(fe.id)
        if before is None and len(self.services) >= self.caps.services:
            raise CapacityError(f"service {fe.id}: all service entries are in use")
        fresh = set(backends) - set(before[1] if before else ())
        used = self.taken + sum(len(bes) for _, bes in self.services.values())
        if used + len(fresh) > self.caps.backends:
            raise CapacityError(f"service {fe.id}: needs {len(fresh)} new backend entries")
        self.writes.append(fe.id)
        self.services[fe.id] = (fe, tuple(sorted(backends)))
        return before != self.services[fe.id]

    def remove_service(self, sid: str) -> None:
        self.services.pop(sid, None)

    def usage(self) -> list[MapUsage]:
        return [MapUsage("services", len(self.services), self.caps.services)]

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeNat:
    """What the backend role's data plane was told last."""

    cfg: NatConfig = field(default_factory=lambda: NatConfig("eth0", max_local_backends=3))
    settings: NatSettings | None = None
    lb_nodes: set[str] = field(default_factory=set)
    backends: set[LocalBackend] = field(default_factory=set)
    closed: bool = False

    def configure(self, settings: NatSettings | None) -> None:
        self.settings = settings

    def set_lb_nodes(self, addresses) -> None:
        self.lb_nodes = set(addresses)

    def set_local_backends(self, backends) -> None:
        backends = set(backends)
        for b in backends:
            check_local(b)  # the real one refuses what it cannot program, all or nothing
        self.backends = backends

    def usage(self) -> list[MapUsage]:
        return [MapUsage("local_backends", len(self.backends), self.cfg.max_local_backends)]

    def close(self) -> None:
        self.closed = True


class RecordingBGP(NoBGP):
    def __init__(self) -> None:
        self.vips: list[frozenset[str]] = []  # what each apply was told to announce

    async def apply(self, bgp: pb.BGPConfig, serving_vips: frozenset[str]) -> None:
        self.vips.append(serving_vips)


class RecordingMetrics:
    def __init__(self) -> None:
        self.roles: list[dict[str, bool]] = []
        self.healthy: list[dict[str, bool]] = []

    def observe_apply(self, version: int, seconds: float, outcome) -> None:
        pass

    def set_services(self, applied: int, failed: int, incomplete: int) -> None:
        pass

    def set_maps(self, usage) -> None:
        pass

    def set_roles(self, active) -> None:
        self.roles.append(dict(active))

    def set_healthy(self, healthy) -> None:
        self.healthy.append(dict(healthy))


class Opener:
    """Opens a stand-in data plane, failing the first `fail` times."""

    def __init__(self, made, fail: int = 0) -> None:
        self.made, self.fail, self.calls = made, fail, 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.fail:
            raise DataplaneError("bcc is missing")
        return self.made


class NoCheckPath:
    """The check path's map (HcPath) left out: checks to 127.0.0.1 need none."""

    def set(self, routes: object) -> None:
        pass

    def close(self) -> None:
        pass


class AllReachable:
    """BackendMacs for checks over loopback: every backend reachable, nothing to resolve."""

    async def resolve(self, backends: object) -> None:
        return None

    def reachable(self, service: object, found: object) -> Reachable:
        return Reachable()


def loopback_checker(changes: Generation, refresh: float) -> HealthChecker:
    """A HealthChecker as the agent runs it, for targets listening on 127.0.0.1."""
    return HealthChecker(
        lambda: cast(HcPath, NoCheckPath()), cast(BackendMacs, AllReachable()), changes,
        refresh=refresh,
    )  # fmt: skip


# -- views -----------------------------------------------------------------------------------


def backend(address: str, node: str = "", port: int = 8080) -> pb.Backend:
    if not node:
        return pb.Backend(address=address, port=port, forwarding=pb.FORWARDING_L2_DSR)
    return pb.Backend(address=address, port=port, forwarding=pb.FORWARDING_ENCAP, node_address=node)


def service(vip: str, *backends: pb.Backend, port: int = 80) -> pb.Service:
    return pb.Service(
        id=f"{vip}:{port}/TCP",
        vip=vip,
        port=port,
        protocol=pb.PROTOCOL_TCP,
        strategy=pb.STRATEGY_MAGLEV,
        maglev_table_size=251,
        backends=sorted(backends, key=lambda b: (b.address, b.port)),
    )


def endpoint(vip: str, pod: str, port: int = 80, proto: int = pb.PROTOCOL_TCP) -> pb.LocalEndpoint:
    name = "TCP" if proto == pb.PROTOCOL_TCP else "UDP" if proto == pb.PROTOCOL_UDP else "SCTP"
    return pb.LocalEndpoint(
        service_id=f"{vip}:{port}/{name}",
        vip=vip,
        port=port,
        protocol=proto,
        address=pod,
        target_port=8080,
    )


def view(version: int, *services: pb.Service, lb: bool = True, **config) -> Update:
    cfg = pb.NodeConfig(load_balancer=lb, address=config.pop("address", SELF), **config)
    cfg.encap_port = 6093
    snap = pb.Snapshot(
        version=version,
        node="n1",
        maglev_seed=7,
        services=sorted(services, key=lambda s: s.id),
        node_config=cfg,
    )
    snap.hash = viewhash.view_hash(snap)
    return apply_message(None, "n1", pb.ControllerMessage(snapshot=snap))


def errors(ack: pb.Ack) -> dict[str, str]:
    return {e.service_id: e.message for e in ack.service_errors}


def lb_role(opener: Opener, *, bgp=None, pinned: bool = False, uplink=None) -> LoadBalancerRole:
    uplink = uplink or FakeUplink()
    macs = BackendMacs(FakeNeighbours(), uplink)
    return LoadBalancerRole(opener, macs, uplink=uplink, pinned=pinned, bgp=bgp)


WEB = service("192.0.2.10", backend("10.88.0.21"))
