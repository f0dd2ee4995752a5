"""What a router sees of the speaker's BGP details, read from BIRD 2 (a router and a node in
namespaces, tests/bgp/support.py): route refresh negotiated and answered, keepalives at
BGPPeer.spec.keepaliveTime, and every community spelling a BGPAdvertisement accepts
arriving as the community it names.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from weir.common.pb import pb
from weir.controller.core.crds import parse_bgp_advertisement
from weir.lab.bird import Bird
from weir.lab.netns import Topology
from weir.lab.wait import async_wait_until

from tests.bgp.support import NODE_ASN, ROUTER, ROUTER_ASN, VIP, build, speaker_on

pytestmark = [pytest.mark.root, pytest.mark.slow]

HOLD = 90
KEEPALIVE = 2


def import_updates(detail: str) -> int:
    """Updates BIRD received from the peer (`Import updates:` of `show protocols all`)."""
    m = re.search(r"Import updates:\s+(\d+)", detail)
    assert m is not None, detail
    return int(m.group(1))


async def test_route_refresh_and_keepalive_seen_by_the_router(
    topo: Topology, tmp_path: Path
) -> None:
    lab = build(topo, tmp_path, 1, hold_time=HOLD)
    node = lab.nodes[0]
    peer = pb.BGPPeer(
        name="router", address=ROUTER, asn=ROUTER_ASN, hold_time_seconds=HOLD,
        keepalive_time_seconds=KEEPALIVE,
    )  # fmt: skip
    async with speaker_on(node) as sp:
        await sp.configure(
            pb.BGPConfig(
                local_asn=NODE_ASN, router_id=node.addr(), peers=[peer],
                advertisements=[pb.Advertisement(prefix=VIP)],
            )
        )  # fmt: skip
        await sp.announce({VIP})
        await async_wait_until(lambda: lab.bird.bgp_next_hops(VIP), 20, "the route at BIRD")
        detail = lab.bird.protocol_detail("n1")
        theirs = detail.split("Neighbor capabilities", 1)[1].split("Session:", 1)[0]
        assert "Route refresh" in theirs, detail

        # The router asks for the routes again (`clear bgp soft in`, BIRD's `reload in`):
        # the session stays up and the route comes again.
        since = time.time()
        before = import_updates(detail)
        lab.bird.birdc("reload", "in", "n1")
        await async_wait_until(
            lambda: import_updates(lab.bird.protocol_detail("n1")) > before, 5, "route resent"
        )
        assert lab.bird.established_before("n1", since)
        assert lab.bird.bgp_next_hops(VIP) == {node.addr()}

        # Keepalives every 2 s, not every 30 (a third of the hold time): each sets the
        # router's hold timer back (to the hold time less up to 25%: BIRD jitters it, RFC
        # 4271 10), where without a message it runs down with the clock.
        resets = 0
        before = await hold_timer_now(lab.bird)
        for _ in range(28):
            await asyncio.sleep(0.25)
            now = await hold_timer_now(lab.bird)
            resets += abs((before[1] - now[1]) - (now[0] - before[0])) > 0.3
            before = now
        assert resets >= 3, resets  # in 7 s


async def hold_timer_now(bird: Bird) -> tuple[float, float]:
    """(when, seconds left on the hold timer of n1, whose hold time must be HOLD)."""
    t0 = time.monotonic()
    left, hold = await asyncio.to_thread(bird.hold_timer, "n1")
    assert hold == HOLD
    return (t0 + time.monotonic()) / 2, left


# Every spelling BGPAdvertisement.spec.communities accepts, and the community the router
# must get for it (well-known names travel as their numbers, 65535:x).
SPELLINGS = {
    "65000:100": "65000:100",
    "065000:00100": "65000:100",
    "4200000000:1:2": "4200000000:1:2",
    "no-export": "65535:65281",
    "No-Export": "65535:65281",
    "no-advertise": "65535:65282",
    "no-export-subconfed": "65535:65283",
    "no-peer": "65535:65284",
    "nopeer": "65535:65284",
    "blackhole": "65535:666",
    "graceful-shutdown": "65535:0",
}


def advertisement(prefix: str, spelling: str) -> pb.Advertisement:
    """What the controller makes of a BGPAdvertisement with this one community."""
    obj = {
        "apiVersion": "weir.dev/v1alpha1",
        "kind": "BGPAdvertisement",
        "metadata": {"name": "ad"},
        "spec": {"communities": [spelling]},
    }
    parsed = parse_bgp_advertisement(obj)
    return pb.Advertisement(prefix=prefix, communities=parsed.communities, sources=["ad"])


async def test_every_community_spelling_reaches_the_router(topo: Topology, tmp_path: Path) -> None:
    lab = build(topo, tmp_path, 1)
    node = lab.nodes[0]
    prefixes = {f"192.0.2.{100 + i}/32": s for i, s in enumerate(SPELLINGS)}
    async with speaker_on(node) as sp:
        await sp.configure(
            pb.BGPConfig(
                local_asn=NODE_ASN, router_id=node.addr(),
                peers=[pb.BGPPeer(name="router", address=ROUTER, asn=ROUTER_ASN)],
                advertisements=[advertisement(p, s) for p, s in prefixes.items()],
            )
        )  # fmt: skip
        await sp.announce(set(prefixes))
        last = sorted(prefixes)[-1]
        await async_wait_until(lambda: lab.bird.bgp_next_hops(last), 20, "the routes at BIRD")
        await async_wait_until(lambda: sp.announced() == sorted(prefixes), 10, "all announced")
        got = {s: lab.bird.communities(p) for p, s in prefixes.items()}
        assert got == {s: {c} for s, c in SPELLINGS.items()}
        assert sp.errors() == []
