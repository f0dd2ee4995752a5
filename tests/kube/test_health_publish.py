"""A replica's health report writer against the fake API server, with the real client: it
writes each connected LB agent's report on its Node, renews it only when due, removes it
when the agent leaves unless another replica wrote over it meanwhile, writes each Node at
most once per interval, and lets a Node that does not exist be; and the leader removes stale
reports only."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, cast

import pytest
from weir.common.aio import Generation
from weir.common.pb import pb
from weir.controller.core.health import NodeReport
from weir.controller.core.healthreport import encode
from weir.controller.core.state import ClusterState
from weir.controller.kube.api import KubeAPI
from weir.controller.kube.healthpublish import HealthReportWriter
from weir.controller.plane.servicer import NodePlane

from . import builders as b
from .fakeapi import FakeKubeAPI

pytestmark = pytest.mark.timeout(60)

ANN = "weir.dev/health-report"
FID = "192.0.2.1:80/TCP"


class Agents:
    """What the writer reads of a NodePlane: its connected agents' statuses."""

    def __init__(self) -> None:
        self.statuses: dict[str, pb.NodeStatus] = {}
        self.changes = Generation()

    def connected_statuses(self) -> list[tuple[str, pb.NodeStatus]]:
        return list(self.statuses.items())

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        seen = self.changes.value
        while not predicate():
            seen = await self.changes.wait_past(seen)


def checking(*failing: str) -> pb.NodeStatus:
    return pb.NodeStatus(
        health_checked=[FID],
        health_failing=[
            pb.BackendHealth(service_id=FID, address=a, port=80, since_unix=5, reason="refused")
            for a in failing
        ],
    )


def annotation(fake: FakeKubeAPI, node: str) -> dict[str, Any] | None:
    text = (fake.get("v1", "Node", "", node) or {"metadata": {}})["metadata"].get("annotations")
    return json.loads(text[ANN]) if text and ANN in text else None


def patches(fake: FakeKubeAPI, node: str) -> int:
    return len(fake.calls(verb="patch", resource="nodes", name=node))


async def test_reports_are_written_renewed_and_removed(fake: FakeKubeAPI, kube: KubeAPI) -> None:
    fake.create(b.node("lb-1", "10.0.0.1"))
    fake.create(b.node("lb-2", "10.0.0.2"))
    agents = Agents()
    writer = HealthReportWriter(kube, cast(NodePlane, agents), replica="r0", renew=1000)
    agents.statuses = {"lb-1": checking("10.1.0.1"), "lb-2": checking(), "gone": checking()}
    agents.statuses["idle"] = pb.NodeStatus()  # checks nothing: no report
    await writer.write_due()
    one = annotation(fake, "lb-1")
    assert one is not None
    assert (one["replica"], one["checked"]) == ("r0", [FID])
    assert one["failing"] == [[FID, "10.1.0.1", 80, 5, "refused"]]
    assert annotation(fake, "lb-2") == {**one, "failing": []}
    assert patches(fake, "idle") == 0

    # Nothing changed, nothing due: no write (not even to the Node that does not exist).
    await writer.write_due()
    assert (patches(fake, "lb-1"), patches(fake, "gone")) == (1, 1)
    # Renewal due: written again.
    writer.renew = 0
    await writer.write_due()
    assert (patches(fake, "lb-1"), patches(fake, "gone")) == (2, 2)
    writer.renew = 1000

    # lb-1's agent moved to another replica, which wrote its report first; lb-2's left.
    newer = json.dumps({**one, "replica": "r1"})
    fake.patch("v1", "Node", "", "lb-1", {"metadata": {"annotations": {ANN: newer}}})
    agents.statuses = {}
    await writer.write_due()
    assert (annotation(fake, "lb-1") or {}).get("replica") == "r1"
    assert annotation(fake, "lb-2") is None
    # Nothing left to remove: no retry.
    before = patches(fake, "lb-1")
    await writer.write_due()
    assert patches(fake, "lb-1") == before


async def test_each_node_is_written_at_most_once_per_interval(
    fake: FakeKubeAPI, kube: KubeAPI
) -> None:
    fake.create(b.node("lb-1", "10.0.0.1"))
    fake.create(b.node("lb-2", "10.0.0.2"))
    agents = Agents()
    writer = HealthReportWriter(kube, cast(NodePlane, agents), replica="r0", min_interval=1000)
    agents.statuses = {"lb-1": checking()}
    await writer.write_due()
    # lb-1 flaps: held back; lb-2's first report does not wait for it.
    agents.statuses = {"lb-1": checking("10.1.0.1"), "lb-2": checking("10.1.0.1")}
    await writer.write_due()
    assert (patches(fake, "lb-1"), patches(fake, "lb-2")) == (1, 1)
    assert (annotation(fake, "lb-1") or {}).get("failing") == []
    assert (annotation(fake, "lb-2") or {}).get("failing") != []
    writer.min_interval = 0
    await writer.write_due()
    assert (annotation(fake, "lb-1") or {}).get("failing") != []


async def test_the_leader_removes_reports_not_renewed_between_two_sweeps(
    fake: FakeKubeAPI, kube: KubeAPI
) -> None:
    # The writers' clocks do not matter: "renewed" is far ahead for one, far behind for
    # the other, and neither is judged by it.
    texts = {
        "stale": encode(NodeReport("stale", frozenset({FID}), {}), "r9", time.time() + 1e6),
        "renewed": encode(NodeReport("renewed", frozenset({FID}), {}), "r1", 5),
        "bad": "{",
    }
    for i, (name, text) in enumerate(texts.items()):
        node = b.node(name, f"10.0.0.{i + 1}")
        node["metadata"]["annotations"] = {ANN: text}
        fake.create(node)
    state = ClusterState()
    state.replace(frozenset({"Node"}), [fake.get("v1", "Node", "", n) for n in texts])
    writer = HealthReportWriter(kube, cast(NodePlane, Agents()), replica="r0", renew=10)
    # The first sweep (a new leader's) only looks.
    await writer.sweep(state)
    assert all(annotation(fake, n) is not None for n in ("stale", "renewed"))
    # Renewed in between: it stays. Unchanged: removed. Malformed: not ours, it stays.
    renewed = encode(NodeReport("renewed", frozenset({FID}), {}), "r1", 6)
    fake.patch("v1", "Node", "", "renewed", {"metadata": {"annotations": {ANN: renewed}}})
    state.upsert(fake.get("v1", "Node", "", "renewed"))  # type: ignore[arg-type]
    await writer.sweep(state)
    assert annotation(fake, "stale") is None
    assert annotation(fake, "renewed") == json.loads(renewed)
    assert fake.get("v1", "Node", "", "bad")["metadata"]["annotations"][ANN] == "{"  # type: ignore[index]
    # The state still holds the stale report (the watch is behind): removing it again is
    # harmless, and a report rewritten since is not removed (the patch tests the text).
    fake.patch("v1", "Node", "", "stale", {"metadata": {"annotations": {ANN: renewed}}})
    await writer.sweep(state)
    assert annotation(fake, "stale") == json.loads(renewed)
