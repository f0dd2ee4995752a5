"""The health decision with two weir-controller replicas and three LB agents split 1 + 2
between them: each replica publishes its agents' reports on their Nodes and decides from
all of them, so both decide the same (1 of 3 failing: in; 2 of 3: out, on every node), a
report whose replica died stops counting, and a malformed report is an error, not a vote."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from weir.common.pb import pb, pb_grpc

from . import builders as b
from .fakeapi import FakeKubeAPI
from .procs import Agent, ControllerProc
from .test_health_process import ANN, NODES, checking, cluster, status

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

BAD = "node-d"  # a Node with a malformed report and no agent
BACKEND = "10.1.0.1"


async def health(ctl: ControllerProc) -> pb.ListHealthResponse | None:
    try:
        async with grpc.aio.insecure_channel(ctl.target) as ch:
            return await pb_grpc.NodePlaneStub(ch).ListHealth(pb.ListHealthRequest(), timeout=5)
    except grpc.aio.AioRpcError:
        return None


async def errors(ctl: ControllerProc) -> list[pb.ObjectError]:
    async with grpc.aio.insecure_channel(ctl.target) as ch:
        resp = await pb_grpc.NodePlaneStub(ch).ListErrors(pb.ListErrorsRequest(), timeout=5)
    return list(resp.errors)


def view(resp: pb.ListHealthResponse | None) -> tuple[str, int, list[str]] | None:
    """(state, checkers, nodes seeing it failing) of BACKEND."""
    for h in resp.backends if resp else ():
        if h.address == BACKEND:
            return h.state, h.checkers, [f.node for f in h.failing]
    return None


async def until_health(ctls: list[ControllerProc], want: tuple[str, int, list[str]]) -> None:
    async with asyncio.timeout(20):
        # Polling other processes' RPC: there is no local event to await.
        while [view(await health(c)) for c in ctls] != [want] * len(ctls):  # noqa: ASYNC110
            await asyncio.sleep(0.1)


def held_out(agent: Agent, fid: str) -> list[str]:
    assert agent.view is not None
    return [u.address for u in agent.view.services[fid].unhealthy]


async def test_every_replica_decides_from_every_lb_node(
    fake: FakeKubeAPI, kubeconfig: Path, tmp_path: Path
) -> None:
    cluster(fake)  # the backends: BACKEND and another
    bad = b.node(BAD, "10.0.0.4")
    bad["metadata"]["annotations"] = {ANN: '{"v": 1, "checked": ['}
    fake.create(bad)
    flags = ["--debounce-ms", "0", "--health-report-renew", "1", "--leader-elect"]
    ctls = [ControllerProc(kubeconfig, tmp_path, f"r{i}", *flags) for i in range(2)]
    for c in ctls:
        await c.start()
    # node-a alone on the first replica, node-b and node-c on the second.
    homes = {"node-a": ctls[0], "node-b": ctls[1], "node-c": ctls[1]}
    agents = {node: Agent(ctl.target, node) for node, ctl in homes.items()}
    for agent in agents.values():
        agent.start()
    try:
        for agent in agents.values():
            await agent.until(lambda a: len(a.vips()) == 1)
        (fid,) = agents["node-a"].view.services  # type: ignore[union-attr]

        # One LB node of three sees the backend failing: a minority on both replicas,
        # although it is the only LB node on the first one.
        await checking(fake, list(agents.values()), fid)
        agents["node-a"].client.report_status(status(fid, BACKEND))
        await until_health(ctls, ("healthy", 3, ["node-a"]))
        assert all(held_out(a, fid) == [] for a in agents.values())

        # Two of three: held out by both replicas, the same service everywhere.
        agents["node-b"].client.report_status(status(fid, BACKEND))
        await until_health(ctls, ("out", 3, ["node-a", "node-b"]))
        for agent in agents.values():
            await agent.until(lambda a: held_out(a, fid) == [BACKEND])
        a, b_, c = (agents[n].view.services[fid] for n in NODES)  # type: ignore[union-attr]
        assert a == b_ == c
        snaps = [await c.snapshot() for c in ctls]
        first, second = ([s for s in snap.services if s.id == fid] for snap in snaps)
        assert first == second

        # A malformed report is an error on its Node, on every replica, and no vote.
        for ctl in ctls:
            (err,) = [e for e in await errors(ctl) if e.name == BAD]
            assert err.kind == "Node"
            assert f"annotation {ANN}: not JSON" in err.message

        # node-a's replica dies: its report on node-a is no longer renewed, and expires.
        ctls[0].kill()
        await until_health(ctls[1:], ("healthy", 2, ["node-b"]))
        for node in ("node-b", "node-c"):
            await agents[node].until(lambda a: held_out(a, fid) == [])
        left = json.loads(fake.get("v1", "Node", "", "node-a")["metadata"]["annotations"][ANN])
        assert (left["replica"], left["failing"][0][1]) == ("r0", BACKEND)

        # An agent that leaves its replica takes its report with it.
        await agents["node-c"].stop()
        await fake.wait_until(
            lambda: ANN not in fake.get("v1", "Node", "", "node-c")["metadata"]["annotations"],
            within=10,
        )
        await until_health(ctls[1:], ("out", 1, ["node-b"]))
    except BaseException:
        for ctl in ctls:
            print(ctl.logs())
        raise
    finally:
        for agent in agents.values():
            await agent.stop()
        for ctl in ctls:
            await ctl.close()
