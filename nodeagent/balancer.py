"""The load-balancer role's apply path: programs the services of each version into the XDP
data plane (nodeagent.lb_role decides when the node has the role).

apply(desired), once per version, in order:
  1. admits the services the maps can hold, the same ones on every node (nodeagent.admission:
     oldest Kubernetes Service first); the others are refused, each with why;
  2. plans: diff of what is applied against the services admitted (nodeagent.plan);
  3. removes the services that left or are refused now (first: it frees map capacity);
  4. when services have encapsulated backends: sets the encapsulation (this node's address,
     which must be on the uplink, the cluster's port, the uplink's MTU); while it cannot,
     encapsulated backends are left out (and their services rewritten when that changes);
  5. resolves the MAC of every backend it is about to program (nodeagent.backend_macs);
  6. builds the Maglev tables (TableCache) and writes them (Dataplane) in a worker thread,
     one service at a time, so a service that fails is recorded and the others are
     applied; services that need no more backend entries than they hold go first (they
     free entries the others may need), then the rest in admission order. A service whose
     additions do not fit (CapacityError) is written with the backends it keeps, its
     removed ones taken out: removing never needs room;
  7. hands the BGP settings and the VIPs now served to the BGP hook.
errors() then names every service wanted that is not (fully) applied. reprogram() writes
services again between versions, when their backends' MACs resolve or change
(nodeagent.mac_upkeep).

What is announced: the VIPs with a service programmed with at least one backend, except
- a VIP one of whose services failed to be written, or was written with its kept backends
  only: this node holds a stale table (or none) where the other nodes hold the current one;
- every VIP while the data plane does not forward (set_forwarding: the XDP program is
  detached or replaced, nodeagent.forwarding_watch).

On start, adopt() reads what the pinned maps hold: those services are planned as ADOPTED and
re-written through Dataplane.apply_service, which writes nothing when they are already right.

All Dataplane calls block (bcc, bpf syscalls) and run in a worker thread, one at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from weir.common.aio import Generation
from weir.common.logs import get_logger
from weir.common.pb import pb
from weir.common.tablesize import validate_table_size
from weir.nodeagent.admission import Admission, admit
from weir.nodeagent.backend_macs import BackendMacs, Reachable, excluded_message
from weir.nodeagent.bgp.hook import BGPHook, NoBGP
from weir.nodeagent.dataplane import BackendTarget, CapacityError, Dataplane, DataplaneError
from weir.nodeagent.maglev import NoBackendsError, TableCache, backend_id
from weir.nodeagent.plan import AppliedState, make_plan
from weir.nodeagent.roles import RoleStatus, UplinkSource
from weir.nodeagent.service import Desired, NodeSettings, Service
from weir.nodeagent.uplink import UplinkError

log = get_logger("weir.agent")

EMPTY_TABLE = np.zeros(0, dtype=np.uint32)
EMPTY_TABLE.flags.writeable = False


@dataclass
class Outcome:
    """What one apply did, in services."""

    written: int = 0
    unchanged: int = 0  # already right in the maps: nothing written
    failed: int = 0
    removed: int = 0

    def counts(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class _Held:
    """What the maps hold of a service: the backends its table names, its table size."""

    targets: frozenset[BackendTarget]
    table_size: int


@dataclass(frozen=True)
class _Work:
    service: Service
    backends: Reachable
    held: _Held | None = None  # None: not in the maps yet


@dataclass(frozen=True)
class _Written:
    error: str | None = None
    changed: bool = False  # False: the maps already held it
    # On a capacity error: what was written instead, the backends it keeps (None: nothing).
    kept: _Work | None = None


class Balancer:
    def __init__(
        self,
        dataplane: Dataplane,
        macs: BackendMacs,
        *,
        uplink: UplinkSource | None = None,  # for encapsulated backends
        tables: TableCache | None = None,
        bgp: BGPHook | None = None,
        changes: Generation | None = None,  # bumped when services are re-programmed
    ) -> None:
        self._dp = dataplane
        self._macs = macs
        self._uplink = uplink
        self._tables = tables or TableCache()
        self._bgp: BGPHook = bgp or NoBGP()
        self._changes = changes or Generation()
        self._lock = asyncio.Lock()  # one writer of the data plane at a time
        self._announcing = asyncio.Lock()  # what is announced is computed and sent as one
        self._state = AppliedState()
        self._admission = Admission()
        self._wanted: Mapping[str, Service] = {}  # the services admitted, by id
        self._failed: dict[str, str] = {}  # service id -> error (not written as wanted)
        self._held: dict[str, _Held] = {}  # id -> what the maps hold of it
        self._affinity_noted: set[str] = set()  # ClientIP services whose timeout was explained
        self._bgp_config: pb.BGPConfig | None = None  # None until the first version
        self.not_forwarding = ""  # why the data plane does not forward ("": it does)

    @property
    def applied(self) -> Mapping[str, Service | None]:
        """The services the data plane holds (None: adopted, spec not known yet)."""
        return self._state.services

    def errors(self) -> dict[str, str]:
        """Service id -> why it is not (fully) applied, for the services wanted now."""
        out = {**self._admission.refused, **self._failed}
        for sid, excluded in self._macs.excluded.items():
            out.setdefault(sid, excluded_message(excluded))
        return out

    def counts(self) -> tuple[int, int, int]:
        """Services applied, failed (or refused) and applied without some backends."""
        applied = sum(1 for s in self._state.services.values() if s is not None)
        failed = len(self._failed.keys() | self._admission.refused.keys())
        return applied, failed, len(self._macs.excluded)

    def serving_vips(self) -> frozenset[str]:
        """VIPs with at least one service programmed with at least one backend, and none
        whose table this node failed to make current."""
        stale = {self._wanted[sid].frontend.vip for sid in self._failed if sid in self._wanted}
        return frozenset(
            spec.frontend.vip
            for sid, spec in self._state.services.items()
            if spec is not None
            and sid in self._held
            and self._held[sid].targets
            and spec.frontend.vip not in stale
        )

    async def set_forwarding(self, problem: str) -> None:
        """Whether the data plane forwards ("") or why not: while it does not, every VIP
        is withdrawn."""
        if problem == self.not_forwarding:
            return
        self.not_forwarding = problem
        if problem:
            log.error("withdrawing every route: the data plane does not forward", problem=problem)
        else:
            log.info("the data plane forwards: announcing again")
        await self._announce()
        self._changes.bump()

    async def status(self) -> RoleStatus:
        problem = self.not_forwarding
        try:
            async with self._lock:
                maps = await asyncio.to_thread(self._dp.usage)
        except Exception as exc:
            log.error("cannot read map usage", error=str(exc))
            maps, problem = [], problem or f"cannot read the maps: {exc}"
        if not self._macs.uplink_ok:
            problem = problem or "the uplink cannot resolve backends (see the log)"
        return RoleStatus(
            maps=maps,
            problem=problem,
            errors=self.errors(),
            reserved={"backends": self._admission.reserved},
        )

    async def adopt(self) -> int:
        """Take over what the pinned maps hold (from an earlier run). Returns how many."""
        async with self._lock:
            applied = await asyncio.to_thread(self._dp.applied)
        macs = self._macs.adopt(b for svc in applied.values() for b in svc.backends)
        self._held = {
            sid: _Held(frozenset(svc.backends), svc.table_size) for sid, svc in applied.items()
        }
        self._state = AppliedState.adopted(applied)
        log.info("adopted pinned services", services=len(applied), macs=macs)
        return len(applied)

    async def apply(self, desired: Desired) -> Outcome:
        """Make the data plane hold the services of one version."""
        async with self._lock:
            self._admit(desired)
            wanted = self._wanted
            plan = make_plan(self._state, desired.seed, wanted)
            log.info("applying version", version=desired.version, **plan.summary())
            outcome = Outcome()
            if plan.seed_changed:
                await asyncio.to_thread(self._dp.set_seed, plan.seed)
            # Forget the errors of services that left the view or are refused now.
            for sid in [s for s in self._failed if s not in wanted]:
                del self._failed[sid]
            for sid in [s for s in self._macs.excluded if s not in wanted]:
                self._macs.forget(sid)
            removed = await self._remove(plan.removed)
            outcome.removed = len(removed)
            to_apply = list(plan.to_apply)
            if await self._set_encap(desired.node, wanted.values()):
                # Encapsulated backends became reachable, or stopped being: rewrite them all.
                to_apply += filter(_encapsulates, (wanted[sid] for sid in plan.unchanged))
            applied = await self._write(self._in_write_order(to_apply), plan.seed, outcome)
            self._state = self._state.after(plan, applied=applied, removed=removed)
            self._bgp_config = desired.bgp
            await self._announce()
        return outcome

    def _admit(self, desired: Desired) -> None:
        admission = admit(desired.services.values(), self._dp.caps)
        refused = admission.refused
        if refused.keys() != self._admission.refused.keys():
            if refused:
                log.warning(
                    "services not served: the maps cannot hold them",
                    version=desired.version,
                    services=sorted(refused),
                    reserved_backends=admission.reserved,
                )
            else:
                log.info("every service fits again", version=desired.version)
        self._admission = admission
        self._wanted = admission.admitted

    def _in_write_order(self, services: Iterable[Service]) -> list[Service]:
        """Services that need no more backend entries than they hold first (they only free
        some), then the others in admission order: the entries an update needs beyond the
        steady state are then never more than the reserve (nodeagent.admission)."""
        rank = {sid: i for i, sid in enumerate(self._wanted)}

        def grows(svc: Service) -> bool:
            old = self._state.services.get(svc.id)
            return svc.id not in self._state.services or (
                old is not None and len(svc.backends) > len(old.backends)
            )

        return sorted(services, key=lambda s: (grows(s), rank[s.id]))

    async def reprogram(self, ids: Iterable[str]) -> None:
        """Write these services again: their backends' MACs resolved or changed."""
        async with self._lock:
            services = [s for sid in ids if (s := self._state.services.get(sid)) is not None]
            if not services or self._state.seed is None:
                return
            outcome = Outcome()
            # A failed re-program leaves the previous table in place: the service stays applied.
            applied = await self._write(services, self._state.seed, outcome)
            self._state = replace(
                self._state, services={**self._state.services, **{s.id: s for s in applied}}
            )
            log.info("services re-programmed", services=[s.id for s in applied], **outcome.counts())
            await self._announce()
        self._changes.bump()

    async def _remove(self, ids: Sequence[str]) -> list[str]:
        if not ids:
            return []

        def work() -> list[str]:
            done = []
            for sid in ids:
                try:
                    self._dp.remove_service(sid)
                    done.append(sid)
                except Exception as exc:
                    # Still programmed: kept in the applied state, so the next plan retries.
                    log.error("cannot remove service", service=sid, error=str(exc))
            return done

        done = await asyncio.to_thread(work)
        for sid in done:
            self._held.pop(sid, None)
            self._failed.pop(sid, None)
            self._macs.forget(sid)
        return done

    async def _write(
        self, services: Sequence[Service], seed: int, outcome: Outcome
    ) -> list[Service]:
        """Resolve, build and write services; record per-service errors. Returns those
        applied."""
        if not services:
            return []
        self._note_affinity(services)
        found = await self._macs.resolve(b for s in services for b in s.backends)
        work = [_Work(s, self._macs.reachable(s, found), self._held.get(s.id)) for s in services]
        results = await asyncio.to_thread(self._write_all, work, seed)
        applied = []
        for w, res in zip(work, results, strict=True):
            sid = w.service.id
            if res.error is not None:
                self._failed[sid] = res.error
                outcome.failed += 1
                if res.kept is None:
                    self._macs.forget(sid)
                    continue
                # Recorded as applied with what it keeps: the next plan sees it differ from
                # the service wanted and writes it again.
                w = res.kept
            else:
                self._failed.pop(sid, None)
                if res.changed:
                    outcome.written += 1
                else:
                    outcome.unchanged += 1
            applied.append(w.service)
            self._held[sid] = _Held(frozenset(w.backends.targets), w.service.table_size)
            self._macs.programmed(sid, w.backends)
        return applied

    async def _set_encap(self, node: NodeSettings, services: Iterable[Service]) -> bool:
        """Set the encapsulation if a service needs it; returns whether encapsulated
        backends became reachable or unreachable (macs.encap_error changed)."""
        if not any(map(_encapsulates, services)):
            return False
        try:
            if self._uplink is None:
                raise UplinkError("no uplink to encapsulate on")
            up = await self._uplink.info()
            up.check_own(node.address, "encapsulated packets leave the uplink from it")
            await asyncio.to_thread(self._dp.set_encap, node.address, node.encap_port, up.mtu)
            error = None
        except (DataplaneError, UplinkError) as exc:
            error = str(exc)
        if error and error != self._macs.encap_error:
            log.error("cannot encapsulate", error=error)
        changed = error != self._macs.encap_error
        self._macs.encap_error = error
        return changed

    def _note_affinity(self, services: Sequence[Service]) -> None:
        """Once per service: ClientIP affinity is hash-based here, its timeout is moot."""
        for svc in services:
            if svc.frontend.client_ip and svc.id not in self._affinity_noted:
                self._affinity_noted.add(svc.id)
                log.info(
                    "ClientIP affinity is hash-based: a client keeps its backend while the "
                    "backend set is stable, on every node; the timeout has no effect",
                    service=svc.id,
                    timeout_seconds=svc.affinity_timeout,
                )

    def _write_all(self, work: Sequence[_Work], seed: int) -> list[_Written]:
        """In the worker thread: build each table and write it; one failure stays local."""
        results = []
        for w in work:
            try:
                results.append(_Written(changed=self._write_one(w, seed)))
            except CapacityError as exc:
                results.append(self._write_kept(w, seed, str(exc)))
            except Exception as exc:  # DataplaneError, ValueError (table size)
                log.warning("service not applied", service=w.service.id, error=str(exc))
                results.append(_Written(error=str(exc)))
        return results

    def _write_one(self, w: _Work, seed: int) -> bool:
        table = self._table(w, seed)
        return self._dp.apply_service(w.service.frontend, w.backends.targets, table)

    def _write_kept(self, w: _Work, seed: int, error: str) -> _Written:
        """The additions do not fit, but removals need no room: write the service with the
        backends the maps hold already and still wanted, at the table size they hold, so no
        new flow goes to a removed backend. Its VIP stays withdrawn (the service failed)
        until the whole service is written."""
        if w.held is None:  # a new service: nothing to keep
            log.warning("service not applied", service=w.service.id, error=error)
            return _Written(error=error)
        reach = w.backends
        keep = [i for i, t in enumerate(reach.targets) if t in w.held.targets]
        kept_reach = Reachable(
            members=[reach.members[i] for i in keep],
            targets=[reach.targets[i] for i in keep],
            excluded=reach.excluded,
            hops=[reach.hops[i] for i in keep],
        )
        kept = _Work(
            replace(w.service, backends=tuple(kept_reach.members), table_size=w.held.table_size),
            kept_reach,
            w.held,
        )
        try:
            self._write_one(kept, seed)
        except Exception as exc:
            error = f"{error}; its removed backends cannot be taken out either: {exc}"
            log.warning("service not applied", service=w.service.id, error=error)
            return _Written(error=error)
        error = (
            f"{error}; written with the {len(keep)} of its backends the maps already hold "
            "(removed ones taken out), its VIP withdrawn until the others fit"
        )
        log.warning("service applied in part", service=w.service.id, error=error)
        return _Written(error=error, kept=kept)

    def _table(self, w: _Work, seed: int) -> np.ndarray:
        proto = w.service.frontend.protocol
        ids = [backend_id(b.address, b.port, proto) for b in w.backends.members]
        weights = [b.weight for b in w.backends.members]
        try:
            return self._tables.get(ids, w.service.table_size, weights, seed)
        except NoBackendsError:
            # Still validate the size, so a bad annotation is reported even with no backends.
            validate_table_size(w.service.table_size)
            return EMPTY_TABLE

    async def _announce(self) -> None:
        if self._bgp_config is None:
            return  # no version yet: nothing to announce, nor any BGP setting
        async with self._announcing:
            vips = frozenset() if self.not_forwarding else self.serving_vips()
            try:
                await self._bgp.apply(self._bgp_config, vips)
            except Exception:
                log.exception("BGP hook failed")


def _encapsulates(svc: Service) -> bool:
    return any(b.forwarding == "encap" for b in svc.backends)
