"""The load-balancer side of forwarding to pods: XDP encapsulates toward the backend's node
(docs/FORWARDING.md), answers what cannot fit with ICMP, and sends ICMP errors about a
flow to the backend that owns it. Run in the kernel with BPF_PROG_TEST_RUN, packets
built and checked with scapy."""

from __future__ import annotations

import socket
import struct

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror, fragment
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw
from weir.nodeagent.dataplane import BackendTarget, Dataplane, Frontend, bpfsys
from weir.nodeagent.dataplane.inspection import ct_entries, nat_services, stats
from weir.nodeagent.maglev import backend_id, build_table

from .conftest import NODE_MAC
from .support import XDP_DROP, XDP_PASS, XDP_TX

SEED = 0x5EED
VIP = "10.0.0.10"
FE = Frontend(f"{VIP}:80/TCP", VIP, 80, 6, "maglev")
SELF = "10.88.0.11"  # this load-balancer node
NEXT_HOP = bytes.fromhex("02000000fe01")  # the router toward the backends' nodes
CLIENT_MAC = "02:00:00:00:cc:01"
PORT = 6093
PODS = [
    BackendTarget("10.244.1.10", 8080, NEXT_HOP, "10.77.1.1"),
    BackendTarget("10.244.1.11", 8080, NEXT_HOP, "10.77.1.1"),
    BackendTarget("10.244.2.10", 8080, NEXT_HOP, "10.77.2.1"),
    BackendTarget("10.244.3.10", 8080, NEXT_HOP, SELF),  # a pod on this very node
]


def table(bes: list[BackendTarget]) -> np.ndarray:
    return build_table([backend_id(b.address, b.port, "TCP") for b in bes], 251, seed=SEED)


@pytest.fixture
def lb(dp: Dataplane) -> Dataplane:
    dp.set_seed(SEED)
    dp.set_encap(SELF, PORT, 1500)
    dp.apply_service(FE, PODS, table(PODS))
    return dp


def client_packet(sport: int = 40000, *, size: int = 0, df: bool = True, vlan: int = 0) -> Packet:
    l2 = Ether(src=CLIENT_MAC, dst=NODE_MAC.hex(":"))
    if vlan:
        l2 = l2 / Dot1Q(vlan=vlan)
    return (
        l2
        / IP(src="172.16.0.1", dst=VIP, id=4242, tos=0x28, flags="DF" if df else 0)
        / TCP(sport=sport, dport=80, flags="S")
        / Raw(b"x" * size)
    )


def run(dp: Dataplane, pkt: Packet) -> tuple[int, Packet]:
    out = bpfsys.test_run(dp.xdp_prog_fd, bytes(pkt), out_size=len(bytes(pkt)) + 128)
    return out.retval, Ether(out.data_out)


def pod_of(frame: Packet) -> BackendTarget:
    hdr = bytes(frame[UDP].payload)[:8]
    version, flags, port, addr = struct.unpack("!BBH4s", hdr)
    assert (version, flags) == (1, 0)
    found = [p for p in PODS if (p.address, p.port) == (socket.inet_ntoa(addr), port)]
    assert len(found) == 1, f"header names no pod of the service: {hdr.hex()}"
    return found[0]


def checksums_valid(pkt: Packet) -> bool:
    rebuilt = pkt.copy()
    for found in rebuilt.iterpayloads():
        if isinstance(found, TCPerror | UDPerror):
            continue  # only 8 bytes of that segment are quoted: nobody can verify it
        if isinstance(found, IP | TCP | ICMP) or (isinstance(found, UDP) and found.chksum):
            del found.chksum
    return bytes(Ether(bytes(rebuilt))) == bytes(pkt)


def test_encapsulated_to_the_pods_node(lb: Dataplane) -> None:
    sent = client_packet()
    action, out = run(lb, sent)
    pod = pod_of(out)
    assert action == (XDP_PASS if pod.node == SELF else XDP_TX)
    assert (out[Ether].dst, out[Ether].src) == (NEXT_HOP.hex(":"), NODE_MAC.hex(":"))
    outer = out[IP]
    assert (outer.src, outer.dst, outer.proto, outer.ttl) == (SELF, pod.node, 17, 64)
    assert (outer.id, outer.flags, outer.tos) == (4242, "DF", 0x28)  # from the inner packet
    assert outer.len == len(bytes(sent[IP])) + 36
    udp = out[UDP]
    assert udp.dport == PORT and udp.chksum == 0 and 0xC000 <= udp.sport <= 0xFFFF
    assert udp.len == len(bytes(sent[IP])) + 16
    assert bytes(udp.payload)[8:] == bytes(sent[IP])  # the client's packet, untouched
    assert checksums_valid(out)


def test_outer_source_port_follows_the_flow(lb: Dataplane) -> None:
    """Per-flow entropy for the fabric's ECMP: one flow keeps one outer port, different
    flows get different ones."""
    ports = {}
    for sport in range(40000, 40200):
        _, out = run(lb, client_packet(sport))
        _, again = run(lb, client_packet(sport))
        assert again[UDP].sport == out[UDP].sport
        ports[sport] = out[UDP].sport
    assert len(set(ports.values())) > 150


def test_a_pod_on_this_node_goes_up_the_stack(lb: Dataplane) -> None:
    seen = set()
    for sport in range(40000, 40100):
        action, out = run(lb, client_packet(sport))
        pod = pod_of(out)
        seen.add(pod.node)
        assert (action == XDP_PASS) == (pod.node == SELF)
    assert SELF in seen and len(seen) == 3


