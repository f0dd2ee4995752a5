"""BFD between the speaker (its BFD daemon) and a real BIRD 2 (`protocol bfd`, sessions
with `bfd on`), in namespaces: a router and LB nodes on one bridge (tests/bgp/support.py).
BGP runs with production timers (hold 90 s): only BFD can make a failure fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

import pytest
from weir.common.pb import pb
from weir.lab.bird import BirdBFD
from weir.lab.netns import Host, Topology
from weir.lab.wait import async_wait_until
from weir.nodeagent.bgp import BGPSpeaker

from tests.bgp.support import (
    ROUTER,
    ROUTER_ASN,
    VIP,
    Lab,
    bgp_config,
    build,
    hard_failure,
    session,
    speaker_on,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

HOLD = 90
NODE1 = "10.98.0.11"  # the first node of support.build
FAST = BirdBFD(min_rx_ms=100, min_tx_ms=100, multiplier=3)
BUSY_SECONDS = 25
# One core kept busy for argv[1] seconds.
BURN = (
    "import sys, time\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end: pass"
)


def bfd_peer(required: bool = False, ms: int = 100) -> pb.BGPPeer:
    return pb.BGPPeer(
        name="router", address=ROUTER, asn=ROUTER_ASN, hold_time_seconds=HOLD,
        bfd=pb.BFD(min_transmit_ms=ms, min_receive_ms=ms, detect_multiplier=3,
                   required=required),
    )  # fmt: skip


def bfd_up(sp: BGPSpeaker) -> bool:
    s = session(sp)
    return s is not None and s.state == "established" and s.bfd_state == "up"


def block_bfd(node: Host, hook: str) -> None:
    """Drop the node's BFD packets (hook: input or output), and nothing else."""
    rules = (
        f"table inet bfdblock {{\n chain c {{\n type filter hook {hook} priority 0;\n"
        f" udp dport 3784 drop\n }}\n}}\n"
    )
    node.run(["nft", "-f", "-"], input=rules)


def router_bfd_up(lab: Lab, addrs: set[str]) -> bool:
    sessions = lab.bird.bfd_sessions()
    return all(a in sessions and sessions[a].state == "Up" for a in addrs)


async def test_sessions_come_up_with_the_negotiated_intervals(
    topo: Topology, tmp_path: Path
) -> None:
    lab = build(topo, tmp_path, 1, bird_bfd=FAST, hold_time=HOLD, bfd=True)
    node = lab.nodes[0]
    async with speaker_on(node) as sp:
        await sp.configure(bgp_config(node, peers=(bfd_peer(required=True),)))
        await sp.announce({VIP})
        await async_wait_until(lambda: bfd_up(sp), 20, "BGP and BFD up")
        await async_wait_until(lambda: lab.bird.kernel_next_hops(VIP), 10, "route")
        # BIRD starts at 1 s and speeds up with a Poll once Up (RFC 5880 6.8.3).
        await async_wait_until(
            lambda: session(sp).bfd_detect_ms == 300,
            10,
            "the fast intervals in use",  # type: ignore[union-attr]
        )
        s = session(sp)
        assert s is not None
        assert (s.bfd_transmit_ms, s.bfd_receive_ms, s.bfd_detect_ms) == (100, 100, 300)
        assert s.bfd_remote_state == "up"
        birds = lab.bird.bfd_sessions()[node.addr()]
        assert (birds.state, birds.interval, birds.timeout) == ("Up", 0.1, 0.3)


async def test_hard_failure_leaves_the_router_in_under_a_second(
    topo: Topology, tmp_path: Path
) -> None:
    lab = build(topo, tmp_path, 2, bird_bfd=FAST, hold_time=HOLD, bfd=True)
    addrs = {n.addr() for n in lab.nodes}
    async with contextlib.AsyncExitStack() as stack:
        speakers = [await stack.enter_async_context(speaker_on(n)) for n in lab.nodes]
        for node, sp in zip(lab.nodes, speakers, strict=True):
            await sp.configure(bgp_config(node, peers=(bfd_peer(),)))
            await sp.announce({VIP})
        await async_wait_until(lambda: all(bfd_up(sp) for sp in speakers), 30, "BFD up")
        # The router's side comes Up one packet later than ours.
        await async_wait_until(lambda: router_bfd_up(lab, addrs), 10, "BFD up at the router")
        await async_wait_until(lambda: lab.bird.kernel_next_hops(VIP) == addrs, 20, "ECMP")
        victim = lab.nodes[1]
        t0 = time.monotonic()
        hard_failure(victim, speakers[1])
        lab.bird.wait_kernel_next_hops(VIP, [lab.nodes[0].addr()], 5, interval=0.01)
        took = time.monotonic() - t0
        print(f"\nhard failure, BGP hold {HOLD} s, BFD 100 ms x 3: next hop gone in {took:.3f} s")
        assert took < 1.0
        # BFD's failure is no graceful restart: BIRD dropped the session, not kept it stale.
        assert "graceful restart" not in lab.bird.protocol_detail("n2").lower().split("neighbor")[0]
        victim.run(["ip", "link", "set", "eth0", "up"])
        await async_wait_until(lambda: bfd_up(speakers[1]), 30, "the node back")
        await async_wait_until(lambda: lab.bird.kernel_next_hops(VIP) == addrs, 20, "ECMP again")


