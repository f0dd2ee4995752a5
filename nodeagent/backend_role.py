"""The backend role: this node's endpoints reached by encapsulation (docs/FORWARDING.md).

The role runs when the view has local endpoints. Its data plane (tc on the uplink,
nodeagent.dataplane.nat) is opened at the first version that has some, or at the first
version at all when an earlier agent left its pins (taken over and reconciled), and kept
afterwards: flows already translated go on being translated back after their endpoint
left. Each version it
  1. configures the node: its address (which must be on the uplink: the load balancers
     send to it), the encapsulation's port and the uplink's MTU (replies' MSS is clamped to
     fit it); and the load-balancer nodes it accepts encapsulated packets from;
  2. programs exactly the local endpoints that can be: one that cannot (not IPv4, not TCP
     or UDP, beyond --max-local-backends) is an error for its service, the others go on.
When the node cannot be configured (its address is not on the uplink) or a map write is
refused, every service with a local endpoint is reported with the reason, and the next
version tries again. Once the data plane is open, nodeagent.forwarding_watch checks every
second that the tc programs are still attached: one that is gone is attached again from its
pin, one in its place is left there; either way the role reports it (NodeStatus).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from weir.common.aio import Generation
from weir.common.logs import get_logger
from weir.nodeagent.attachment import Probe, TcAttachment
from weir.nodeagent.dataplane import DataplaneError
from weir.nodeagent.dataplane.nat import LocalBackend, NatDataplane, NatSettings, check_local
from weir.nodeagent.forwarding_watch import ForwardingWatch
from weir.nodeagent.roles import RoleStatus, UplinkSource
from weir.nodeagent.service import Desired, LocalEndpoint, NodeSettings
from weir.nodeagent.uplink import UplinkError

log = get_logger("weir.agent")


@dataclass(frozen=True)
class _Applied:
    settings: NatSettings | None  # None: keep the configuration the maps hold
    lb_nodes: frozenset[str]
    backends: frozenset[LocalBackend]


class BackendRole:
    name = "backend"

    def __init__(
        self,
        open_nat: Callable[[], NatDataplane],  # blocks: called in a worker thread
        uplink: UplinkSource,
        *,
        pinned: bool = False,  # an earlier agent's backend role is pinned: take it over
        changes: Generation | None = None,  # bumped when the status changes between versions
        attachment: Callable[[NatDataplane], Probe] = TcAttachment,
        check_interval: float = 1.0,  # forwarding_watch's period
    ) -> None:
        self._open_nat = open_nat
        self._uplink = uplink
        self._pinned = pinned
        self._changes = changes or Generation()
        self._attachment = attachment
        self._check_interval = check_interval
        self.nat: NatDataplane | None = None
        self._opened = asyncio.Event()
        self._open_error: str | None = None
        self._not_forwarding = ""
        self._applied: _Applied | None = None
        self._programmed: dict[str, frozenset[LocalBackend]] = {}  # service id -> its own
        self._errors: dict[str, str] = {}
        self._active = False

    @property
    def active(self) -> bool:
        """The last version had local endpoints."""
        return self._active

    @property
    def mode(self) -> str:
        return "tc" if self.nat is not None else ""

    async def apply(self, desired: Desired) -> Mapping[str, int]:
        node = desired.node
        endpoints = node.local_endpoints
        if bool(endpoints) != self._active:
            self._active = bool(endpoints)
            log.info("backend role " + ("taken" if endpoints else "idle"), version=desired.version)
        if self.nat is None:
            if not (endpoints or self._pinned):
                return {}
            try:
                self.nat = await asyncio.to_thread(self._open_nat)
                log.info("backend-role data plane open", max_flows=self.nat.cfg.flows)
                self._opened.set()
            except Exception as exc:  # DataplaneError, bcc's bare Exception
                self._open_error = f"cannot open the backend-role data plane: {exc}"
                log.error("backend-role data plane not opened", error=str(exc))
                self._errors = _for_services(endpoints, self._open_error)
                return {"failed": len(self._errors)}
        self._open_error = None
        wanted, errors = _programmable(endpoints, self.nat.cfg.max_local_backends)
        settings: NatSettings | None = None
        unconfigured = ""
        try:
            settings = await self._settings(node)
        except UplinkError as exc:
            # The translations still become the view's (no stale one stays); the node keeps
            # its last configuration until it can be configured.
            unconfigured = str(exc)
        applied = _Applied(settings, node.lb_nodes, frozenset(wanted.values()))
        try:
            if applied != self._applied:
                await asyncio.to_thread(self._write, applied)
                self._applied = applied
        except (DataplaneError, OSError) as exc:
            log.error("backend role not applied", version=desired.version, error=str(exc))
            self._applied = None
            self._errors = _for_services(endpoints, str(exc))
            return {"failed": len(self._errors)}
        if unconfigured:
            log.error("backend role not configured", version=desired.version, error=unconfigured)
            for sid, msg in _for_services(endpoints, unconfigured).items():
                errors[sid] = f"{msg}; {errors[sid]}" if sid in errors else msg
        return self._record(wanted, errors)

    async def _settings(self, node: NodeSettings) -> NatSettings:
        up = await self._uplink.info()
        up.check_own(node.address, "the load balancers send encapsulated packets to it")
        return NatSettings(node.address, node.encap_port, up.mtu)

    def _write(self, applied: _Applied) -> None:
        """In a worker thread."""
        assert self.nat is not None
        if applied.settings is not None:
            self.nat.configure(applied.settings)
        self.nat.set_lb_nodes(applied.lb_nodes)
        self.nat.set_local_backends(applied.backends)

    def _record(
        self, wanted: Mapping[LocalEndpoint, LocalBackend], errors: dict[str, str]
    ) -> dict[str, int]:
        by_service: dict[str, set[LocalBackend]] = {}
        for ep, b in wanted.items():
            by_service.setdefault(ep.service_id, set()).add(b)
        now = {sid: frozenset(bs) for sid, bs in by_service.items()}
        outcome = {
            "written": sum(1 for sid, bs in now.items() if self._programmed.get(sid) != bs),
            "unchanged": sum(1 for sid, bs in now.items() if self._programmed.get(sid) == bs),
            "failed": len(errors),
            "removed": len(self._programmed.keys() - now.keys()),
        }
        self._programmed = now
        self._errors = errors
        return outcome

    def errors(self) -> dict[str, str]:
        return dict(self._errors)

    def counts(self) -> tuple[int, int, int]:
        return len(self._programmed.keys() - self._errors.keys()), len(self._errors), 0

    async def status(self) -> RoleStatus:
        if self.nat is None:
            return RoleStatus(problem=self._open_error or "", errors=self.errors())
        try:
            maps = await asyncio.to_thread(self.nat.usage)
        except Exception as exc:
            log.error("cannot read backend-role map usage", error=str(exc))
            return RoleStatus(problem=f"cannot read the maps: {exc}", errors=self.errors())
        return RoleStatus(maps=maps, problem=self._not_forwarding, errors=self.errors())

    async def run(self) -> None:
        """The tc programs' check, from the moment the data plane is open, until cancelled."""
        await self._opened.wait()
        assert self.nat is not None
        watch = ForwardingWatch(
            self._attachment(self.nat),
            self._forwarding,
            role=self.name,
            interval=self._check_interval,
        )
        await watch.run()

    async def _forwarding(self, problem: str) -> None:
        self._not_forwarding = problem
        self._changes.bump()

    async def close(self) -> None:
        """Release the data plane; the tc programs stay attached and the maps pinned."""
        if self.nat is not None:
            await asyncio.to_thread(self.nat.close)
            self.nat = None


