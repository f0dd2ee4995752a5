"""Diff what a node has applied against the view the controller sent: the agent's plan.

Pure and deterministic: no I/O, no clocks. The agent keeps an AppliedState (what it knows
the data plane holds), calls make_plan() with each full view it receives, applies the plan,
and records what succeeded with AppliedState.after().

Services present in the pinned maps from a previous agent run have an unknown spec (the maps
do not hold weights or the Maglev seed the tables came from). They are planned as changes of
kind ADOPTED: the agent re-derives them and the data plane writes only what differs, so what is
already right is not rewritten.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from weir.common.pb import pb

STRATEGY_NAMES = {pb.STRATEGY_MAGLEV: "maglev", pb.STRATEGY_RANDOM: "random"}


@dataclass(frozen=True, order=True)
class BackendSpec:
    address: str
    port: int
    weight: int = 1


@dataclass(frozen=True)
class ServiceSpec:
    """What the data plane must hold for one frontend, normalised from a pb.Service."""

    id: str
    vip: str
    port: int
    protocol: int  # IP protocol number (6, 17, 132)
    strategy: str  # "maglev" | "random"
    table_size: int
    affinity: int  # pb.SessionAffinity
    affinity_timeout: int
    backends: tuple[BackendSpec, ...]  # the backends that take new flows, sorted

    @property
    def client_ip(self) -> bool:
        """ClientIP affinity: new flows hash over the client address only (also when the
        strategy is random: affinity wins), so its table depends on the seed too."""
        return self.affinity == pb.SESSION_AFFINITY_CLIENT_IP

    @property
    def weights(self) -> tuple[int, ...] | None:
        """Per-backend weights, or None when all are equal (the unweighted table)."""
        ws = tuple(b.weight for b in self.backends)
        return None if len(set(ws)) <= 1 else ws


def table_backends(svc: pb.Service) -> tuple[BackendSpec, ...]:
    """The backends that take new flows: all the controller sent. It already chose them
    (controller/core/endpoints.py: ready ones, else serving-terminating ones, as kube-proxy does);
    the flags ride along for inspection, and a second opinion here could only disagree."""
    return tuple(sorted(BackendSpec(b.address, b.port, b.weight or 1) for b in svc.backends))


def service_spec(svc: pb.Service) -> ServiceSpec:
    return ServiceSpec(
        id=svc.id,
        vip=svc.vip,
        port=svc.port,
        protocol=int(svc.protocol),
        strategy=STRATEGY_NAMES.get(svc.strategy, "maglev"),
        table_size=svc.maglev_table_size,
        affinity=int(svc.session_affinity),
        affinity_timeout=svc.affinity_timeout_seconds,
        backends=table_backends(svc),
    )


class ChangeKind(enum.Enum):
    BACKENDS = "backends"  # the set of backends changed
    WEIGHTS = "weights"  # same backends, other weights
    TABLE_SIZE = "table-size"
    STRATEGY = "strategy"
    AFFINITY = "affinity"
    FRONTEND = "frontend"  # vip/port/protocol under the same id: only from a buggy source
    SEED = "seed"  # the cluster's Maglev seed changed: every table is rebuilt
    ADOPTED = "adopted"  # found in the pinned maps, spec unknown: re-derive and compare


# Changes that need a new Maglev table; the others only touch the service entry.
TABLE_KINDS = frozenset(
    {
        ChangeKind.BACKENDS,
        ChangeKind.WEIGHTS,
        ChangeKind.TABLE_SIZE,
        ChangeKind.STRATEGY,
        ChangeKind.SEED,
        ChangeKind.ADOPTED,
    }
)


@dataclass(frozen=True)
class ServiceChange:
    old: ServiceSpec | None  # None when adopted from the pinned maps
    new: ServiceSpec
    kinds: frozenset[ChangeKind]

    @property
    def id(self) -> str:
        return self.new.id

    @property
    def rebuilds_table(self) -> bool:
        return bool(self.kinds & TABLE_KINDS)

    @property
    def backends_added(self) -> tuple[BackendSpec, ...]:
        old = {(b.address, b.port) for b in self.old.backends} if self.old else set()
        return tuple(b for b in self.new.backends if (b.address, b.port) not in old)

    @property
    def backends_removed(self) -> tuple[BackendSpec, ...]:
        if self.old is None:
            return ()
        new = {(b.address, b.port) for b in self.new.backends}
        return tuple(b for b in self.old.backends if (b.address, b.port) not in new)


@dataclass(frozen=True)
class Plan:
    seed: int
    seed_changed: bool  # also true on the first apply: the data plane's seed must be set
    added: tuple[ServiceSpec, ...] = ()
    changed: tuple[ServiceChange, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    bgp: pb.BGPConfig | None = None  # the new BGP settings, None when they did not change

    @property
    def to_apply(self) -> tuple[ServiceSpec, ...]:
        """Every service the data plane must (re)write, added and changed, sorted by id."""
        return tuple(sorted((*self.added, *(c.new for c in self.changed)), key=lambda s: s.id))

    @property
    def empty(self) -> bool:
        return not (self.seed_changed or self.added or self.changed or self.removed or self.bgp)

    def summary(self) -> dict[str, int]:
        return {
            "added": len(self.added),
            "changed": len(self.changed),
            "removed": len(self.removed),
            "unchanged": len(self.unchanged),
        }


@dataclass(frozen=True)
class AppliedState:
    """What the agent knows the node holds. services maps id -> spec, or None for a service
    adopted from pinned maps whose spec is unknown. seed is None before the first apply."""

    seed: int | None = None
    services: Mapping[str, ServiceSpec | None] = field(default_factory=dict)
    bgp: pb.BGPConfig | None = None

    @classmethod
    def adopted(cls, service_ids: Iterable[str]) -> AppliedState:
        return cls(services=dict.fromkeys(service_ids))

    def after(
        self,
        plan: Plan,
        *,
        applied: Iterable[ServiceSpec],
        removed: Iterable[str],
        bgp_applied: bool = True,
    ) -> AppliedState:
        """The state once the plan ran: `applied` and `removed` list what succeeded. A service
        that failed keeps its old entry, so the next plan tries it again."""
        services = dict(self.services)
        for sid in removed:
            services.pop(sid, None)
        for spec in applied:
            services[spec.id] = spec
        bgp = plan.bgp if plan.bgp is not None and bgp_applied else self.bgp
        return replace(self, seed=plan.seed, services=services, bgp=bgp)


def classify(old: ServiceSpec, new: ServiceSpec) -> frozenset[ChangeKind]:
    kinds: set[ChangeKind] = set()
    if (old.vip, old.port, old.protocol) != (new.vip, new.port, new.protocol):
        kinds.add(ChangeKind.FRONTEND)
    if [(b.address, b.port) for b in old.backends] != [(b.address, b.port) for b in new.backends]:
        kinds.add(ChangeKind.BACKENDS)
    elif old.weights != new.weights:
        kinds.add(ChangeKind.WEIGHTS)
    if old.table_size != new.table_size:
        kinds.add(ChangeKind.TABLE_SIZE)
    if old.strategy != new.strategy:
        kinds.add(ChangeKind.STRATEGY)
    if (old.affinity, old.affinity_timeout) != (new.affinity, new.affinity_timeout):
        kinds.add(ChangeKind.AFFINITY)
    return frozenset(kinds)


class View(Protocol):
    """A node's full view: a pb.Snapshot, or controller_client.NodeView (services by id)."""

    maglev_seed: int
    bgp: pb.BGPConfig

    @property
    def services(self) -> Iterable[pb.Service] | Mapping[str, pb.Service]: ...


