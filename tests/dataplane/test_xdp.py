"""The XDP program under BPF_PROG_TEST_RUN, programmed through the Dataplane API."""

from __future__ import annotations

import ipaddress
import struct

import numpy as np
import pytest
from weir.nodeagent.dataplane import (
    BackendTarget,
    CapacityError,
    Dataplane,
    DataplaneError,
    Frontend,
)
from weir.nodeagent.dataplane.inspection import ct_entries, pass_counts, stats
from weir.nodeagent.maglev import backend_id, build_table

from .conftest import NODE_MAC, Node
from .support import XDP_DROP, XDP_PASS, XDP_TX, Flow, packet, predicted_backend, run_xdp

SEED = 0x5EED
VIP = "10.0.0.10"
FE = Frontend(f"{VIP}:80/TCP", VIP, 80, 6, "maglev")
UDP_FE = Frontend(f"{VIP}:53/UDP", VIP, 53, 17, "maglev")


def targets(first: int, count: int, port: int = 8080) -> list[BackendTarget]:
    return [
        BackendTarget(f"10.1.{i >> 8}.{i & 255}", port, bytes([2, 0, 0, 0xBE, i >> 8, i & 255]))
        for i in range(first, first + count)
    ]


def maglev(bes: list[BackendTarget], size: int = 251, proto: str = "TCP") -> np.ndarray:
    return build_table([backend_id(b.address, b.port, proto) for b in bes], size, seed=SEED)


def flows(count: int, vip: str = VIP, port: int = 80, proto: int = 6, start: int = 0):
    base = int(ipaddress.IPv4Address("172.16.0.1"))
    return [
        Flow(
            str(ipaddress.IPv4Address(base + i * 7919)),
            vip,
            1024 + (i * 104729) % 60000,
            port,
            proto,
        )
        for i in range(start, start + count)
    ]


def send(dp: Dataplane, flow: Flow, **kw) -> tuple[int, bytes]:
    return run_xdp(dp.xdp_prog_fd, packet(flow, NODE_MAC, **kw))


def backend_of(dp: Dataplane, flow: Flow, bes: list[BackendTarget]) -> int:
    act, out = send(dp, flow)
    assert act == XDP_TX
    macs = [b.mac for b in bes]
    assert out[:6] in macs, f"{flow} went to unknown MAC {out[:6].hex()}"
    return macs.index(out[:6])


def test_non_vip_traffic_passes_untouched(dp: Dataplane) -> None:
    dp.set_seed(SEED)
    bes = targets(1, 3)
    dp.apply_service(FE, bes, maglev(bes))
    other_mac = bytes.fromhex("02000000aa99")
    ipv6 = NODE_MAC + b"\x02" * 6 + b"\x86\xdd" + bytes(60)
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)
    icmp = bytearray(packet(Flow("172.16.0.1", VIP, 0, 0, 1), NODE_MAC))
    frames = [
        packet(Flow("172.16.0.1", "10.0.0.99", 1234, 80), NODE_MAC),  # another address
        packet(Flow("172.16.0.1", VIP, 1234, 443), NODE_MAC),  # the VIP, another port
        packet(Flow("172.16.0.1", VIP, 1234, 80, 17), NODE_MAC),  # the VIP, UDP
        packet(Flow("172.16.0.1", VIP, 1234, 80), other_mac),  # not sent to this node
        packet(Flow("172.16.0.1", "10.0.0.99", 1234, 80), NODE_MAC, frag=0x2000),
        bytes(icmp),
        ipv6,
        arp,
        NODE_MAC + b"\x02" * 6 + b"\x08\x00" + b"\x45",  # truncated IPv4 header
    ]
    for frame in frames:
        act, out = run_xdp(dp.xdp_prog_fd, frame)
        assert act == XDP_PASS, frame.hex()
        assert out == frame


