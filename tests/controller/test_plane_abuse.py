"""The node plane against clients that misbehave: oversized or bad node names, huge statuses
and errors, acks of versions never sent, streams that never read, and a second controller on
the same address."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc
from collections.abc import AsyncIterator

import grpc
import pytest
import structlog
from prometheus_client import generate_latest
from weir.common.pb import pb, pb_grpc
from weir.controller.plane.records import ERROR_CHARS, MAX_ERRORS
from weir.controller.plane.server import start_server
from weir.controller.plane.servicer import NodePlane

from tests.controller.plane_support import Plane, bgp_config, cluster, raw_hello, service

pytestmark = pytest.mark.timeout(120)

MB = 2**20
S1 = service("192.0.2.1", 80, [("10.0.0.1", 8080)])


def big_cluster(services: int, backends: int, lb: list[str]) -> pb.ClusterSnapshot:
    """services x backends, carried by the views of the lb nodes."""
    return cluster(
        [
            service(
                f"198.18.{i // 250}.{i % 250 + 1}",
                80,
                [(f"10.{j // 250}.{j % 250}.1", 8080) for j in range(backends)],
            )
            for i in range(services)
        ],
        lb=lb,
    )


async def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code()


async def test_node_names_are_checked_and_unknown_nodes_cache_nothing() -> None:
    async with Plane() as p, p.channel() as channel:
        stub = pb_grpc.NodePlaneStub(channel)
        v1 = p.store.publish(cluster([S1], {"lb-1": bgp_config(65001, "10.9.0.1", [])}))
        for bad in ("n" * MB, "n" * 254, "Node_1", "lb-1\n"):
            request = pb.GetNodeSnapshotRequest(node=bad)
            assert await code_of(stub.GetNodeSnapshot(request)) == grpc.StatusCode.INVALID_ARGUMENT
            call = stub.Connect()
            await call.write(pb.AgentMessage(hello=pb.Hello(node=bad)))
            assert await code_of(call.read()) == grpc.StatusCode.INVALID_ARGUMENT
        # Valid names of nodes the cluster does not know: answered, nothing kept for them.
        for i in range(300):
            name = f"{i}-" + "n" * 240
            snap = await stub.GetNodeSnapshot(pb.GetNodeSnapshotRequest(node=name))
            assert snap.node == name and snap.hash == p.store.node_hash(name, v1)
        assert (await stub.GetNodeSnapshot(pb.GetNodeSnapshotRequest(node="lb-1"))).bgp.local_asn
        assert set(p.store.latest.hashes) == {"lb-1"}
        assert p.plane.list_agents().agents == []


async def test_what_an_agent_sends_is_kept_bounded() -> None:
    async with Plane(max_agents=3) as p, p.channel() as channel:
        stub = pb_grpc.NodePlaneStub(channel)
        p.store.publish(cluster([S1]))
        calls = []
        for i in range(3):
            call, first = await raw_hello(stub, pb.Hello(node=f"lb-{i}", agent_version="v" * MB))
            await call.write(pb.AgentMessage(ack=pb.Ack(version=first.snapshot.version)))
            huge = pb.NodeStatus(  # just under gRPC's 4 MiB message limit
                announced=["a" * 100] * 10_000,
                bgp_sessions=[pb.BGPSessionStatus(peer="p" * 1000, state="s" * 1000)] * 500,
                maps=[pb.MapUsage(name="m" * 1000)] * 500,
                service_errors=[pb.ServiceError(service_id="x" * 1000, message="y" * 5000)] * 100,
            )
            assert huge.ByteSize() > 2 * MB
            await call.write(pb.AgentMessage(status=huge))
            calls.append(call)
        await p.plane.wait_for(lambda: all(p.info(f"lb-{i}").status.announced for i in range(3)))
        # A fourth connected agent is one too many.
        call = stub.Connect()
        await call.write(pb.AgentMessage(hello=pb.Hello(node="lb-3")))
        assert await code_of(call.read()) == grpc.StatusCode.RESOURCE_EXHAUSTED
        listed = p.plane.list_agents()
        assert [a.node for a in listed.agents] == ["lb-0", "lb-1", "lb-2"]
        assert listed.ByteSize() < 3 * 64 * 1024
        assert all(len(a.agent_version) <= 64 for a in listed.agents)
        errors = listed.agents[0].status.service_errors
        assert len(errors) == MAX_ERRORS + 1 and errors[-1].message == "84 more errors not kept"
        assert len(generate_latest(p.plane.metrics.registry)) < 64 * 1024
        # Disconnected agents make room for new ones, the oldest first; the total stays bounded.
        for call in calls:
            call.cancel()
        await p.plane.wait_for(lambda: not any(a.connected for a in p.plane.list_agents().agents))
        for i in range(3, 6):
            await raw_hello(stub, pb.Hello(node=f"lb-{i}"))
        assert [a.node for a in p.plane.list_agents().agents] == ["lb-3", "lb-4", "lb-5"]


async def test_acks_of_versions_not_in_flight_are_ignored() -> None:
    async with Plane() as p, p.channel() as channel:
        v1 = p.store.publish(cluster([S1]))
        call, _ = await raw_hello(pb_grpc.NodePlaneStub(channel), pb.Hello(node="lb-1"))
        errors = [pb.ServiceError(service_id=S1.id, message="no room")]
        await call.write(pb.AgentMessage(ack=pb.Ack(version=v1, service_errors=errors)))
        await p.plane.wait_for(lambda: p.info("lb-1").acked_version == v1)
        for version in (0, v1 + 41):
            await call.write(pb.AgentMessage(ack=pb.Ack(version=version, error="bogus")))
            # A status after it: once recorded, the ack before it was handled.
            await call.write(pb.AgentMessage(status=pb.NodeStatus(applied_version=version + 1)))
            await p.plane.wait_for(lambda v=version: p.info("lb-1").status.applied_version == v + 1)
            info = p.info("lb-1")
            assert (info.acked_version, info.error, list(info.service_errors)) == (v1, "", errors)
        call.cancel()


async def test_nack_floods_are_clipped_and_their_logs_rate_limited() -> None:
    async with Plane() as p, p.channel() as channel:
        p.store.publish(cluster([S1]))
        call, message = await raw_hello(pb_grpc.NodePlaneStub(channel), pb.Hello(node="lb-1"))
        error = "e" * (3 * MB)  # just under gRPC's 4 MiB message limit
        with structlog.testing.capture_logs() as logs:
            for _ in range(100):  # every version nacked: each nack brings a full snapshot
                await call.write(
                    pb.AgentMessage(ack=pb.Ack(version=message.snapshot.version, error=error))
                )
                message = await call.read()
                assert message.snapshot.version
        call.cancel()
        failed = [entry for entry in logs if entry["event"] == "agent failed a version"]
        assert 1 <= len(failed) <= 5
        assert sum(len(repr(entry)) for entry in logs) < 64 * 1024
        assert len(p.info("lb-1").error) == ERROR_CHARS


@contextlib.asynccontextmanager
async def slow_streams(target: str, nodes: list[str]) -> AsyncIterator[None]:
    """Streams that say Hello and never read (a small flow-control window: no BDP probing)."""
    options = [("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 256 * MB)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.NodePlaneStub(channel)
        calls = []
        for node in nodes:
            call = stub.Connect()
            await call.write(pb.AgentMessage(hello=pb.Hello(node=node)))
            calls.append(call)
        try:
            yield
        finally:
            for call in calls:
                call.cancel()


async def test_slow_readers_pin_a_bounded_amount_and_lose_their_stream() -> None:
    slow = [f"slow-{i}" for i in range(6)]
    snapshot = big_cluster(2000, 60, [*slow, "healthy"])
    size = len(snapshot.SerializeToString())
    assert size > 2 * MB
    async with Plane(send_budget=int(2.5 * size), write_timeout=1.0) as p:
        p.store.publish(snapshot)
        async with slow_streams(p.target, slow):
            await p.plane.wait_for(lambda: all(p.info(n).sent_version for n in slow))
            healthy = p.agent("healthy")
            async with asyncio.timeout(30):
                await healthy.wait_version(1)
                await p.plane.wait_for(lambda: not any(p.info(n).connected for n in slow))
                await p.plane.send_budget.drained()  # nothing pinned once the writes ended
        budget = p.plane.send_budget
        assert size <= budget.peak <= budget.limit
        ended = {a.node for a in p.plane.list_agents().agents if not a.connected}
        assert ended == set(slow)


async def test_streams_keep_no_copy_of_what_they_sent() -> None:
    nodes = [f"lb-{i}" for i in range(8)]
    snapshot = big_cluster(1000, 50, nodes)
    async with Plane() as p, p.channel() as channel:
        stub = pb_grpc.NodePlaneStub(channel)
        p.store.publish(snapshot)
        size = len(p.store.message("lb-0", 0)[1])
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            calls = []
            for node in nodes:
                call, first = await raw_hello(stub, pb.Hello(node=node))
                await call.write(pb.AgentMessage(ack=pb.Ack(version=first.snapshot.version)))
                calls.append(call)
                del first
            await p.plane.wait_acked(1, nodes)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        for call in calls:
            call.cancel()
    # The store's services part is shared; each stream held its own message only while
    # writing it. (Eight streams keeping theirs: eight times the size.)
    assert grown < 2 * size, (grown, size)


async def test_a_taken_address_is_refused() -> None:
    async with Plane() as p:
        other = NodePlane(p.store)
        with pytest.raises(OSError, match="cannot listen on"):
            await start_server(other, p.target, None)
