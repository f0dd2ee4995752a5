"""The controller's side of the active health checks: reports in, decision out.

The LB agents' NodeStatus reports (which frontends each checks, which backends it sees
failing) go through core/health.py's majority rule; a changed decision goes into the cluster
state, so it reaches every node in one snapshot version like an endpoint change. With the
file source (one controller) the reports are those of the connected agents (run); with the
Kubernetes source, those every replica publishes on the Nodes for its own agents
(controller/kube/healthpublish.py), fresh ones only (follow): every replica decides from all
LB nodes, whichever replica they are connected to. A disconnected agent's reports no longer
count. ListHealth (weirctl health) shows each reported backend, who sees it failing and since
when. `changes` bumps when the decision or the published snapshot changes: what the leader's
Service conditions and Events (controller/kube/healthstatus.py) are made from.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping

from weir.common.aio import Generation
from weir.common.logs import get_logger
from weir.common.pb import pb
from weir.controller.core.health import BackendKey, Decision, NodeReport, decide
from weir.controller.core.healthreport import ANN_HEALTH_REPORT, PublishedReports
from weir.controller.core.objects import NODE
from weir.controller.core.selectors import LabelSelector
from weir.controller.core.snapshots import SnapshotStore
from weir.controller.core.state import ClusterState
from weir.controller.metrics import Metrics
from weir.controller.plane.servicer import NodePlane

log = get_logger("weir.health")


def node_report(node: str, status: pb.NodeStatus) -> NodeReport:
    return NodeReport(
        node=node,
        checked=frozenset(status.health_checked),
        failing={
            (f.service_id, f.address, f.port): (f.since_unix, f.reason)
            for f in status.health_failing
        },
    )


class HealthTracker:
    def __init__(
        self,
        state: ClusterState,
        store: SnapshotStore,
        metrics: Metrics,
    ) -> None:
        self.state = state
        self.store = store
        self.metrics = metrics
        self.decision = decide(())
        self._since: dict[BackendKey, int] = {}  # when the controller last changed its state
        self.changes = Generation()
        store.subscribe(self._published)  # fail open depends on the backends too

    def _published(self, _version: int) -> None:
        self.changes.bump()

    async def run(self, plane: NodePlane) -> None:
        """File source (one controller): decide again on every agent event, until
        cancelled."""
        seen = -1
        while True:
            seen = await plane.changes.wait_past(seen)
            self.update(plane.connected_statuses())

    async def follow(
        self,
        state: ClusterState,
        ttl: float,
        lb_nodes: LabelSelector,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Kubernetes source (any number of replicas): decide from the reports published on
        the Nodes (controller/core/healthreport.py) of LB nodes (lb_nodes: their labels),
        again when Nodes or reports change and when a report expires, until cancelled.
        Every replica reads the same annotations, so every replica decides the same."""
        published = PublishedReports()
        errors: dict[str, str] = {}
        expiry: float | None = None  # when the first counted report expires
        changed = asyncio.Event()

        def read() -> None:
            # Within the state's change itself: no version is ever built from reports not
            # yet decided on (a replica that starts publishes the decision in its first).
            nonlocal errors
            now = clock()
            following = state.follows(NODE)
            if following == published.paused:
                log.info(
                    "Nodes in sight again: health reports age again"
                    if following
                    else "Nodes out of sight: health reports stop ageing, the decision stays"
                )
            if following:
                published.resume(now)
            else:
                published.pause(now)
            bad = published.update(state.health_reports(), now)
            errors = self._report_errors(state, bad, errors)
            decide_fresh()
            changed.set()

        def decide_fresh() -> None:
            # Only LB nodes vote: a report on another Node (its kubelet may write it) does not.
            nonlocal expiry
            nodes = state.inputs().nodes
            reports, expiry = published.fresh(clock(), ttl)
            self.update_reports(
                r for r in reports if r.node in nodes and lb_nodes.matches(nodes[r.node].labels)
            )

        read()
        state.node_listeners.append(read)
        try:
            while True:
                changed.clear()
                try:
                    # Just past the expiry, so that the report is stale by then.
                    delay = None if expiry is None else expiry - clock() + 0.01
                    async with asyncio.timeout(delay):
                        await changed.wait()  # read() has decided already
                except TimeoutError:
                    decide_fresh()
        finally:
            state.node_listeners.remove(read)

    @staticmethod
    def _report_errors(
        state: ClusterState, errors: dict[str, str], old: dict[str, str]
    ) -> dict[str, str]:
        """Each bad report as an error on its Node (weirctl errors)."""
        for node in old.keys() - errors.keys():
            state.clear_errors(f"{ANN_HEALTH_REPORT}/{node}")
        for node, why in errors.items():
            if old.get(node) != why:
                state.clear_errors(f"{ANN_HEALTH_REPORT}/{node}")
                message = f"annotation {ANN_HEALTH_REPORT}: {why}; its report is ignored"
                state.report_error(
                    pb.ObjectError(kind=NODE, name=node, message=message),
                    origin=f"{ANN_HEALTH_REPORT}/{node}",
                )
        return errors

    def update(self, statuses: Iterable[tuple[str, pb.NodeStatus]]) -> None:
        """Decide from the connected LB agents' statuses; a change makes a version."""
        self.update_reports(node_report(node, status) for node, status in statuses)

    def update_reports(self, reports: Iterable[NodeReport]) -> None:
        """Decide from these LB nodes' reports; a change makes a version."""
        decision = decide(reports)
        old = _held(self.decision.failing)
        new = _held(decision.failing)
        self.decision = decision
        self.metrics.frontends_fail_open.set(len(self.fail_open()))
        if old == new:
            return
        self.changes.bump()
        now = int(time.time())
        for key in sorted(new - old):
            self._changed(key, "out", now, decision)
        for key in sorted(old - new):
            self._changed(key, "back", now, decision)
        self.metrics.backends_failing.set(len(new))
        self.state.set_failing(decision.failing)

    def _changed(self, key: BackendKey, direction: str, now: int, decision: Decision) -> None:
        fid, address, port = key
        self._since[key] = now
        self.metrics.health_transitions.labels(direction).inc()
        nodes = [f.node for f in decision.seen.get(key, ())]
        log.info(
            "backend failing its health check" if direction == "out" else "backend healthy again",
            frontend=fid,
            backend=f"{address}:{port}",
            failing_on=nodes,
            checkers=decision.checkers.get(fid, 0),
        )
        if direction == "back":
            del self._since[key]

    def fail_open(self) -> set[str]:
        """Frontends whose every backend is failing, all kept (reduce's fail open)."""
        cluster = self.store.cluster()
        if cluster is None or not self.decision.failing:
            return set()
        out = set()
        for s in cluster.services:
            failing = self.decision.failing.get(s.id)
            if failing and all((b.address, b.port) in failing for b in s.backends):
                out.add(s.id)
        return out

    def list_health(self) -> pb.ListHealthResponse:
        decision = self.decision
        held = _held(decision.failing)
        fail_open = self.fail_open()
        out = pb.ListHealthResponse(version=self.store.version, fail_open=sorted(fail_open))
        for key in sorted(held | decision.seen.keys()):
            fid, address, port = key
            state = "healthy"
            if key in held:
                state = "fail-open" if fid in fail_open else "out"
            out.backends.add(
                service_id=fid,
                address=address,
                port=port,
                state=state,
                checkers=decision.checkers.get(fid, 0),
                failing=[
                    pb.FailingReport(node=f.node, since_unix=f.since_unix, reason=f.reason)
                    for f in decision.seen.get(key, ())
                ],
                since_unix=self._since.get(key, 0),
            )
        return out


def _held(failing: Mapping[str, frozenset[tuple[str, int]]]) -> set[BackendKey]:
    """Every held-out backend (fail open included), as (frontend id, address, port)."""
    return {(fid, a, p) for fid, backends in failing.items() for a, p in backends}
