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
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from weir.lab import manifests, traffic
from weir.lab.client import Outcome, Target
from weir.lab.deployment import Deployment
from weir.lab.netns import Host, Topology, cleanup_prefix, kill_group
from weir.lab.processes import AgentOptions, ControllerOptions
from weir.lab.roles import attach_xdp_pass, dsr_backend, finish_checksums
from weir.nodeagent.dataplane.pinned import possible_cpus

from tests.dataplane.first_release import downgrade_to_first_release
from tests.requirements import ETHTOOL, TCPDUMP, requires, root

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    requires(root, TCPDUMP, ETHTOOL),
]

PREFIX = "wage"
VIP = "192.0.2.10"
PORT = 80
TARGET = Target(VIP, PORT, "lines")
CTL_ADDR = "10.77.0.2"
CLIENT_ADDR = "10.77.0.10"
LBS = {"lb1": "10.77.0.21", "lb2": "10.77.0.22"}
BACKENDS = {"b1": "10.77.0.31", "b2": "10.77.0.32", "b3": "10.77.0.33"}
SEED = 12345
SERVICE_ID = f"{VIP}:{PORT}/TCP"


@dataclass
class Lab:
    client: Host
    backends: dict[str, Host]
    weir: Deployment

    def write_manifest(self, backends: list[str]) -> None:
        service = manifests.service("web", VIP, PORT)
        endpoints = manifests.endpoint_slice("web", PORT, [BACKENDS[b] for b in backends])
        # The agents' nodes are load-balancer nodes: only their views carry the services.
        nodes = [manifests.node(name, address) for name, address in LBS.items()]
        self.weir.write_manifests("web.yaml", [*nodes, service, endpoints])

    def set_backends(self, backends: list[str]) -> float:
        """Write the manifest, wait until both agents acked the version it makes; returns the
        seconds from the write to then (controller file poll + versions + agents' applies)."""
        version = self.weir.converge().version
        started = time.time()
        self.write_manifest(backends)
        self.weir.converge(min_version=version + 1)
        return time.time() - started

    def start_agent(self, name: str) -> None:
        # Stop as for an upgrade: no BGP drain grace (no peers here anyway).
        self.weir.start_agent(name, bgp_on_stop="restart")

    def burst(self, sports: list[int]) -> list[Outcome]:
        return traffic.burst(self.client, TARGET, sports=sports)

    def route_via(self, *lbs: str) -> None:
        self.client.route(f"{VIP}/32", *(LBS[lb] for lb in lbs))

    def capture(self, host: Host, bpf_filter: str) -> subprocess.Popen:
        """tcpdump on host's eth0, printing one line per packet; returns once it listens."""
        proc = host.popen(
            ["tcpdump", "-i", "eth0", "-nn", "-e", "-l", "-q", bpf_filter],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        status = traffic.Lines(proc.stderr)  # type: ignore[arg-type]
        seen = []
        while (line := status.next(10)) is not None:
            seen.append(line)
            if "listening on" in line:
                return proc
        raise AssertionError(f"tcpdump did not start: {seen!r}")

    def new_flows(self, lb: str) -> int:
        """The XDP program's new-flow counter for the service on one LB node."""
        return self.weir.new_flows(lb, SERVICE_ID)


def stop_capture(proc: subprocess.Popen) -> list[str]:
    """Stop tcpdump (it flushes on SIGINT) and return the packet lines it printed."""
    kill_group(proc, signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    return [line for line in out.decode().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    cleanup_prefix(PREFIX)
    with Topology(PREFIX) as topo:
        br = topo.bridge("br")
        ctl = topo.host("ctl")
        topo.link(ctl, br, f"{CTL_ADDR}/24")
        # L4 hashing for the client's ECMP route, as a router would spread flows.
        client = topo.host("client", sysctls={"net.ipv4.fib_multipath_hash_policy": 1})
        topo.link(client, br, f"{CLIENT_ADDR}/24")
        finish_checksums(client)
        lbs = {}
        ports: list[str] = []
        for name, addr in LBS.items():
            lbs[name] = topo.host(name)
            ports.append(topo.link(lbs[name], br, f"{addr}/24"))
        backends = {}
        for name, addr in BACKENDS.items():
            h = backends[name] = topo.host(name)
            topo.link(h, br, f"{addr}/24")
            dsr_backend(h, [VIP])
        attach_xdp_pass(ports)
        for name, h in backends.items():
            traffic.serve(h, name, PORT, proto="lines")
        weir = Deployment(
            topo, topo.workdir(), ctl, lbs,
            controller=ControllerOptions(maglev_seed=SEED),
            agent=AgentOptions(max_services=64, max_backends=1024),
            tail_lines=40,
        )  # fmt: skip
        lab = Lab(client, backends, weir)
        lab.write_manifest(list(BACKENDS))
        weir.start_controller()
        for name in LBS:
            lab.start_agent(name)
        lab.route_via(*LBS)
        weir.converge(timeout=60)  # the first start compiles the XDP program
        yield lab


def by_backend(results: list[Outcome]) -> collections.Counter:
    return collections.Counter(r.backend for r in results)


def failures(results: list[Outcome]) -> list[Outcome]:
    return [r for r in results if not r.ok]


def by_sport(results: list[Outcome]) -> list[Outcome]:
    return sorted(results, key=lambda r: r.sport)


def test_300_connections_balanced_replies_straight_from_backends(lab: Lab) -> None:
    lb_caps = {name: lab.capture(h, "tcp and src port 80") for name, h in lab.weir.nodes.items()}
    client_cap = lab.capture(lab.client, "tcp and src port 80")
    flows_before = {lb: lab.new_flows(lb) for lb in LBS}
    # Fixed source ports: the outcome is a function of the seed, so the test cannot flake.
    results = lab.burst(list(range(40000, 40300)))
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
        via1 = lab.burst(sports)
        mid = {lb: lab.new_flows(lb) for lb in LBS}
        lab.route_via("lb2")
        via2 = lab.burst(sports)
        end = {lb: lab.new_flows(lb) for lb in LBS}
    finally:
        lab.route_via(*LBS)
    assert failures(via1) == [] and failures(via2) == []
    assert len(set(by_backend(via1))) == 3
    assert [r.backend for r in by_sport(via1)] == [r.backend for r in by_sport(via2)]
    # Each LB node hashed all 40 flows itself: lb2 had no conntrack entry for any of them.
    assert (mid["lb1"] - start["lb1"], mid["lb2"] - start["lb2"]) == (40, 0)
    assert (end["lb1"] - mid["lb1"], end["lb2"] - mid["lb2"]) == (0, 40)


def test_removing_a_backend(lab: Lab) -> None:
    held = traffic.Held(lab.client, TARGET, 12)
    try:
        before = held.ping()
        assert not [a for a in before if a.startswith("error")]
        stream = traffic.Stream(lab.client, TARGET, seconds=3)
        stream.wait_for(lambda rs: sum(r.backend == "b3" for r in rs) >= 5)
        removed_at = time.time()
        seconds = lab.set_backends(["b1", "b2"])
        results = stream.finish()
        after = held.ping()
    finally:
        held.close()
        lab.set_backends(list(BACKENDS))
    print(f"backend removal applied by both agents {seconds:.3f} s after the manifest write")
    # A connection whose handshake straddles the flip that retires its backend is reset: its
    # ACK finds the entry of a retired backend and goes by the new table, to a backend that
    # knows no such connection. Only those may fail, and only while the removal applied.
    applied = removed_at + seconds + 0.5
    straddled = [
        r
        for r in failures(results)
        if "ConnectionReset" in r.error and removed_at - 0.5 <= r.t <= applied
    ]
    assert [r for r in failures(results) if r not in straddled] == []
    assert len(straddled) <= 2, straddled
    late = [r for r in results if r.backend == "b3" and r.t > removed_at + 1.0]
    assert late == [], f"{len(late)} new flows reached b3 more than 1 s after its removal"
    assert sum(r.t > removed_at + 1.0 for r in results) > 50, "too few flows after removal"
    # Established flows to the remaining backends stay where they were.
    kept = [(b, a) for b, a in zip(before, after, strict=True) if b in ("b1", "b2")]
    assert kept and all(b == a for b, a in kept), kept


def test_agent_restart_under_traffic(lab: Lab) -> None:
    # A VIP packet reaches an LB node's own stack only when XDP did not take it: forwarding
    # stopped. That is what must never happen, whatever the load on the machine; the client's
    # timeout is generous because two agents compiling at once can starve 2 cores for seconds.
    lb_caps = {name: lab.capture(h, f"dst host {VIP}") for name, h in lab.weir.nodes.items()}
    held = traffic.Held(lab.client, TARGET, 12)
    try:
        before = held.ping()
        stream = traffic.Stream(lab.client, TARGET, seconds=6, timeout=10)
        stream.wait_for(lambda rs: len(rs) >= 20)
        events = []
        for name in LBS:
            events.append((f"stop {name}", time.time()))
            assert lab.weir.stop_agent(name) == 0
            events.append((f"start {name}", time.time()))
            lab.start_agent(name)
        lab.weir.converge(timeout=30)
        events.append(("converged", time.time()))
        results = stream.finish()
        after = held.ping()
    finally:
        held.close()
        passed = {name: stop_capture(p) for name, p in lb_caps.items()}
    assert passed == {name: [] for name in LBS}, "VIP packets missed the XDP program"
    assert len(results) > 100
    assert failures(results) == [], f"restart events: {events}"
    assert not [a for a in before if a.startswith("error")] and after == before
    # The restarted agents adopted the pinned maps and rewrote nothing.
    for name in LBS:
        log = lab.weir.log_events(name)
        adopted = [e for e in log if e.get("event") == "adopted pinned services"]
        applied = [e for e in log if e.get("event") == "version applied"]
        assert adopted[-1]["services"] == 1
        assert applied[-1]["written"] == 0 and applied[-1]["unchanged"] == 1, applied[-1]


def test_rolling_upgrade_from_the_first_release_under_traffic(lab: Lab) -> None:
    """The agents rolled, one node after the other, from the first release, whose pins are of
    another layout: each new agent migrates them in place before it swaps the program
    (deploy/README.md, Versions and upgrades), while connections go on."""
    held = traffic.Held(lab.client, TARGET, 12)
    try:
        before = held.ping()
        stream = traffic.Stream(lab.client, TARGET, seconds=6, timeout=10)
        stream.wait_for(lambda rs: len(rs) >= 20)
        for name in LBS:
            assert lab.weir.stop_agent(name) == 0
            # What the first release's agent leaves behind: its pins, its program attached
            # and forwarding with the maps it has.
            downgrade_to_first_release(lab.weir.bpffs(name), possible_cpus(), (VIP, PORT, 6))
            lab.start_agent(name)
        lab.weir.converge(timeout=30)
        results = stream.finish()
        after = held.ping()
    finally:
        held.close()
    assert len(results) > 100
    assert failures(results) == []
    assert not [a for a in before if a.startswith("error")] and after == before
    for name in LBS:
        log = lab.weir.log_events(name)
        (migrated,) = [e for e in log if e.get("event") == "pinned maps migrated"]
        assert migrated["from_version"] == 1 and migrated["flows"] > 0, migrated
        assert [e["layout"] for e in log if e.get("event") == "migrating pinned maps"] == [1]