def test_tracked_flows_keep_their_pod(lb: Dataplane) -> None:
    before = {s: pod_of(run(lb, client_packet(s))[1]) for s in range(40000, 40300)}
    fewer = PODS[:2] + PODS[3:]
    lb.apply_service(FE, fewer, table(fewer))
    for s, pod in before.items():
        after = pod_of(run(lb, client_packet(s))[1])
        assert after == pod or pod == PODS[2]
    assert ct_entries(lb.maps)[1] >= 290


def test_vlan_tag_is_kept(lb: Dataplane) -> None:
    _, out = run(lb, client_packet(vlan=7))
    assert out[Dot1Q].vlan == 7 and out[Dot1Q].type == 0x0800
    assert out[IP].dst in {p.node for p in PODS} and checksums_valid(out)


def test_too_big_with_df_gets_fragmentation_needed(lb: Dataplane) -> None:
    """1500-byte packets cannot be encapsulated within 1500: the client learns 1464."""
    sent = client_packet(size=1500 - 40)
    action, out = run(lb, sent)
    assert action == XDP_TX
    assert (out[Ether].dst, out[Ether].src) == (CLIENT_MAC, NODE_MAC.hex(":"))
    assert (out[IP].src, out[IP].dst, out[IP].proto) == (VIP, "172.16.0.1", 1)
    icmp = out[ICMP]
    assert (icmp.type, icmp.code, icmp.nexthopmtu) == (3, 4, 1464)
    quoted = icmp[IPerror]
    assert bytes(quoted)[:28] == bytes(sent[IP])[:28]
    assert len(bytes(out[IP])) == 56 and checksums_valid(out)
    counts = {d.name: d.packets for d in stats(lb.maps)[1]}
    assert counts["too_big"] == 1


def test_too_big_without_df_gets_fragmentation_needed_too(lb: Dataplane) -> None:
    """A datagram's fragments carry no DF: a Linux client still takes the MTU it is told
    and fragments its next datagrams to fit; one that fits is encapsulated."""
    action, out = run(lb, client_packet(size=1500 - 40, df=False))
    assert action == XDP_TX and (out[ICMP].type, out[ICMP].nexthopmtu) == (3, 1464)
    assert {d.name: d.packets for d in stats(lb.maps)[1]}["too_big"] == 1
    action, out = run(lb, client_packet(size=1500 - 40 - 36, df=False))
    assert action in (XDP_TX, XDP_PASS) and len(bytes(out[IP])) == 1500


def test_without_encapsulation_settings_pods_are_unreachable(dp: Dataplane) -> None:
    dp.set_seed(SEED)
    dp.apply_service(FE, PODS, table(PODS))
    action, _ = run(dp, client_packet())
    assert action == XDP_DROP
    assert {d.name: d.packets for d in stats(dp.maps)[1]}["encap"] == 1


def test_icmp_errors_go_to_the_flows_pod(lb: Dataplane) -> None:
    """A router on the client's path says the pod's reply was too big: the error goes to
    the pod serving that flow, and makes no conntrack entry of its own."""
    _, out = run(lb, client_packet(41000))
    pod = pod_of(out)
    entries = ct_entries(lb.maps)[1]
    reply = IP(src=VIP, dst="172.16.0.1", flags="DF") / TCP(sport=80, dport=41000, flags="A")
    error = (
        Ether(src=CLIENT_MAC, dst=NODE_MAC.hex(":"))
        / IP(src="198.51.100.1", dst=VIP)
        / ICMP(type=3, code=4, nexthopmtu=1400)
        / Raw(bytes(reply)[:28])
    )
    action, out = run(lb, error)
    assert action in (XDP_TX, XDP_PASS)
    assert pod_of(out) == pod
    assert bytes(out[UDP].payload)[8:] == bytes(error[IP])
    assert ct_entries(lb.maps)[1] == entries
    # ...also for a flow this node never saw (ECMP moved it here): Maglev decides, as it
    # does for the flow's own packets.
    other = IP(src=VIP, dst="172.16.0.1") / TCP(sport=80, dport=41001, flags="A")
    error = (
        Ether(src=CLIENT_MAC, dst=NODE_MAC.hex(":"))
        / IP(src="198.51.100.1", dst=VIP)
        / ICMP(type=11)
        / Raw(bytes(other)[:28])
    )
    _, out = run(lb, error)
    assert ct_entries(lb.maps)[1] == entries
    _, first = run(lb, client_packet(41001))
    assert pod_of(out) == pod_of(first)


def test_nat_dump_shows_the_node(lb: Dataplane) -> None:
    (svc,) = nat_services(lb.maps)
    assert sorted((b.address, b.node) for b in svc.backends) == sorted(
        (p.address, p.node) for p in PODS
    )
    assert lb.applied()[FE.id].backends == tuple(sorted(PODS))


def test_fragments_take_their_first_ones_path(lb: Dataplane) -> None:
    """The fragments of a datagram go to the pod its first fragment went to, with the same
    outer source port (one path through the fabric)."""
    dns = Frontend(f"{VIP}:53/UDP", VIP, 53, 17)
    lb.apply_service(dns, PODS, table(PODS))
    base = Ether(src=CLIENT_MAC, dst=NODE_MAC.hex(":")) / IP(src="172.16.0.9", dst=VIP, id=77)
    datagram = UDP(sport=5353, dport=53) / Raw(b"d" * 1000)
    fragments = [Ether(bytes(base)[:14]) / f for f in fragment(base[IP] / datagram, 400)]
    assert len(fragments) == 3
    outs = [run(lb, f) for f in fragments]
    assert all(action in (XDP_TX, XDP_PASS) for action, _ in outs)
    pods = {pod_of(out) for _, out in outs}
    sports = {out[UDP].sport for _, out in outs}
    assert len(pods) == 1 and len(sports) == 1
    for (_, out), sent in zip(outs, fragments, strict=True):
        assert bytes(out[UDP].payload)[8:] == bytes(sent[IP])
