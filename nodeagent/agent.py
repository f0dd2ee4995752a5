"""The node agent: turns each version of the node's view into data-plane state, and acks.

For each version ControllerClient hands over (once per version, in order), handle():
  1. plans: diff of what is applied against the new full view (nodeagent.plan);
  2. removes the services that left the view (first: it frees map capacity);
  3. resolves the MAC of every backend it is about to program (nodeagent.neighbors);
  4. builds the Maglev tables (TableCache) and writes them (Dataplane) in a worker thread,
     one service at a time, so a service that fails (over capacity, bad table size) is
     reported and the others are applied;
  5. hands the BGP settings and the VIPs now served to the BGP hook;
  6. returns the Ack: one ServiceError per service of the view not (fully) applied.

Backends whose MAC cannot be resolved: the service is programmed WITHOUT them and nacked with
an error naming them; a background loop retries them every `neighbor_retry` seconds and
re-programs the service as soon as they resolve. Excluding them beats nacking the whole
service: its other backends keep taking new flows, and no flow is sent to an address the node
cannot reach. A backend that resolved once and later stops answering keeps its last known MAC
(its removal is the control plane's call, through readiness), and so does an adopted one.
Backends outside the uplink's subnets are always excluded: an L2 rewrite cannot reach them.

On start, adopt() reads what the pinned maps hold: those services are planned as ADOPTED and
re-written through Dataplane.apply_service, which writes nothing when they are already right.

All Dataplane calls block (bcc, bpf syscalls) and run in a worker thread, one at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from weir.common.logs import get_logger
from weir.common.pb import pb
from weir.common.tablesize import validate_table_size
from weir.nodeagent.controller_client import Update
from weir.nodeagent.dataplane import BackendTarget, Dataplane, Frontend
from weir.nodeagent.maglev import NoBackendsError, TableCache, backend_id
from weir.nodeagent.neighbors import NeighborError, Resolution
from weir.nodeagent.plan import AppliedState, BackendSpec, ServiceSpec, make_plan

log = get_logger("weir.agent")

EMPTY_TABLE = np.zeros(0, dtype=np.uint32)
EMPTY_TABLE.flags.writeable = False


class Resolver(Protocol):
    async def resolve(self, addresses: Iterable[str], *, reprobe: bool = False) -> Resolution: ...


class BGPHook(Protocol):
    """What the agent needs from a BGP speaker (helper B's nodeagent.bgp adapts to this)."""

    async def apply(self, bgp: pb.BGPConfig, serving_vips: frozenset[str]) -> None:
        """The node's BGP settings and the VIPs whose services are programmed now.
        Called after every version and whenever the served VIPs change."""

    def sessions(self) -> list[pb.BGPSessionStatus]: ...

    def announced(self) -> list[str]: ...

    @property
    def draining(self) -> bool: ...

    async def shutdown(self) -> None:
        """The agent is stopping (SIGTERM): drain as the speaker sees fit."""


class NoBGP:
    """No speaker: nothing announced."""

    async def apply(self, bgp: pb.BGPConfig, serving_vips: frozenset[str]) -> None:
        return None

    def sessions(self) -> list[pb.BGPSessionStatus]:
        return []

    def announced(self) -> list[str]:
        return []

    @property
    def draining(self) -> bool:
        return False

    async def shutdown(self) -> None:
        return None


class AgentMetrics(Protocol):
    def observe_apply(self, version: int, seconds: float, outcome: dict[str, int]) -> None: ...
    def set_services(self, applied: int, failed: int, incomplete: int) -> None: ...
    def set_maps(self, usage: Sequence[pb.MapUsage]) -> None: ...


@dataclass(frozen=True)
class AgentConfig:
    node: str
    neighbor_retry: float = 2.0  # seconds between retries of unresolved backends
    neighbor_refresh: float = 30.0  # seconds between re-verifications of every backend MAC
    status_interval: float = 10.0  # seconds between NodeStatus reports (map usage moves)


@dataclass
class _Work:
    """One service to write: the backends included (with MACs) and the ones left out."""

    spec: ServiceSpec
    members: list[BackendSpec] = field(default_factory=list)
    targets: list[BackendTarget] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)  # address -> reason


