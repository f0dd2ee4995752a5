"""The agent's model of a service: what the controller asks this node to serve.

A version arrives as protobuf (pb.Service, in the controller client's NodeView); the agent
converts it once, with from_pb, and everything after that (the plan, the load-balancer
role, its data plane) works on these types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from weir.common.pb import pb

Strategy = Literal["maglev", "random"]
# client_ip: new flows hash over the client address only (Kubernetes sessionAffinity:
# ClientIP), so all of a client's connections reach one backend (dataplane/README.md).
Affinity = Literal["none", "client_ip"]

STRATEGIES: dict[int, Strategy] = {pb.STRATEGY_MAGLEV: "maglev", pb.STRATEGY_RANDOM: "random"}


@dataclass(frozen=True)
class Frontend:
    """Where a service is reached, and how its new flows pick a backend."""

    id: str  # "<vip>:<port>/<proto>", the controller's service id
    vip: str
    port: int
    protocol: int  # IP protocol number (weir.common.protocols)
    strategy: Strategy = "maglev"
    affinity: Affinity = "none"

    @property
    def client_ip(self) -> bool:
        """ClientIP affinity: new flows hash over the client address only (also when the
        strategy is random: affinity wins), so its table depends on the seed too."""
        return self.affinity == "client_ip"


@dataclass(frozen=True, order=True)
class Backend:
    address: str
    port: int
    weight: int = 1


@dataclass(frozen=True)
class Service:
    frontend: Frontend
    table_size: int  # Maglev table size M (a prime)
    # sessionAffinityConfig.clientIP.timeoutSeconds: hash-based affinity has no use for it.
    affinity_timeout: int
    backends: tuple[Backend, ...]  # the backends that take new flows, sorted

    @property
    def id(self) -> str:
        return self.frontend.id

    @property
    def weights(self) -> tuple[int, ...] | None:
        """Per-backend weights, or None when all are equal (the unweighted table)."""
        ws = tuple(b.weight for b in self.backends)
        return None if len(set(ws)) <= 1 else ws


@dataclass(frozen=True)
class Desired:
    """What the controller asks of this node at one version."""

    version: int
    seed: int  # the cluster's Maglev seed
    services: Mapping[str, Service]  # by id
    bgp: pb.BGPConfig  # the BGP speaker reads it as it is (nodeagent.bgp.config)


def from_pb(svc: pb.Service) -> Service:
    """The backends are all the controller sent: it already chose the ones that take new
    flows (controller/core/endpoints.py: ready ones, else serving-terminating ones, as
    kube-proxy does); the flags ride along for inspection, and a second opinion here could
    only disagree."""
    frontend = Frontend(
        id=svc.id,
        vip=svc.vip,
        port=svc.port,
        protocol=int(svc.protocol),
        strategy=STRATEGIES.get(svc.strategy, "maglev"),
        affinity="client_ip" if svc.session_affinity == pb.SESSION_AFFINITY_CLIENT_IP else "none",
    )
    return Service(
        frontend=frontend,
        table_size=svc.maglev_table_size,
        affinity_timeout=svc.affinity_timeout_seconds,
        backends=tuple(sorted(Backend(b.address, b.port, b.weight or 1) for b in svc.backends)),
    )