def make_plan(applied: AppliedState, view: View) -> Plan:
    """Diff the applied state against a node's full view."""
    seed_changed = applied.seed != view.maglev_seed
    reseed = seed_changed and applied.seed is not None
    services = view.services
    if isinstance(services, Mapping):
        services = services.values()
    wanted = {s.id: service_spec(s) for s in services}
    added: list[ServiceSpec] = []
    changed: list[ServiceChange] = []
    unchanged: list[str] = []
    for sid in sorted(wanted):
        new = wanted[sid]
        if sid not in applied.services:
            added.append(new)
            continue
        old = applied.services[sid]
        if old is None:
            changed.append(ServiceChange(None, new, frozenset({ChangeKind.ADOPTED})))
            continue
        kinds = classify(old, new)
        if reseed and (new.strategy == "maglev" or new.client_ip):
            kinds |= {ChangeKind.SEED}
        if kinds:
            changed.append(ServiceChange(old, new, kinds))
        else:
            unchanged.append(sid)
    removed = tuple(sorted(sid for sid in applied.services if sid not in wanted))
    bgp = None if applied.bgp is not None and applied.bgp == view.bgp else view.bgp
    return Plan(
        seed=view.maglev_seed,
        seed_changed=seed_changed,
        added=tuple(added),
        changed=tuple(changed),
        removed=removed,
        unchanged=tuple(unchanged),
        bgp=bgp,
    )
