"""The next hop toward an encapsulated backend's node, against a real routing table and
neighbour table: a node on the uplink's segment is its own next hop, a node behind a router
is reached through the router's MAC, this node itself through its own MAC; a node routed
elsewhere, or not at all, is a clear error. A route that moves shows up as a changed MAC.

    n1 10.79.0.21 ─┐                                  side0 10.79.9.1/24 (a second link)
    lb 10.79.0.11 ─┤ bridge ── router 10.79.0.1 | 10.79.1.1 ── n2 10.79.1.5
"""

from __future__ import annotations

import pytest
from weir.lab.netns import Topology, cleanup_prefix
from weir.nodeagent.backend_macs import BackendMacs
from weir.nodeagent.neighbors import NeighborResolver
from weir.nodeagent.service import Backend, Frontend, Service
from weir.nodeagent.uplink import Hop, Uplink, mac_bytes

from tests.requirements import IPROUTE, requires, root

pytestmark = [pytest.mark.root, requires(root, IPROUTE)]

PREFIX = "wanh"
LB, N1, N2, ROUTER = "10.79.0.11", "10.79.0.21", "10.79.1.5", "10.79.0.1"


@pytest.fixture
def net():
    cleanup_prefix(PREFIX)
    with Topology(PREFIX) as t:
        br = t.bridge("br")
        lb, n1 = t.host("lb"), t.host("n1")
        router, n2 = t.host("router", forwarding=True), t.host("n2")
        t.link(lb, br, f"{LB}/24")
        t.link(n1, br, f"{N1}/24")
        t.link(router, br, f"{ROUTER}/24")
        t.wire(router, n2, "10.79.1.1/24", f"{N2}/24", a_iface="eth1", b_iface="eth0")
        lb.run(["ip", "route", "add", "10.79.1.0/24", "via", ROUTER])
        lb.run(["ip", "link", "add", "side0", "type", "veth", "peer", "name", "side1"])
        lb.run(["ip", "addr", "add", "10.79.9.1/24", "dev", "side0"])
        lb.run(["ip", "link", "set", "side0", "up"])
        yield {h.name.removeprefix(f"{PREFIX}-"): h for h in t.hosts}


async def test_next_hops_on_link_routed_local_and_refused(net) -> None:
    async with Uplink("eth0", netns=net["lb"].name) as uplink:
        routes = await uplink.next_hops([N1, N2, LB, "10.79.9.5", "10.200.0.1"])
        info = await uplink.info()
    assert routes.hops == {N1: Hop(N1), N2: Hop(ROUTER), LB: Hop(LB, local=True)}
    assert "10.79.9.5 is routed through side0, not eth0" in routes.errors["10.79.9.5"]
    assert routes.errors["10.200.0.1"].startswith("no route to 10.200.0.1")
    assert info.mtu == 1500 and info.mac == mac_bytes(net["lb"].mac("eth0"))
    assert info.owns(LB) and not info.owns(N1)


def pods() -> Service:
    backends = (
        Backend("10.244.1.10", 8080, forwarding="encap", node=N1),
        Backend("10.244.2.10", 8080, forwarding="encap", node=N2),
        Backend("10.244.3.10", 8080, forwarding="encap", node=LB),
    )
    return Service(Frontend("192.0.2.10:80/TCP", "192.0.2.10", 80, 6), 251, 0, backends)


async def test_encapsulated_backends_get_their_next_hops_mac_and_follow_route_changes(net):
    lb = net["lb"].name
    mac = {name: mac_bytes(h.mac("eth0")) for name, h in net.items()}
    svc = pods()
    async with (
        Uplink("eth0", netns=lb) as uplink,
        NeighborResolver("eth0", timeout=1.0, netns=lb) as neighbours,
    ):
        macs = BackendMacs(neighbours, uplink)
        reach = macs.reachable(svc, await macs.resolve(svc.backends))
        assert not reach.excluded
        assert {t.address: t.mac for t in reach.targets} == {
            "10.244.1.10": mac["n1"],  # on the segment: its own MAC
            "10.244.2.10": mac["router"],  # behind the router
            "10.244.3.10": mac["lb"],  # this node: up its own stack
        }
        assert all(t.node for t in reach.targets)
        macs.programmed(svc.id, reach)
        assert macs.moved(await macs.resolve(svc.backends, reprobe=True)) == []
        # n2's subnet is now reached through n1 (say, the fabric moved it): a new next hop.
        net["lb"].run(["ip", "route", "replace", "10.79.1.0/24", "via", N1])
        found = await macs.resolve(macs.in_use(), reprobe=True)
        assert macs.moved(found) == [svc.id]
        moved = {t.address: t.mac for t in macs.reachable(svc, found).targets}
        assert moved["10.244.2.10"] == mac["n1"]
