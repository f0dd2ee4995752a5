"""Failover with real routing: connections survive the loss of a load-balancer node.

    client ── router (BIRD 2, ECMP) ── bridge ─┬─ lb1, lb2, lb3: weir-agent (XDP + BGP)
     10.95.1.2   10.95.1.1 | 10.95.0.1          ├─ b1, b2, b3: VIPs on lo, DSR replies via
                                                │  the router
                                                └─ ctl: weir-controller (file source)

Everything is real: weir-controller and weir-agent are the installed commands, each agent
loads the XDP program on its uplink (generic mode: native XDP_TX on a veth only reaches a
peer that runs XDP itself, see tests/dataplane/test_forwarding.py; the data path is the
same program) and runs its BGP speaker (ExaBGP 5) peering with BIRD,
which merges the three equal routes into one multipath kernel route, hashed on the 5-tuple
(fib_multipath_hash_policy=3 with ports: the fixture says why not policy 1). The client
keeps 300 TCP connections open through the VIP, each exchanging a line every 100 ms
(weir.lab.client talk), while a node fails:

- hard failure (link down, agent killed): the router learns it from its hold timer (3 s),
  then moves the node's flows to the others. With Maglev every node picks the same backend
  for a flow, so no connection breaks; each stalls at most until the route changed plus one
  TCP retransmission backoff (the client's retransmissions back off exponentially while the
  path is black-holed, and the first one after the change gets through).
- the same with strategy random breaks a clear share of the moved connections: a node that
  gets a flow it has not seen picks another backend, which answers with a reset.
- drain (SIGTERM to an agent): the routes are withdrawn first, the node keeps forwarding for
  the grace period while the router moves the flows, then the agent exits and the node goes
  away; no connection breaks, none stalls.
- agent restart with graceful restart (lb1 runs with --bgp-on-stop restart): the router
  keeps the node's routes while the agent is away, the pinned data plane keeps forwarding,
  and the new agent's End-of-RIB ends the graceful restart; nothing moves, nothing stalls.

The measured numbers (convergence time, connections stalled, broken) are printed.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from weir.lab import manifests, traffic
from weir.lab.bird import Bird, peers_of
from weir.lab.client import TalkReport, Target
from weir.lab.deployment import Deployment
from weir.lab.netns import Host, Topology, cleanup_prefix, kill_group
from weir.lab.processes import AgentOptions, ControllerOptions
from weir.lab.roles import dsr_backend, no_flood
from weir.lab.wait import wait_until

from tests.requirements import BIRD, requires, root

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    requires(root, BIRD),
]

PREFIX = "wbgf"
PORT = 80
VIP_MAGLEV = "192.0.2.20"
VIP_RANDOM = "192.0.2.21"
ROUTER_LAN, ROUTER_UP, CLIENT = "10.95.0.1", "10.95.1.1", "10.95.1.2"
CTL_ADDR = "10.95.0.2"
LBS = {"lb1": "10.95.0.21", "lb2": "10.95.0.22", "lb3": "10.95.0.23"}
BACKENDS = {"b1": "10.95.0.31", "b2": "10.95.0.32", "b3": "10.95.0.33"}
ROUTER_ASN, NODE_ASN = 65000, 65001
HOLD = 3  # seconds, both sides (keepalive 1 s): the shortest BGP allows
DRAIN_GRACE = 4.0
RESTARTING = "lb1"  # restarts keeping its routes (graceful restart); the others drain
CONNS = 300
SEED = 4242


def lab_manifests() -> list[dict]:
    docs = []
    for name, vip, strategy in (
        ("web", VIP_MAGLEV, "maglev"),
        ("web-random", VIP_RANDOM, "random"),
    ):
        docs.append(manifests.service(name, vip, PORT, strategy=strategy))
        docs.append(manifests.endpoint_slice(name, PORT, BACKENDS.values()))
    docs += [manifests.node(name, addr) for name, addr in LBS.items()]
    docs.append(
        manifests.bgp_peer(
            "router", ROUTER_LAN, ROUTER_ASN, NODE_ASN, holdTime=HOLD, keepaliveTime=1,
            gracefulRestart={"enabled": True, "restartTime": 60},
        )
    )  # fmt: skip
    return docs


@dataclass
class Lab:
    client: Host
    bird: Bird
    weir: Deployment

    def start_agent(self, name: str) -> None:
        self.weir.start_agent(name, bgp_on_stop="restart" if name == RESTARTING else "drain")

    def hops(self, vip: str) -> set[str]:
        return self.bird.kernel_next_hops(f"{vip}/32")

    def wait_hops(self, vip: str, lbs: list[str], limit: float) -> float:
        self.bird.wait_kernel_next_hops(f"{vip}/32", [LBS[n] for n in lbs], limit, 0.02)
        return time.time()

    def fail_hard(self, name: str) -> float:
        """The node dies: cable pulled, agent (and its ExaBGP) killed. Returns when."""
        t = time.time()
        self.weir.fail_node(name)
        # Its ExaBGP must not outlive it (nodeagent/bgp/relay.py sees to that).
        wait_until(lambda: not self.exabgp_pids(name), 5, f"{name}'s exabgp gone")
        return t

    def exabgp_pids(self, name: str) -> list[int]:
        out = []
        for pid in self.weir.nodes[name].pids():
            try:
                if b"exabgp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(pid)
            except OSError:
                pass  # already gone
        return out

    def restore(self, name: str) -> None:
        self.weir.revive_node(name, bgp_on_stop="restart" if name == RESTARTING else "drain")
        for vip in (VIP_MAGLEV, VIP_RANDOM):
            self.wait_hops(vip, list(LBS), 60)

    def talk(self, vip: str) -> traffic.Talk:
        """The client's 300 conversations through one VIP."""
        talk = traffic.Talk(self.client, Target(vip, PORT, "lines"), CONNS, interval=0.1)
        assert talk.ready == {"ready": CONNS, "failed": 0}, talk.ready
        return talk

    def new_flows(self, vip: str) -> dict[str, int]:
        """Flows each node's data plane has taken on for vip's service so far (its
        conntrack misses: first packets, and flows moved to it from another node)."""
        return {name: self.weir.new_flows(name, f"{vip}:{PORT}/TCP") for name in LBS}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    cleanup_prefix(PREFIX)
    with Topology(PREFIX) as topo:
        lan = topo.bridge("lan")
        router = topo.host("r", forwarding=True)
        topo.link(router, lan, f"{ROUTER_LAN}/24")
        client = topo.host("client")
        topo.wire(router, client, f"{ROUTER_UP}/24", f"{CLIENT}/24")
        client.route("default", ROUTER_UP)
        ctl = topo.host("ctl")
        topo.link(ctl, lan, f"{CTL_ADDR}/24")
        lbs = {}
        for name, addr in LBS.items():
            lbs[name] = topo.host(name)
            no_flood(topo.link(lbs[name], lan, f"{addr}/24"))
        for name, addr in BACKENDS.items():
            h = topo.host(name)
            topo.link(h, lan, f"{addr}/24")
            h.route("default", ROUTER_LAN)  # DSR replies
            dsr_backend(h, [VIP_MAGLEV, VIP_RANDOM])
            traffic.serve(h, name, PORT, proto="lines")
        workdir = topo.workdir()
        bird = Bird(
            router, workdir / "bird", ROUTER_LAN, ROUTER_ASN,
            peers_of(LBS, NODE_ASN, hold_time=HOLD, graceful_restart=True),
        )  # fmt: skip
        bird.start()
        # Hash on the 5-tuple read from each packet, as a real router does. Policy 1 would
        # take the hash the client's kernel put on the skb (it crosses the veth), and Linux
        # re-rolls that hash on every retransmission timeout: a stalled flow would hop to
        # another next hop on its own before BGP converged, hiding what the test measures.
        router.sysctl(
            {"net.ipv4.fib_multipath_hash_policy": 3, "net.ipv4.fib_multipath_hash_fields": 0x37}
        )
        weir = Deployment(
            topo, workdir, ctl, lbs,
            controller=ControllerOptions(maglev_seed=SEED),
            agent=AgentOptions(
                xdp_mode="generic", max_backends=64, max_table_slots=65536,
                conntrack_entries=16384, drain_grace=DRAIN_GRACE,
            ),
            tail_lines=25,
        )  # fmt: skip
        weir.write_manifests("lab.yaml", lab_manifests())
        weir.start_controller()
        lab = Lab(client, bird, weir)
        for name in LBS:
            lab.start_agent(name)
        for vip in (VIP_MAGLEV, VIP_RANDOM):
            lab.wait_hops(vip, list(LBS), 120)  # the first start compiles the XDP program
        yield lab