@dataclass(frozen=True)
class _Result:
    error: str | None = None
    written: bool = False


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        dataplane: Dataplane,
        resolver: Resolver,
        *,
        tables: TableCache | None = None,
        bgp: BGPHook | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.cfg = cfg
        self._dp = dataplane
        self._resolver = resolver
        self._tables = tables or TableCache()
        self.bgp: BGPHook = bgp or NoBGP()
        self._metrics = metrics
        self._state = AppliedState()
        self._lock = asyncio.Lock()  # one writer of the data plane at a time
        self._macs: dict[str, bytes] = {}  # last MAC programmed per backend address
        self._failed: dict[str, str] = {}  # service id -> error (not applied)
        self._incomplete: dict[str, dict[str, str]] = {}  # id -> excluded address -> reason
        self._programmed: dict[str, int] = {}  # id -> backends programmed
        self._affinity_noted: set[str] = set()  # ClientIP services whose timeout was explained
        self._version = 0
        self._uplink_ok = True
        self._status_sink: Callable[[pb.NodeStatus], None] | None = None
        self._bgp_config = pb.BGPConfig()
        self._status_requested: asyncio.Task[None] | None = None
        self._status_dirty = False
        # Services written / found already right / failed / removed by the last version.
        self.last_outcome: dict[str, int] = {}

    # -- state other parts read ---------------------------------------------------------------

    @property
    def state(self) -> AppliedState:
        return self._state

    def errors(self) -> dict[str, str]:
        """Service id -> why it is not (fully) applied, for the services of the current view."""
        out = dict(self._failed)
        for sid, excluded in self._incomplete.items():
            out.setdefault(sid, _excluded_message(excluded))
        return out

    def set_status_sink(self, sink: Callable[[pb.NodeStatus], None]) -> None:
        self._status_sink = sink

    # -- start -------------------------------------------------------------------------------

    async def adopt(self) -> int:
        """Take over what the pinned maps hold (from an earlier run). Returns how many."""
        async with self._lock:
            applied = await asyncio.to_thread(self._dp.applied)
        for svc in applied.values():
            for b in svc.backends:
                self._macs.setdefault(b.address, b.mac)
        self._state = AppliedState.adopted(applied)
        log.info("adopted pinned services", services=len(applied), macs=len(self._macs))
        return len(applied)

    # -- one version -------------------------------------------------------------------------

    async def handle(self, update: Update) -> pb.Ack:
        """ControllerClient's handler: apply one version, return its Ack."""
        async with self._lock:
            started = time.monotonic()
            plan = make_plan(self._state, update.view)
            log.info("applying version", version=update.version, full=update.full, **plan.summary())
            outcome = {"written": 0, "unchanged": 0, "failed": 0, "removed": 0}
            if plan.seed_changed:
                await asyncio.to_thread(self._dp.set_seed, plan.seed)
            # Forget the errors of services that left the view.
            wanted = set(update.view.services)
            for registry in (self._failed, self._incomplete):
                for sid in [s for s in registry if s not in wanted]:
                    registry.pop(sid)
            removed = await self._remove(plan.removed)
            outcome["removed"] = len(removed)
            applied = await self._apply(plan.to_apply, plan.seed, outcome)
            self._state = self._state.after(
                plan, applied=applied, removed=removed, bgp_applied=True
            )
            self._version = update.version
            self._update_service_metrics()
            self._bgp_config = update.view.bgp
            await self._tell_bgp()
            errors = self.errors()
            elapsed = time.monotonic() - started
            log.info(
                "version applied",
                version=update.version,
                seconds=round(elapsed, 3),
                errors=len(errors),
                **outcome,
            )
            self.last_outcome = outcome
            if self._metrics:
                self._metrics.observe_apply(update.version, elapsed, outcome)
            await self._publish_status()
        return pb.Ack(version=update.version, service_errors=_service_errors(errors))

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
            self._programmed.pop(sid, None)
            self._failed.pop(sid, None)
            self._incomplete.pop(sid, None)
        return done

    async def _apply(
        self, specs: Sequence[ServiceSpec], seed: int, outcome: dict[str, int]
    ) -> list[ServiceSpec]:
        """Resolve, build and write specs; record per-service errors. Returns those applied."""
        if not specs:
            return []
        self._note_affinity(specs)
        resolution = await self._resolve({b.address for s in specs for b in s.backends})
        work = [self._prepare(spec, resolution) for spec in specs]
        results = await asyncio.to_thread(self._write_all, work, seed)
        applied = []
        for w in work:
            res = results[w.spec.id]
            sid = w.spec.id
            if res.error is not None:
                self._failed[sid] = res.error
                self._incomplete.pop(sid, None)
                outcome["failed"] += 1
                continue
            applied.append(w.spec)
            self._programmed[sid] = len(w.targets)
            self._failed.pop(sid, None)
            if w.excluded:
                self._incomplete[sid] = w.excluded
            else:
                self._incomplete.pop(sid, None)
            for t in w.targets:
                self._macs[t.address] = t.mac
            outcome["written" if res.written else "unchanged"] += 1
        return applied

    def _note_affinity(self, specs: Sequence[ServiceSpec]) -> None:
        """Once per service: ClientIP affinity is hash-based here, its timeout is moot."""
        for spec in specs:
            if spec.client_ip and spec.id not in self._affinity_noted:
                self._affinity_noted.add(spec.id)
                log.info(
                    "ClientIP affinity is hash-based: a client keeps its backend while the "
                    "backend set is stable, on every node; the timeout has no effect",
                    service=spec.id,
                    timeout_seconds=spec.affinity_timeout,
                )

    async def _resolve(self, addresses: set[str], *, reprobe: bool = False) -> Resolution:
        try:
            res = await self._resolver.resolve(addresses, reprobe=reprobe)
        except NeighborError as exc:
            # The uplink itself is broken: every backend is unresolved, known MACs still serve.
            self._uplink_ok = False
            log.error("cannot resolve backends", error=str(exc))
            return Resolution(errors=dict.fromkeys(addresses, str(exc)))
        self._uplink_ok = True
        return res

    def _prepare(self, spec: ServiceSpec, res: Resolution) -> _Work:
        w = _Work(spec)
        for b in spec.backends:
            mac = res.macs.get(b.address)
            if mac is None and b.address not in res.offlink:
                mac = self._macs.get(b.address)  # stopped answering: keep the last known MAC
            if mac is None:
                reason = res.errors.get(b.address, "MAC unknown")
                if b.address not in reason:
                    reason = f"backend {b.address}: {reason}"
                w.excluded[b.address] = reason
                continue
            w.members.append(b)
            w.targets.append(BackendTarget(address=b.address, port=b.port, mac=mac))
        return w

    def _write_all(self, work: Sequence[_Work], seed: int) -> dict[str, _Result]:
        """In the worker thread: build each table and write it; one failure stays local."""
        results: dict[str, _Result] = {}
        for w in work:
            try:
                table = self._table(w, seed)
                written = self._dp.apply_service(_frontend(w.spec), w.targets, table)
                results[w.spec.id] = _Result(written=bool(written))
            except Exception as exc:  # CapacityError, DataplaneError, ValueError (table size)
                log.warning("service not applied", service=w.spec.id, error=str(exc))
                results[w.spec.id] = _Result(error=str(exc))
        return results

    def _table(self, w: _Work, seed: int) -> np.ndarray:
        proto = w.spec.protocol
        ids = [backend_id(b.address, b.port, proto) for b in w.members]
        weights = [b.weight for b in w.members]
        try:
            return self._tables.get(ids, w.spec.table_size, weights, seed)
        except NoBackendsError:
            # Still validate the size, so a bad annotation is reported even with no backends.
            validate_table_size(w.spec.table_size)
            return EMPTY_TABLE

    # -- background work ---------------------------------------------------------------------

    async def run(self) -> None:
        """Retries unresolved backends, re-verifies MACs, reports status. Until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._every(self.cfg.neighbor_retry, self.retry_unresolved))
            tg.create_task(self._every(self.cfg.neighbor_refresh, self.refresh_macs))
            tg.create_task(self._every(self.cfg.status_interval, self._publish_status_locked))

    async def _every(self, interval: float, fn: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await fn()
            except Exception:
                log.exception("background task failed", task=getattr(fn, "__name__", str(fn)))

    async def retry_unresolved(self) -> list[str]:
        """Re-program services whose excluded backends now resolve. Returns their ids."""
        async with self._lock:
            if not self._incomplete:
                return []
            addrs = {a for excluded in self._incomplete.values() for a in excluded}
            res = await self._resolve(addrs)
            fixed = {a for a in addrs if a in res.macs}
            ids = [sid for sid, ex in self._incomplete.items() if fixed & set(ex)]
            await self._reapply(ids)
            return ids

    async def refresh_macs(self) -> list[str]:
        """Re-verify every programmed backend MAC; re-program services whose MAC changed."""
        async with self._lock:
            addrs = {a for a in self._macs if a in self._addresses_in_use()}
            for gone in set(self._macs) - addrs:
                del self._macs[gone]
            if not addrs:
                return []
            res = await self._resolve(addrs, reprobe=True)
            moved = {a for a, mac in res.macs.items() if self._macs.get(a) != mac}
            if not moved:
                return []
            log.info("backend MACs changed", addresses=sorted(moved))
            ids = [
                sid
                for sid, spec in self._state.services.items()
                if spec and any(b.address in moved for b in spec.backends)
            ]
            await self._reapply(ids)
            return ids

    async def _reapply(self, ids: Sequence[str]) -> None:
        specs = [s for sid in ids if (s := self._state.services.get(sid)) is not None]
        if not specs or self._state.seed is None:
            return
        outcome = {"written": 0, "unchanged": 0, "failed": 0}
        # A failed re-program leaves the previous table in place: the spec stays applied.
        applied = await self._apply(specs, self._state.seed, outcome)
        log.info("services re-programmed", services=[s.id for s in applied], **outcome)
        await self._tell_bgp()
        await self._publish_status()

    def _addresses_in_use(self) -> set[str]:
        return {b.address for s in self._state.services.values() if s for b in s.backends}

    def serving_vips(self) -> frozenset[str]:
        """VIPs with at least one service programmed with at least one backend."""
        return frozenset(
            spec.vip
            for sid, spec in self._state.services.items()
            if spec is not None and self._programmed.get(sid, 0) > 0
        )

    async def _tell_bgp(self) -> None:
        serving = self.serving_vips()
        try:
            await self.bgp.apply(self._bgp_config, serving)
        except Exception:
            log.exception("BGP hook failed")

    # -- status ------------------------------------------------------------------------------

    async def status(self) -> pb.NodeStatus:
        """The NodeStatus now (reads map usage in the worker thread)."""
        try:
            usage = await asyncio.to_thread(self._dp.usage)
            maps = [pb.MapUsage(name=u.name, used=u.used, capacity=u.capacity) for u in usage]
            healthy = self._uplink_ok
        except Exception as exc:
            log.error("cannot read map usage", error=str(exc))
            maps, healthy = [], False
        if self._metrics:
            self._metrics.set_maps(maps)
        return pb.NodeStatus(
            applied_version=self._version,
            maps=maps,
            bgp_sessions=self.bgp.sessions(),
            dataplane_healthy=healthy,
            announced=self.bgp.announced(),
            draining=self.bgp.draining,
            service_errors=_service_errors(self.errors()),
        )

    async def _publish_status(self) -> None:
        if self._status_sink is not None:
            self._status_sink(await self.status())

    async def _publish_status_locked(self) -> None:
        async with self._lock:
            await self._publish_status()

    def request_status(self) -> None:
        """Send a NodeStatus soon, without waiting for the next --status-interval: the BGP
        speaker's on_change (sessions, announced routes, draining). Calls that come while one
        is pending are coalesced. Call from the event loop."""
        self._status_dirty = True
        if self._status_requested is None or self._status_requested.done():
            self._status_requested = asyncio.get_running_loop().create_task(
                self._send_requested_status(), name="status-requested"
            )

    async def _send_requested_status(self) -> None:
        while self._status_dirty:
            self._status_dirty = False
            try:
                await self._publish_status_locked()
            except Exception:
                log.exception("status report failed")

    async def shutdown(self) -> None:
        """Stop: the data plane stays attached and pinned; the BGP hook decides on draining."""
        try:
            await self.bgp.shutdown()
        except Exception:
            log.exception("BGP shutdown failed")

    def _update_service_metrics(self) -> None:
        if self._metrics:
            applied = sum(1 for s in self._state.services.values() if s is not None)
            self._metrics.set_services(applied, len(self._failed), len(self._incomplete))


def _frontend(spec: ServiceSpec) -> Frontend:
    return Frontend(
        id=spec.id,
        vip=spec.vip,
        port=spec.port,
        protocol=spec.protocol,
        strategy=spec.strategy,  # type: ignore[arg-type]
        affinity="client_ip" if spec.client_ip else "none",
    )


def _service_errors(errors: dict[str, str]) -> list[pb.ServiceError]:
    return [pb.ServiceError(service_id=sid, message=msg) for sid, msg in sorted(errors.items())]


def _excluded_message(excluded: dict[str, str]) -> str:
    reasons = "; ".join(excluded[a] for a in sorted(excluded))
    return f"applied without {len(excluded)} backend(s) whose MAC is unknown: {reasons}"
