"""Diff what a node has applied against the services the controller wants: the agent's plan.

Pure and deterministic: no I/O, no clocks. A role keeps an AppliedState (what it knows its
data plane holds), calls make_plan() with each version's full set of services, applies the
plan, and records what succeeded with AppliedState.after().

Services present in the pinned maps from a previous agent run have an unknown spec (the maps
do not hold weights or the Maglev seed the tables came from). They are planned as changes of
kind ADOPTED: the role re-derives them and the data plane writes only what differs, so what
is already right is not rewritten.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from weir.nodeagent.service import Service


class ChangeKind(enum.Enum):
    BACKENDS = "backends"  # the set of backends changed, or how one is reached
    WEIGHTS = "weights"  # same backends, other weights
    TABLE_SIZE = "table-size"
    STRATEGY = "strategy"
    AFFINITY = "affinity"
    FRONTEND = "frontend"  # vip/port/protocol under the same id: only from a buggy source
    SEED = "seed"  # the cluster's Maglev seed changed: every table is rebuilt
    ADOPTED = "adopted"  # found in the pinned maps, spec unknown: re-derive and compare


@dataclass(frozen=True)
class ServiceChange:
    old: Service | None  # None when adopted from the pinned maps
    new: Service
    kinds: frozenset[ChangeKind]

    @property
    def id(self) -> str:
        return self.new.id


@dataclass(frozen=True)
class Plan:
    seed: int
    seed_changed: bool  # also true on the first apply: the data plane's seed must be set
    added: tuple[Service, ...] = ()
    changed: tuple[ServiceChange, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    @property
    def to_apply(self) -> tuple[Service, ...]:
        """Every service the data plane must (re)write, added and changed, sorted by id."""
        return tuple(sorted((*self.added, *(c.new for c in self.changed)), key=lambda s: s.id))

    def summary(self) -> dict[str, int]:
        return {
            "added": len(self.added),
            "changed": len(self.changed),
            "removed": len(self.removed),
            "unchanged": len(self.unchanged),
        }


@dataclass(frozen=True)
class AppliedState:
    """What a role knows its data plane holds. services maps id -> spec, or None for a
    service adopted from pinned maps whose spec is unknown. seed is None before the first
    apply."""

    seed: int | None = None
    services: Mapping[str, Service | None] = field(default_factory=dict)

    @classmethod
    def adopted(cls, service_ids: Iterable[str]) -> AppliedState:
        return cls(services=dict.fromkeys(service_ids))

    def after(
        self, plan: Plan, *, applied: Iterable[Service], removed: Iterable[str]
    ) -> AppliedState:
        """The state once the plan ran: `applied` and `removed` list what succeeded. A service
        that failed keeps its old entry, so the next plan tries it again."""
        services = dict(self.services)
        for sid in removed:
            services.pop(sid, None)
        for spec in applied:
            services[spec.id] = spec
        return AppliedState(seed=plan.seed, services=services)


def classify(old: Service, new: Service) -> frozenset[ChangeKind]:
    kinds: set[ChangeKind] = set()
    was, now = old.frontend, new.frontend
    if (was.vip, was.port, was.protocol) != (now.vip, now.port, now.protocol):
        kinds.add(ChangeKind.FRONTEND)
    if _reached(old) != _reached(new):
        kinds.add(ChangeKind.BACKENDS)
    elif old.weights != new.weights:
        kinds.add(ChangeKind.WEIGHTS)
    if old.table_size != new.table_size:
        kinds.add(ChangeKind.TABLE_SIZE)
    if was.strategy != now.strategy:
        kinds.add(ChangeKind.STRATEGY)
    if (was.affinity, old.affinity_timeout) != (now.affinity, new.affinity_timeout):
        kinds.add(ChangeKind.AFFINITY)
    return frozenset(kinds)


def _reached(svc: Service) -> list[tuple[str, int, str, str]]:
    return [(b.address, b.port, b.forwarding, b.node) for b in svc.backends]


def make_plan(applied: AppliedState, seed: int, wanted: Mapping[str, Service]) -> Plan:
    """Diff the applied state against the full set of services wanted (by id) under seed."""
    seed_changed = applied.seed != seed
    reseed = seed_changed and applied.seed is not None
    added: list[Service] = []
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
        if reseed and (new.frontend.strategy == "maglev" or new.frontend.client_ip):
            kinds |= {ChangeKind.SEED}
        if kinds:
            changed.append(ServiceChange(old, new, kinds))
        else:
            unchanged.append(sid)
    return Plan(
        seed=seed,
        seed_changed=seed_changed,
        added=tuple(added),
        changed=tuple(changed),
        removed=tuple(sorted(sid for sid in applied.services if sid not in wanted)),
        unchanged=tuple(unchanged),
    )
