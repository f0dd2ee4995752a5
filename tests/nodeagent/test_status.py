"""StatusReporter: whatever changes what the NodeStatus shows (here the BGP speaker's
on_change) has a NodeStatus sent at once, one for a burst of changes, without waiting for
--status-interval. No data plane needed: the load-balancer role never opens one."""

from __future__ import annotations

import asyncio

from weir.common.aio import Generation
from weir.common.pb import pb
from weir.nodeagent.agent import Agent
from weir.nodeagent.backend_macs import BackendMacs
from weir.nodeagent.bgp.hook import NoBGP
from weir.nodeagent.lb_role import LoadBalancerRole
from weir.nodeagent.status import StatusReporter


class StubBGP(NoBGP):
    def __init__(self) -> None:
        self.drain = False

    @property
    def draining(self) -> bool:
        return self.drain

    def announced(self) -> list[str]:
        return [] if self.drain else ["192.0.2.10/32"]


async def test_changes_send_a_status_promptly_and_coalesce() -> None:
    bgp = StubBGP()
    role = LoadBalancerRole(lambda: None, BackendMacs(None))  # type: ignore[arg-type]
    agent = Agent([role], bgp=bgp)
    sent: list[pb.NodeStatus] = []
    arrived = asyncio.Event()

    def send(status: pb.NodeStatus) -> None:
        sent.append(status)
        arrived.set()

    changes = Generation()
    reporter = StatusReporter(agent.status, send, changes, interval=3600)
    changes.bump()
    changes.bump()  # before the first is sent: the same report
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(reporter.run())
        async with asyncio.timeout(5):
            await arrived.wait()
        arrived.clear()
        bgp.drain = True
        changes.bump()
        async with asyncio.timeout(5):
            await arrived.wait()
        task.cancel()
    assert len(sent) == 2
    assert sent[0].announced == ["192.0.2.10/32"] and not sent[0].draining
    assert sent[1].draining and list(sent[1].announced) == []
