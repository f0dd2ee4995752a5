"""The agent's flow log service and weirctl flows: kept decisions, filters, following."""

from __future__ import annotations

import argparse
import asyncio
import socket
from pathlib import Path
from typing import cast

import grpc
import pytest
from weir.common.pb import pb
from weir.ctl.flows_cmds import decisions, text
from weir.ctl.main import build_parser
from weir.nodeagent.controller_client import ControllerClient
from weir.nodeagent.dataplane.flowlog import FlowDecision
from weir.nodeagent.flows import FlowLog, FlowRelay

from tests.controller.plane_support import Recorder

NAMES = {"192.0.2.1:80/TCP": "shop/web", "192.0.2.1:53/UDP": "kube/dns"}


def decision(client_port: int, port: int = 80, backend: str = "10.1.0.1:8080") -> FlowDecision:
    return FlowDecision(
        time=1_700_000_000.5, client="172.16.0.1", client_port=client_port, vip="192.0.2.1",
        port=port, protocol="TCP" if port == 80 else "UDP", how="maglev", slot=7,
        backend=backend, backend_node="", action="tx", drop="", icmp=False,
        first_fragment=False, untracked=False,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(port: int, **kw: object) -> list[dict]:
    args = argparse.Namespace(agent=f"127.0.0.1:{port}", limit=100, service="", backend="")
    args.follow = False
    vars(args).update(kw)
    return list(decisions(args))


async def test_kept_decisions_filtered_and_followed(tmp_path: Path) -> None:
    log = FlowLog(tmp_path, lambda: NAMES, keep=3)
    port = free_port()
    async with asyncio.TaskGroup() as tg:
        server = tg.create_task(log.run(f"127.0.0.1:{port}"))
        async with asyncio.timeout(10):
            await log.listening.wait()
        for d in (decision(1), decision(2, 53, "10.2.0.1:53"), decision(3), decision(4)):
            log._publish(d)
        kept = await asyncio.to_thread(ask, port)
        assert [d["client_port"] for d in kept] == [2, 3, 4]  # keep=3
        web = await asyncio.to_thread(ask, port, service="shop/web", limit=1)
        assert [(d["client_port"], d["service"]) for d in web] == [(4, "shop/web")]
        dns = await asyncio.to_thread(ask, port, backend="10.2.0.1")
        assert [d["client_port"] for d in dns] == [2]
        assert text(kept[1]).endswith(
            "TCP 172.16.0.1:3 -> 192.0.2.1:80 (shop/web) -> 10.1.0.1:8080 maglev slot 7 tx"
        )

        registered = asyncio.Event()
        loop = asyncio.get_running_loop()

        def follow() -> list[dict]:
            args = argparse.Namespace(agent=f"127.0.0.1:{port}", limit=1, service="shop/web",
                                      backend="", follow=True)  # fmt: skip
            stream = decisions(args)
            first = next(stream)  # the last kept: sent once the follower is registered
            loop.call_soon_threadsafe(registered.set)
            return [first, next(stream)]

        followed = asyncio.create_task(asyncio.to_thread(follow))
        async with asyncio.timeout(10):
            await registered.wait()
        log._publish(decision(5, 53, "10.2.0.1:53"))  # filtered out
        log._publish(decision(6))
        async with asyncio.timeout(10):
            assert [d["client_port"] for d in await followed] == [4, 6]
        server.cancel()


async def test_the_relay_sends_a_backlog_then_at_most_its_rate(tmp_path: Path) -> None:
    log = FlowLog(tmp_path, lambda: NAMES, sample=1000)
    for n in range(3):
        log._publish(decision(n))
    relay = FlowRelay(log)
    relay.request(pb.FlowWatch(watch=True, max_per_second=10, backlog=2, id=7))
    batches = relay.batches()
    async with asyncio.timeout(5):
        backlog = await anext(batches)
        assert (backlog.backlog, backlog.backlog_id, backlog.sample) == (True, 7, 1000)
        assert [d.client_port for d in backlog.decisions] == [1, 2]
        for n in range(100, 150):
            log._publish(decision(n))
        live = await anext(batches)
    assert not live.backlog
    assert [d.client_port for d in live.decisions] == list(range(100, 110))
    assert live.unsent == 40 and live.decisions[0].service == "shop/web"
    relay.close()
    assert not log._followers


async def test_a_backlog_and_the_live_batches_after_it_share_no_decision(
    tmp_path: Path,
) -> None:
    """A new watcher's backlog is cut at the same moment as the live batch before it: a
    decision logged while that live batch is being sent goes in the next live batch only
    (the controller hands a watcher the live batches after its backlog)."""
    log = FlowLog(tmp_path, lambda: NAMES, sample=1)
    relay = FlowRelay(log)
    log._publish(decision(1))  # relayed live to the watchers already there
    relay.request(pb.FlowWatch(watch=True, max_per_second=100, backlog=10, id=3))
    batches = relay.batches()
    async with asyncio.timeout(5):
        live = await anext(batches)
        assert (live.backlog, [d.client_port for d in live.decisions]) == (False, [1])
        log._publish(decision(2))  # while that batch is written to the stream
        backlog = await anext(batches)
        after = await anext(batches)
    assert backlog.backlog_id == 3 and not after.backlog
    seen = [d.client_port for d in [*backlog.decisions, *after.decisions]]
    assert seen == [1, 2]
    relay.close()


async def test_a_relay_stopped_before_it_ran_leaves_no_follower(tmp_path: Path) -> None:
    """FlowWatch(true) then at once FlowWatch(false): the relay's task is cancelled before
    its first step, and the follower it made must go with it (each one left would take
    every decision, for good)."""
    log = FlowLog(tmp_path, lambda: NAMES, sample=1)
    client = ControllerClient("127.0.0.1:1", "lb-1", Recorder(), flows=lambda: FlowRelay(log))
    call = cast(grpc.aio.StreamStreamCall, object())  # never written to: the relay never ran
    for _ in range(3):
        await client._on_flow_watch(call, pb.FlowWatch(watch=True, backlog=1, id=1))
        assert len(log._followers) == 1
        await client._on_flow_watch(call, pb.FlowWatch(watch=False))
        assert not log._followers


class SlowCall:
    """An agent's stream whose writes take a while; like grpc.aio's, a write cancelled
    while under way cancels the whole stream."""

    def __init__(self) -> None:
        self.writing = asyncio.Event()
        self.release = asyncio.Event()
        self.written: list[pb.AgentMessage] = []
        self.cancelled = False

    async def write(self, msg: pb.AgentMessage) -> None:
        self.writing.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.written.append(msg)


async def test_the_last_watcher_leaving_mid_write_keeps_the_stream(tmp_path: Path) -> None:
    """FlowWatch(false) while the relay writes a batch: the relay ends after that write,
    not in it (grpc.aio would cancel the agent's whole stream, and with it the agent's
    link to the controller, for good)."""
    log = FlowLog(tmp_path, lambda: NAMES, sample=1)
    client = ControllerClient("127.0.0.1:1", "lb-1", Recorder(), flows=lambda: FlowRelay(log))
    call = SlowCall()
    stream = cast(grpc.aio.StreamStreamCall, call)
    log._publish(decision(1))
    await client._on_flow_watch(stream, pb.FlowWatch(watch=True, backlog=1, id=1))
    async with asyncio.timeout(5):
        await call.writing.wait()  # the backlog, under way
        stop = asyncio.create_task(client._on_flow_watch(stream, pb.FlowWatch(watch=False)))
        await asyncio.sleep(0.05)
        call.release.set()
        await stop
    assert not call.cancelled and [m.flows.backlog_id for m in call.written] == [1]
    assert client._relay is None and not log._followers


def test_weirctl_refuses_a_backend_that_is_no_address(capsys: pytest.CaptureFixture[str]) -> None:
    """A filter with its port (or a name) would match no decision, in silence."""
    for bad in ("10.1.0.1:8080", "web-1"):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(["flows", "--backend", bad])
        assert exit_.value.code == 2 and "without its port" in capsys.readouterr().err
    assert build_parser().parse_args(["flows", "--backend", "10.1.0.1"]).backend == "10.1.0.1"
    assert build_parser().parse_args(["flows"]).backend == ""  # no filter by default
