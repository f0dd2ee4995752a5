"""WatchFlows over real gRPC sockets: a node's flow log relayed by its agent's stream
(ControllerClient + nodeagent.flows.FlowRelay) to watchers, bounded, with clear errors.

The data plane is left out here (decisions are published into the agent's FlowLog by hand);
tests/e2e/test_observability.py runs the same path with XDP and a real connection.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from pathlib import Path

import grpc
import pytest
from weir.common.pb import pb, pb_grpc
from weir.controller.plane.flows import FlowWatchers
from weir.ctl import flows_remote
from weir.ctl.flows_cmds import text
from weir.nodeagent.flows import FlowLog, FlowRelay

from tests.controller.plane_support import Plane, cluster, service
from tests.kube.tcpproxy import FreezingProxy
from tests.nodeagent.test_flows import NAMES, decision

pytestmark = pytest.mark.timeout(60)

LB = ["lb-1", "lb-2"]
S1 = service("192.0.2.1", 80, [("10.1.0.1", 8080)], name="shop/web")


def request(node: str = "lb-1", **kw: object) -> pb.WatchFlowsRequest:
    return pb.WatchFlowsRequest(**{"node": node, "limit": 100, **kw})


async def agent_with_flow_log(p: Plane, node: str, tmp: Path, sample: int = 1) -> FlowLog:
    flow_log = FlowLog(tmp, lambda: NAMES, sample=sample)
    client = p.agent(node, flows=lambda: FlowRelay(flow_log))
    async with asyncio.timeout(10):
        await client.wait_for(lambda: client.connected)
        await p.plane.wait_for(lambda: p.info(node).connected)
    return flow_log


async def test_backlog_then_followed_decisions_and_the_relay_stops_after_the_last(
    tmp_path: Path,
) -> None:
    async with Plane() as p:
        p.store.publish(cluster([S1], lb=LB))
        flow_log = await agent_with_flow_log(p, "lb-1", tmp_path)
        for port in (1, 2, 3):
            flow_log._publish(decision(port))
        flow_log._publish(decision(4, 53, "10.2.0.1:53"))
        async with p.channel() as channel:
            nodeplane = pb_grpc.NodePlaneStub(channel)
            past = [r async for r in nodeplane.WatchFlows(request(service="shop/web", limit=2))]
            assert [d.client_port for r in past for d in r.decisions] == [2, 3]
            assert (past[0].sample, past[0].notice) == (1, "")

            call = nodeplane.WatchFlows(request(backend="10.1.0.1", limit=1, follow=True))
            first = await asyncio.wait_for(call.read(), 10)
            assert [d.client_port for d in first.decisions] == [3]
            assert first.decisions[0].service == "shop/web"
            flow_log._publish(decision(5, 53, "10.2.0.1:53"))  # filtered out
            flow_log._publish(decision(6))
            got: list[int] = []
            async with asyncio.timeout(5):
                while 6 not in got:
                    got += [d.client_port for d in (await call.read()).decisions]
            assert got == [6]
            assert len(flow_log._followers) == 1  # the agent relays while watched
            assert p.plane.metrics.registry.get_sample_value("weir_flow_watchers") == 1
            call.cancel()
            async with asyncio.timeout(10):
                # The FlowWatch(false) travels the stream: nothing on the agent's side to await.
                while flow_log._followers or len(p.plane.flows):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)


async def test_errors_name_why(tmp_path: Path) -> None:
    async with Plane(flows=FlowWatchers(max_watchers=1)) as p:
        p.store.publish(cluster([S1], lb=LB))
        await agent_with_flow_log(p, "lb-1", tmp_path)
        await agent_with_flow_log(p, "lb-2", tmp_path / "off", sample=0)
        async with p.channel() as channel:
            stub = pb_grpc.NodePlaneStub(channel)

            async def code(req: pb.WatchFlowsRequest) -> tuple[grpc.StatusCode, str]:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in stub.WatchFlows(req, timeout=10):
                        pass
                return err.value.code(), err.value.details() or ""

            assert (await code(request("nowhere")))[0] == grpc.StatusCode.NOT_FOUND
            # Filters that could match nothing: refused, clipped in the answer.
            for bad in (
                request(backend="10.1.0.1:8080"),
                request(backend="x" * 3_000_000, follow=True),
                request(service="web"),
                request(service="shop/" + "w" * 3_000_000),
                request(service="Shop/web"),
            ):
                status, details = await code(bad)
                assert status == grpc.StatusCode.INVALID_ARGUMENT and len(details) < 200
                assert "10.1.0.1)" in details or "<namespace>/<name>" in details
            assert not len(p.plane.flows)
            status, details = await code(request("lb-2", follow=True))
            assert status == grpc.StatusCode.FAILED_PRECONDITION and "--flow-sample" in details
            (off,) = [r async for r in stub.WatchFlows(request("lb-2"))]
            assert "sampling is off on node lb-2" in off.notice

            call = stub.WatchFlows(request(follow=True))
            await asyncio.wait_for(call.read(), 10)  # the one watcher this controller takes
            assert (await code(request("lb-2")))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
            lb1 = next(c for c in p._tasks if c.get_name() == "agent-lb-1")
            lb1.cancel()  # the agent goes: its watcher is told
            with pytest.raises(grpc.aio.AioRpcError) as err:
                while True:
                    await asyncio.wait_for(call.read(), 10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "lb-1's agent stream ended" in (err.value.details() or "")
            await p.plane.wait_for(lambda: not p.info("lb-1").connected)
            status, details = await code(request("lb-1"))
            assert status == grpc.StatusCode.UNAVAILABLE and "another replica" in details


async def test_a_slow_watcher_loses_the_oldest_and_is_told() -> None:
    """A watcher whose call does not take its answers (gRPC flow control holds the
    servicer's yield) keeps the newest `queue` decisions and counts the others."""
    hub = FlowWatchers(queue=5)
    sent: list[pb.FlowWatch] = []
    stream = object()
    w = hub.attach("lb-1", stream, sent.append, request(limit=3, follow=True))
    assert (sent[0].watch, sent[0].backlog, sent[0].id) == (True, 3, w.id)
    live = pb.FlowBatch(sample=1, decisions=[pb.FlowDecision(client_port=99)])
    hub.on_batch(stream, live)  # before its backlog: already in the backlog the agent sends
    backlog = [pb.FlowDecision(client_port=n) for n in (1, 2, 3)]
    hub.on_batch(stream, pb.FlowBatch(backlog=True, backlog_id=w.id, sample=1, decisions=backlog))
    for n in range(10, 30):
        hub.on_batch(
            stream, pb.FlowBatch(sample=1, unsent=4, decisions=[pb.FlowDecision(client_port=n)])
        )
    responses = hub.responses(w)
    first = await anext(responses)
    assert [d.client_port for d in first.decisions] == [25, 26, 27, 28, 29]
    assert (first.dropped, first.unsent, first.sample) == (18, 4, 1)
    hub.detach(w)
    assert sent[-1] == pb.FlowWatch(watch=False) and len(hub) == 0


class RoundRobin(FreezingProxy):
    """A Service in front of the replicas: each new connection goes to the next one."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__(ports[0])
        self._ports = itertools.cycle(ports)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.target_port = next(self._ports)
        await super()._accept(reader, writer)


async def test_weirctl_finds_the_replica_that_holds_the_agent(tmp_path: Path) -> None:
    """Two replicas, the agent on the second, behind a round-robin Service: the first
    answers UNAVAILABLE naming why, and weirctl tries again on a new connection."""
    async with Plane() as first, Plane() as second:
        for p in (first, second):
            p.store.publish(cluster([S1], lb=LB))
        flow_log = await agent_with_flow_log(second, "lb-1", tmp_path)
        flow_log._publish(decision(9))
        service = RoundRobin([first.server.port, second.server.port])
        await service.start()
        try:
            # --limit beyond what the request carries (uint32): the most there is.
            args = argparse.Namespace(node="lb-1", service="", backend="", limit=2**40,
                                      follow=False, ca=None,
                                      controller=f"127.0.0.1:{service.port}")  # fmt: skip
            got = await asyncio.to_thread(lambda: list(flows_remote.decisions(args)))
            assert len(service._links) == 2  # the first replica's answer, then the second's
        finally:
            await service.close()
        assert [(d["client_port"], d["service"], d["backend"]) for d in got] == [
            (9, "shop/web", "10.1.0.1:8080")
        ]
        assert text(got[0]).endswith("(shop/web) -> 10.1.0.1:8080 maglev slot 7 tx")
        # Addressed to the first replica alone, it gives up with the reason.
        args.controller = first.target
        with pytest.raises(grpc.RpcError) as err:
            await asyncio.to_thread(lambda: list(flows_remote.decisions(args)))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert "another replica" in flows_remote.error(args, err.value)


def test_an_agent_cannot_send_more_than_it_was_asked() -> None:
    """A buggy or hostile agent: live decisions beyond the rate the controller asked for
    are cut before any filter sees them (counted in unsent), a second backlog answer or
    one for a watcher of another stream is ignored, and batches nobody waits for are
    dropped at once."""
    hub = FlowWatchers(per_second=100)
    sent: list[pb.FlowWatch] = []
    stream, other = object(), object()
    w = hub.attach("lb-1", stream, sent.append, request(limit=3, follow=True))
    many = [pb.FlowDecision(client_port=n % 60000) for n in range(5000)]
    hub.on_batch(stream, pb.FlowBatch(sample=1, decisions=many))  # not answered yet: skipped
    hub.on_batch(other, pb.FlowBatch(backlog=True, backlog_id=w.id, sample=1, decisions=many))
    assert not w.answered and not w.queue
    hub.on_batch(stream, pb.FlowBatch(backlog=True, backlog_id=w.id, sample=1))
    hub.on_batch(stream, pb.FlowBatch(backlog=True, backlog_id=w.id, sample=1, decisions=many))
    assert w.answered and not w.queue
    for _ in range(10):
        hub.on_batch(stream, pb.FlowBatch(sample=1, unsent=7, decisions=many))
    # Twice the rate at once, and what a second brings meanwhile (the test takes less).
    assert 200 <= len(w.queue) < 300
    assert w.response([]).unsent == 7 + 50_000 - len(w.queue)
    hub.stream_ended(stream, "gone")
    assert not hub._budgets


async def test_watchers_coming_and_going_leave_nothing_behind(tmp_path: Path) -> None:
    """Churn: rounds of watchers, half of them gone before their first answer, some over the
    most the controller takes: once all are gone, no watcher, no relay, no follower."""
    async with Plane(flows=FlowWatchers(max_watchers=8)) as p:
        p.store.publish(cluster([S1], lb=LB))
        flow_log = FlowLog(tmp_path, lambda: NAMES, sample=1)
        client = p.agent("lb-1", flows=lambda: FlowRelay(flow_log))
        await p.plane.wait_for(lambda: p.info("lb-1").connected)
        flow_log._publish(decision(1))
        async with p.channel() as channel:
            stub = pb_grpc.NodePlaneStub(channel)

            async def one(i: int) -> grpc.StatusCode:
                call = stub.WatchFlows(request(limit=5, follow=True), timeout=10)
                try:
                    if i % 2:
                        await call.read()
                    else:
                        await asyncio.sleep(0)
                    return grpc.StatusCode.OK
                except grpc.aio.AioRpcError as e:
                    return e.code()
                finally:
                    call.cancel()

            for _ in range(5):
                codes = set(await asyncio.gather(*(one(i) for i in range(24))))
                assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
            async with asyncio.timeout(10):
                # The last FlowWatch(false) travels the stream: nothing to await on this side.
                while flow_log._followers or len(p.plane.flows):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            assert client._relay is None
            # Still served afterwards.
            (answer,) = [r async for r in stub.WatchFlows(request(limit=5))]
            assert [d.client_port for d in answer.decisions] == [1]
