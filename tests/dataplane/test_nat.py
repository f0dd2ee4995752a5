"""The backend node's tc programs (bpf/weir_tc.c), run in the kernel with
BPF_PROG_TEST_RUN on packets built and checked by scapy: decapsulation and translation to
the pod, replies translated back with the MSS clamped, ICMP errors in both directions, and
everything refused that the load balancers did not send."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, TCPerror, UDPerror, defragment, fragment
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from weir.nodeagent.dataplane import bpfsys
from weir.nodeagent.dataplane.nat import LocalBackend, NatConfig, NatDataplane, NatSettings

from .conftest import Node, new_node
from .support import elements, in_netns, reset_nat

pytestmark = pytest.mark.root

TC_ACT_SHOT = 2
TC_ACT_UNSPEC = 0xFFFFFFFF  # -1 as the test run reports it
NODE = "10.1.0.5"
LB = "10.0.0.11"
VIP = "192.0.2.10"
POD = "10.244.1.7"
CLIENT = "172.16.5.9"
PORT = 6093
WEB = LocalBackend(VIP, 80, 6, POD, 8080)
DNS = LocalBackend(VIP, 53, 17, POD, 5353)


@dataclass
class BackendNode:
    dp: NatDataplane
    ingress: int
    egress: int

    def run(self, fd: int, pkt: Packet) -> tuple[int, Packet]:
        out = bpfsys.test_run(fd, bytes(pkt), out_size=len(bytes(pkt)) + 64)
        return out.retval, Ether(out.data_out)

    def counters(self) -> dict[str, int]:
        events, drops = self.dp.counters()
        return {c.name: c.packets for c in (*events, *drops)}


@contextlib.contextmanager
def backend_node(node: Node) -> Iterator[BackendNode]:
    """The backend role opened on node; detached and its pins removed afterwards."""
    with in_netns(node.netns):
        dp = NatDataplane.open(NatConfig(interface=node.iface, bpffs=node.bpffs))
        fds = [bpfsys.obj_get(str(node.bpffs / p)) for p in ("prog_tc_ingress", "prog_tc_egress")]
    try:
        yield BackendNode(dp, *fds)
    finally:
        for fd in fds:
            os.close(fd)
        with in_netns(node.netns):
            dp.detach()


@contextlib.contextmanager
def configured(node: Node, backend: BackendNode) -> Iterator[BackendNode]:
    """The test's settings; the test runs in the node's namespace."""
    with in_netns(node.netns):
        backend.dp.configure(NatSettings(NODE, PORT, mtu=1500))
        backend.dp.set_lb_nodes([LB])
        backend.dp.set_local_backends([WEB, DNS])
        yield backend


@pytest.fixture(scope="module")
def shared_nat(privileged: None) -> Iterator[tuple[Node, BackendNode]]:
    with new_node() as node, backend_node(node) as backend:
        yield node, backend


@pytest.fixture
def nat(shared_nat: tuple[Node, BackendNode]) -> Iterator[BackendNode]:
    """The module's backend role, compiled once, as a fresh open leaves it (reset_nat)."""
    node, backend = shared_nat
    reset_nat(backend.dp)
    with configured(node, backend) as b:
        yield b


@pytest.fixture
def fresh_nat(node: Node) -> Iterator[BackendNode]:
    """The backend role of this test alone, on its own node."""
    with backend_node(node) as backend, configured(node, backend) as b:
        yield b


def weir_header(addr: str, port: int, version: int = 1, flags: int = 0) -> bytes:
    return struct.pack("!BBH4s", version, flags, port, socket.inet_aton(addr))


def encapsulated(inner: Packet, *, src: str = LB, header: bytes | None = None) -> Packet:
    hdr = header if header is not None else weir_header(POD, 8080)
    return (
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src=src, dst=NODE, flags="DF")
        / UDP(sport=0xC123, dport=PORT, chksum=0)
        / Raw(hdr)
        / inner
    )


def syn(sport: int = 40000, dport: int = 80) -> Packet:
    return IP(src=CLIENT, dst=VIP, flags="DF") / TCP(sport=sport, dport=dport, flags="S", seq=7)


