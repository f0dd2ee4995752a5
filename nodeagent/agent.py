"""The node agent: applies each version the controller sends, and acks it.

handle() is ControllerClient's handler (once per version, in order). It converts the node's
view from protobuf to the agent's model (nodeagent.service), once, has the load-balancer
role program it (nodeagent.balancer), and returns the Ack: one ServiceError per service of
the view not (fully) applied. status() is the node's NodeStatus (nodeagent.status sends it);
shutdown() runs once when the agent stops, whatever stopped it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from weir.common.aio import Generation
from weir.common.logs import get_logger
from weir.common.pb import pb
from weir.nodeagent.balancer import Balancer
from weir.nodeagent.bgp.hook import BGPHook, NoBGP
from weir.nodeagent.controller_client import Update
from weir.nodeagent.service import Desired, from_pb

log = get_logger("weir.agent")


class AgentMetrics(Protocol):
    def observe_apply(self, version: int, seconds: float, outcome: Mapping[str, int]) -> None: ...
    def set_services(self, applied: int, failed: int, incomplete: int) -> None: ...
    def set_maps(self, usage: Sequence[pb.MapUsage]) -> None: ...


class Agent:
    def __init__(
        self,
        balancer: Balancer,
        *,
        bgp: BGPHook | None = None,
        metrics: AgentMetrics | None = None,
        changes: Generation | None = None,  # bumped when a version was applied
    ) -> None:
        self._balancer = balancer
        self._bgp: BGPHook = bgp or NoBGP()
        self._metrics = metrics
        self._changes = changes or Generation()
        self._version = 0

    async def handle(self, update: Update) -> pb.Ack:
        """Apply one version, return its Ack."""
        started = time.monotonic()
        view = update.view
        desired = Desired(
            version=update.version,
            seed=view.maglev_seed,
            services={sid: from_pb(svc) for sid, svc in view.services.items()},
            bgp=view.bgp,
        )
        outcome = await self._balancer.apply(desired)
        errors = self._balancer.errors()
        self._version = update.version
        elapsed = time.monotonic() - started
        log.info(
            "version applied",
            version=update.version,
            seconds=round(elapsed, 3),
            errors=len(errors),
            **outcome.counts(),
        )
        if self._metrics:
            self._metrics.set_services(*self._balancer.counts())
            self._metrics.observe_apply(update.version, elapsed, outcome.counts())
        self._changes.bump()
        return pb.Ack(version=update.version, service_errors=_service_errors(errors))

    async def status(self) -> pb.NodeStatus:
        lb = await self._balancer.status()
        maps = [pb.MapUsage(name=u.name, used=u.used, capacity=u.capacity) for u in lb.maps]
        if self._metrics:
            self._metrics.set_maps(maps)
        return pb.NodeStatus(
            applied_version=self._version,
            maps=maps,
            bgp_sessions=self._bgp.sessions(),
            dataplane_healthy=lb.healthy,
            announced=self._bgp.announced(),
            draining=self._bgp.draining,
            service_errors=_service_errors(lb.errors),
        )

    async def shutdown(self) -> None:
        """The data plane stays attached and pinned; the BGP hook decides on draining."""
        await self._bgp.shutdown()


def _service_errors(errors: Mapping[str, str]) -> list[pb.ServiceError]:
    return [pb.ServiceError(service_id=sid, message=msg) for sid, msg in sorted(errors.items())]
