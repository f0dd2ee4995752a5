"""Pod-backed Services end to end (docs/FORWARDING.md), in the lab's network: a client, a
BIRD router with ECMP over three LB nodes (BGP), and three Kubernetes workers in another
subnet behind the router, two pods each on 8080 (no VIP in the pods), with a CNI's
masquerade, kube-proxy's DNAT for the VIP and its drop of conntrack-INVALID packets on every
worker. MTU 1500 everywhere. Real kernel, real TCP, real agents and controller."""

from __future__ import annotations

import socket
import struct
import time
from collections import Counter

import pytest
from weir.lab import traffic
from weir.lab.stack import POD_TARGET, Stack
from weir.lab.topology import (
    BULK_PORT,
    CLIENTS,
    DNS_PORT,
    NODES,
    POD_VIP,
    PODS,
    VIP,
    WORKERS,
    replies_counted,
)
from weir.lab.wait import wait_until
from weir.nodeagent.dataplane.nat import DEFAULT_ENCAP_PORT
from weir.nodeagent.dataplane.nat_pinned import PinnedNatMaps

from tests.requirements import BIRD, ETHTOOL, EXABGP, requires, root

pytestmark = [pytest.mark.root, pytest.mark.slow, requires(root, BIRD, EXABGP, ETHTOOL)]


@pytest.fixture
def lab(running: Stack) -> Stack:
    return running


def pods_of(outcomes) -> Counter[str]:
    return Counter(o.backend for o in outcomes if o.ok)


def test_connections_spread_over_the_pods(lab: Stack) -> None:
    """1,200 connections all succeed, within ±25% of a fair share on each of six pods; no
    reply crosses an LB node, the router sees them come from the workers."""
    lb_before = sum(replies_counted(h, "netdev") for h in lab.net.nodes.values())
    routed_before = replies_counted(lab.net.router, "ip")
    results = traffic.burst(lab.net.clients["c1"], POD_TARGET, count=1200, concurrency=32)
    assert len(results) == 1200 and all(r.ok for r in results), [r for r in results if not r.ok][:5]
    shares = pods_of(results)
    assert set(shares) == set(PODS)
    assert all(abs(n - 200) <= 50 for n in shares.values()), shares
    assert sum(replies_counted(h, "netdev") for h in lab.net.nodes.values()) == lb_before
    assert replies_counted(lab.net.router, "ip") - routed_before >= 1200


def test_pods_see_the_client_address(lab: Stack) -> None:
    held = traffic.Held(lab.net.clients["c2"], POD_TARGET, 12)
    try:
        assert all(not a.startswith("error") for a in held.ping())
        assert lab.pod_peers() == {CLIENTS["c2"]}
    finally:
        held.close()


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_20_mb_through_the_vip_intact(lab: Stack, direction: str) -> None:
    """The encapsulation's 36 bytes on a 1500-byte fabric: the MSS clamped in the pod's
    SYN-ACK keeps the client's segments small enough; the download is not encapsulated."""
    t = traffic.bulk(lab.net.clients["c1"], direction, POD_VIP, BULK_PORT, 20_000_000)
    assert t.ok and t.bytes == 20_000_000, t


@pytest.mark.parametrize("vip", [POD_VIP, VIP], ids=["pods", "hosts"])
def test_large_udp_datagrams_arrive_whole(lab: Stack, vip: str) -> None:
    """4,000-byte datagrams travel in fragments: every fragment follows its first one to
    the same backend (pods: through the encapsulation, whose first datagram may only teach
    the client its path MTU), and the fragmented echo comes back whole."""
    for seed in range(5):
        t = traffic.bulk(lab.net.clients["c1"], "datagram", vip, DNS_PORT, 4000, seed)
        assert t.ok, t


def _nat_drops(lab: Stack, worker: str) -> dict[str, int]:
    maps = PinnedNatMaps(lab.weir.bpffs(worker))
    try:
        return {c.name: c.packets for c in maps.counters()[1]}
    finally:
        maps.close()