def checksums_valid(pkt: Packet) -> bool:
    """Recompute every checksum scapy knows and compare with what the packet carries. The
    L4 checksum inside an ICMP error covers a segment it quotes only 8 bytes of: nobody
    can verify it, so it is left out."""
    rebuilt = pkt.copy()
    for found in rebuilt.iterpayloads():
        if isinstance(found, TCPerror | UDPerror):
            continue
        if isinstance(found, IP | TCP | UDP | ICMP) and not (
            isinstance(found, UDP) and found.chksum == 0
        ):
            del found.chksum
    return bytes(Ether(bytes(rebuilt))) == bytes(pkt)


def test_decapsulates_and_translates_to_the_pod(nat: BackendNode) -> None:
    verdict, out = nat.run(nat.ingress, encapsulated(syn()))
    assert verdict == TC_ACT_UNSPEC
    ip = out[IP]
    assert (ip.src, ip.dst, ip[TCP].sport, ip[TCP].dport) == (CLIENT, POD, 40000, 8080)
    assert ip[TCP].flags == "S" and ip[TCP].seq == 7 and ip.flags == "DF"
    assert not ip.payload[TCP].payload or len(bytes(ip)) == ip.len
    assert checksums_valid(out)
    flows = nat.dp.flows()
    assert [(f.address, f.port, f.client, f.cport, f.vip, f.vport) for f in flows] == [
        (POD, 8080, CLIENT, 40000, VIP, 80)
    ]
    assert nat.counters()["decap"] == 1


def test_reply_goes_back_as_the_vip_with_the_mss_clamped(nat: BackendNode) -> None:
    nat.run(nat.ingress, encapsulated(syn()))
    reply = (
        Ether()
        / IP(src=POD, dst=CLIENT)
        / TCP(sport=8080, dport=40000, flags="SA", options=[("MSS", 1460), ("NOP", None)])
    )
    verdict, out = nat.run(nat.egress, reply)
    assert verdict == TC_ACT_UNSPEC
    assert (out[IP].src, out[TCP].sport, out[IP].dst, out[TCP].dport) == (VIP, 80, CLIENT, 40000)
    # 1500 - 36 (encapsulation) - 40 (IPv4 + TCP): the client's segments fit, encapsulated.
    assert dict(out[TCP].options)["MSS"] == 1424
    assert checksums_valid(out)
    assert nat.counters()["reverse"] == 1 and nat.counters()["mss_clamped"] == 1
    small = Ether() / IP(src=POD, dst=CLIENT) / TCP(sport=8080, dport=40000, flags="SA",
                                                     options=[("MSS", 1200)])  # fmt: skip
    _, out = nat.run(nat.egress, small)
    assert dict(out[TCP].options)["MSS"] == 1200 and checksums_valid(out)


def test_udp_without_checksum_keeps_none(nat: BackendNode) -> None:
    query = IP(src=CLIENT, dst=VIP) / UDP(sport=5000, dport=53, chksum=0) / Raw(b"q" * 20)
    _, out = nat.run(nat.ingress, encapsulated(query, header=weir_header(POD, 5353)))
    assert (out[IP].dst, out[UDP].dport, out[UDP].chksum) == (POD, 5353, 0)
    answer = Ether() / IP(src=POD, dst=CLIENT) / UDP(sport=5353, dport=5000) / Raw(b"a" * 9)
    _, out = nat.run(nat.egress, answer)
    assert (out[IP].src, out[UDP].sport) == (VIP, 53) and checksums_valid(out)


@pytest.mark.parametrize(
    ("pkt", "reason"),
    [
        (encapsulated(syn(), src="10.0.0.99"), "not_lb"),
        (encapsulated(syn(), header=weir_header(POD, 8080, version=2)), "header"),
        (encapsulated(syn(), header=weir_header(POD, 8080, flags=1)), "header"),
        (encapsulated(syn(), header=weir_header(POD, 22)), "unknown"),  # another port
        (encapsulated(syn(), header=weir_header("10.244.1.8", 8080)), "unknown"),  # another pod
        (encapsulated(syn(dport=81)), "unknown"),  # a VIP port without that pod
        (encapsulated(IP(src=CLIENT, dst=VIP) / ICMP(type=8)), "header"),  # not an error
    ],
)
def test_refused_and_counted(nat: BackendNode, pkt: Packet, reason: str) -> None:
    verdict, _ = nat.run(nat.ingress, pkt)
    assert verdict == TC_ACT_SHOT
    counts = nat.counters()
    assert counts[reason] == 1
    assert sum(counts[r] for r in ("not_lb", "header", "unknown", "decap_failed")) == 1
    assert nat.dp.flows() == []


