"""The node agent: applies each version the controller sends, and acks it.

handle() is ControllerClient's handler (once per version, in order). It converts the node's
view from protobuf to the agent's model (nodeagent.service), once, hands it to each role
(nodeagent.roles: the load-balancer role, nodeagent.lb_role, and the backend role,
nodeagent.backend_role; each decides whether the version gives it work), and returns the
Ack: one ServiceError per service of the view not (fully) applied by some role. status() is
the node's NodeStatus (nodeagent.status sends it); run() keeps the roles up between
versions; shutdown() runs once when the agent stops, whatever stopped it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from weir.common.aio import Generation
from weir.common.logs import get_logger
from weir.common.pb import pb
from weir.nodeagent.bgp.hook import BGPHook, NoBGP
from weir.nodeagent.controller_client import NodeView, Update
from weir.nodeagent.health.checker import HealthChecker
from weir.nodeagent.health.targets import targets_of
from weir.nodeagent.roles import Role
from weir.nodeagent.service import Desired, from_pb, node_from_pb

log = get_logger("weir.agent")


class AgentMetrics(Protocol):
    def observe_apply(self, version: int, seconds: float, outcome: Mapping[str, int]) -> None: ...
    def set_services(self, applied: int, failed: int, incomplete: int) -> None: ...
    def set_maps(self, usage: Sequence[pb.MapUsage]) -> None: ...
    def set_roles(self, active: Mapping[str, bool]) -> None: ...
    def set_healthy(self, healthy: Mapping[str, bool]) -> None: ...


def desired_of(view: NodeView) -> Desired:
    return Desired(
        version=view.version,
        seed=view.maglev_seed,
        services={sid: from_pb(svc) for sid, svc in view.services.items()},
        bgp=view.bgp,
        node=node_from_pb(view.node_config, has_services=bool(view.services)),
    )


class Agent:
    def __init__(
        self,
        roles: Sequence[Role],
        *,
        bgp: BGPHook | None = None,
        metrics: AgentMetrics | None = None,
        changes: Generation | None = None,  # bumped when a version was applied
        health: HealthChecker | None = None,  # the active health checks (LB nodes)
    ) -> None:
        self._roles = tuple(roles)
        self._bgp: BGPHook = bgp or NoBGP()
        self._metrics = metrics
        self._changes = changes or Generation()
        self._version = 0
        self._names: Mapping[str, str] = {}
        self._health = health

    async def handle(self, update: Update) -> pb.Ack:
        """Apply one version, return its Ack."""
        started = time.monotonic()
        desired = desired_of(update.view)
        outcome: collections.Counter[str] = collections.Counter()
        for role in self._roles:
            outcome.update(await role.apply(desired))
        errors = _merged(r.errors() for r in self._roles)
        if self._health is not None:
            self._health.apply(targets_of(update.view.services.values()), desired.node)
        self._version = update.version
        self._names = {sid: svc.service for sid, svc in update.view.services.items()}
        elapsed = time.monotonic() - started
        log.info(
            "version applied",
            version=update.version,
            seconds=round(elapsed, 3),
            errors=len(errors),
            **outcome,
        )
        if self._metrics:
            counts = [r.counts() for r in self._roles]
            self._metrics.set_services(*(sum(c) for c in zip(*counts, strict=True)))
            self._metrics.observe_apply(update.version, elapsed, outcome)
            self._metrics.set_roles({r.name: r.active for r in self._roles})
        self._changes.bump()
        return pb.Ack(version=update.version, service_errors=_service_errors(errors))

    @property
    def service_names(self) -> Mapping[str, str]:
        """Service id -> "<namespace>/<name>" of the applied view (replaced whole on each
        version: other threads may read it)."""
        return self._names

    async def status(self) -> pb.NodeStatus:
        roles = {r.name: await r.status() for r in self._roles}
        maps = [
            pb.MapUsage(
                name=u.name, used=u.used, capacity=u.capacity, reserved=s.reserved.get(u.name, 0)
            )
            for s in roles.values()
            for u in s.maps
        ]
        if self._metrics:
            self._metrics.set_maps(maps)
            self._metrics.set_healthy({name: s.healthy for name, s in roles.items()})
        checked, failing = self._health.report() if self._health else ([], [])
        return pb.NodeStatus(
            applied_version=self._version,
            maps=maps,
            bgp_sessions=self._bgp.sessions(),
            dataplane_healthy=all(s.healthy for s in roles.values()),
            dataplane_problem="; ".join(
                f"{name}: {s.problem}" for name, s in roles.items() if s.problem
            ),
            announced=self._bgp.announced(),
            draining=self._bgp.draining,
            service_errors=_service_errors(_merged(s.errors for s in roles.values())),
            dataplane_mode=",".join(r.mode for r in self._roles if r.mode),
            bgp_errors=self._bgp.errors(),
            routes_settled=self._bgp.settled(),
            health_checked=checked,
            health_failing=failing,
        )

    async def run(self) -> None:
        """Every role's upkeep, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for role in self._roles:
                tg.create_task(role.run(), name=f"{role.name}-upkeep")
            if self._health is not None:
                tg.create_task(self._health.run(), name="health-checks")

    async def shutdown(self) -> None:
        """The BGP hook decides on draining (the data planes forward meanwhile); then the
        roles release their data planes, which stay attached and pinned."""
        try:
            await self._bgp.shutdown()
        finally:
            for role in self._roles:
                try:
                    await role.close()
                except Exception:
                    log.exception("cannot release a data plane", role=role.name)
            if self._health is not None:
                try:
                    await self._health.close()
                except Exception:
                    log.exception("cannot detach the health-check program")


def _merged(per_role: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """Service id -> every role's reason, joined."""
    out: dict[str, str] = {}
    for errors in per_role:
        for sid, msg in errors.items():
            out[sid] = f"{out[sid]}; {msg}" if sid in out else msg
    return out


def _service_errors(errors: Mapping[str, str]) -> list[pb.ServiceError]:
    return [pb.ServiceError(service_id=sid, message=msg) for sid, msg in sorted(errors.items())]
