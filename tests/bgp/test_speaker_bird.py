"""The BGP speaker (ExaBGP 5, supervised) against a real BIRD 2 router in a namespace.

Topology: a router namespace and N "LB node" namespaces on one bridge (10.98.0.0/24).
Each speaker runs in the test process; its ExaBGP runs in its node's namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from weir.common.pb import pb
from weir.lab.bird import Bird, BirdPeer
from weir.lab.netns import Host, Topology
from weir.lab.wait import async_wait_until

from tests.bgp.support import (
    NODE_ASN,
    ROUTER,
    ROUTER_ASN,
    VIP,
    VIP2,
    bgp_config,
    build,
    established,
    session,
    speaker_on,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]


async def test_session_and_route(topo: Topology, tmp_path: Path) -> None:
    lab = build(topo, tmp_path, 1)
    node = lab.nodes[0]
    async with speaker_on(node) as sp:
        await sp.configure(bgp_config(node, (VIP, VIP2)))
        assert sp.sessions()[0].state == "idle"  # known peer, no ExaBGP until announce()
        await sp.announce({"192.0.2.10"})  # a bare VIP means its /32
        await async_wait_until(lambda: established(sp), 20, "session established")
        await async_wait_until(
            lambda: lab.bird.kernel_next_hops(VIP) == {node.addr()}, 20, "VIP in router's FIB"
        )
        s = session(sp)
        assert s is not None
        assert (s.address, s.routes_sent) == (ROUTER, 1)
        assert sp.announced() == [VIP]
        # Only advertised prefixes are announced: 198.51.100.1 has no advertisement.
        await sp.announce({VIP, VIP2, "198.51.100.1/32"})
        await async_wait_until(lambda: lab.bird.bgp_next_hops(VIP2), 10, "second VIP")
        assert lab.bird.bgp_next_hops("198.51.100.1/32") == set()
        assert session(sp).routes_sent == 2  # type: ignore[union-attr]
        assert lab.bird.established("n1")
        await sp.withdraw_all()
        await async_wait_until(lambda: not lab.bird.bgp_next_hops(VIP), 10, "VIP withdrawn")
        assert session(sp).routes_sent == 0  # type: ignore[union-attr]
    # stop(graceful=False) closed the session with a Cease: BIRD sees it go down.
    await async_wait_until(lambda: not lab.bird.established("n1"), 10, "session closed")


async def test_ecmp_three_speakers(topo: Topology, tmp_path: Path) -> None:
    lab = build(topo, tmp_path, 3)
    addrs = {n.addr() for n in lab.nodes}
    async with contextlib.AsyncExitStack() as stack:
        speakers = [await stack.enter_async_context(speaker_on(n)) for n in lab.nodes]
        for node, sp in zip(lab.nodes, speakers, strict=True):
            await sp.configure(bgp_config(node))
            await sp.announce({VIP})
        await async_wait_until(
            lambda: lab.bird.kernel_next_hops(VIP) == addrs, 30, "multipath route, 3 next hops"
        )
        route = lab.router.run(["ip", "route", "show", "exact", VIP])
        assert route.count("nexthop via") == 3, route
        # Withdrawing on one node removes that next hop only.
        await speakers[1].announce(set())
        left = addrs - {lab.nodes[1].addr()}
        await async_wait_until(lambda: lab.bird.kernel_next_hops(VIP) == left, 10, "2 next hops")
        await speakers[1].announce({VIP})
        await async_wait_until(lambda: lab.bird.kernel_next_hops(VIP) == addrs, 10, "3 again")


async def test_peer_down_and_back(topo: Topology, tmp_path: Path) -> None:
    lab = build(topo, tmp_path, 1)
    node = lab.nodes[0]
    async with speaker_on(node) as sp:
        await sp.configure(bgp_config(node, hold_time_seconds=3))
        await sp.announce({VIP})
        await async_wait_until(lambda: lab.bird.kernel_next_hops(VIP), 20, "route")
        first = session(sp)

        # The router crashes and comes back.
        lab.bird.kill()
        await async_wait_until(lambda: not established(sp), 15, "session seen down")
        assert session(sp).routes_sent == 0  # type: ignore[union-attr]
        lab.bird.start()
        await async_wait_until(lambda: established(sp), 30, "session back")
        await async_wait_until(lambda: lab.bird.kernel_next_hops(VIP), 10, "route back")
        assert session(sp).routes_sent == 1  # type: ignore[union-attr]
        assert first is not None

        # The link to the router goes down (hold timer, 3 s) and comes back.
        lab.router.run(["ip", "link", "set", "eth0", "down"])
        await async_wait_until(lambda: not established(sp), 15, "hold timer expiry")
        lab.router.run(["ip", "link", "set", "eth0", "up"])
        await async_wait_until(lambda: established(sp), 30, "session back after link up")
        await async_wait_until(lambda: lab.bird.kernel_next_hops(VIP), 10, "route back")


async def test_md5_password(topo: Topology, tmp_path: Path) -> None:
    key = "s3cr3t 'x';{y}"  # ExaBGP gets it base64-encoded, BIRD in double quotes
    lab = build(topo, tmp_path, 2, password=key)
    good, bad = lab.nodes
    async with speaker_on(good) as sp_good, speaker_on(bad) as sp_bad:
        await sp_good.configure(bgp_config(good, password=key))
        await sp_bad.configure(bgp_config(bad, password="wrong"))
        await sp_good.announce({VIP})
        await sp_bad.announce({VIP})
        await async_wait_until(lambda: established(sp_good), 20, "session with the right key")
        await async_wait_until(
            lambda: lab.bird.kernel_next_hops(VIP) == {good.addr()}, 10, "route via good node"
        )
        # The wrong key: the router's kernel drops the segments. Wait until it has.
        await async_wait_until(
            lambda: md5_failures(lab.router) > 0, 20, "router counts MD5 failures"
        )
        assert not established(sp_bad)
        assert lab.bird.bgp_next_hops(VIP) == {good.addr()}


def md5_failures(host: Host) -> int:
    out = host.run(["nstat", "-az", "TcpExtTCPMD5Failure", "TcpExtTCPMD5Unexpected"])
    return sum(int(line.split()[1]) for line in out.splitlines()[1:] if line.strip())


async def test_graceful_restart_keeps_routes(topo: Topology, tmp_path: Path) -> None:
    lab = build(topo, tmp_path, 1)
    node = lab.nodes[0]
    cfg = bgp_config(node, graceful_restart=True, graceful_restart_time_seconds=60)
    async with speaker_on(node) as sp:
        await sp.configure(cfg)
        await sp.announce({VIP})
        await async_wait_until(lambda: lab.bird.kernel_next_hops(VIP), 20, "route")
        await sp.stop(graceful=True)  # the agent restarts: no NOTIFICATION
    await async_wait_until(lambda: not lab.bird.established("n1"), 10, "old session gone")
    # The router keeps the route (stale) while the node restarts.
    assert lab.bird.kernel_next_hops(VIP) == {node.addr()}
    assert "graceful restart active" in lab.bird.protocol_detail("n1")

    gaps = 0

    async def watch() -> None:
        nonlocal gaps
        while True:
            if not await asyncio.to_thread(lab.bird.kernel_next_hops, VIP):
                gaps += 1
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    async with speaker_on(node) as sp2:
        try:
            await sp2.configure(cfg)
            await sp2.announce({VIP})
            await async_wait_until(lambda: established(sp2), 30, "new session")
            # Our End-of-RIB ends the router's graceful restart: the route is fresh again.
            await async_wait_until(
                lambda: (
                    lab.bird.established("n1")
                    and "graceful restart active" not in lab.bird.protocol_detail("n1")
                ),
                10,
                "graceful restart completed",
            )
            assert lab.bird.kernel_next_hops(VIP) == {node.addr()}
        finally:
            watcher.cancel()
    assert gaps == 0, "the router dropped the route during a graceful restart"

    # Without graceful restart the router drops the route when the session ends.
    async with speaker_on(node) as sp3:
        await sp3.configure(bgp_config(node))
        await sp3.announce({VIP})
        await async_wait_until(lambda: lab.bird.established("n1"), 30, "session")
        await sp3.stop(graceful=True)
    await async_wait_until(lambda: not lab.bird.kernel_next_hops(VIP), 10, "route dropped")


async def test_peers_change_at_runtime(topo: Topology, tmp_path: Path) -> None:
    lan = topo.bridge("lan")
    r1, r2 = topo.host("r1"), topo.host("r2")
    topo.link(r1, lan, "10.98.0.1/24")
    topo.link(r2, lan, "10.98.0.2/24")
    node = topo.host("n1")
    topo.link(node, lan, "10.98.0.11/24")
    birds = []
    for i, r in enumerate((r1, r2)):
        b = Bird(
            r, tmp_path / f"bird{i}", r.addr(), ROUTER_ASN, [BirdPeer("n1", node.addr(), NODE_ASN)]
        )
        b.start()
        birds.append(b)
    p1 = pb.BGPPeer(name="r1", address=r1.addr(), asn=ROUTER_ASN)
    p2 = pb.BGPPeer(name="r2", address=r2.addr(), asn=ROUTER_ASN)
    async with speaker_on(node) as sp:
        await sp.configure(bgp_config(node, peers=(p1,)))
        await sp.announce({VIP})
        await async_wait_until(lambda: established(sp, "r1"), 20, "r1 up")
        await async_wait_until(lambda: birds[0].bgp_next_hops(VIP), 10, "VIP at r1")
        reconfigured = time.time()  # a reset of r1's session would start after this

        # Add r2: it comes up with the VIP; r1's session is not touched.
        await sp.configure(bgp_config(node, (VIP, VIP2), peers=(p1, p2)))
        await async_wait_until(lambda: established(sp, "r2"), 20, "r2 up")
        await async_wait_until(lambda: birds[1].bgp_next_hops(VIP), 10, "VIP at r2")
        assert birds[0].established_before("n1", reconfigured), "r1's session was reset"

        # A route change after the reload reaches both.
        await sp.announce({VIP, VIP2})
        await async_wait_until(
            lambda: all(b.bgp_next_hops(VIP2) for b in birds), 10, "VIP2 at both"
        )

        # Change r2's hold time: r2 re-establishes, r1 still untouched.
        p2b = pb.BGPPeer(name="r2", address=r2.addr(), asn=ROUTER_ASN, hold_time_seconds=9)
        await sp.configure(bgp_config(node, (VIP, VIP2), peers=(p1, p2b)))
        await async_wait_until(lambda: "hold" in bird_hold(birds[1]), 20, "r2 renegotiated")
        await async_wait_until(lambda: established(sp, "r2"), 20, "r2 up again")
        await async_wait_until(lambda: birds[1].bgp_next_hops(VIP2), 10, "VIP2 at r2 again")
        assert birds[0].established_before("n1", reconfigured), "r1's session was reset"

        # Remove r1: that session closes and sessions() forgets it.
        await sp.configure(bgp_config(node, (VIP, VIP2), peers=(p2b,)))
        await async_wait_until(lambda: not birds[0].established("n1"), 15, "r1 closed")
        assert [s.peer for s in sp.sessions()] == ["r2"]
        assert birds[1].bgp_next_hops(VIP) and birds[1].bgp_next_hops(VIP2)


def bird_hold(bird: Bird) -> str:
    out = bird.birdc("show", "protocols", "all", "n1", check=False)
    return "hold" if "Hold timer:" in out and "/9" in out else ""


async def test_exabgp_dies_and_is_restarted(topo: Topology, tmp_path: Path) -> None:
    lab = build(topo, tmp_path, 1)
    node = lab.nodes[0]
    async with speaker_on(node) as sp:
        await sp.configure(bgp_config(node, (VIP, VIP2)))
        await sp.announce({VIP})
        await async_wait_until(lambda: established(sp), 20, "session")
        pid = sp._proc.pid  # type: ignore[union-attr]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await async_wait_until(lambda: not established(sp), 10, "speaker noticed")
        # A change while ExaBGP is down is not lost.
        await sp.announce({VIP, VIP2})
        await async_wait_until(lambda: established(sp), 30, "restarted and re-established")
        await async_wait_until(
            lambda: lab.bird.bgp_next_hops(VIP) and lab.bird.bgp_next_hops(VIP2), 10, "routes"
        )
        assert sp._proc is not None and sp._proc.pid != pid


async def test_drain_withdraws_then_waits(topo: Topology, tmp_path: Path) -> None:
    lab = build(topo, tmp_path, 1)
    node = lab.nodes[0]
    async with speaker_on(node) as sp:
        await sp.configure(bgp_config(node, (VIP, VIP2)))
        await sp.announce({VIP})
        await async_wait_until(lambda: lab.bird.kernel_next_hops(VIP), 20, "route")
        drain = asyncio.create_task(sp.drain(grace_seconds=30))
        # The route leaves the router while the drain is still in its grace period.
        await async_wait_until(lambda: not lab.bird.kernel_next_hops(VIP), 10, "withdrawn")
        assert not drain.done() and sp.draining
        await sp.announce({VIP, VIP2})  # remembered, not announced while draining
        async with asyncio.timeout(10):
            await sp.settled()
        assert sp.announced() == [] and not lab.bird.bgp_next_hops(VIP2)
        drain.cancel()
        sp.resume()
        await async_wait_until(
            lambda: lab.bird.kernel_next_hops(VIP) and lab.bird.kernel_next_hops(VIP2),
            10,
            "both announced again",
        )
        async with asyncio.timeout(10):
            await sp.settled()
        assert sp.announced() == [VIP, VIP2]