def test_spoofed_encapsulated_packets_are_dropped(lab: Stack) -> None:
    """The encapsulation is no way into the pod network: a packet built exactly as an LB
    node builds it, but sent from the client, is dropped and counted; the pod never sees it."""
    pod = "10.244.1.10"
    inner_syn = struct.pack(
        "!BBHHHBBH4s4sHHIIBBHHH",
        0x45, 0, 40, 1, 0x4000, 64, 6, 0,
        socket.inet_aton(CLIENTS["c1"]), socket.inet_aton(POD_VIP),
        45678, 80, 1, 0, 0x50, 0x02, 512, 0, 0,
    )  # fmt: skip
    header = struct.pack("!BBH4s", 1, 0, 8080, socket.inet_aton(pod))
    before = _nat_drops(lab, "n1")
    code = (
        "import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); "
        f"[s.sendto(bytes.fromhex(sys.argv[1]), ('{WORKERS['n1']}', {DEFAULT_ENCAP_PORT})) "
        "for _ in range(5)]"
    )
    lab.net.clients["c1"].run(["python3", "-c", code, (header + inner_syn).hex()])
    wait_until(lambda: _nat_drops(lab, "n1")["not_lb"] - before["not_lb"] >= 5, 5, "drops counted")
    seen = lab.net.pods["p1a"].run(["ss", "-Htn", "state", "syn-recv"])
    assert CLIENTS["c1"] not in seen


def test_an_lb_node_failure_breaks_no_pod_connection(lab: Stack) -> None:
    """Long-lived conversations with pods while lb3 fails hard: the flows ECMP moves to lb1
    and lb2 land on the same pods (same Maglev table on every node)."""
    talk = traffic.Talk(lab.net.clients["c2"], POD_TARGET, 60, interval=0.1)
    replay_ports = list(range(33000, 33300))
    before = traffic.burst(lab.net.clients["c1"], POD_TARGET, sports=replay_ports)
    try:
        lab.fail_node("lb3")
        talk.wait_flowing(15)
        after = traffic.burst(lab.net.clients["c1"], POD_TARGET, sports=replay_ports)
        report = talk.stop()
    finally:
        lab.restore_node("lb3")
    assert all(c.error is None for c in report.conns), [c for c in report.conns if c.error][:3]
    first = {o.sport: o.backend for o in before if o.ok}
    again = {o.sport: o.backend for o in after if o.ok}
    assert len(first) == len(again) == 300 and first == again


def test_a_removed_pod_gets_no_new_flows_within_a_second(lab: Stack) -> None:
    talk = traffic.Talk(lab.net.clients["c2"], POD_TARGET, 30, interval=0.1)
    stream = traffic.Stream(lab.net.clients["c1"], POD_TARGET, seconds=6, concurrency=8)
    try:
        stream.wait_for(lambda r: len(r) > 50)
        changed = time.time()
        lab.set_pods([p for p in PODS if p != "p2a"])
        results = stream.finish()
        report = talk.stop()
    finally:
        lab.set_pods(list(PODS))
    late = [r for r in results if r.backend == "p2a" and r.t > changed + 1.0]
    assert not late, late[:3]
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    # Conversations with the other pods went on undisturbed.
    others = [c for c in report.conns if c.backend != "p2a"]
    assert others and all(c.error is None for c in others)


def test_restarting_a_workers_agent_fails_no_connection(lab: Stack) -> None:
    talk = traffic.Talk(lab.net.clients["c2"], POD_TARGET, 30, interval=0.1)
    stream = traffic.Stream(lab.net.clients["c1"], POD_TARGET, seconds=8, concurrency=8)
    stream.wait_for(lambda r: len(r) > 30)
    lab.weir.stop_agent("n2")
    lab.weir.start_agent("n2")
    lab.version = lab.weir.converge(min_version=lab.version).version
    results = stream.finish()
    report = talk.stop()
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    assert {r.backend for r in results} >= {"p2a", "p2b"}
    assert all(c.error is None for c in report.conns)


def test_every_lb_node_holds_the_same_pod_table(lab: Stack) -> None:
    tables = {n: lab.maglev_table(n, POD_VIP) for n in NODES}
    assert len({tuple(t) for t in tables.values()}) == 1