async def test_required_bfd_holds_the_routes_and_bfd_down_closes_the_session(
    topo: Topology, tmp_path: Path
) -> None:
    # BIRD's BGP session does not follow BFD here: what closes it is the speaker.
    solo = BirdBFD(min_rx_ms=100, min_tx_ms=100, multiplier=3, neighbors=(NODE1,))
    lab = build(topo, tmp_path, 1, bird_bfd=solo, hold_time=HOLD)
    node = lab.nodes[0]
    async with speaker_on(node) as sp:
        # Required, and the node's BFD packets dropped: BGP comes up, no route goes.
        block_bfd(node, "output")
        await sp.configure(bgp_config(node, peers=(bfd_peer(required=True),)))
        await sp.announce({VIP})
        await async_wait_until(lambda: lab.bird.established("n1"), 20, "BGP up")
        await asyncio.sleep(2)
        assert session(sp).bfd_state != "up" and lab.bird.kernel_next_hops(VIP) == set()  # type: ignore[union-attr]
        node.run(["nft", "delete", "table", "inet", "bfdblock"])
        await async_wait_until(lambda: bfd_up(sp), 10, "BFD up")
        await async_wait_until(lambda: lab.bird.kernel_next_hops(VIP), 10, "route once BFD is up")
        # The path fails for BFD only: the speaker closes the BGP session itself, at once.
        since = time.time()
        block_bfd(node, "input")
        await async_wait_until(lambda: not lab.bird.established_before("n1", since), 3,
                               "BGP session closed by the speaker")  # fmt: skip
        # With a NOTIFICATION, Cease "BFD Down" (6.10, RFC 9384; BIRD 2.0 has no name for
        # it), which no router takes for a graceful restart.
        got = [line for line in lab.bird.log.read_text().splitlines() if "n1: Received:" in line]
        assert got and "error 6.10" in got[-1], got


async def test_busy_cores_and_a_blocked_loop_do_not_take_bfd_down(
    topo: Topology, tmp_path: Path
) -> None:
    """BFD runs in its own process: with both cores kept busy for 25 s and the agent's loop
    stuck for 2 s on top (a big apply, a BPF compile), at 100 ms x 3, no session goes
    down, at either end."""
    lab = build(topo, tmp_path, 1, bird_bfd=FAST, hold_time=HOLD, bfd=True)
    lab.bird.nice = -10  # the router is another machine: the node's load is not its load
    lab.bird.renice()
    node = lab.nodes[0]
    seen: list[str] = []  # our side's BFD state at every change the speaker reports

    def on_change() -> None:
        s = session(sp)
        if s is not None and s.bfd_state:
            seen.append(s.bfd_state)

    async with speaker_on(node, on_change=on_change) as sp:
        await sp.configure(bgp_config(node, peers=(bfd_peer(),)))
        await sp.announce({VIP})
        await async_wait_until(lambda: bfd_up(sp), 20, "BFD up")
        await async_wait_until(lambda: lab.bird.established("n1"), 20, "BGP up")
        await async_wait_until(lambda: router_bfd_up(lab, {node.addr()}), 10, "BFD up at BIRD")
        since = time.time()
        bird_since = lab.bird.bfd_sessions()[node.addr()].since
        seen.clear()
        burners = [
            await asyncio.create_subprocess_exec(sys.executable, "-c", BURN, str(BUSY_SECONDS))
            for _ in range(os.cpu_count() or 2)
        ]
        try:
            time.sleep(2.0)  # noqa: ASYNC251 - the agent's loop blocked, on purpose
            async with asyncio.timeout(BUSY_SECONDS + 10):
                await asyncio.gather(*(b.wait() for b in burners))
        finally:
            for b in burners:
                if b.returncode is None:
                    b.kill()
                    await b.wait()
        assert all(b.returncode == 0 for b in burners)  # they burned all along
        assert seen.count("up") == len(seen), seen
        assert bfd_up(sp), session(sp)
        assert lab.bird.established_before("n1", since)
        after = lab.bird.bfd_sessions()[node.addr()]
        assert (after.state, after.since) == ("Up", bird_since)  # never left Up
