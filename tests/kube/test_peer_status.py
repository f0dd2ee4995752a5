"""BGP session state in the BGPPeer status: agents (the real ControllerClient) report their
sessions to a real NodePlane server; PeerStatusWriter writes them per node into each
BGPPeer's status subresource of the fake API server (which prunes what the CRD schema does
not allow), only on change and rate-limited. Two replicas (two NodePlanes, one writer each)
write their own agents' entries side by side, and the leader removes a gone replica's
entries. Draining a node with the Kubernetes source
patches its weir.dev/drain annotation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from weir.common.pb import pb
from weir.controller.core.state import ClusterState
from weir.controller.kube.api import KubeAPI
from weir.controller.kube.drain import AnnotationDrainer
from weir.controller.kube.peerstatus import PeerStatusWriter
from weir.controller.plane.drain import DrainError
from weir.nodeagent.controller_client import ControllerClient

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
        writer = PeerStatusWriter(
            kube, plane.plane, harness.state, reporter="r1", min_interval=0.3, clock=clock
        )
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
            mark = {"reporter": "r1", "observedTime": stamp(T0)}
            want_router = {
                "established": 1,
                "nodes": {
                    "lb-1": {
                        "state": "established",
                        "establishedSince": stamp(T0 - 30),
                        "routesSent": 2,
                        "draining": False,
                        **mark,
                    },
                    "lb-2": {"state": "connect", "routesSent": 0, "draining": False, **mark},
                },
            }
            await fake.wait_until(lambda: peer_status(fake, "router") == want_router)
            await fake.wait_until(
                lambda: (
                    peer_status(fake, "backup")
                    == {
                        "established": 0,
                        "nodes": {
                            "lb-1": {"state": "active", "routesSent": 0, "draining": False, **mark}
                        },
                    }
                )
            )

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
                lambda: peer_status(fake, "router")["nodes"]["lb-1"]["routesSent"] == 8
            )
            assert status_writes(fake, "router") - writes <= 2
            assert peer_status(fake, "router")["nodes"]["lb-1"]["draining"] is True
            # lb-1 dropped its backup session from its report: the entry goes.
            await fake.wait_until(lambda: peer_status(fake, "backup")["nodes"] == {})

            # An agent that goes away leaves the status.
            await plane.stop_agent(lb2)
            await fake.wait_until(lambda: list(peer_status(fake, "router")["nodes"]) == ["lb-1"])
            assert peer_status(fake, "router")["established"] == 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_two_replicas_write_side_by_side(
    fake: FakeKubeAPI, kube: KubeAPI, harness: Harness
) -> None:
    """Each replica writes the entries of its own agents; one removes only its own; the
    leader removes a gone replica's entries once they are older than the TTL. The passes
    are driven one by one here: the order of the replicas' writes is the point."""
    clock = Clock()
    async with Plane() as p1, Plane() as p2:
        w1, w2 = (
            PeerStatusWriter(kube, p.plane, harness.state, reporter=r, refresh=10, clock=clock)
            for p, r in ((p1, "r1"), (p2, "r2"))
        )

        def router() -> dict[str, Any]:
            return peer_status(fake, "router")

        def reporters() -> dict[str, str]:
            return {n: e["reporter"] for n, e in router()["nodes"].items()}

        established = pb.NodeStatus(bgp_sessions=[session("router", "established", uptime=5)])
        lb1, lb2 = p1.agent("lb-1"), p2.agent("lb-2")
        await report_and_settle(p1, lb1, established)
        await report_and_settle(p2, lb2, pb.NodeStatus(bgp_sessions=[session("router", "connect")]))
        assert await w1.write_changed() and await w2.write_changed()
        assert reporters() == {"lb-1": "r1", "lb-2": "r2"}
        assert router()["established"] == 1

        # lb-1's agent moves to replica 2, which writes first; replica 1 then sees its stream
        # end and leaves replica 2's entry alone.
        await report_and_settle(p2, p2.agent("lb-1"), established)
        assert await w2.write_changed()
        await p1.stop_agent(lb1)
        assert await w1.write_changed()
        assert reporters() == {"lb-1": "r2", "lb-2": "r2"}
        assert router()["established"] == 1

        # Replica 1 reports lb-3, then is gone; replica 2 is the leader and renews its own.
        await report_and_settle(
            p1, p1.agent("lb-3"), pb.NodeStatus(bgp_sessions=[session("router", "active")])
        )
        assert await w1.write_changed()
        assert reporters() == {"lb-1": "r2", "lb-2": "r2", "lb-3": "r1"}
        # Replica 1's clock is far ahead: its observedTime is no reason to keep the entry.
        lb3 = router()["nodes"]["lb-3"]
        future = {"status": {"nodes": {"lb-3": {**lb3, "observedTime": "2099-01-01T00:00:00Z"}}}}
        fake.patch(b.WEIR, "BGPPeer", "", "router", future, subresource="status")
        assert await w2.sweep()  # the leader's sweeps see lb-3's entry from now on
        clock.now += w2.ttl - 1
        assert await w2.write_changed(renew=True) and await w2.sweep()
        assert "lb-3" in reporters()  # not older than the TTL yet
        clock.now += 2
        assert await w2.sweep()
        assert reporters() == {"lb-1": "r2", "lb-2": "r2"}
        assert router()["established"] == 1

        # A write from a stale read loses (409) and changes nothing.
        stale = fake.get(b.WEIR, "BGPPeer", "", "router")
        await p2.stop_agent(lb2)
        assert await w2.write_changed()
        assert not await w2._patch(stale, {"lb-9": None})
        assert reporters() == {"lb-1": "r2"}


