"""Outages around working load-balancer nodes, in the lab's network (lab/topology.py): clients,
a BIRD router with ECMP over lb1..lb3 (BGP), DSR backends and pods. Real kernel, real
agents, controller and router.

- lb1's XDP program taken off under traffic: lb1 withdraws its routes within seconds, puts
  the program back and announces again; another program in its place stays there, and so
  does the withdrawal, until it goes.
- The controller killed under traffic: the agents go on forwarding and announcing what they
  applied; restarted, it makes no agent rewrite a table and no route move.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

import pytest
from weir.lab import traffic
from weir.lab.netns import Host
from weir.lab.stack import TARGET, VIPS, Stack
from weir.lab.topology import NODES, VIP
from weir.lab.wait import wait_until

from tests.requirements import BIRD, ETHTOOL, EXABGP, requires, root

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.timeout(600),
    requires(root, BIRD, EXABGP, ETHTOOL),
]

ROUTE = f"{VIP}/32"
ALL = set(NODES.values())
WITHOUT_LB1 = ALL - {NODES["lb1"]}

# Another tool's XDP program, put in the place of the agent's (no "only if none" flag): the
# way `ip link set dev eth0 xdpdrv obj other.o` would.
FOREIGN_XDP = """
from bcc import BPF
b = BPF(text=b"int other(struct xdp_md *ctx) { return XDP_PASS; }")
b.attach_xdp(b"eth0", b.load_func(b"other", BPF.XDP), 1 << 2)
"""


@pytest.fixture
def lab(running: Stack) -> Stack:
    assert running.routing == "bgp", "the router learned no BGP route"
    return running


@dataclass
class NextHops:
    """The router's kernel next hops toward the VIP, sampled in a thread while it runs."""

    lab: Stack
    samples: list[tuple[float, frozenset[str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            hops = frozenset(self.lab.router.kernel_next_hops(ROUTE))
            self.samples.append((time.time(), hops))

    def stop(self) -> list[tuple[float, frozenset[str]]]:
        self._stop.set()
        self._thread.join(10)
        return self.samples

    def first(self, hops: set[str], after: float) -> float | None:
        """When the route first went over exactly these next hops after `after`."""
        return next((t for t, h in self.samples if t > after and h == hops), None)


def agent_events(lab: Stack, node: str, after: float, *names: str) -> list[dict]:
    return [
        e
        for e in lab.weir.log_events(node)
        if e.get("event") in names and datetime.fromisoformat(e["timestamp"]).timestamp() > after
    ]


def xdp_prog(host: Host) -> int:
    """The id of the XDP program on the host's uplink (0: none)."""
    out = host.run(["ip", "-d", "link", "show", "dev", "eth0"])
    found = re.search(r"prog/xdp id (\d+)", out)
    return int(found.group(1)) if found else 0


def test_a_node_whose_xdp_program_is_gone_withdraws_until_it_is_back(lab: Stack) -> None:
    lb1 = lab.net.nodes["lb1"]
    ours = xdp_prog(lb1)
    assert ours
    talk = traffic.Talk(lab.net.clients["c2"], TARGET, 30, interval=0.1)
    hops = NextHops(lab)
    try:
        detached = time.time()
        lb1.run(["ip", "link", "set", "dev", "eth0", "xdp", "off"])
        withdrawn = wait_until(
            lambda: hops.first(WITHOUT_LB1, detached), 10, "lb1's route withdrawn", 0.02
        )
        # Back at the router once a check found the program put back.
        wait_until(lambda: hops.first(ALL, withdrawn), 15, "lb1's route back", 0.02)
        lab.wait_next_hops(list(NODES), 15)
        talk.wait_flowing(15)
    finally:
        hops.stop()
        report = talk.stop()
    assert withdrawn - detached < 4, "withdrawn within a few seconds"
    assert xdp_prog(lb1) == ours  # our program, from its pin
    events = agent_events(
        lab, "lb1", detached, "data plane not forwarding", "program re-attached",
        "data plane forwarding again",
    )  # fmt: skip
    assert [e["event"] for e in events] == [
        "data plane not forwarding",
        "program re-attached",
        "data plane forwarding again",
    ]
    assert events[0]["problem"] == "no XDP program on eth0"
    # No conversation broke: the flows lb1 dropped moved to lb2 and lb3 (same table) and back.
    assert all(c.error is None for c in report.conns), [c for c in report.conns if c.error][:3]


def test_another_program_in_its_place_is_left_there_and_the_node_stays_withdrawn(
    lab: Stack,
) -> None:
    lb1 = lab.net.nodes["lb1"]
    ours = xdp_prog(lb1)
    replaced = time.time()
    lb1.run([sys.executable, "-c", FOREIGN_XDP])
    theirs = xdp_prog(lb1)
    try:
        assert theirs and theirs != ours
        lab.wait_next_hops(["lb2", "lb3"], 10)
        hops = NextHops(lab)
        time.sleep(3)  # three checks of lb1's agent: nothing changes
        samples = hops.stop()
        assert {h for _, h in samples} == {frozenset(WITHOUT_LB1)}
        assert xdp_prog(lb1) == theirs
        event = agent_events(lab, "lb1", replaced, "data plane not forwarding")[-1]
        assert f"another XDP program (id {theirs})" in event["problem"]
    finally:
        lb1.run(["ip", "link", "set", "dev", "eth0", "xdp", "off"])
    # The other program gone, ours goes back and lb1 announces again.
    lab.wait_next_hops(list(NODES), 15)
    assert xdp_prog(lb1) not in (0, theirs)


def pinned_tables(lab: Stack) -> dict[str, dict[str, tuple[int, bytes, bytes]]]:
    """Per LB node, per VIP:port: the service word and both halves' content tags."""
    out = {}
    for node in NODES:
        with lab.weir.maps(node) as maps:
            out[node] = {
                f"{r.vip}:{r.port}": (r.word, bytes(r.meta.half[0].tag), bytes(r.meta.half[1].tag))
                for r in maps.services()
            }
    return out


def bird_route_lines(lab: Stack) -> list[tuple[float, str]]:
    """The router's log lines about the VIPs' routes (BIRD traces every import), with when."""
    lines = []
    for line in lab.router.log.read_text(errors="replace").splitlines():
        try:
            when = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
        except ValueError:
            continue
        if any(v in line for v in VIPS):
            lines.append((when, line))
    return lines


def test_the_controller_down_and_back_changes_nothing_on_the_nodes(lab: Stack) -> None:
    lab.wait_next_hops(list(NODES), 15)
    tables = pinned_tables(lab)
    talk = traffic.Talk(lab.net.clients["c2"], TARGET, 30, interval=0.1)
    stream = traffic.Stream(lab.net.clients["c1"], TARGET, seconds=14, concurrency=4)
    hops = NextHops(lab)
    before = time.time()
    try:
        stream.wait_for(lambda r: len(r) > 20)
        lab.weir.stop_controller()
        killed = time.time()
        wait_until(
            lambda: all(
                agent_events(lab, n, killed, "controller stream failed") for n in lab.weir.agents
            ),
            30,
            "every agent lost the controller",
        )
        lab.weir.start_controller()
        restarted = time.time()
        lab.weir.converge(timeout=60)
        results = stream.finish()
    finally:
        samples = hops.stop()
        report = talk.stop()
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    assert [r for r in results if r.t > killed], "new connections while the controller was down"
    assert all(c.error is None for c in report.conns), [c for c in report.conns if c.error][:3]
    # Routes: never a next hop less, no session restarted, no route sent again.
    assert {h for _, h in samples} == {frozenset(ALL)}, samples[:3]
    for name in NODES:
        assert lab.router.established_before(name, before), name
    routes = bird_route_lines(lab)
    assert [line for t, line in routes if t < before], "BIRD traced the routes as they came"
    assert [line for t, line in routes if t > killed] == []
    # Tables: nothing rewritten, on any node: an agent that the restarted controller found
    # current gets nothing; one it sends its view to again finds nothing to write.
    assert pinned_tables(lab) == tables
    for node in lab.weir.agents:
        assert agent_events(lab, node, restarted, "connected to controller"), node
        for e in agent_events(lab, node, restarted, "applying version", "version applied"):
            assert not any(e.get(k) for k in ("added", "changed", "removed", "written")), e
