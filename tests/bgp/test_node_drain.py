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
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from weir.lab.netns import Host, Topology, cleanup_prefix, sh
from weir.nodeagent.dataplane import inspection
from weir.nodeagent.dataplane.pinned import PinnedMaps

from tests.bgp.bird import Bird, BirdPeer, wait_until
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
BIN = Path(sys.executable).parent

MANIFESTS = f"""\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  annotations: {{weir.dev/load-balancer-ips: "{VIP}"}}
spec:
  type: LoadBalancer
  loadBalancerClass: weir.dev/maglev
  ports: [{{name: http, port: {PORT}, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: {PORT}, protocol: TCP}}]
endpoints: [{{addresses: ["{BACKEND}"], conditions: {{ready: true}}}}]
---
apiVersion: weir.dev/v1alpha1
kind: BGPPeer
metadata: {{name: router}}
spec:
  peerAddress: {ROUTER}
  peerASN: {ROUTER_ASN}
  localASN: {NODE_ASN}
  holdTime: 9
  nodeSelector: {{matchLabels: {{weir.dev/load-balancer: "true"}}}}
""" + "".join(
    f"""---
apiVersion: v1
kind: Node
metadata: {{name: {name}, labels: {{weir.dev/load-balancer: "true"}}}}
status: {{addresses: [{{type: InternalIP, address: {addr}}}]}}
"""
    for name, addr in LBS.items()
)


@dataclass
class Lab:
    tmp: Path
    ctl: Host
    lbs: dict[str, Host]
    bird: Bird
    mounts: list[Path] = field(default_factory=list)

    def weirctl(self, *args: str, timeout: float = 60) -> str:
        return self.ctl.run([str(BIN / "weirctl"), "--controller", CTL, *args], timeout=timeout)

    def hops(self) -> set[str]:
        return self.bird.kernel_next_hops(f"{VIP}/32")

    def wait_hops(self, names: list[str], limit: float) -> None:
        want = {LBS[n] for n in names}
        wait_until(lambda: self.hops() == want, limit, f"{VIP} via {sorted(names)}", 0.05)

    def peers(self) -> dict[str, dict]:
        return {n["node"]: n for n in json.loads(self.weirctl("bgp", "peers", "-o", "json"))}

    def services(self, name: str) -> set[str]:
        """The services n's pinned data plane holds now."""
        maps = PinnedMaps(self.tmp / f"{name}-bpf" / "weir")
        try:
            services, _ = inspection.stats(maps)
        finally:
            maps.close()
        return {c.name for c, _ in services}


def start(host: Host, log: Path, argv: list[str]) -> None:
    with open(log, "ab") as out:
        host.popen(argv, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    cleanup_prefix(PREFIX)
    tmp = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    tmp.chmod(0o711)  # ExaBGP's unprivileged user reaches its config in tmp/<node>-bgp
    topo = Topology(PREFIX)
    lab = None
    try:
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
        peers = [BirdPeer(n, a, NODE_ASN, hold_time=9) for n, a in LBS.items()]
        bird = Bird(router, tmp / "bird", ROUTER, ROUTER_ASN, peers)
        bird.start()
        lab = Lab(tmp, ctl, lbs, bird)
        (tmp / "manifests").mkdir()
        (tmp / "manifests" / "lab.yaml").write_text(MANIFESTS)
        start(ctl, tmp / "controller.log", [
            str(BIN / "weir-controller"), "--plaintext", "--listen", "0.0.0.0:9443",
            "--manifests", str(tmp / "manifests"), "--log-format", "json",
        ])  # fmt: skip
        for name, host in lbs.items():
            bpffs = tmp / f"{name}-bpf"
            bpffs.mkdir()
            sh(["mount", "-t", "bpf", "bpf", str(bpffs)])
            lab.mounts.append(bpffs)
            start(host, tmp / f"{name}.log", [
                str(BIN / "weir-agent"), "--controller", f"{CTL_ADDR}:9443", "--plaintext",
                "--node", name, "--interface", "eth0", "--xdp-mode", "generic",
                "--bpffs", str(bpffs / "weir"), "--max-services", "16", "--max-backends", "64",
                "--max-table-slots", "65536", "--conntrack-entries", "16384",
                "--status-interval", "3600", "--bgp-workdir", str(tmp / f"{name}-bgp"),
                "--log-format", "json",
            ])  # fmt: skip
        lab.wait_hops(list(LBS), 120)  # the first start compiles the XDP program
        yield lab
    finally:
        topo.close()
        if lab is not None:
            for m in lab.mounts:
                sh(["umount", str(m)], check=False)
            for name in ("controller", *LBS):
                log = tmp / f"{name}.log"
                if log.exists():
                    print(f"--- {name} log (tail) ---")
                    print("\n".join(log.read_text().splitlines()[-25:]))
        shutil.rmtree(tmp, ignore_errors=True)


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
    assert "xdp" in lab.lbs["n1"].run(["ip", "link", "show", "eth0"])
    assert "n1 (draining)" in lab.weirctl("agents")
    assert "n1 (draining)" in lab.weirctl("bgp", "peers")

    out = lab.weirctl("node", "undrain", "n1", "--timeout", "30")
    assert "node n1: not draining" in out, out
    lab.wait_hops(list(LBS), 10)
    wait_until(
        lambda: lab.peers()["n1"]["announced"] == [f"{VIP}/32"], 10, "n1 announcing again", 0.2
    )
    assert "(draining)" not in lab.weirctl("agents")