def summary(report: TalkReport, t_fail: float, t_conv: float | None = None) -> dict:
    conns = report.conns
    broken = [c for c in conns if c.error]
    stalled = [c for c in conns if c.max_gap > 1.0 and (c.gap_end_t or 0) > t_fail]
    out = {
        "broken": len(broken),
        "errors": sorted({c.error for c in broken}),
        "stalled": len(stalled),
        "max_gap": round(max(c.max_gap for c in conns), 2),
    }
    if t_conv is not None and stalled:
        # How long after the router's change the last stalled connection resumed.
        out["resumed_after_convergence"] = round(max(c.gap_end_t for c in stalled) - t_conv, 2)
    return out


def moved(before: dict[str, int], after: dict[str, int], survivors: list[str]) -> int:
    """Connections the surviving nodes took on between two readings: the failed node's
    flows, and flows the router's hash-threshold ECMP moved between the survivors."""
    return sum(after[n] - before[n] for n in survivors)


def test_router_has_three_next_hops_and_new_flows_reach_all_nodes(lab: Lab) -> None:
    for vip in (VIP_MAGLEV, VIP_RANDOM):
        assert lab.hops(vip) == set(LBS.values())
    before = lab.new_flows(VIP_MAGLEV)
    report = lab.talk(VIP_MAGLEV).stop()
    after = lab.new_flows(VIP_MAGLEV)
    backends = {c.backend for c in report.conns}
    assert backends == set(BACKENDS), backends
    taken = {n: after[n] - before[n] for n in LBS}
    print(f"\n{CONNS} new connections, taken on per node: {taken}")
    assert sum(taken.values()) == CONNS and all(v > CONNS / 6 for v in taken.values()), taken