def test_vip_frames_for_another_mac_pass_untouched_and_are_counted(dp: Dataplane) -> None:
    """A veth or a flooding bridge port delivers frames for other nodes' MACs: after a
    load-balancer node fails, the frames still sent to its MAC reach every node, and
    forwarding them would deliver them twice. Only frames for this node's MAC are ours."""
    dp.set_seed(SEED)
    bes = targets(1, 3)
    dp.apply_service(FE, bes, maglev(bes))
    tracked = flows(5)
    for f in tracked:  # the flows are tracked here: a conntrack hit must not forward either
        backend_of(dp, f, bes)
    [(svc_before, _)], _ = stats(dp.maps)
    ct_before = ct_entries(dp.maps)[1]
    other_host = [
        packet(tracked[0], bytes.fromhex("02000000aa02")),  # differs in the last byte
        packet(tracked[1], bytes.fromhex("06000000aa01")),  # differs in the first byte
        packet(flows(1, start=900)[0], bytes.fromhex("02000000aa99")),  # a new flow
        packet(tracked[2], bytes.fromhex("02000000aa99"), vlan=42),
        packet(Flow("172.16.0.1", VIP, 0, 0, 1), bytes.fromhex("02000000aa99")),  # ICMP
    ]
    multicast = [
        packet(tracked[3], b"\xff" * 6),  # broadcast
        packet(tracked[4], bytes.fromhex("01005e000001")),
    ]
    not_a_vip = packet(Flow("172.16.0.1", "10.0.0.99", 1234, 80), bytes.fromhex("02000000aa99"))
    for frame in [*other_host, *multicast, not_a_vip]:
        act, out = run_xdp(dp.xdp_prog_fd, frame)
        assert act == XDP_PASS, frame.hex()
        assert out == frame
    counted = {c.name: (c.packets, c.bytes) for c in pass_counts(dp.maps)}
    assert counted == {
        "other_host": (len(other_host), sum(map(len, other_host))),
        "multicast": (len(multicast), sum(map(len, multicast))),
    }
    [(svc_after, _)], drops = stats(dp.maps)
    assert svc_after == svc_before  # nothing forwarded, no flow taken on
    assert ct_entries(dp.maps)[1] == ct_before
    assert all(d.packets == 0 for d in drops)  # passed, not dropped
    for f in tracked:  # and frames for this node still go where they went
        assert send(dp, f)[0] == XDP_TX


def test_vip_packets_reach_the_maglev_backend(roomy_dp: Dataplane) -> None:
    dp = roomy_dp  # every one of its 300 flows must get an entry
    dp.set_seed(SEED)
    bes = targets(1, 5)
    table = maglev(bes)
    assert dp.apply_service(FE, bes, table) is True
    seen = set()
    for flow in flows(300):
        frame = packet(flow, NODE_MAC)
        act, out = run_xdp(dp.xdp_prog_fd, frame)
        want = predicted_backend(flow, SEED, table)
        assert act == XDP_TX
        assert out[:6] == bes[want].mac and out[6:12] == NODE_MAC
        assert out[12:] == frame[12:]  # DSR: nothing but the MACs changes
        seen.add(want)
    assert seen == set(range(5))
    [(svc, per_backend)], _ = stats(dp.maps)
    assert (svc.packets, svc.new_flows) == (300, 300)
    assert sum(b.packets for b in per_backend) == 300


def test_conntrack_keeps_flows_when_the_table_changes(dp: Dataplane) -> None:
    dp.set_seed(SEED)
    old = targets(1, 3)
    dp.apply_service(FE, old, maglev(old))
    tracked = flows(200)
    before = {f: old[backend_of(dp, f, old)] for f in tracked}
    new = targets(1, 6)  # three more backends: many slots change owner
    new_table = maglev(new)
    assert dp.apply_service(FE, new, new_table)
    moved = [f for f in tracked if new[predicted_backend(f, SEED, new_table)] != before[f]]
    assert len(moved) > 50  # the test means something: these would move without conntrack
    for f in tracked:
        assert new[backend_of(dp, f, new)] == before[f]
    for f in flows(100, start=1000):  # new flows follow the new table
        assert backend_of(dp, f, new) == predicted_backend(f, SEED, new_table)


def test_flows_of_a_removed_backend_are_picked_again(dp: Dataplane) -> None:
    dp.set_seed(SEED)
    bes = targets(1, 4)
    dp.apply_service(FE, bes, maglev(bes))
    tracked = flows(200)
    before = {f: bes[backend_of(dp, f, bes)] for f in tracked}
    gone = bes[0]
    rest = bes[1:]
    rest_table = maglev(rest)
    dp.apply_service(FE, rest, rest_table)
    for f in tracked:
        now = rest[backend_of(dp, f, rest)]
        if before[f] == gone:
            assert now == rest[predicted_backend(f, SEED, rest_table)]
        else:
            assert now == before[f]
    assert any(before[f] == gone for f in tracked)


