"""ClientIP session affinity in the XDP program (BPF_PROG_TEST_RUN): new flows of an
affinity service hash over the client address only, so all of a client's connections
reach one backend, the one the Python twin predicts (the same on every node)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from weir.nodeagent.dataplane import Dataplane, Frontend

from .conftest import Node
from .support import Flow, predicted_backend
from .test_weirctl_bpf import weirctl
from .test_xdp import FE, SEED, VIP, backend_of, maglev, targets

STICKY = replace(FE, affinity="client_ip")


def client(i: int) -> str:
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("172.16.0.1")) + i * 7919))


def ports_of(saddr: str, count: int, first: int = 1024, dport: int = 80, proto: int = 6):
    return [Flow(saddr, VIP, first + i * 31, dport, proto) for i in range(count)]


def test_one_client_sticks_to_one_backend_and_clients_spread(dp: Dataplane) -> None:
    dp.set_seed(SEED)
    bes = targets(1, 8)
    table = maglev(bes)
    dp.apply_service(STICKY, bes, table)
    chosen = []
    for i in range(40):
        flows = ports_of(client(i), 30)
        picked = {backend_of(dp, f, bes) for f in flows}
        want = predicted_backend(flows[0], SEED, table, client_ip=True)
        assert picked == {want}, f"client {client(i)} spread over {picked}"
        chosen.append(want)
    assert len(set(chosen)) >= 6  # different clients spread over the 8 backends

    # The same table without the flag: one client's source ports spread (so the
    # checks above can fail).
    plain = replace(FE, id=f"{VIP}:81/TCP", port=81)
    dp.apply_service(plain, bes, table)
    flows = ports_of(client(0), 30, dport=81)
    picked = [backend_of(dp, f, bes) for f in flows]
    assert picked == [predicted_backend(f, SEED, table) for f in flows]
    assert len(set(picked)) >= 5


def test_random_strategy_with_client_ip_hashes_on_the_client(dp: Dataplane) -> None:
    """Affinity wins over random: random could not keep a client anywhere."""
    dp.set_seed(SEED)
    fe = Frontend(f"{VIP}:53/UDP", VIP, 53, 17, "random", "client_ip")
    bes = targets(1, 6, port=53)
    table = maglev(bes, proto="UDP")
    dp.apply_service(fe, bes, table)
    for i in range(10):
        flows = ports_of(client(i), 20, dport=53, proto=17)
        want = predicted_backend(flows[0], SEED, table, client_ip=True)
        assert {backend_of(dp, f, bes) for f in flows} == {want}


def test_changing_affinity_is_applied_read_back_and_keeps_tracked_flows(
    fresh_dp: Dataplane, node: Node, capsys
) -> None:
    dp = fresh_dp  # closed half way, reopened from the pins
    dp.set_seed(SEED)
    bes = targets(1, 8)
    table = maglev(bes)
    assert dp.apply_service(FE, bes, table) is True
    before = dp.applied()[FE.id]
    assert before.frontend.affinity == "none"
    tracked = ports_of(client(3), 30)
    first = {f: backend_of(dp, f, bes) for f in tracked}
    assert len(set(first.values())) >= 4

    assert dp.apply_service(STICKY, bes, table) is True
    after = dp.applied()[FE.id]
    assert after.frontend == STICKY and after.tag != before.tag
    assert dp.apply_service(STICKY, bes, table) is False  # already so
    code, out = weirctl(capsys, node.bpffs, "nat", "dump")
    assert code == 0 and "flags maglev,affinity" in out.splitlines()[0]
    for f in tracked:  # conntrack keeps established flows where they were
        assert backend_of(dp, f, bes) == first[f]
    fresh = ports_of(client(3), 30, first=30000)
    want = predicted_backend(fresh[0], SEED, table, client_ip=True)
    assert {backend_of(dp, f, bes) for f in fresh} == {want}

    # A restarted agent reads the flag back from the pinned maps: nothing to rewrite.
    dp.close()
    again = node.open()
    try:
        assert again.applied()[FE.id].frontend == STICKY
        assert again.apply_service(STICKY, bes, table) is False
        assert again.apply_service(FE, bes, table) is True  # and back
        code, out = weirctl(capsys, node.bpffs, "nat", "dump")
        assert out.splitlines()[0].endswith("flags maglev")
        spread = ports_of(client(3), 30, first=40000)
        assert len({backend_of(again, f, bes) for f in spread}) >= 4
    finally:
        again.close()
