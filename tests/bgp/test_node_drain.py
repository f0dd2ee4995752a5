"""`weirctl node drain` with real routing: the router loses the node's next hop, the node
keeps forwarding, and `weirctl node undrain` brings the next hop back.

    router (BIRD 2) ── bridge ─┬─ n1, n2: weir-agent (XDP generic + ExaBGP)
      10.97.0.1                ├─ ctl: weir-controller (file source)
                               └─ b1: a backend (answers ARP, so the service is programmed)

Everything is the installed commands. The agents run with a --status-interval longer than
the test: every status the controller shows comes from the prompt reports (on a version,
and on every BGP session change), not from the periodic one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from weir.lab import manifests
from weir.lab.bird import Bird, peers_of
from weir.lab.deployment import Deployment
from weir.lab.netns import Topology, cleanup_prefix
from weir.lab.processes import BIN, AgentOptions
from weir.lab.wait import wait_until
from weir.nodeagent.dataplane import inspection

from tests.requirements import BIRD, EXABGP, requires, root

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    requires(root, BIRD, EXABGP),
]

PREFIX = "wnd"
ROUTER, CTL_ADDR, BACKEND = "10.97.0.1", "10.97.0.2", "10.97.0.31"
LBS = {"n1": "10.97.0.11", "n2": "10.97.0.12"}
CTL = "127.0.0.1:9443"  # weirctl runs in the controller's namespace
VIP, PORT = "192.0.2.30", 80
SERVICE_ID = f"{VIP}:{PORT}/TCP"
ROUTER_ASN, NODE_ASN = 65000, 65001

MANIFESTS = [
    manifests.service("web", VIP, PORT),
    manifests.endpoint_slice("web", PORT, [BACKEND]),
    manifests.bgp_peer("router", ROUTER, ROUTER_ASN, NODE_ASN, holdTime=9),
    *(manifests.node(name, addr) for name, addr in LBS.items()),
]


@dataclass
class Lab:
    bird: Bird
    weir: Deployment

    def weirctl(self, *args: str, timeout: float = 60) -> str:
        weirctl = [str(BIN / "weirctl"), "--controller", CTL, *args]
        return self.weir.ctl.run(weirctl, timeout=timeout)

    def wait_hops(self, names: list[str], limit: float) -> None:
        self.bird.wait_kernel_next_hops(f"{VIP}/32", [LBS[n] for n in names], limit)

    def peers(self) -> dict[str, dict]:
        return {n["node"]: n for n in json.loads(self.weirctl("bgp", "peers", "-o", "json"))}

    def services(self, name: str) -> set[str]:
        """The services n's pinned data plane holds now."""
        with self.weir.maps(name) as maps:
            services, _ = inspection.stats(maps)
        return {c.name for c, _ in services}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    cleanup_prefix(PREFIX)
    with Topology(PREFIX) as topo:
        lan = topo.bridge("lan")
        router = topo.host("r", forwarding=True)
        topo.link(router, lan, f"{ROUTER}/24")
        ctl = topo.host("ctl")
        topo.link(ctl, lan, f"{CTL_ADDR}/24")
        backend = topo.host("b1")
        topo.link(backend, lan, f"{BACKEND}/24")
        lbs = {}
        for name, addr in LBS.items():
            lbs[name] = topo.host(name)
            topo.link(lbs[name], lan, f"{addr}/24")
        workdir = topo.workdir()
        peers = peers_of(LBS, NODE_ASN, hold_time=9)
        bird = Bird(router, workdir / "bird", ROUTER, ROUTER_ASN, peers)
        bird.start()
        weir = Deployment(
            topo, workdir, ctl, lbs,
            agent=AgentOptions(
                xdp_mode="generic", max_backends=64, max_table_slots=65536,
                conntrack_entries=16384, status_interval=3600,
            ),
            tail_lines=25,
        )  # fmt: skip
        weir.write_manifests("lab.yaml", MANIFESTS)
        weir.start_controller()
        for name in LBS:
            weir.start_agent(name)
        lab = Lab(bird, weir)
        lab.wait_hops(list(LBS), 120)  # the first start compiles the XDP program
        yield lab


def test_drain_withdraws_the_next_hop_and_keeps_forwarding(lab: Lab) -> None:
    # Sessions are reported as they come up, not at --status-interval (an hour here).
    wait_until(
        lambda: all(
            [s["state"] for s in lab.peers().get(n, {}).get("sessions", [])] == ["established"]
            for n in LBS
        ),
        20,
        "both sessions shown established",
        0.2,
    )
    assert lab.services("n1") == {SERVICE_ID}

    out = lab.weirctl("node", "drain", "n1", "--timeout", "30")
    assert "node n1: draining, announcing nothing" in out, out
    lab.wait_hops(["n2"], 10)  # the router lost n1's next hop

    # n1 is drained, not gone: its session stays up, its data plane keeps the service (an
    # in-flight flow the router still sends it is forwarded), its XDP program stays.
    peers = lab.peers()
    assert peers["n1"]["draining"] and peers["n1"]["announced"] == []
    (session,) = peers["n1"]["sessions"]
    assert session["state"] == "established" and int(session["routes_sent"]) == 0
    assert not peers["n2"]["draining"] and peers["n2"]["announced"] == [f"{VIP}/32"]
    assert lab.services("n1") == {SERVICE_ID}
    assert "xdp" in lab.weir.nodes["n1"].run(["ip", "link", "show", "eth0"])
    assert "n1 (draining)" in lab.weirctl("agents")
    assert "n1 (draining)" in lab.weirctl("bgp", "peers")

    out = lab.weirctl("node", "undrain", "n1", "--timeout", "30")
    # weirctl returns once the route went out again, and says so.
    assert f"node n1: not draining, announcing {VIP}/32" in out, out
    assert "router established 1 routes sent" in out, out
    lab.wait_hops(list(LBS), 10)
    wait_until(
        lambda: lab.peers()["n1"]["announced"] == [f"{VIP}/32"], 10, "n1 announcing again", 0.2
    )
    assert "(draining)" not in lab.weirctl("agents")