def test_drops_are_counted_by_reason(dp: Dataplane) -> None:
    dp.set_seed(SEED)
    empty = Frontend(f"{VIP}:81/TCP", VIP, 81, 6)
    dp.apply_service(empty, [], np.zeros(0, dtype=np.uint32))
    bes = targets(1, 2)
    dp.apply_service(FE, bes, maglev(bes))
    f = Flow("172.16.0.1", VIP, 1234, 80)
    assert send(dp, Flow("172.16.0.1", VIP, 1234, 81))[0] == XDP_DROP  # no backends
    assert send(dp, f, l4_bytes=3)[0] == XDP_DROP  # ports cut off
    assert send(dp, f, frag=0x0010, ip_id=7)[0] == XDP_DROP  # a later fragment, no first
    _, drops = stats(dp.maps)
    counted = {d.name: d.packets for d in drops}
    assert counted == {
        "parse": 1,
        "fragment": 1,
        "table_empty": 1,
        "no_backend": 0,
        "too_big": 0,
        "encap": 0,
        "invalid": 0,
    }


def test_fragments_follow_their_first(dp: Dataplane) -> None:
    """All fragments of a datagram reach the backend its first fragment (the one with the
    ports) went to; a fragment that comes before its first is dropped and counted."""
    dp.set_seed(SEED)
    bes = targets(1, 8)
    dp.apply_service(UDP_FE, bes, maglev(bes, proto="UDP"))
    sent = 0
    for i in range(40):
        f = Flow(f"172.16.1.{i}", VIP, 5000 + i, 53, 17)
        first_action, first = send(dp, f, frag=0x2000, ip_id=100 + i, payload=b"q" * 64)
        assert first_action == XDP_TX
        for offset in (0x2009, 0x0012):  # MF + offset 72, then the last at 144
            later = bytearray(packet(f, NODE_MAC, frag=offset, ip_id=100 + i, payload=b"r" * 64))
            later[14 + 20 : 14 + 28] = b"r" * 8  # no ports in a later fragment
            action, out = run_xdp(dp.xdp_prog_fd, bytes(later))
            assert action == XDP_TX and out[:6] == first[:6]
            sent += 1
    assert sent == 80
    orphan = packet(Flow("172.16.2.1", VIP, 1, 53, 17), NODE_MAC, frag=0x0012, ip_id=999)
    assert run_xdp(dp.xdp_prog_fd, orphan)[0] == XDP_DROP
    assert {d.name: d.packets for d in stats(dp.maps)[1]}["fragment"] == 1


def test_vlan_tagged_frames_keep_their_tag(dp: Dataplane) -> None:
    dp.set_seed(SEED)
    bes = targets(1, 3)
    table = maglev(bes)
    dp.apply_service(FE, bes, table)
    for flow in flows(20):
        frame = packet(flow, NODE_MAC, vlan=42)
        act, out = run_xdp(dp.xdp_prog_fd, frame)
        assert act == XDP_TX
        assert out[:6] == bes[predicted_backend(flow, SEED, table)].mac
        assert out[12:16] == struct.pack("!HH", 0x8100, 42) and out[12:] == frame[12:]


def test_udp_random_strategy_spreads_new_flows_and_tracks_them(dp: Dataplane) -> None:
    fe = Frontend(f"{VIP}:53/UDP", VIP, 53, 17, "random")
    bes = targets(1, 4, port=53)
    dp.apply_service(fe, bes, maglev(bes, proto="UDP"))
    udp = flows(400, port=53, proto=17)
    first = {f: backend_of(dp, f, bes) for f in udp}
    assert set(first.values()) == set(range(4))
    assert all(backend_of(dp, f, bes) == b for f, b in list(first.items())[:50])
    # random, not the hash: some flows land off their Maglev slot
    table = maglev(bes, proto="UDP")
    assert sum(first[f] != predicted_backend(f, 0, table) for f in udp) > 100


def test_the_seed_moves_new_flows(dp: Dataplane) -> None:
    bes = targets(1, 5)
    table = maglev(bes)
    dp.apply_service(FE, bes, table)
    for seed, start in ((1, 0), (2, 500)):
        dp.set_seed(seed)
        for f in flows(100, start=start):
            assert backend_of(dp, f, bes) == predicted_backend(f, seed, table)


def test_unchanged_content_writes_nothing(dp: Dataplane) -> None:
    bes = targets(1, 4)
    table = maglev(bes)
    assert dp.apply_service(FE, bes, table) is True
    order = [2, 0, 3, 1]  # same content, other order: same tag
    shuffled = [bes[i] for i in order]
    renumber = np.argsort(order)
    assert dp.apply_service(FE, shuffled, renumber[table]) is False
    waits = dp.grace_periods
    assert dp.apply_service(FE, bes, table) is False
    assert dp.grace_periods == waits