def test_node_failure_breaks_no_maglev_connection(lab: Lab) -> None:
    talk = lab.talk(VIP_MAGLEV)
    before = lab.new_flows(VIP_MAGLEV)
    t_fail = lab.fail_hard("lb3")
    t_conv = lab.wait_hops(VIP_MAGLEV, ["lb1", "lb2"], HOLD + 10)
    convergence = t_conv - t_fail
    talk.wait_flowing(2 * convergence + 10)
    report = talk.stop()
    n_moved = moved(before, lab.new_flows(VIP_MAGLEV), ["lb1", "lb2"])
    s = summary(report, t_fail, t_conv)
    print(f"\nmaglev, hard failure: router converged in {convergence:.2f} s, "
          f"{n_moved} connections moved to another node, {s}")  # fmt: skip
    assert s["broken"] == 0, s
    assert n_moved >= CONNS // 4, f"lb3's flows should have moved: {n_moved}"
    assert s["stalled"] >= CONNS // 6, f"the failure should stall lb3's flows: {s}"
    # Stalled until the route changed, plus at most one TCP retransmission backoff (which
    # is no longer than the time spent backing off so far).
    assert s["resumed_after_convergence"] <= convergence + 0.5, s
    lab.restore("lb3")


def test_node_failure_breaks_random_connections(lab: Lab) -> None:
    talk = lab.talk(VIP_RANDOM)
    before = lab.new_flows(VIP_RANDOM)
    t_fail = lab.fail_hard("lb3")
    t_conv = lab.wait_hops(VIP_RANDOM, ["lb1", "lb2"], HOLD + 10)
    convergence = t_conv - t_fail
    # Connections that broke never answer again: wait for the others, bounded.
    deadline = time.time() + 2 * convergence + 10
    while talk.stalled() and time.time() < deadline:
        time.sleep(0.2)
    report = talk.stop()
    n_moved = moved(before, lab.new_flows(VIP_RANDOM), ["lb1", "lb2"])
    s = summary(report, t_fail)
    hung = sum(1 for c in report.conns
               if not c.error and c.gap_end_t == report.t_stop and c.max_gap > 1.0)  # fmt: skip
    print(f"\nrandom, hard failure: router converged in {convergence:.2f} s, "
          f"{n_moved} connections moved to another node, {s}, hung {hung}")  # fmt: skip
    # A node that gets a flow it has not seen picks a backend at random: about two in
    # three moved connections land on a backend that answers with a reset.
    assert n_moved >= CONNS // 4, n_moved
    assert s["broken"] + hung >= n_moved // 3, (n_moved, s)
    lab.restore("lb3")