def test_lengths_must_agree(nat: BackendNode) -> None:
    pkt = Ether(bytes(encapsulated(syn())) + b"\0" * 4)
    pkt[IP].len += 4  # outer says more than inner
    del pkt[IP].chksum
    out = bpfsys.test_run(nat.ingress, bytes(pkt))
    assert out.retval == TC_ACT_SHOT and nat.counters()["header"] == 1


@pytest.mark.parametrize(
    "pkt",
    [
        Ether() / IP(src=LB, dst=NODE) / UDP(sport=1, dport=PORT + 1) / Raw(b"x" * 30),
        Ether() / IP(src=LB, dst="10.1.0.6") / UDP(sport=1, dport=PORT) / Raw(b"x" * 30),
        Ether() / IP(src=CLIENT, dst=POD) / TCP(sport=1, dport=8080),
        Ether() / IP(src=POD, dst=CLIENT) / TCP(sport=8081, dport=40000, flags="SA"),
        Ether() / IP(src="10.9.9.9", dst=CLIENT) / ICMP(type=3, code=3),
    ],
)
def test_other_traffic_passes_untouched(nat: BackendNode, pkt: Packet) -> None:
    for fd in (nat.ingress, nat.egress):
        verdict, out = nat.run(fd, pkt)
        assert verdict == TC_ACT_UNSPEC and bytes(out) == bytes(pkt)


def test_flows_outlive_their_endpoint(nat: BackendNode) -> None:
    """Established flows keep their pod after it leaves the endpoints (the load balancers'
    conntrack keeps sending them); new flows to it are refused."""
    nat.run(nat.ingress, encapsulated(syn(sport=40000)))
    nat.dp.set_local_backends([DNS])
    ack = IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="A")
    verdict, out = nat.run(nat.ingress, encapsulated(ack))
    assert verdict == TC_ACT_UNSPEC and out[IP].dst == POD
    verdict, _ = nat.run(nat.ingress, encapsulated(syn(sport=40001)))
    assert verdict == TC_ACT_SHOT and nat.counters()["unknown"] == 1
    reply = Ether() / IP(src=POD, dst=CLIENT) / TCP(sport=8080, dport=40000, flags="A")
    _, out = nat.run(nat.egress, reply)
    assert out[IP].src == VIP


def test_replies_without_a_flow_leave_untouched(nat: BackendNode) -> None:
    """The pod port also answers traffic that never came through Weir (a ClusterIP client,
    another pod): only replies of a flow this node translated become the VIP's."""
    reply = Ether() / IP(src=POD, dst=CLIENT) / TCP(sport=8080, dport=41000, flags="SA")
    verdict, out = nat.run(nat.egress, reply)
    assert verdict == TC_ACT_UNSPEC and bytes(out) == bytes(reply)
    assert nat.counters()["reverse"] == 0


def test_icmp_errors_are_translated_both_ways(nat: BackendNode) -> None:
    nat.run(nat.ingress, encapsulated(syn()))
    # The client's path cannot carry the pod's segment: the router tells the VIP, the load
    # balancer sends the error here, and the pod must see it about its own address/port.
    quoted = IP(src=VIP, dst=CLIENT, flags="DF") / TCP(sport=80, dport=40000, flags="A")
    error = IP(src="198.51.100.1", dst=VIP) / ICMP(type=3, code=4, nexthopmtu=1400) / quoted
    verdict, out = nat.run(nat.ingress, encapsulated(error))
    assert verdict == TC_ACT_UNSPEC
    assert out[IP].dst == POD
    inner = out[ICMP].payload
    ports = inner.payload
    assert (inner.src, inner.dst, ports.sport, ports.dport) == (POD, CLIENT, 8080, 40000)
    assert checksums_valid(out)
    # The pod answers a client's datagram with "port unreachable": the client must see it
    # about the VIP it sent to.
    query = IP(src=CLIENT, dst=VIP) / UDP(sport=5000, dport=53) / Raw(b"q")
    nat.run(nat.ingress, encapsulated(query, header=weir_header(POD, 5353)))
    quoted = IP(src=CLIENT, dst=POD) / UDP(sport=5000, dport=5353)
    unreach = Ether() / IP(src=POD, dst=CLIENT) / ICMP(type=3, code=3) / quoted
    _, out = nat.run(nat.egress, unreach)
    inner = out[ICMP].payload
    assert out[IP].src == VIP and (inner.dst, inner.payload.dport) == (VIP, 53)
    assert checksums_valid(out)


