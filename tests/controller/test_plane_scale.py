"""Many agents at once, and a slow agent that must not hold up the others."""

from __future__ import annotations

import asyncio

import pytest
from weir.common.pb import pb
from weir.nodeagent.controller_client import Update

from tests.controller.plane_support import Plane, Recorder, bgp_config, cluster, service

pytestmark = pytest.mark.timeout(120)


def services(n: int, backends: int) -> list[pb.Service]:
    return [
        service(f"192.0.2.{i}", 80, [(f"10.1.{i}.{b}", 8080) for b in range(1, backends + 1)])
        for i in range(1, n + 1)
    ]


async def test_fifty_agents_converge_to_the_same_version() -> None:
    nodes = [f"lb-{i:02d}" for i in range(50)]
    # Half the nodes have BGP settings of their own, so views (and hashes) differ per node;
    # the last ten are not load-balancer nodes: their views carry no services.
    bgp = {n: bgp_config(65001, "10.9.0.1", [f"192.0.2.{i}/32"]) for i, n in enumerate(nodes[::2])}
    lb = nodes[:40]
    async with Plane() as p:
        p.store.publish(cluster(services(20, 3), bgp, lb=lb))
        recorders = {n: Recorder() for n in nodes}
        agents = [p.agent(n, recorders[n]) for n in nodes]
        async with asyncio.timeout(60):
            await p.plane.wait_acked(1, nodes)
            # A burst of versions while everyone is connected.
            for k in range(2, 6):
                p.store.publish(cluster(services(20, k), bgp, lb=lb))
            latest = p.store.version
            await p.plane.wait_acked(latest, nodes)
        assert latest == 5
        for agent in agents:
            assert agent.view.version == latest
            assert agent.view.hash == p.store.node_hash(agent.node, latest)
            assert agent.view.snapshot() == p.store.node_snapshot(agent.node)
            assert len(agent.view.services) == (20 if agent.node in lb else 0)
        listed = p.plane.list_agents()
        assert listed.version == latest
        assert [a.node for a in listed.agents] == nodes
        assert all(a.acked_version == latest and a.connected for a in listed.agents)
        for rec in recorders.values():
            assert rec.updates[0].full and not any(u.full for u in rec.updates[1:])
            # Versions only go up, each applied on the previous one.
            for prev, cur in zip(rec.updates, rec.updates[1:], strict=False):
                assert cur.base_version == prev.version


async def test_a_slow_agent_does_not_hold_up_the_others() -> None:
    fast_nodes = [f"fast-{i}" for i in range(5)]
    gate = asyncio.Event()
    slow_rec = Recorder()

    async def slow(update: Update) -> pb.Ack:
        await slow_rec(update)
        if update.version >= 2:
            await gate.wait()  # stuck applying version 2
        return pb.Ack()

    async with Plane() as p:
        lb = ["slow", *fast_nodes]
        p.store.publish(cluster(services(3, 1), lb=lb))
        slow_agent = p.agent("slow", slow)
        for n in fast_nodes:
            p.agent(n)
        async with asyncio.timeout(30):
            await p.plane.wait_acked(1, [*fast_nodes, "slow"])
            for k in range(2, 6):
                v = p.store.publish(cluster(services(3, k), lb=lb))
                # Every fast agent gets and acks each version while the slow one is stuck.
                await p.plane.wait_acked(v, fast_nodes)
            assert p.info("slow").acked_version == 1
            assert p.info("slow").sent_version == 2  # nothing queued behind the stuck one
            assert slow_rec.kinds() == [(1, 0, True), (2, 1, False)]
            gate.set()
            await p.plane.wait_acked(5, ["slow"])
            await slow_agent.wait_version(5)
        # It caught up with one delta from the version it had to the latest.
        assert slow_rec.kinds() == [(1, 0, True), (2, 1, False), (5, 2, False)]
        assert slow_agent.view.snapshot() == p.store.node_snapshot("slow")
