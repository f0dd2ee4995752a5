"""The agent's model of what the controller asks this node to do.

A version arrives as protobuf (the controller client's NodeView); the agent converts it
once, with desired_of, and everything after that (the plan, both roles, their data planes)
works on these types:
- Service: a frontend and the backends a load-balancer node picks from, each reached by L2
  DSR or by encapsulation to its node (docs/FORWARDING.md);
- NodeSettings: the node's roles and what the backend role needs (its local endpoints'
  translations, the load-balancer nodes it accepts encapsulated packets from).
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
# How a load-balancer node reaches a backend: l2 rewrites the destination MAC (a host on its
# segment holding the VIP), encap sends it to the backend's node, which translates.
Forwarding = Literal["l2", "encap"]

STRATEGIES: dict[int, Strategy] = {pb.STRATEGY_MAGLEV: "maglev", pb.STRATEGY_RANDOM: "random"}
DEFAULT_ENCAP_PORT = 6093  # the controller's --encap-port default, when a view has none


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
    forwarding: Forwarding = "l2"
    node: str = ""  # encap: the address of the backend's node (the outer destination)

    def __str__(self) -> str:
        if self.forwarding == "l2":
            return f"{self.address}:{self.port}"
        return f"{self.address}:{self.port} via node {self.node or '(none)'}"


@dataclass(frozen=True)
class Service:
    frontend: Frontend
    table_size: int  # Maglev table size M (a prime)
    # sessionAffinityConfig.clientIP.timeoutSeconds: hash-based affinity has no use for it.
    affinity_timeout: int
    backends: tuple[Backend, ...]  # the backends that take new flows, sorted
    # Which Services a node short of capacity serves first (nodeagent.admission): the
    # Kubernetes Service's creationTimestamp (Unix seconds, 0: not known) and its
    # "<namespace>/<name>".
    created: int = 0
    owner: str = ""

    @property
    def id(self) -> str:
        return self.frontend.id

    @property
    def weights(self) -> tuple[int, ...] | None:
        """Per-backend weights, or None when all are equal (the unweighted table)."""
        ws = tuple(b.weight for b in self.backends)
        return None if len(set(ws)) <= 1 else ws


@dataclass(frozen=True, order=True)
class LocalEndpoint:
    """A translation the backend role makes: vip:port (protocol) -> address:target_port."""

    service_id: str  # the frontend's Service.id: errors are reported against it
    vip: str
    port: int
    protocol: int
    address: str
    target_port: int


@dataclass(frozen=True)
class NodeSettings:
    """The node's roles, and what each needs besides the services."""

    load_balancer: bool = False
    address: str = ""  # the outer source (load balancer) and destination (backend role)
    encap_port: int = DEFAULT_ENCAP_PORT
    local_endpoints: tuple[LocalEndpoint, ...] = ()  # the backend role, sorted
    lb_nodes: frozenset[str] = frozenset()  # encapsulated packets come only from these


@dataclass(frozen=True)
class Desired:
    """What the controller asks of this node at one version."""

    version: int
    seed: int  # the cluster's Maglev seed
    services: Mapping[str, Service]  # by id
    bgp: pb.BGPConfig  # the BGP speaker reads it as it is (nodeagent.bgp.config)
    node: NodeSettings = NodeSettings()


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
        backends=tuple(sorted(_backend(b) for b in svc.backends)),
        created=svc.created_unix_seconds,
        owner=svc.service,
    )


def _backend(b: pb.Backend) -> Backend:
    """FORWARDING_UNSPECIFIED is L2 DSR: what a controller that predates the field means."""
    if b.forwarding == pb.FORWARDING_ENCAP:
        return Backend(b.address, b.port, b.weight or 1, "encap", b.node_address)
    return Backend(b.address, b.port, b.weight or 1)


def node_from_pb(cfg: pb.NodeConfig, *, has_services: bool = False) -> NodeSettings:
    """has_services: the view carries services. One that does without any NodeConfig comes
    from a controller that predates node roles (an upgrade in progress), which sent services
    only to load-balancer nodes: the node keeps that role rather than stop serving."""
    legacy = has_services and not cfg.ByteSize()
    return NodeSettings(
        load_balancer=cfg.load_balancer or legacy,
        address=cfg.address,
        encap_port=cfg.encap_port or DEFAULT_ENCAP_PORT,
        local_endpoints=tuple(
            sorted(
                LocalEndpoint(
                    e.service_id, e.vip, e.port, int(e.protocol), e.address, e.target_port
                )
                for e in cfg.local_endpoints
            )
        ),
        lb_nodes=frozenset(cfg.lb_node_addresses),
    )
