"""The NodePlane stream over real gRPC sockets: snapshots, deltas, acks, reconnects."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from weir.common.pb import pb, pb_grpc
from weir.controller.core.snapshots import SnapshotStore
from weir.controller.plane.server import start_server
from weir.controller.plane.servicer import NodePlane
from weir.nodeagent.controller_client import ControllerClient, Update

from tests.controller.plane_support import (
    Plane,
    Recorder,
    bgp_config,
    cluster,
    raw_hello,
    service,
)

pytestmark = pytest.mark.timeout(60)

LB = ["lb-1"]  # the agents' node: a load-balancer node, whose view carries the services

S1 = service("192.0.2.1", 80, [("10.0.0.1", 8080)])
S1B = service("192.0.2.1", 80, [("10.0.0.1", 8080), ("10.0.0.2", 8080)])
S2 = service("192.0.2.2", 443, [("10.0.0.3", 8443)])
S3 = service("192.0.2.3", 53, [("10.0.0.4", 53)])


async def test_full_snapshot_then_deltas() -> None:
    async with Plane() as p:
        v1 = p.store.publish(cluster([S1, S2], {"lb-1": bgp_config(65001, "10.9.0.1", [])}, lb=LB))
        rec = Recorder()
        agent = p.agent("lb-1", rec)
        async with asyncio.timeout(10):
            await agent.wait_version(v1)
            v2 = p.store.publish(
                cluster([S1B, S2], {"lb-1": bgp_config(65001, "10.9.0.1", [])}, lb=LB)
            )
            await agent.wait_version(v2)
            v3 = p.store.publish(cluster([S1B, S3], lb=LB))
            view = await agent.wait_version(v3)
            await p.plane.wait_acked(v3, ["lb-1"])
        assert rec.kinds() == [(v1, 0, True), (v2, v1, False), (v3, v2, False)]
        first, second, third = rec.updates
        assert [s.id for s in first.upserted] == [S1.id, S2.id] and first.bgp_changed
        assert [s.id for s in second.upserted] == [S1.id] and not second.bgp_changed
        assert second.upserted[0] == S1B
        assert [s.id for s in third.upserted] == [S3.id]
        assert third.removed == (S2.id,) and third.bgp_changed
        assert view.snapshot() == p.store.node_snapshot("lb-1")
        info = p.info("lb-1")
        assert (info.sent_version, info.acked_version, info.connected) == (v3, v3, True)


async def test_no_snapshot_before_the_first_version() -> None:
    async with Plane() as p:
        rec = Recorder()
        agent = p.agent("lb-1", rec)
        async with asyncio.timeout(10):
            await p.plane.wait_for(lambda: p.info("lb-1").connected)
            assert rec.updates == []
            async with p.channel() as channel:
                health = health_pb2_grpc.HealthStub(channel)
                check = await health.Check(health_pb2.HealthCheckRequest(service=""))
                assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
                v1 = p.store.publish(cluster([S1], lb=LB))
                await agent.wait_version(v1)
                assert agent.connected
                watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
                async for status in watch:
                    if status.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                watch.cancel()


async def test_service_errors_are_recorded_and_the_rest_moves_on() -> None:
    def ack(update: Update) -> pb.Ack:
        if S2.id in {s.id for s in update.upserted}:
            return pb.Ack(service_errors=[pb.ServiceError(service_id=S2.id, message="no room")])
        return pb.Ack()

    async with Plane() as p:
        rec = Recorder(ack)
        agent = p.agent("lb-1", rec)
        v1 = p.store.publish(cluster([S1, S2], lb=LB))
        async with asyncio.timeout(10):
            await p.plane.wait_acked(v1, ["lb-1"])
            info = p.info("lb-1")
            assert info.acked_version == v1
            assert [(e.service_id, e.message) for e in info.service_errors] == [(S2.id, "no room")]
            # A later clean ack clears them; a nack does not force a full snapshot.
            v2 = p.store.publish(cluster([S1B, S2], lb=LB))
            await p.plane.wait_acked(v2, ["lb-1"])
        assert list(p.info("lb-1").service_errors) == []
        assert rec.kinds() == [(v1, 0, True), (v2, v1, False)]
        assert agent.view.version == v2


async def test_whole_version_error_gets_a_full_snapshot() -> None:
    failed: list[int] = []

    async def handler(update: Update) -> pb.Ack:
        if update.version == 2 and not failed:
            failed.append(update.version)
            raise RuntimeError("map full")
        return pb.Ack()

    async with Plane() as p:
        rec = Recorder()

        async def both(update: Update) -> pb.Ack:
            await rec(update)
            return await handler(update)

        agent = p.agent("lb-1", both)
        p.store.publish(cluster([S1], lb=LB))
        async with asyncio.timeout(10):
            await agent.wait_version(1)
            p.store.publish(cluster([S1B], lb=LB))
            await p.plane.wait_for(lambda: p.info("lb-1").error != "")
            assert "map full" in p.info("lb-1").error
            assert agent.view is None  # the agent no longer claims any version
            p.store.publish(cluster([S1B, S2], lb=LB))
            await agent.wait_version(3)
            await p.plane.wait_acked(3, ["lb-1"])
        assert rec.kinds() == [(1, 0, True), (2, 1, False), (3, 0, True)]
        assert p.info("lb-1").error == ""


async def test_reconnect_with_a_known_version_gets_a_delta() -> None:
    async with Plane() as p:
        first = p.agent("lb-1")
        p.store.publish(cluster([S1], lb=LB))
        async with asyncio.timeout(10):
            view = await first.wait_version(1)
            await p.stop_agent(first)
            p.store.publish(cluster([S1, S2], lb=LB))
            rec = Recorder()
            second = p.agent("lb-1", rec, initial=view)
            await second.wait_version(2)
            # An agent that is already current gets nothing at all.
            await p.stop_agent(second)
            idle = Recorder()
            third = p.agent("lb-1", idle, initial=second.view)
            await p.plane.wait_for(lambda: p.info("lb-1").connected)
            v3 = p.store.publish(cluster([S2], lb=LB))
            await third.wait_version(v3)
        assert rec.kinds() == [(2, 1, False)]
        assert [s.id for s in rec.updates[0].upserted] == [S2.id]
        assert idle.kinds() == [(3, 2, False)]


@pytest.mark.parametrize(
    "applied",
    [
        pytest.param((7, "x"), id="unknown-version"),
        pytest.param((1, "0" * 64), id="hash-mismatch"),
        pytest.param((0, ""), id="nothing-applied"),
    ],
)
async def test_unknown_version_or_wrong_hash_gets_a_snapshot(applied: tuple[int, str]) -> None:
    version, digest = applied
    async with Plane() as p, p.channel() as channel:
        p.store.publish(cluster([S1], lb=LB))
        p.store.publish(cluster([S1, S2], lb=LB))
        hello = pb.Hello(node="lb-1", applied_version=version, applied_hash=digest)
        async with asyncio.timeout(10):
            call, first = await raw_hello(pb_grpc.NodePlaneStub(channel), hello)
        assert first.WhichOneof("kind") == "snapshot"
        assert first.snapshot.version == 2 and first.snapshot.base_version == 0
        call.cancel()


async def test_known_version_from_a_raw_stream_gets_a_delta() -> None:
    async with Plane() as p, p.channel() as channel:
        p.store.publish(cluster([S1], lb=LB))
        p.store.publish(cluster([S1, S2], lb=LB))
        good = p.store.node_hash("lb-1", 1)
        hello = pb.Hello(node="lb-1", applied_version=1, applied_hash=good)
        async with asyncio.timeout(10):
            call, first = await raw_hello(pb_grpc.NodePlaneStub(channel), hello)
        assert first.WhichOneof("kind") == "delta"
        assert (first.delta.base_version, first.delta.version) == (1, 2)
        assert [s.id for s in first.delta.upserted] == [S2.id]
        call.cancel()


async def test_first_message_must_be_a_hello() -> None:
    async with Plane() as p, p.channel() as channel:
        p.store.publish(cluster([S1], lb=LB))
        stub = pb_grpc.NodePlaneStub(channel)
        for first in (pb.AgentMessage(ack=pb.Ack(version=1)), pb.AgentMessage(hello=pb.Hello())):
            call = stub.Connect()
            await call.write(first)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async with asyncio.timeout(10):
                    await call.read()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_node_status_is_recorded() -> None:
    async with Plane() as p:
        agent = p.agent("lb-1")
        status = pb.NodeStatus(
            applied_version=1,
            maps=[pb.MapUsage(name="services", used=1, capacity=1024)],
            bgp_sessions=[
                pb.BGPSessionStatus(peer="tor-a", state="established"),
                pb.BGPSessionStatus(peer="tor-b", state="active"),
            ],
            dataplane_healthy=True,
            announced=["192.0.2.1/32"],
        )
        agent.report_status(status)  # before connecting: sent after the Hello
        registry = p.plane.metrics.registry
        async with asyncio.timeout(10):
            await p.plane.wait_for(lambda: p.info("lb-1").status == status)
            session = {"node": "lb-1", "peer": "tor-a"}
            assert registry.get_sample_value("weir_bgp_session_up", session) == 1
            session["peer"] = "tor-b"
            assert registry.get_sample_value("weir_bgp_session_up", session) == 0
            status2 = pb.NodeStatus(applied_version=2, draining=True)
            agent.report_status(status2)
            await p.plane.wait_for(lambda: p.info("lb-1").status == status2)
        assert registry.get_sample_value("weir_bgp_session_up", session) is None


async def test_a_new_stream_for_the_same_node_replaces_the_old_one() -> None:
    async with Plane() as p, p.channel() as channel:
        p.store.publish(cluster([S1], lb=LB))
        stub = pb_grpc.NodePlaneStub(channel)
        async with asyncio.timeout(10):
            old, _ = await raw_hello(stub, pb.Hello(node="lb-1"))
            new, _ = await raw_hello(stub, pb.Hello(node="lb-1"))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await old.read()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "replaced" in err.value.details()
        assert p.info("lb-1").connected
        assert len(p.plane.list_agents().agents) == 1
        new.cancel()


async def test_inspection_rpcs() -> None:
    errors = [
        pb.ObjectError(kind="Service", namespace="b", name="x", message="bad port"),
        pb.ObjectError(kind="File", name="/m/broken.yaml", message="unparsable"),
    ]
    async with Plane(errors=lambda: errors) as p, p.channel() as channel:
        stub = pb_grpc.NodePlaneStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetSnapshot(pb.GetSnapshotRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        bgp = bgp_config(65001, "10.9.0.1", ["192.0.2.1/32"], password="s3cret")
        p.store.publish(cluster([S1, S2], {"lb-1": bgp}, lb=LB))
        snap = await stub.GetSnapshot(pb.GetSnapshotRequest(), timeout=10)
        assert snap.version == 1 and [s.id for s in snap.services] == [S1.id, S2.id]
        assert snap.nodes[0].bgp.peers[0].password == "<redacted>"
        node = await stub.GetNodeSnapshot(pb.GetNodeSnapshotRequest(node="lb-1"), timeout=10)
        assert node.node == "lb-1" and node.hash == p.store.node_hash("lb-1", 1)
        assert node.bgp.peers[0].password == "<redacted>"
        # The store itself still has it: agents get the real password.
        assert p.store.node_snapshot("lb-1").bgp.peers[0].password == "s3cret"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetNodeSnapshot(pb.GetNodeSnapshotRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        listed = await stub.ListErrors(pb.ListErrorsRequest(), timeout=10)
        assert [e.kind for e in listed.errors] == ["File", "Service"]
        agents = await stub.ListAgents(pb.ListAgentsRequest(), timeout=10)
        assert agents.version == 1 and list(agents.agents) == []


async def test_shutdown_ends_streams_and_agents_reconnect_to_another_controller() -> None:
    async with Plane() as p:
        rec = Recorder()
        agent = p.agent("lb-1", rec)
        p.store.publish(cluster([S1], lb=LB))
        async with asyncio.timeout(10):
            view = await agent.wait_version(1)
        p.plane.close()
        async with asyncio.timeout(10):
            await p.plane.wait_for(lambda: not p.info("lb-1").connected)
    assert view.version == 1 and rec.kinds() == [(1, 0, True)]


async def test_a_delta_that_does_not_rebuild_the_view_leads_to_a_full_snapshot() -> None:
    async with Plane() as p:
        first = p.agent("lb-1")
        p.store.publish(cluster([S1, S2], lb=LB))
        async with asyncio.timeout(10):
            good = await first.wait_version(1)
            await p.stop_agent(first)
        # An agent whose state is not what its hash claims (corrupt, or a bug): the
        # controller trusts the hash and sends a delta, which then fails to verify.
        lying = dataclasses.replace(good, services={}, digests={})
        p.store.publish(cluster([S1B, S2], lb=LB))
        rec = Recorder()
        second = p.agent("lb-1", rec, initial=lying)
        async with asyncio.timeout(10):
            view = await second.wait_version(2)
            await p.plane.wait_acked(2, ["lb-1"])
        assert rec.kinds() == [(2, 0, True)]
        assert view.snapshot() == p.store.node_snapshot("lb-1")
        assert (
            p.plane.metrics.registry.get_sample_value("weir_agent_acks_total", {"result": "error"})
            == 1
        )
        nacks = p.plane.metrics.registry.get_sample_value(
            "weir_agent_nacks_total", {"node": "lb-1"}
        )
        assert nacks == 1


async def test_an_agent_that_never_says_hello_is_dropped() -> None:
    async with Plane(hello_timeout=0.2) as p, p.channel() as channel:
        call = pb_grpc.NodePlaneStub(channel).Connect()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async with asyncio.timeout(10):
                await call.read()
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_metrics_follow_versions_and_acks() -> None:
    async with Plane() as p:
        registry = p.plane.metrics.registry
        agent = p.agent("lb-1")
        p.store.publish(cluster([S1], lb=LB))
        async with asyncio.timeout(10):
            await agent.wait_version(1)
            await p.plane.wait_acked(1, ["lb-1"])
        assert registry.get_sample_value("weir_snapshot_version") == 1
        assert registry.get_sample_value("weir_connected_agents") == 1
        assert registry.get_sample_value("weir_agent_version_lag", {"node": "lb-1"}) == 0
        node = {"node": "lb-1"}
        assert registry.get_sample_value("weir_agent_acked_version", node) == 1
        assert registry.get_sample_value("weir_agent_connected", node) == 1
        assert registry.get_sample_value("weir_agent_nacks_total", node) == 0
        await p.stop_agent(agent)
        p.store.publish(cluster([S1, S2], lb=LB))
        assert registry.get_sample_value("weir_connected_agents") == 0
        assert registry.get_sample_value("weir_agent_version_lag", {"node": "lb-1"}) == 1
        assert registry.get_sample_value("weir_agent_connected", node) == 0
        assert registry.get_sample_value("weir_agent_acked_version", node) == 1


async def test_the_agent_retries_until_a_controller_appears() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rec = Recorder()
    agent = ControllerClient(
        f"127.0.0.1:{port}", "lb-1", rec, backoff_initial=0.05, backoff_max=0.2
    )
    task = asyncio.create_task(agent.run())
    store = SnapshotStore()
    store.publish(cluster([S1], lb=LB))
    try:
        async with asyncio.timeout(10):
            # Let it fail a few times against the closed port first.
            await agent.wait_for(lambda: agent.failures >= 3)
        running = await start_server(NodePlane(store), f"127.0.0.1:{port}", None)
        try:
            async with asyncio.timeout(10):
                await agent.wait_version(1)
        finally:
            await running.stop(grace=1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert rec.kinds() == [(1, 0, True)]


async def test_a_stream_cancelled_from_within_the_agent_is_reconnected() -> None:
    """grpc.aio raises CancelledError from the reads of a call the agent cancelled itself
    (e.g. a write cancelled under way): that is a lost stream, not the client's end, and
    the agent reconnects (its client used to end silently, for good)."""
    async with Plane() as p:
        agent = p.agent("lb-1", Recorder())
        p.store.publish(cluster([S1], lb=LB))
        handled = agent._on_message
        cancelled = []

        async def once(call: grpc.aio.StreamStreamCall, msg: pb.ControllerMessage) -> None:
            if not cancelled:
                cancelled.append(call.cancel())
                return
            await handled(call, msg)

        agent._on_message = once  # type: ignore[method-assign]
        async with asyncio.timeout(10):
            view = await agent.wait_version(1)
    assert cancelled == [True] and agent.accepted == 2 and view.version == 1
