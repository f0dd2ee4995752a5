"""bpf/weir_hc.c through nodeagent.dataplane.hcpath: a check socket's packets leave the uplink
to the backend's MAC (L2 DSR, still addressed to the VIP) or encapsulated toward the
backend's node with the pod in the Weir header; unmarked packets pass untouched, and a mark
without a path is dropped and counted (docs/HEALTH.md)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from weir.lab.netns import Host, Topology, cleanup_prefix
from weir.nodeagent.dataplane.hcpath import Encap, HcPath, HcRoute, mark

from tests.requirements import requires, root

pytestmark = [pytest.mark.root, requires(root)]

PREFIX = "whp"
GATEWAY_MAC = "02:00:00:00:00:fe"
BACKEND_MAC = b"\x02\x00\x00\x00\x00\x07"
NODE_HOP_MAC = b"\x02\x00\x00\x00\x00\x08"
VIP = "192.0.2.10"


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    cleanup_prefix(PREFIX)
    with Topology(PREFIX) as topo:
        h = topo.host("lb")
        h.veth("up0", "peer0")
        h.add_address("10.9.0.1/24", "up0")
        # The VIP is routed out of the uplink, as on an LB node: via a gateway.
        h.run(["ip", "neigh", "add", "10.9.0.254", "lladdr", GATEWAY_MAC, "dev", "up0"])
        h.run(["ip", "route", "add", "default", "via", "10.9.0.254"])
        yield h


def _syns(host: Host, marks: list[int]) -> list[Ether]:
    """The frames the uplink's peer receives after one SYN from a socket with each mark."""
    with host.entered():
        capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        capture.bind(("peer0", 0))
        capture.settimeout(0.5)
        socks = []
        for m in marks:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, m)
            socks.append(s)
            s.connect_ex((VIP, 80))
    frames = []
    try:
        while True:
            frames.append(Ether(capture.recv(65535)))
    except TimeoutError:
        pass
    finally:
        capture.close()
        for s in socks:
            s.close()
    return frames


def test_checks_take_the_backends_path(host: Host) -> None:
    with host.entered():
        path = HcPath.open("up0", capacity=16)
    try:
        encap = Encap("10.9.0.1", "10.9.0.5", "10.244.1.2", 8080, 6093)
        path.set({1: HcRoute(BACKEND_MAC), 2: HcRoute(NODE_HOP_MAC, encap)})
        frames = _syns(host, [mark(1), mark(2), mark(3), 0])
        l2 = [f for f in frames if f.dst == "02:00:00:00:00:07"]
        assert l2 and l2[0][IP].dst == VIP and l2[0][TCP].dport == 80  # still to the VIP
        enc = [f for f in frames if f.dst == "02:00:00:00:00:08"]
        assert enc, frames
        outer = enc[0][IP]
        assert (outer.src, outer.dst, outer[UDP].dport) == ("10.9.0.1", "10.9.0.5", 6093)
        version, _, port, addr = struct.unpack("!BBH4s", bytes(outer[UDP].payload)[:8])
        assert (version, port, socket.inet_ntoa(addr)) == (1, 8080, "10.244.1.2")
        inner = IP(bytes(outer[UDP].payload)[8:])
        assert (inner.dst, inner[TCP].dport, inner[TCP].flags) == (VIP, 80, "S")
        # Unmarked: untouched, to the gateway. Mark 3 has no path: never leaves.
        to_gateway = [f for f in frames if f.dst == GATEWAY_MAC and TCP in f]
        assert len({f[TCP].sport for f in to_gateway}) == 1
        counters = path.counters()
        assert counters["l2"] >= 1 and counters["encap"] >= 1 and counters["no_path"] >= 1
        assert counters["bad"] == 0
    finally:
        with host.entered():
            path.close()
