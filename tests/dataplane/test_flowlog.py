"""The flow log: sampled decisions of the fast path, read from its pinned ring buffer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from weir.nodeagent.dataplane import Dataplane, Frontend
from weir.nodeagent.dataplane.flowhash import maglev_slot
from weir.nodeagent.dataplane.flowlog import FlowLogReader
from weir.nodeagent.flows import FlowLog

from .conftest import Node
from .support import XDP_DROP, in_netns
from .test_xdp import FE, SEED, VIP, backend_of, flows, maglev, send, targets


@pytest.fixture
def reader(fresh_dp: Dataplane, node: Node) -> Iterator[FlowLogReader]:
    r = FlowLogReader(node.bpffs)
    try:
        yield r
    finally:
        r.close()


def test_decisions_are_logged_with_backend_slot_and_reason(
    fresh_dp: Dataplane, reader: FlowLogReader
) -> None:
    dp = fresh_dp  # its ring read from the start
    dp.set_seed(SEED)
    bes = targets(1, 3)
    table = maglev(bes)
    dp.apply_service(FE, bes, table)
    f1, f2 = flows(2)
    backend_of(dp, f1, bes)  # sampling off: nothing logged
    assert reader.poll(0) == []

    dp.set_flow_sampling(1)
    started = time.time()
    picked = backend_of(dp, f2, bes)
    backend_of(dp, f2, bes)
    assert send(dp, f1, l4_bytes=2)[0] == XDP_DROP
    new, hit, dropped = reader.poll(1000)
    slot = maglev_slot(f2.saddr, f2.sport, f2.dport, f2.proto, SEED, len(table))
    be = bes[picked]
    assert (new.client, new.client_port, new.vip, new.port, new.protocol) == (
        f2.saddr, f2.sport, VIP, 80, "TCP",
    )  # fmt: skip
    assert (new.how, new.slot, new.backend, new.action) == (
        "maglev", slot, f"{be.address}:{be.port}", "tx",
    )  # fmt: skip
    assert started - 1 < new.time < time.time() + 1
    assert (hit.how, hit.backend, hit.action) == ("conntrack", new.backend, "tx")
    assert (dropped.action, dropped.drop, dropped.backend) == ("drop", "parse", "")

    empty = Frontend(f"{VIP}:81/TCP", VIP, 81, 6)
    dp.apply_service(empty, [], [])
    send(dp, flows(1, port=81)[0])
    (nobody,) = reader.poll(1000)
    assert (nobody.port, nobody.drop, nobody.how) == (81, "table_empty", "none")


def test_one_in_n_packets_is_logged(fresh_dp: Dataplane, reader: FlowLogReader) -> None:
    dp = fresh_dp
    dp.set_seed(SEED)
    bes = targets(1, 2)
    dp.apply_service(FE, bes, maglev(bes))
    dp.set_flow_sampling(4)
    for f in flows(400):
        send(dp, f)
    logged = reader.poll(1000)
    assert 40 <= len(logged) <= 180  # 100 expected
    dp.set_flow_sampling(0)
    for f in flows(50):
        send(dp, f)
    assert reader.poll(0) == []


async def test_the_agent_reads_the_ring_of_a_data_plane_made_anew(node: Node) -> None:
    """The pins removed and the data plane opened again (new maps, a new ring): the agent's
    flow log leaves the old ring and reads the new one."""
    dp = node.open()
    flow_log = FlowLog(node.bpffs, dict, sample=1)
    follower = flow_log.follow()
    reading = asyncio.create_task(flow_log.run())
    try:
        bes = targets(1, 2)
        f1, f2 = flows(2)
        for f in (f1, f2):
            dp.set_seed(SEED)
            dp.apply_service(FE, bes, maglev(bes))
            dp.set_flow_sampling(1)
            backend_of(dp, f, bes)
            async with asyncio.timeout(10):
                assert (await follower.queue.get())["client_port"] == f.sport
            if f is f1:
                with in_netns(node.netns):
                    dp.close(detach=True)
                dp = node.open()
        assert flow_log.reopened == 1
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        dp.close()