def test_capacity_errors_leave_other_services_alone(node: Node) -> None:
    dp = node.open(max_services=3, max_backends=8, max_table_slots=16 * 64)  # 1024 slots
    try:
        dp.set_seed(SEED)
        bes = targets(1, 3)
        table = maglev(bes)
        dp.apply_service(FE, bes, table)  # 3 backends, 2 x 251 slots
        before = dp.applied()

        too_many = Frontend(f"{VIP}:81/TCP", VIP, 81, 6)
        with pytest.raises(CapacityError, match="backend entries"):
            dp.apply_service(too_many, targets(10, 6), maglev(targets(10, 6)))
        too_big = Frontend(f"{VIP}:82/TCP", VIP, 82, 6)
        with pytest.raises(CapacityError, match="table slots"):
            dp.apply_service(too_big, targets(20, 2), maglev(targets(20, 2), size=263))
        with pytest.raises(DataplaneError, match="can never fit"):  # growing the first one
            dp.apply_service(FE, bes, maglev(bes, size=787))  # its two halves: > 1024
        assert dp.applied() == before
        for name in ("81", "82"):
            assert send(dp, Flow("172.16.0.1", VIP, 1234, int(name)))[0] == XDP_PASS
        for f in flows(50):
            assert backend_of(dp, f, bes) == predicted_backend(f, SEED, table)

        small = Frontend(f"{VIP}:83/TCP", VIP, 83, 6)
        dp.apply_service(small, targets(30, 2), maglev(targets(30, 2), size=257))  # fits
        dp.apply_service(Frontend(f"{VIP}:84/TCP", VIP, 84, 6), [], [])
        with pytest.raises(CapacityError, match="service entries"):
            dp.apply_service(Frontend(f"{VIP}:85/TCP", VIP, 85, 6), [], [])
        dp.remove_service(small.id)  # its room comes back
        dp.apply_service(too_big, targets(20, 2), maglev(targets(20, 2), size=257))
        assert set(dp.applied()) == {FE.id, too_big.id, f"{VIP}:84/TCP"}
        usage = {u.name: (u.used, u.capacity) for u in dp.usage()}
        assert usage["services"] == (3, 3) and usage["table_slots"] == (2 * 251 + 2 * 257, 1024)
        # What cannot fit even alone is not a matter of room: a clear error, not a retry.
        with pytest.raises(DataplaneError, match="can never fit") as never:
            dp.apply_service(FE, targets(1, 9), maglev(targets(1, 9)))
        assert not isinstance(never.value, CapacityError)
    finally:
        dp.close()


def test_removed_service_stops_at_once(dp: Dataplane) -> None:
    dp.set_seed(SEED)
    bes = targets(1, 3)
    dp.apply_service(FE, bes, maglev(bes))
    tracked = flows(20)
    for f in tracked:
        backend_of(dp, f, bes)
    dp.remove_service(FE.id)
    for f in tracked:  # tracked flows too: the service is gone
        assert send(dp, f)[0] == XDP_PASS
    assert dp.applied() == {}
    dp.apply_service(FE, bes, maglev(bes))  # and it can come back
    assert backend_of(dp, tracked[0], bes) == predicted_backend(tracked[0], SEED, maglev(bes))


def test_a_failed_write_leaves_the_old_table_and_the_bookkeeping_sound(
    dp: Dataplane, monkeypatch: pytest.MonkeyPatch
) -> None:
    from weir.nodeagent.dataplane import DataplaneError
    from weir.nodeagent.dataplane import dataplane as module

    dp.set_seed(SEED)
    bes = targets(1, 3)
    table = maglev(bes)
    dp.apply_service(FE, bes, table)
    before = dp.applied()

    def refuse(*args: object) -> None:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(module, "commit", refuse)
    more = targets(1, 5)
    with pytest.raises(DataplaneError, match="state reloaded"):
        dp.apply_service(FE, more, maglev(more))
    monkeypatch.undo()
    assert dp.applied() == before
    for f in flows(30):
        assert backend_of(dp, f, bes) == predicted_backend(f, SEED, table)
    assert dp.apply_service(FE, more, maglev(more)) is True
    for f in flows(30, start=100):
        assert backend_of(dp, f, more) == predicted_backend(f, SEED, maglev(more))
