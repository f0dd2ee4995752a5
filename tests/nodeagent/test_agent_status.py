"""Agent.request_status: the BGP speaker's on_change sends a NodeStatus at once (coalesced),
without waiting for --status-interval. No data plane needed: a stub reports map usage."""

from __future__ import annotations

import asyncio

from weir.common.pb import pb
from weir.nodeagent.agent import Agent, AgentConfig, NoBGP


class StubDataplane:
    def usage(self) -> list:
        return []


class StubBGP(NoBGP):
    def __init__(self) -> None:
        self.drain = False

    @property
    def draining(self) -> bool:
        return self.drain

    def announced(self) -> list[str]:
        return [] if self.drain else ["192.0.2.10/32"]


async def test_request_status_sends_promptly_and_coalesces() -> None:
    bgp = StubBGP()
    cfg = AgentConfig(node="lb-1", status_interval=3600)
    agent = Agent(cfg, StubDataplane(), None, bgp=bgp)  # type: ignore[arg-type]
    sent: list[pb.NodeStatus] = []
    arrived = asyncio.Event()

    def sink(status: pb.NodeStatus) -> None:
        sent.append(status)
        arrived.set()

    agent.set_status_sink(sink)
    agent.request_status()
    agent.request_status()  # while the first is pending: the same report
    async with asyncio.timeout(5):
        await arrived.wait()
        await agent._status_requested  # the sender is done: nothing more comes
    assert len(sent) == 1
    assert sent[0].announced == ["192.0.2.10/32"] and not sent[0].draining

    arrived.clear()
    bgp.drain = True
    agent.request_status()
    async with asyncio.timeout(5):
        await arrived.wait()
    assert len(sent) == 2
    assert sent[1].draining and list(sent[1].announced) == []
