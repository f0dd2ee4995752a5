"""A node that cannot forward does not announce: the roles keep checking that their
programs are attached (nodeagent.forwarding_watch), put back one that is gone, leave another
tool's program alone, and report it; the load-balancer role withdraws every VIP meanwhile.

No kernel here: the attachment is a stand-in the test sets (the real checks:
test_attachment.py; end to end: tests/e2e/test_outages.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from weir.common.aio import Generation
from weir.nodeagent.agent import Agent
from weir.nodeagent.attachment import Attachment
from weir.nodeagent.backend_macs import BackendMacs
from weir.nodeagent.backend_role import BackendRole
from weir.nodeagent.forwarding_watch import ForwardingWatch
from weir.nodeagent.lb_role import LoadBalancerRole

from tests.nodeagent.standins import (
    WEB,
    FakeDataplane,
    FakeNat,
    FakeNeighbours,
    FakeUplink,
    Opener,
    RecordingBGP,
    RecordingMetrics,
    endpoint,
    view,
)

OURS = Attachment()
GONE = Attachment("no XDP program on eth0", missing=True)
FOREIGN = Attachment("another XDP program (id 99) is attached to eth0; left in place")


class FakeProbe:
    """The attachment as the test sets it; reattach() puts ours back unless it fails."""

    def __init__(self, state: Attachment = OURS, refuse: str = "") -> None:
        self.state, self.refuse, self.reattached = state, refuse, 0

    def check(self) -> Attachment:
        return self.state

    def reattach(self) -> None:
        if self.refuse:
            raise RuntimeError(self.refuse)
        self.reattached += 1
        self.state = OURS


async def test_a_detached_program_is_put_back_and_reported_until_a_check_confirms_it() -> None:
    probe, reports = FakeProbe(), []

    async def report(problem: str) -> None:
        reports.append(problem)

    watch = ForwardingWatch(probe, report, role="load_balancer")
    assert await watch.check() == "" and reports == []  # nothing to say while it forwards
    probe.state = GONE
    assert await watch.check() == "no XDP program on eth0"
    assert probe.reattached == 1 and probe.state == OURS
    # Reported as not forwarding until the next check finds it attached.
    assert reports == ["no XDP program on eth0"]
    assert await watch.check() == "" and reports[-1] == ""

    probe.state = FOREIGN  # another tool's program: left alone, reported while it stays
    for _ in range(3):
        await watch.check()
    assert probe.reattached == 1 and reports == ["no XDP program on eth0", "", FOREIGN.problem]

    probe.state, probe.refuse = GONE, "interface busy"
    assert await watch.check() == "no XDP program on eth0; cannot attach it again: interface busy"
    assert reports[-1].endswith("cannot attach it again: interface busy")


async def test_a_check_that_fails_changes_nothing() -> None:
    reports, loop, failed = [], asyncio.get_running_loop(), asyncio.Event()

    class Broken(FakeProbe):
        calls = 0

        def check(self) -> Attachment:
            self.calls += 1
            if self.calls == 3:
                loop.call_soon_threadsafe(failed.set)
            raise OSError("libbpf says no")

    async def report(problem: str) -> None:
        reports.append(problem)

    watch = ForwardingWatch(Broken(), report, role="load_balancer", interval=0.001)
    task = asyncio.create_task(watch.run())
    async with asyncio.timeout(5):
        await failed.wait()  # three rounds, each failing: the loop goes on
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reports == [] and watch.problem == ""


# -- the roles ---------------------------------------------------------------------------------


@asynccontextmanager
async def running(role) -> AsyncIterator[None]:
    task = asyncio.create_task(role.run())
    try:
        yield
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def until(changes: Generation, cond: Callable[[], Awaitable[bool]]) -> None:
    """Until cond() holds, re-checked whenever the status changes (bounded)."""
    async with asyncio.timeout(5):
        seen = changes.value
        while not await cond():
            seen = await changes.wait_past(seen)


def problem_is(agent: Agent, problem: str) -> Callable[[], Awaitable[bool]]:
    async def cond() -> bool:
        return (await agent.status()).dataplane_problem == problem

    return cond


async def test_the_load_balancer_withdraws_every_vip_while_its_program_is_not_attached() -> None:
    probe, bgp, metrics, changes = FakeProbe(), RecordingBGP(), RecordingMetrics(), Generation()
    uplink = FakeUplink()
    role = LoadBalancerRole(
        Opener(FakeDataplane()),
        BackendMacs(FakeNeighbours(), uplink),
        uplink=uplink,
        bgp=bgp,
        changes=changes,
        attachment=lambda dp: probe,
        check_interval=0.01,
    )
    agent = Agent([role], bgp=bgp, metrics=metrics, changes=changes)
    await agent.handle(view(1, WEB))
    vip = frozenset({"192.0.2.10"})
    assert bgp.vips[-1] == vip
    async with running(role):
        probe.state = FOREIGN
        await until(changes, problem_is(agent, f"load_balancer: {FOREIGN.problem}"))
        assert bgp.vips[-1] == frozenset()
        assert not (await agent.status()).dataplane_healthy
        assert metrics.healthy[-1] == {"load_balancer": False}
        # A version applied meanwhile announces nothing either.
        await agent.handle(view(2, WEB))
        assert bgp.vips[-1] == frozenset()

        probe.state = GONE  # the other program went: ours is put back, then announced
        await until(changes, problem_is(agent, ""))
        assert probe.reattached == 1 and bgp.vips[-1] == vip
        assert (await agent.status()).dataplane_healthy
        assert metrics.healthy[-1] == {"load_balancer": True}


async def test_the_backend_role_puts_back_its_tc_programs_and_reports_others() -> None:
    probe, changes = FakeProbe(), Generation()
    role = BackendRole(
        Opener(FakeNat()),
        FakeUplink(),
        changes=changes,
        attachment=lambda nat: probe,
        check_interval=0.01,
    )
    agent = Agent([role], changes=changes)
    ep = endpoint("192.0.2.10", "10.244.1.7")
    await agent.handle(view(1, lb=False, local_endpoints=[ep]))
    tc_gone = Attachment("no tc program at prog_tc_ingress's place on eth0", missing=True)
    foreign = Attachment("another tc program (id 7) is at prog_tc_ingress's place on eth0")
    async with running(role):
        probe.state = tc_gone

        async def put_back() -> bool:
            return probe.reattached == 1 and (await agent.status()).dataplane_healthy

        await until(changes, put_back)  # and found there by the next check
        probe.state = foreign
        await until(changes, problem_is(agent, f"backend: {foreign.problem}"))
    assert probe.reattached == 1
