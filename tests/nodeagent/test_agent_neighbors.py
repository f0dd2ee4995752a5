"""Backend MAC resolution on the uplink, against a real kernel neighbour table."""

from __future__ import annotations

import asyncio

import pytest
from weir.lab.netns import Topology, cleanup_prefix
from weir.nodeagent.neighbors import NeighborResolver, mac_bytes

from tests.nodeagent.segment import lb_segment
from tests.requirements import IPROUTE, requires, root

pytestmark = [
    pytest.mark.root,
    requires(root, IPROUTE),
]

PREFIX = "wagn"


@pytest.fixture
def topo():
    cleanup_prefix(PREFIX)
    with Topology(PREFIX) as t:
        yield t, *lb_segment(t, "10.77.0")


async def test_resolves_present_and_reports_missing_and_routed(topo) -> None:
    _, lb, b1, b2 = topo
    async with NeighborResolver("eth0", timeout=0.5, netns=lb.name) as res:
        out = await res.resolve(["10.77.0.11", "10.77.0.12", "10.77.0.13", "10.88.0.5"])
        assert out.macs == {
            "10.77.0.11": mac_bytes(b1.mac("eth0")),
            "10.77.0.12": mac_bytes(b2.mac("eth0")),
        }
        assert set(out.errors) == {"10.77.0.13", "10.88.0.5"}
        assert out.offlink == {"10.88.0.5"}
        assert "no ARP/ND answer" in out.errors["10.77.0.13"]
        assert "not in a subnet of eth0 (10.77.0.0/24)" in out.errors["10.88.0.5"]
        # A second call is answered from the table.
        again = await res.resolve(["10.77.0.11"])
        assert again.macs == {"10.77.0.11": mac_bytes(b1.mac("eth0"))} and not again.errors


async def test_missing_interface_is_a_clear_error(topo) -> None:
    _, lb, _, _ = topo
    async with NeighborResolver("nope0", netns=lb.name) as res:
        with pytest.raises(Exception, match="interface nope0 not found"):
            await res.resolve(["10.77.0.11"])


async def test_reprobe_notices_a_changed_mac(topo) -> None:
    _, lb, b1, _ = topo
    # Re-verify stale entries at once, and give up on the old MAC after 0.3 s, not 3 s.
    lb.run(["sysctl", "-qw", "net.ipv4.neigh.eth0.delay_first_probe_time=0"])
    lb.run(["sysctl", "-qw", "net.ipv4.neigh.eth0.retrans_time_ms=100"])
    async with NeighborResolver("eth0", timeout=0.5, netns=lb.name) as res:
        first = await res.resolve(["10.77.0.11"])
        assert first.macs["10.77.0.11"] == mac_bytes(b1.mac("eth0"))
        b1.run(["ip", "link", "set", "eth0", "address", "02:00:00:77:00:11"])
        lb.run(["ip", "neigh", "change", "10.77.0.11", "dev", "eth0", "nud", "stale"])
        # The kernel re-verifies in the background: bounded wait for the new MAC to show.
        for _ in range(100):
            out = await res.resolve(["10.77.0.11"], reprobe=True)
            if out.macs.get("10.77.0.11") == mac_bytes("02:00:00:77:00:11"):
                break
            await asyncio.sleep(0.05)
        assert out.macs["10.77.0.11"] == mac_bytes("02:00:00:77:00:11")
