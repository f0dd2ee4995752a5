"""End to end: controller (file source) -> two agents -> XDP Maglev + DSR -> three backends.

    client ─┐                       (the client routes the VIP over both LB nodes, ECMP)
    lb1 ────┤ bridge (one L2 segment) ── b1, b2, b3: VIP on lo, arp_ignore=1/arp_announce=2,
    lb2 ────┤                             a TCP server answering with its own name
    ctl ────┘ weir-controller --plaintext, manifests in a temp directory

Everything is real: weir-controller and weir-agent are the installed commands, the XDP program
is loaded by the agents on their uplinks (native mode), traffic is kernel TCP between
namespaces. Each agent has its own bpffs mounted outside /sys (`ip netns exec` remounts /sys).
The topology is built once for the module; the tests run in file order and the ones that
change the manifest put it back.

Two veth artifacts a physical network would not need: the bridge-side ends of the LB nodes
carry a pass-through XDP program (native XDP_TX on a veth is delivered through the peer's XDP
receive path), and the client finishes TCP checksums itself (`ethtool -K eth0 tx off`: a veth
hands over partial checksums, which XDP_TX would forward unfinished).
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from weir.lab.netns import Host, Topology, cleanup_prefix, sh
from weir.lab.stack import read_line, start_backend, teardown

from tests.requirements import ETHTOOL, TCPDUMP, requires, root

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    requires(root, TCPDUMP, ETHTOOL),
]

PREFIX = "wage"
VIP = "192.0.2.10"
PORT = 80
CTL_ADDR = "10.77.0.2"
CTL = f"{CTL_ADDR}:9443"
CLIENT_ADDR = "10.77.0.10"
LBS = {"lb1": "10.77.0.21", "lb2": "10.77.0.22"}
BACKENDS = {"b1": "10.77.0.31", "b2": "10.77.0.32", "b3": "10.77.0.33"}
SEED = 12345
BIN = Path(sys.executable).parent
SUPPORT = Path(__file__).with_name("support.py")


def manifest(backends: list[str]) -> str:
    endpoints = "".join(
        f"- addresses: [{BACKENDS[b]}]\n  conditions: {{ready: true}}\n" for b in backends
    )
    # The agents' nodes are load-balancer nodes: only their views carry the services.
    nodes = "".join(
        f"""\
apiVersion: v1
kind: Node
metadata: {{name: {name}, labels: {{weir.dev/load-balancer: "true"}}}}
status: {{addresses: [{{type: InternalIP, address: {address}}}]}}
---
"""
        for name, address in LBS.items()
    )
    return f"""\
{nodes}apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  annotations:
    weir.dev/load-balancer-ips: {VIP}
spec:
  type: LoadBalancer
  loadBalancerClass: weir.dev/maglev
  ports:
  - name: http
    port: {PORT}
    targetPort: {PORT}
    protocol: TCP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: {PORT}
  protocol: TCP