def test_adopted_after_a_restart(fresh_nat: BackendNode) -> None:
    """A new NatDataplane on the same pins keeps the maps, the flows and the attached
    programs (same code: not even replaced)."""
    nat = fresh_nat
    nat.run(nat.ingress, encapsulated(syn()))
    cfg = nat.dp.cfg
    before = bpfsys.tc_query(nat.dp.ifindex, bpfsys.BPF_TC_INGRESS, 0x5745, 1)
    nat.dp.close()
    nat.dp = NatDataplane.open(cfg)
    assert bpfsys.tc_query(nat.dp.ifindex, bpfsys.BPF_TC_INGRESS, 0x5745, 1) == before
    assert nat.dp.local_backends() == sorted([WEB, DNS])
    assert nat.dp.lb_nodes() == [LB]
    assert len(nat.dp.flows()) == 1
    nat.dp.set_local_backends([WEB])
    assert nat.dp.local_backends() == [WEB]


def test_fragments_are_translated_both_ways(nat: BackendNode) -> None:
    """A large datagram's fragments (only the first carries the ports) all reach the pod,
    and the pod's fragmented answer all leaves as the VIP, each reassembling into a datagram
    with a valid checksum; a later fragment whose first never came is dropped and counted."""
    query = IP(src=CLIENT, dst=VIP, id=4242) / UDP(sport=5000, dport=53) / Raw(b"q" * 1000)
    outs = []
    for piece in fragment(query, 400):
        verdict, out = nat.run(nat.ingress, encapsulated(piece, header=weir_header(POD, 5353)))
        assert verdict == TC_ACT_UNSPEC
        assert (out[IP].src, out[IP].dst, out[IP].id) == (CLIENT, POD, 4242)
        outs.append(out[IP])
    assert len(outs) == 3
    (whole,) = defragment(outs)
    assert (whole[UDP].sport, whole[UDP].dport) == (5000, 5353) and checksums_valid(Ether() / whole)
    answer = IP(src=POD, dst=CLIENT, id=99) / UDP(sport=5353, dport=5000) / Raw(b"a" * 1000)
    outs = []
    for piece in fragment(answer, 400):
        verdict, out = nat.run(nat.egress, Ether() / piece)
        assert verdict == TC_ACT_UNSPEC and out[IP].src == VIP
        outs.append(out[IP])
    (whole,) = defragment(outs)
    assert (whole[UDP].sport, whole[UDP].dport) == (53, 5000) and checksums_valid(Ether() / whole)
    orphan = IP(src=CLIENT, dst=VIP, id=7, frag=50) / Raw(b"x" * 40)
    verdict, _ = nat.run(nat.ingress, encapsulated(orphan, header=weir_header(POD, 5353)))
    assert verdict == TC_ACT_SHOT and nat.counters()["fragment"] == 1


def test_a_reset_backend_role_holds_what_a_fresh_one_holds(
    nat: BackendNode, fresh_nat: BackendNode
) -> None:
    nat.run(nat.ingress, encapsulated(syn()))  # a flow, its counters
    nat.run(nat.ingress, encapsulated(syn(), src="10.0.0.99"))  # a drop
    nat.dp.set_local_backends([WEB])  # a free index taken back
    assert elements(nat.dp.maps) != elements(fresh_nat.dp.maps)
    reset_nat(nat.dp)
    for plane in (nat, fresh_nat):
        plane.dp.configure(NatSettings(NODE, PORT, mtu=1400))
        plane.dp.set_lb_nodes([LB])
        plane.dp.set_local_backends([DNS, WEB])
    assert elements(nat.dp.maps) == elements(fresh_nat.dp.maps)
