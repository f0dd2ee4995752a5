"""BGP session state in the BGPPeer status: agents (the real ControllerClient) report their
sessions to a real NodePlane server; PeerStatusWriter writes them per node into each
BGPPeer's status subresource of the fake API server (which prunes what the CRD schema does
not allow), only on change and rate-limited. Draining a node with the Kubernetes source
patches its weir.dev/drain annotation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from common.pb import pb
from controller.drain import DrainError
from controller.kubeapi import KubeAPI
from controller.kubedrain import AnnotationDrainer
from controller.peerstatus import PeerStatusWriter
from controller.state import ClusterState
from nodeagent.controller_client import ControllerClient
from tests.controller.plane_support import Plane

from . import builders as b
from .fakeapi import FakeKubeAPI
from .harness import Harness

pytestmark = pytest.mark.timeout(60)

T0 = 1_800_000_000.0  # the writer's clock (seconds since the epoch)


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def session(peer: str, state: str, uptime: int = 0, routes: int = 0) -> pb.BGPSessionStatus:
    return pb.BGPSessionStatus(peer=peer, state=state, uptime_seconds=uptime, routes_sent=routes)


def peer_status(fake: FakeKubeAPI, name: str) -> dict[str, Any]:
    return (fake.get(b.WEIR, "BGPPeer", "", name) or {}).get("status") or {}


def status_writes(fake: FakeKubeAPI, name: str) -> int:
    return len(
        [
            r
            for r in fake.calls(verb="patch", resource="bgppeers", subresource="status", name=name)
            if r.code == 200
        ]
    )


@pytest.fixture
async def harness(fake: FakeKubeAPI, kube: KubeAPI) -> AsyncIterator[Harness]:
    for name, addr in (("lb-1", "10.0.0.1"), ("lb-2", "10.0.0.2")):
        fake.create(b.node(name, addr))
    fake.create(b.peer("router", "10.0.0.254"))
    fake.create(b.peer("backup", "10.0.0.253"))
    h = Harness(kube)
    await h.start()
    try:
        await h.state.wait_changed(0)
        async with asyncio.timeout(10):
            while len(h.state.inputs().bgp_peers) < 2:
                await h.state.wait_changed(h.state.generation)
        yield h
    finally:
        await h.stop()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def test_sessions_go_to_the_bgppeer_status(
    fake: FakeKubeAPI, kube: KubeAPI, harness: Harness
) -> None:
    clock = Clock()
    async with Plane() as plane:
        writer = PeerStatusWriter(kube, plane.plane, harness.state, min_interval=0.3, clock=clock)
        task = asyncio.create_task(writer.run())
        try:
            lb1 = plane.agent("lb-1")
            lb2 = plane.agent("lb-2")
            lb1.report_status(
                pb.NodeStatus(
                    bgp_sessions=[
                        session("backup", "active"),
                        session("router", "established", uptime=30, routes=2),
                    ]
                )
            )
            lb2.report_status(pb.NodeStatus(bgp_sessions=[session("router", "connect")]))
            want_router = {
                "established": 1,
                "nodes": [
                    {
                        "node": "lb-1",
                        "state": "established",
                        "establishedSince": stamp(T0 - 30),
                        "routesSent": 2,
                        "draining": False,
                    },
                    {"node": "lb-2", "state": "connect", "routesSent": 0, "draining": False},
                ],
            }
            await fake.wait_until(lambda: peer_status(fake, "router") == want_router)
            assert peer_status(fake, "backup") == {
                "established": 0,
                "nodes": [{"node": "lb-1", "state": "active", "routesSent": 0, "draining": False}],
            }

            # The uptime going by (reported late, as agents report every few seconds) is no
            # change: nothing is written.
            writes = status_writes(fake, "router")
            clock.now += 12
            await report_and_settle(
                plane,
                lb1,
                pb.NodeStatus(
                    bgp_sessions=[
                        session("backup", "active"),
                        session("router", "established", uptime=40, routes=2),
                    ]
                ),
            )
            await asyncio.sleep(0.5)  # more than min_interval: a write would have happened
            assert status_writes(fake, "router") == writes

            # A burst of changes is coalesced by the rate limit.
            for routes in range(3, 9):
                lb1.report_status(
                    pb.NodeStatus(
                        bgp_sessions=[session("router", "established", uptime=40, routes=routes)],
                        draining=routes == 8,
                    )
                )
            await fake.wait_until(
                lambda: peer_status(fake, "router")["nodes"][0]["routesSent"] == 8
            )
            assert status_writes(fake, "router") - writes <= 2
            assert peer_status(fake, "router")["nodes"][0]["draining"] is True
            # lb-1 dropped its backup session from its report: the entry goes.
            await fake.wait_until(lambda: peer_status(fake, "backup")["nodes"] == [])

            # An agent that goes away leaves the status.
            await plane.stop_agent(lb2)
            await fake.wait_until(
                lambda: [n["node"] for n in peer_status(fake, "router")["nodes"]] == ["lb-1"]
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def report_and_settle(plane: Plane, client: ControllerClient, status: pb.NodeStatus) -> None:
    client.report_status(status)
    async with asyncio.timeout(10):
        await plane.plane.wait_for(lambda: plane.info(client.node).status == status)


async def test_drain_patches_the_node_annotation(
    fake: FakeKubeAPI, kube: KubeAPI, harness: Harness
) -> None:
    drainer = AnnotationDrainer(kube)
    state = harness.state
    await drainer.set("lb-1", True)
    annotations = fake.get("v1", "Node", "", "lb-1")["metadata"].get("annotations") or {}
    assert annotations.get("weir.dev/drain") == "true"
    # The state (every replica's) learns it from the watch.
    await until(state, lambda: state.inputs().nodes["lb-1"].drain)
    await drainer.set("lb-1", False)
    annotations = fake.get("v1", "Node", "", "lb-1")["metadata"].get("annotations") or {}
    assert "weir.dev/drain" not in annotations
    await until(state, lambda: not state.inputs().nodes["lb-1"].drain)
    with pytest.raises(DrainError) as err:
        await drainer.set("nope", True)
    assert err.value.code == grpc.StatusCode.NOT_FOUND


async def until(state: ClusterState, predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():
            await state.wait_changed(state.generation)