endpoints:
{endpoints}"""


@dataclass
class Lab:
    topo: Topology
    tmp: Path
    ctl: Host
    client: Host
    lbs: dict[str, Host]
    backends: dict[str, Host]
    agents: dict[str, subprocess.Popen] = field(default_factory=dict)

    # -- processes --------------------------------------------------------------------------

    def support(self, host: Host, *args: str, timeout: float = 30) -> object:
        proc = subprocess.run(
            host.cmd([sys.executable, str(SUPPORT), *args]),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == 0, f"support {args[0]}: rc {proc.returncode}: {proc.stderr}"
        return json.loads(proc.stdout)

    def start_agent(self, name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        proc = self.lbs[name].popen(
            [
                str(BIN / "weir-agent"),
                "--controller",
                CTL,
                "--plaintext",
                "--node",
                name,
                "--interface",
                "eth0",
                "--xdp-mode",
                "native",
                "--bpffs",
                str(self.bpffs(name)),
                "--max-services",
                "64",
                "--max-backends",
                "1024",
                "--max-table-slots",
                "262144",
                "--conntrack-entries",
                "65536",
                "--status-interval",
                "1",
                # Stop as for an upgrade: no BGP drain grace (no peers here anyway).
                "--bgp-on-stop",
                "restart",
                "--log-format",
                "json",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.agents[name] = proc
        return proc

    def stop_agent(self, name: str) -> int:
        proc = self.agents.pop(name)
        os.killpg(proc.pid, signal.SIGTERM)
        return proc.wait(timeout=20)

    def agent_log(self, name: str) -> list[dict]:
        lines = (self.tmp / f"{name}.log").read_text().splitlines()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def converge(self, min_version: int = 0, timeout: float = 20) -> dict:
        """Wait until both agents acked the controller's latest version (>= min_version)."""
        args = ["--controller", CTL, "--nodes", ",".join(LBS), "--min-version", str(min_version)]
        plane = [sys.executable, "-m", "weir.lab.plane", *args, "--timeout", str(timeout)]
        out = json.loads(self.ctl.run(plane, timeout=timeout + 15))
        assert out["converged"], f"agents did not converge: {json.dumps(out)[:2000]}"
        return out

    def write_manifest(self, backends: list[str]) -> None:
        # Atomic: the file source never reads half a file.
        tmp = self.tmp / "manifests" / ".web.yaml.tmp"
        tmp.write_text(manifest(backends))
        tmp.rename(self.tmp / "manifests" / "web.yaml")

    def set_backends(self, backends: list[str]) -> float:
        """Write the manifest, wait until both agents acked the version it makes; returns the
        seconds from the write to then (controller file poll + versions + agents' applies)."""
        version = int(self.converge()["version"])
        started = time.time()
        self.write_manifest(backends)
        self.converge(min_version=version + 1)
        return time.time() - started

    # -- traffic ----------------------------------------------------------------------------

    def burst(self, *, count: int = 0, sports: list[int] | None = None) -> list[dict]:
        args = ["burst", "--vip", VIP, "--port", str(PORT), "--count", str(count)]
        if sports:
            args += ["--sports", ",".join(map(str, sports))]
        return self.support(self.client, *args, timeout=120)  # type: ignore[return-value]

    def route_via(self, *lbs: str) -> None:
        hops = [x for lb in lbs for x in ("nexthop", "via", LBS[lb])]
        self.client.run(["ip", "route", "replace", f"{VIP}/32", *hops])

    def capture(self, host: Host, bpf_filter: str) -> subprocess.Popen:
        """tcpdump on host's eth0, printing one line per packet; returns once it listens."""
        proc = host.popen(
            ["tcpdump", "-i", "eth0", "-nn", "-e", "-l", "-q", bpf_filter],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,  # unbuffered: select() on the pipe must see every line
        )
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = read_line(proc.stderr, deadline - time.monotonic())
            seen.append(line)
            if "listening on" in line or not line:
                break
        assert "listening on" in seen[-1], f"tcpdump did not start: {seen!r}"
        return proc

    def new_flows(self, lb: str) -> int:
        """The XDP program's new-flow counter for the service on one LB node (weirctl)."""
        out = sh([str(BIN / "weirctl"), "bpf", "stats", "--bpffs", str(self.bpffs(lb))])
        found = re.search(r"^service \S+ .*new_flows (\d+)", out, re.M)
        assert found, out
        return int(found.group(1))

    def bpffs(self, lb: str) -> Path:
        return self.tmp / f"{lb}-bpf" / "weir"

    def stream(self, seconds: float, timeout: float = 3) -> Stream:
        proc = self.client.popen(
            [
                sys.executable,
                str(SUPPORT),
                "stream",
                "--vip",
                VIP,
                "--port",
                str(PORT),
                "--seconds",
                str(seconds),
                "--concurrency",
                "4",
                "--timeout",
                str(timeout),
            ],
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        return Stream(proc)

    def hold(self, count: int) -> subprocess.Popen:
        return self.client.popen(
            [
                sys.executable,
                str(SUPPORT),
                "hold",
                "--vip",
                VIP,
                "--port",
                str(PORT),
                "--count",
                str(count),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )


class Stream:
    """New connections opened back to back by a client child (support.py stream). A thread
    drains its output as it comes, so the child never blocks on a full pipe."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.results: list[dict] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.results.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pred, timeout: float = 10) -> None:
        """Block until pred(results so far) holds (bounded)."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: pred(self.results) or not self._reader.is_alive(), timeout
            )
            assert ok and pred(self.results), f"stream stalled: {self.results[-3:]}"

    def finish(self, timeout: float = 60) -> list[dict]:
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return sorted(self.results, key=lambda r: r["t"])


def ping_held(proc: subprocess.Popen) -> list[str]:
    proc.stdin.write(b"ping\n")
    proc.stdin.flush()
    line = read_line(proc.stdout, 15)
    assert line, "the holding client did not answer"
    return json.loads(line)


def stop_capture(proc: subprocess.Popen) -> list[str]:
    """Stop tcpdump (it flushes on SIGINT) and return the packet lines it printed."""
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    return [line for line in out.decode().splitlines() if line.strip()]


def attach_xdp_pass(interfaces: list[str]) -> None:
    from bcc import BPF

    bpf = BPF(text=b"int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }")
    fn = bpf.load_func(b"xdp_pass", BPF.XDP)
    for dev in interfaces:
        bpf.attach_xdp(dev.encode(), fn, 0)  # netlink attach: stays until the veth is deleted
    bpf.cleanup()


def mount_bpffs(path: Path) -> None:
    path.mkdir(parents=True)
    sh(["mount", "-t", "bpf", "bpf", str(path)])


def cleanup_leftovers() -> None:
    """Namespaces, links and bpffs mounts of an earlier run that was killed mid-way."""
    cleanup_prefix(PREFIX)
    for old in Path(tempfile.gettempdir()).glob(f"{PREFIX}-*"):
        teardown(None, old, prefix=PREFIX)


@pytest.fixture(scope="module")
def lab():
    cleanup_leftovers()
    tmp = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    topo = Topology(PREFIX)
    try:
        br = topo.bridge("br")
        ctl = topo.host("ctl")
        topo.link(ctl, br, f"{CTL_ADDR}/24")
        client = topo.host("client")
        topo.link(client, br, f"{CLIENT_ADDR}/24")
        # L4 hashing for the client's ECMP route, as a router would spread flows.
        client.run(["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"])
        # A veth hands TCP segments over with partial checksums, which XDP_TX would pass on
        # unfinished (a NIC or a router would have completed them): finish them on the client.
        client.run(["ethtool", "-K", "eth0", "tx", "off"])
        lbs = {}
        peers: list[str] = []
        for name, addr in LBS.items():
            lbs[name] = topo.host(name)
            topo.link(lbs[name], br, f"{addr}/24")
            peers.append(topo.links[-1])
        backends = {}
        for name, addr in BACKENDS.items():
            h = backends[name] = topo.host(name)
            topo.link(h, br, f"{addr}/24")
            h.run(["ip", "addr", "add", f"{VIP}/32", "dev", "lo"])
            for key, value in (("arp_ignore", 1), ("arp_announce", 2)):
                for dev in ("all", "eth0"):
                    h.run(["sysctl", "-qw", f"net.ipv4.conf.{dev}.{key}={value}"])
        lab = Lab(topo, tmp, ctl, client, lbs, backends)
        # Native XDP_TX on a veth hands the frame to the peer's XDP receive path, which only
        # runs when the peer has an XDP program too: give the bridge-side ends a pass-through
        # one (a physical NIC needs nothing of the kind).
        attach_xdp_pass(peers)
        for name, h in backends.items():
            start_backend(h, name, PORT, lines=True)
        (tmp / "manifests").mkdir()
        lab.write_manifest(list(BACKENDS))
        ctl_log = open(tmp / "controller.log", "ab")
        ctl.popen(
            [
                str(BIN / "weir-controller"),
                "--plaintext",
                "--listen",
                f"0.0.0.0:{CTL.split(':')[1]}",
                "--manifests",
                str(tmp / "manifests"),
                "--maglev-seed",
                str(SEED),
                "--log-format",
                "json",
            ],
            stdout=ctl_log,
            stderr=subprocess.STDOUT,
        )
        ctl_log.close()
        for name in LBS:
            mount_bpffs(tmp / f"{name}-bpf")
            lab.start_agent(name)
        lab.route_via(*LBS)
        lab.converge(timeout=60)  # the first start compiles the XDP program
        yield lab
    finally:
        teardown(topo, tmp, prefix=PREFIX, show_logs=("controller", *LBS), log_lines=40)


def by_backend(results: list[dict]) -> collections.Counter:
    return collections.Counter(r["backend"] for r in results)


def failures(results: list[dict]) -> list[dict]:
    return [r for r in results if r["error"] or not r["backend"]]


def test_300_connections_balanced_replies_straight_from_backends(lab: Lab) -> None:
    lb_caps = {name: lab.capture(h, "tcp and src port 80") for name, h in lab.lbs.items()}
    client_cap = lab.capture(lab.client, "tcp and src port 80")
    flows_before = {lb: lab.new_flows(lb) for lb in LBS}
    # Fixed source ports: the outcome is a function of the seed, so the test cannot flake.
    results = lab.burst(sports=list(range(40000, 40300)))
    seen_lb = {name: stop_capture(p) for name, p in lb_caps.items()}
    seen_client = stop_capture(client_cap)
    flows = {lb: lab.new_flows(lb) - flows_before[lb] for lb in LBS}

    assert failures(results) == []
    counts = by_backend(results)
    print(f"300 connections: per backend {dict(counts)}, new flows per LB node {flows}")
    assert set(counts) == set(BACKENDS)
    for name, n in counts.items():
        assert 75 <= n <= 125, f"{name} got {n} of 300 connections: {dict(counts)}"
    # ECMP spread the flows over both LB nodes, and each flow was picked once.
    assert sum(flows.values()) == 300 and min(flows.values()) >= 60, flows
    # DSR: the LB nodes never see a reply; the client sees them all, from backend MACs.
    assert seen_lb == {name: [] for name in LBS}
    backend_macs = {h.mac("eth0") for h in lab.backends.values()}
    assert len(seen_client) >= 300
    reply_macs = {line.split()[1] for line in seen_client}
    assert reply_macs <= backend_macs, f"replies from {reply_macs - backend_macs}"


def test_same_flow_through_either_lb_reaches_same_backend(lab: Lab) -> None:
    sports = list(range(41000, 41040))
    start = {lb: lab.new_flows(lb) for lb in LBS}
    try:
        lab.route_via("lb1")
        via1 = lab.burst(sports=sports)
        mid = {lb: lab.new_flows(lb) for lb in LBS}
        lab.route_via("lb2")
        via2 = lab.burst(sports=sports)
        end = {lb: lab.new_flows(lb) for lb in LBS}
    finally:
        lab.route_via(*LBS)
    assert failures(via1) == [] and failures(via2) == []
    assert len(set(by_backend(via1))) == 3
    assert [r["backend"] for r in via1] == [r["backend"] for r in via2]
    # Each LB node hashed all 40 flows itself: lb2 had no conntrack entry for any of them.
    assert (mid["lb1"] - start["lb1"], mid["lb2"] - start["lb2"]) == (40, 0)
    assert (end["lb1"] - mid["lb1"], end["lb2"] - mid["lb2"]) == (0, 40)


def test_removing_a_backend(lab: Lab) -> None:
    held = lab.hold(12)
    try:
        before = ping_held(held)
        assert not [a for a in before if a.startswith("error")]
        stream = lab.stream(seconds=3)
        stream.wait_for(lambda rs: sum(r["backend"] == "b3" for r in rs) >= 5)
        removed_at = time.time()
        seconds = lab.set_backends(["b1", "b2"])
        results = stream.finish()
        after = ping_held(held)
    finally:
        held.stdin.close()
        held.wait(timeout=10)
        lab.set_backends(list(BACKENDS))
    print(f"backend removal applied by both agents {seconds:.3f} s after the manifest write")
    assert failures(results) == []
    late = [r for r in results if r["backend"] == "b3" and r["t"] > removed_at + 1.0]
    assert late == [], f"{len(late)} new flows reached b3 more than 1 s after its removal"
    assert sum(r["t"] > removed_at + 1.0 for r in results) > 50, "too few flows after removal"
    # Established flows to the remaining backends stay where they were.
    kept = [(b, a) for b, a in zip(before, after, strict=True) if b in ("b1", "b2")]
    assert kept and all(b == a for b, a in kept), kept


def test_agent_restart_under_traffic(lab: Lab) -> None:
    # A VIP packet reaches an LB node's own stack only when XDP did not take it: forwarding
    # stopped. That is what must never happen, whatever the load on the machine; the client's
    # timeout is generous because two agents compiling at once can starve 2 cores for seconds.
    lb_caps = {name: lab.capture(h, f"dst host {VIP}") for name, h in lab.lbs.items()}
    held = lab.hold(12)
    try:
        before = ping_held(held)
        stream = lab.stream(seconds=6, timeout=10)
        stream.wait_for(lambda rs: len(rs) >= 20)
        events = []
        for name in LBS:
            events.append((f"stop {name}", time.time()))
            assert lab.stop_agent(name) == 0
            events.append((f"start {name}", time.time()))
            lab.start_agent(name)
        lab.converge(timeout=30)
        events.append(("converged", time.time()))
        results = stream.finish()
        after = ping_held(held)
    finally:
        held.stdin.close()
        held.wait(timeout=10)
        passed = {name: stop_capture(p) for name, p in lb_caps.items()}
    assert passed == {name: [] for name in LBS}, "VIP packets missed the XDP program"
    assert len(results) > 100
    assert failures(results) == [], f"restart events: {events}"
    assert not [a for a in before if a.startswith("error")] and after == before
    # The restarted agents adopted the pinned maps and rewrote nothing.
    for name in LBS:
        log = lab.agent_log(name)
        adopted = [e for e in log if e.get("event") == "adopted pinned services"]
        applied = [e for e in log if e.get("event") == "version applied"]
        assert adopted[-1]["services"] == 1
        assert applied[-1]["written"] == 0 and applied[-1]["unchanged"] == 1, applied[-1]