def test_drain_withdraws_first_and_breaks_nothing(lab: Lab) -> None:
    talk = lab.talk(VIP_MAGLEV)
    before = lab.new_flows(VIP_MAGLEV)
    t_term = time.time()
    proc = lab.weir.agents.pop("lb2")
    kill_group(proc, signal.SIGTERM)
    t_withdrawn = lab.wait_hops(VIP_MAGLEV, ["lb1", "lb3"], 10)
    proc.wait(timeout=DRAIN_GRACE + 20)
    t_exit = time.time()
    # The data plane outlives the agent: the node stops forwarding when it goes away.
    lab.weir.nodes["lb2"].set_link("eth0", False)
    talk.wait_flowing(10)
    report = talk.stop()
    n_moved = moved(before, lab.new_flows(VIP_MAGLEV), ["lb1", "lb3"])
    s = summary(report, t_term)
    print(
        f"\ndrain: withdrawn after {t_withdrawn - t_term:.3f} s, agent exited after "
        f"{t_exit - t_term:.2f} s, {n_moved} connections moved to another node, {s}"
    )
    assert t_withdrawn < t_exit - DRAIN_GRACE + 1.0, "routes must go before the grace period"
    assert n_moved >= CONNS // 4, n_moved
    assert s["broken"] == 0 and s["max_gap"] < 1.0, s
    lab.restore("lb2")


def test_agent_restart_with_graceful_restart_keeps_the_routes(lab: Lab) -> None:
    talk = lab.talk(VIP_MAGLEV)
    before = lab.new_flows(VIP_MAGLEV)
    lab.weir.stop_agent(RESTARTING)
    # The session is gone without a NOTIFICATION: the router keeps the routes (stale).
    wait_until(
        lambda: "graceful restart active" in lab.bird.protocol_detail(RESTARTING),
        10,
        "the router in graceful restart",
    )
    assert lab.hops(VIP_MAGLEV) == set(LBS.values())
    lab.start_agent(RESTARTING)
    # Until the new agent's End-of-RIB, the route must never lose the node.
    lost = 0
    deadline = time.monotonic() + 60
    while "graceful restart active" in lab.bird.protocol_detail(RESTARTING):
        lost += lab.hops(VIP_MAGLEV) != set(LBS.values())
        assert time.monotonic() < deadline, "the graceful restart never completed"
        time.sleep(0.05)
    assert lab.bird.established(RESTARTING)
    assert lab.hops(VIP_MAGLEV) == set(LBS.values())
    talk.wait_flowing(5)
    report = talk.stop()
    n_moved = moved(before, lab.new_flows(VIP_MAGLEV), [n for n in LBS if n != RESTARTING])
    s = summary(report, time.time() - 60)
    print(f"\nagent restart with graceful restart: route lost {lost} times, "
          f"{n_moved} connections moved, {s}")  # fmt: skip
    assert lost == 0 and n_moved == 0, (lost, n_moved)
    assert s["broken"] == 0 and s["max_gap"] < 1.0, s
