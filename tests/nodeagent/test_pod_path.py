"""End to end through both roles: a client reaches a pod behind a routed node through a VIP.

    client 10.80.0.10 ─┐                            ┌ pod 10.244.1.10 (listens on 8080 only,
    lb     10.80.0.11 ─┤ bridge ── router ── node ──┘  no VIP)
    (the "controller") │  10.80.0.1   10.81.0.1 10.81.0.5
                       ┘

Two real weir-agent processes get fixed views from a stand-in controller (podpath.py plane):
lb the load-balancer role, with the pod as an encapsulated backend of 192.0.2.10:80; node
the backend role, with the pod's translation and lb as the only load balancer. The client
routes the VIP to lb. lb encapsulates to node through the router (its next hop); node
decapsulates and translates to the pod, and translates the pod's replies back, which go
straight to the client through the router. The upload is larger than one segment, so it
passes only if node clamped the MSS the client was offered to fit the encapsulation in the
1500-byte MTU of every link. XDP runs in generic mode.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from weir.common import viewhash
from weir.common.pb import pb
from weir.lab.netns import Host, Topology, cleanup_prefix, sh
from weir.lab.stack import read_line, teardown

from tests.requirements import ETHTOOL, requires, root

pytestmark = [pytest.mark.root, pytest.mark.slow, requires(root, ETHTOOL)]

PREFIX = "wapp"
VIP, PORT, POD, POD_PORT = "192.0.2.10", 80, "10.244.1.10", 8080
CLIENT, LB, NODE = "10.80.0.10", "10.80.0.11", "10.81.0.5"
CTL = f"{CLIENT}:9443"
SID = f"{VIP}:{PORT}/TCP"
BIN = Path(sys.executable).parent
PODPATH = Path(__file__).with_name("podpath.py")


def views() -> dict[str, pb.Snapshot]:
    pod = pb.Backend(
        address=POD,
        port=POD_PORT,
        weight=1,
        ready=True,
        forwarding=pb.FORWARDING_ENCAP,
        node_address=NODE,
    )
    svc = pb.Service(
        id=SID,
        vip=VIP,
        port=PORT,
        protocol=pb.PROTOCOL_TCP,
        strategy=pb.STRATEGY_MAGLEV,
        maglev_table_size=251,
        backends=[pod],
    )
    endpoint = pb.LocalEndpoint(
        service_id=SID,
        vip=VIP,
        port=PORT,
        protocol=pb.PROTOCOL_TCP,
        address=POD,
        target_port=POD_PORT,
    )
    lb = pb.NodeConfig(load_balancer=True, address=LB, lb_node_addresses=[LB])
    node = pb.NodeConfig(address=NODE, local_endpoints=[endpoint], lb_node_addresses=[LB])
    out = {
        "lb": pb.Snapshot(version=1, node="lb", maglev_seed=7, services=[svc], node_config=lb),
        "node": pb.Snapshot(version=1, node="node", maglev_seed=7, node_config=node),
    }
    for snap in out.values():
        snap.node_config.encap_port = 6093
        snap.hash = viewhash.view_hash(snap)
    return out


def start(host: Host, log: Path, *args: str) -> subprocess.Popen:
    with open(log, "ab") as out:
        return host.popen(list(args), stdout=out, stderr=subprocess.STDOUT)


def agent(host: Host, tmp: Path) -> subprocess.Popen:
    pins = tmp / f"{host.name}-bpf"
    pins.mkdir()
    sh(["mount", "-t", "bpf", "bpf", str(pins)])
    name = host.name.removeprefix(f"{PREFIX}-")
    return start(
        host,
        tmp / f"{name}.log",
        *(str(BIN / "weir-agent"), "--controller", CTL, "--plaintext", "--node", name),
        *("--interface", "eth0", "--xdp-mode", "generic", "--bpffs", str(pins / "weir")),
        *("--max-services", "16", "--max-backends", "64", "--max-table-slots", "4096"),
        *("--conntrack-entries", "1024", "--max-local-backends", "16", "--nat-flows", "1024"),
        *("--bgp-on-stop", "restart", "--log-format", "json"),
    )


def weirctl(host: Host, tmp: Path, *args: str) -> str:
    pins = tmp / f"{host.name}-bpf" / "weir"
    return host.run([str(BIN / "weirctl"), "bpf", *args, "--bpffs", str(pins)])


@pytest.fixture
def lab():
    cleanup_prefix(PREFIX)  # what a run killed mid-way left
    for old in Path(tempfile.gettempdir()).glob(f"{PREFIX}-*"):
        teardown(None, old, prefix=PREFIX)
    tmp = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    topo = Topology(PREFIX)
    try:
        br = topo.bridge("br")
        client, lb = topo.host("client"), topo.host("lb")
        router, node = topo.host("router", forwarding=True), topo.host("node", forwarding=True)
        pod = topo.host("pod")
        topo.link(client, br, f"{CLIENT}/24")
        topo.link(lb, br, f"{LB}/24")
        topo.link(router, br, "10.80.0.1/24")
        topo.wire(router, node, "10.81.0.1/24", f"{NODE}/24", a_iface="eth1", b_iface="eth0")
        topo.wire(node, pod, "10.244.1.1/24", f"{POD}/24", a_iface="pod0", b_iface="eth0")
        client.run(["ip", "route", "add", f"{VIP}/32", "via", LB])
        client.run(["ip", "route", "add", "10.81.0.0/24", "via", "10.80.0.1"])
        # A veth hands TCP segments over with partial checksums, which XDP_TX would pass on
        # unfinished (a NIC or a router would have completed them): finish them on the client.
        client.run(["ethtool", "-K", "eth0", "tx", "off"])
        lb.run(["ip", "route", "add", "10.81.0.0/24", "via", "10.80.0.1"])
        node.run(["ip", "route", "add", "default", "via", "10.81.0.1"])
        pod.run(["ip", "route", "add", "default", "via", "10.244.1.1"])
        # Replies come from the node with the VIP as source: no strict uRPF on the fabric.
        for key in ("all", "default", "eth1"):
            router.run(["sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0"])
        (tmp / "views").mkdir()
        for name, snap in views().items():
            (tmp / "views" / f"{name}.pb").write_bytes(snap.SerializeToString())
        plane = client.popen(
            [sys.executable, str(PODPATH), "plane", "--listen", CTL, "--views", str(tmp / "views")],
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        assert "listening" in read_line(plane.stdout, 30)
        served = pod.popen(
            [sys.executable, str(PODPATH), "pod", "--port", str(POD_PORT)],
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        assert "listening" in read_line(served.stdout, 30)
        agents = {"lb": agent(lb, tmp), "node": agent(node, tmp)}
        acks = {}
        while len(acks) < len(agents):  # each agent compiles its role's program first
            line = read_line(plane.stdout, 120)
            assert line, f"no ack from {set(agents) - set(acks)} in time"
            ack = json.loads(line)
            acks[ack["node"]] = ack
        yield topo, tmp, acks
    finally:
        teardown(topo, tmp, prefix=PREFIX, show_logs=("lb", "node"), log_lines=30)


def test_client_reaches_a_pod_through_both_roles(lab) -> None:
    topo, tmp, acks = lab
    client, lb, _, node, _ = topo.hosts
    for name, ack in acks.items():
        assert (ack["version"], ack["errors"], ack["error"]) == (1, {}, ""), name

    size = 300_000
    ask = [sys.executable, str(PODPATH), "client", "--vip", VIP, "--port", str(PORT)]
    got = json.loads(client.run([*ask, "--bytes", str(size)], timeout=60))
    # The pod saw the client's own address and port, and every byte of the upload.
    assert got["answer"] == f"{got['local']} {size}"
    assert got["local"].startswith(f"{CLIENT}:")

    # No segment of the client's was too big to encapsulate: the MSS it was offered fit.
    assert re.search(r"\ttoo_big packets 0 ", weirctl(lb, tmp, "stats"))
    dump = weirctl(lb, tmp, "nat", "dump")
    assert re.search(rf"\t\d+:0\t {POD}:{POD_PORT} via {NODE} mac \S+ slots 251", dump), dump
    stats = weirctl(node, tmp, "stats")
    counts = {m[0]: int(m[1]) for m in re.findall(r"\t(\w+) packets (\d+)", stats)}
    assert counts["decap"] > size // 1500 and counts["reverse"] > 0, stats
    assert counts["mss_clamped"] == 1, stats
    assert all(counts[r] == 0 for r in ("not_lb", "header", "unknown", "decap_failed")), stats
    local = weirctl(node, tmp, "nat", "local")
    assert f"{VIP} port {PORT} proto 6 -> {POD}:{POD_PORT} packets" in local, local
    assert f"lb nodes {LB}" in local and "mss clamp 1424 (underlay MTU 1500)" in local, local

    # Each node runs only the role its view gives it.
    assert "xdp" not in node.run(["ip", "link", "show", "eth0"])
    assert "xdp" in lb.run(["ip", "link", "show", "eth0"])
    assert not lb.run(["tc", "filter", "show", "dev", "eth0", "ingress"]).strip()
    assert weirctl(lb, tmp, "nat", "local").startswith("no backend role on this node")