async def report_and_settle(plane: Plane, client: ControllerClient, status: pb.NodeStatus) -> None:
    client.report_status(status)
    async with asyncio.timeout(10):
        await plane.plane.wait_for(lambda: plane.info(client.node).status == status)


async def test_bfd_and_the_nodes_problems_go_to_the_bgppeer_status(
    fake: FakeKubeAPI, kube: KubeAPI, harness: Harness
) -> None:
    clock = Clock()
    async with Plane() as plane:
        writer = PeerStatusWriter(kube, plane.plane, harness.state, reporter="r1", clock=clock)
        lb1 = plane.agent("lb-1")
        with_bfd = session("router", "established", uptime=5, routes=1)
        with_bfd.MergeFrom(
            pb.BGPSessionStatus(
                bfd_state="up", bfd_remote_state="up", bfd_diagnostic="none",
                bfd_transmit_ms=100, bfd_receive_ms=120, bfd_detect_ms=360,
            )
        )  # fmt: skip
        refused = "192.0.2.1/32 to peer router: ExaBGP refused the announcement"
        status = pb.NodeStatus(
            bgp_sessions=[with_bfd, session("backup", "active")],
            bgp_errors=[
                pb.ObjectError(kind="BGPAdvertisement", name="ad", message=refused),
                pb.ObjectError(kind="BGPPeer", name="backup", message="bad password; skipped"),
            ],
        )
        await report_and_settle(plane, lb1, status)
        assert await writer.write_changed()
        # What the CRD's schema keeps (the fake API server prunes the rest).
        entry = peer_status(fake, "router")["nodes"]["lb-1"]
        assert entry["bfd"] == {
            "state": "up", "remoteState": "up", "diagnostic": "none",
            "transmitInterval": 100, "receiveInterval": 120, "detectTime": 360,
        }  # fmt: skip
        assert entry["errors"] == [refused]
        backup = peer_status(fake, "backup")["nodes"]["lb-1"]
        assert backup["errors"] == ["bad password; skipped"] and "bfd" not in backup


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


async def test_a_lost_race_is_written_again_at_once(
    fake: FakeKubeAPI, kube: KubeAPI, harness: Harness
) -> None:
    """A 409 (another replica wrote the BGPPeer since the list) is retried from a fresh list
    within a moment, not a whole min_interval later."""
    async with Plane() as plane:
        established = pb.NodeStatus(bgp_sessions=[session("router", "established", uptime=5)])
        await report_and_settle(plane, plane.agent("lb-1"), established)
        writer = PeerStatusWriter(kube, plane.plane, harness.state, reporter="r1", min_interval=30)
        fake.fail_requests(409, 2, verb="patch", resource="bgppeers")
        task = asyncio.create_task(writer.run())
        try:
            await fake.wait_until(
                lambda: "lb-1" in peer_status(fake, "router").get("nodes", {}), within=5
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
