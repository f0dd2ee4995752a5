"""weirctl bpf ...: read the pinned maps of a programmed data plane."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from weir.ctl.main import main
from weir.nodeagent.dataplane import BackendTarget, Dataplane, Frontend, bpfsys
from weir.nodeagent.dataplane.nat import NatConfig, NatDataplane, NatSettings

from .conftest import Node
from .support import in_netns, packet, run_xdp
from .test_nat import CLIENT, DNS, LB, NODE, POD, PORT, WEB, encapsulated, syn
from .test_nat import VIP as NAT_VIP
from .test_xdp import FE, SEED, VIP, backend_of, flows, maglev, send, targets


def weirctl(capsys: pytest.CaptureFixture[str], bpffs: Path, *args: str) -> tuple[int, str]:
    code = main(["bpf", *args, "--bpffs", str(bpffs)])
    out, err = capsys.readouterr()
    return code, out + err


def test_inspection_commands(dp: Dataplane, dp_node: Node, capsys) -> None:
    dp.set_seed(SEED)
    bes = targets(1, 3)
    dp.apply_service(FE, bes, maglev(bes))
    udp = Frontend(f"{VIP}:53/UDP", VIP, 53, 17, "random")
    dp.apply_service(udp, targets(7, 1, port=53), maglev(targets(7, 1, port=53), proto="UDP"))
    tracked = flows(5)
    for f in tracked:
        backend_of(dp, f, bes)
    send(dp, tracked[0], l4_bytes=2)  # one parse drop
    for dest in (bytes.fromhex("02000000aa99"), b"\xff" * 6):  # not for this node: passed
        run_xdp(dp.xdp_prog_fd, packet(tracked[1], dest))

    code, out = weirctl(capsys, dp_node.bpffs, "nat", "dump")
    assert code == 0
    lines = out.splitlines()
    assert re.fullmatch(rf"{VIP} port 80 proto 6 id \d+ count 3 flags maglev", lines[2])
    assert re.fullmatch(rf"{VIP} port 53 proto 17 id \d+ count 1 flags random", lines[0])
    assert re.fullmatch(r"\t\d+:0\t 10\.1\.0\.1:8080 mac 02:00:00:be:00:01 slots 8[34]", lines[3])
    assert sum(int(line.rsplit(" ", 1)[1]) for line in lines[3:6]) == 251

    code, out = weirctl(capsys, dp_node.bpffs, "maglev", f"{VIP}:80")
    assert code == 0 and "table size 251, active half 0" in out and "33.4" in out

    code, out = weirctl(capsys, dp_node.bpffs, "ct", "list")
    assert code == 0
    for f in tracked:
        assert re.search(rf"TCP {f.saddr}:{f.sport} -> {VIP}:80 backend 10\.1\.0\.\d:8080", out)
    assert "5 tracked flows" in out

    code, out = weirctl(capsys, dp_node.bpffs, "stats")
    assert code == 0
    assert f"service {FE.id} packets 5 " in out and "new_flows 5" in out
    assert re.search(r"\tparse packets 1 bytes \d+", out)
    passed = out.split("passed, not for this node\n", 1)[1]
    assert re.fullmatch(
        r"\tother_host packets 1 bytes \d+\n\tmulticast packets 1 bytes \d+\n", passed
    )


def test_missing_pins_are_a_clear_error(tmp_path: Path, capsys) -> None:
    code, out = weirctl(capsys, tmp_path, "nat", "dump")
    assert code == 1 and "cannot open the Weir maps" in out


def test_nat_dump_names_the_node_of_encapsulated_backends(dp: Dataplane, dp_node: Node, capsys):
    dp.set_seed(SEED)
    dp.set_encap("10.88.0.11", 6093, 1500)
    hop = bytes.fromhex("02000000fe01")
    pods = [BackendTarget("10.244.1.10", 8080, hop, "10.77.1.1"), *targets(1, 1)]
    dp.apply_service(FE, pods, maglev(pods))
    code, out = weirctl(capsys, dp_node.bpffs, "nat", "dump")
    assert code == 0
    lines = out.splitlines()
    assert re.fullmatch(r"\t\d+:0\t 10\.1\.0\.1:8080 mac 02:00:00:be:00:01 slots \d+", lines[1])
    assert re.fullmatch(
        r"\t\d+:1\t 10\.244\.1\.10:8080 via 10\.77\.1\.1 mac 02:00:00:00:fe:01 slots \d+", lines[2]
    )


def test_backend_role_commands(fresh_dp: Dataplane, node: Node, capsys) -> None:
    """nat local and nat flows read the backend role's pins; stats shows both roles."""
    with in_netns(node.netns):
        nat = NatDataplane.open(NatConfig(interface=node.iface, bpffs=node.bpffs, flows=1024))
    fds = [bpfsys.obj_get(str(node.bpffs / p)) for p in ("prog_tc_ingress", "prog_tc_egress")]
    try:
        nat.configure(NatSettings(NODE, PORT, mtu=1500))
        nat.set_lb_nodes([LB, "10.0.0.12"])
        nat.set_local_backends([WEB, DNS])
        ingress, egress = fds
        for sport in (40000, 40001):
            bpfsys.test_run(ingress, bytes(encapsulated(syn(sport=sport))), out_size=256)
        reply = Ether() / IP(src=POD, dst=CLIENT) / TCP(sport=8080, dport=40000, flags="SA",
                                                         options=[("MSS", 1460)])  # fmt: skip
        bpfsys.test_run(egress, bytes(reply), out_size=256)
        bpfsys.test_run(ingress, bytes(encapsulated(syn(), src="10.0.0.99")), out_size=256)

        code, out = weirctl(capsys, node.bpffs, "nat", "local")
        assert code == 0
        assert out.splitlines() == [
            f"node {NODE} encap port {PORT} mss clamp 1424 (underlay MTU 1500)",
            f"lb nodes {LB} 10.0.0.12",
            f"{NAT_VIP} port 53 proto 17 -> {POD}:5353 packets 0 bytes 0 new_flows 0",
            f"{NAT_VIP} port 80 proto 6 -> {POD}:8080 packets 2 bytes 108 new_flows 2",
            "2 local translations, 16384 entries",
        ]
        code, out = weirctl(capsys, node.bpffs, "nat", "flows")
        assert code == 0
        assert out.splitlines() == [
            f"TCP {POD}:8080 -> {CLIENT}:40000 as {NAT_VIP}:80",
            f"TCP {POD}:8080 -> {CLIENT}:40001 as {NAT_VIP}:80",
            "2 flows translated back, 1024 entries",
        ]
        code, out = weirctl(capsys, node.bpffs, "stats")
        assert code == 0
        assert "drops\n" in out and "passed, not for this node\n" in out  # the LB role's
        backend = out.split("backend node\n", 1)[1]
        assert re.fullmatch(
            r"\tdecap packets 2 bytes 108 new_flows 2\n"
            r"\treverse packets 1 bytes \d+ new_flows 0\n"
            r"\tmss_clamped packets 1 bytes \d+ new_flows 0\n"
            r"backend node drops\n"
            r"\tnot_lb packets 1 bytes \d+\n"
            r"\theader packets 0 bytes 0\n"
            r"\tunknown packets 0 bytes 0\n"
            r"\tdecap_failed packets 0 bytes 0\n"
            r"\tfragment packets 0 bytes 0\n",
            backend,
        )
    finally:
        for fd in fds:
            os.close(fd)
        with in_netns(node.netns):
            nat.detach()


def test_a_node_without_the_backend_role(dp: Dataplane, dp_node: Node, capsys) -> None:
    code, out = weirctl(capsys, dp_node.bpffs, "nat", "local")
    assert code == 0 and out.startswith("no backend role on this node")
    code, out = weirctl(capsys, dp_node.bpffs, "stats")
    assert code == 0 and "backend node" not in out


def test_no_maps_at_all(tmp_path: Path, capsys) -> None:
    code, out = weirctl(capsys, tmp_path, "stats")
    assert code == 1 and "cannot open the Weir maps" in out