def _programmable(
    endpoints: Iterable[LocalEndpoint], capacity: int
) -> tuple[dict[LocalEndpoint, LocalBackend], dict[str, str]]:
    """The endpoints to program (at most `capacity` translations, in service order), and
    an error for each service with one that cannot be."""
    wanted: dict[LocalEndpoint, LocalBackend] = {}
    problems: dict[str, list[str]] = {}
    taken: set[LocalBackend] = set()
    for ep in sorted(endpoints):
        b = LocalBackend(ep.vip, ep.port, ep.protocol, ep.address, ep.target_port)
        what = f"local endpoint {ep.address}:{ep.target_port}"
        try:
            check_local(b)
        except DataplaneError as exc:
            problems.setdefault(ep.service_id, []).append(f"{what}: {exc}")
            continue
        if b not in taken and len(taken) >= capacity:
            problems.setdefault(ep.service_id, []).append(
                f"{what}: the translation table is full ({capacity} entries, --max-local-backends)"
            )
            continue
        taken.add(b)
        wanted[ep] = b
    return wanted, {sid: "; ".join(msgs) for sid, msgs in problems.items()}


def _for_services(endpoints: Iterable[LocalEndpoint], message: str) -> dict[str, str]:
    return {ep.service_id: message for ep in endpoints}
