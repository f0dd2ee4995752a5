"""The failover lab (tests/bgp/test_failover.py, test_failover_bfd.py): real routing, real
agents, a client keeping long-lived connections open through a VIP while nodes fail.

    client ── router (BIRD 2, ECMP) ── bridge ─┬─ lb1, lb2, lb3: weir-agent (XDP + BGP)
     10.95.1.2   10.95.1.1 | 10.95.0.1          ├─ b1, b2, b3: VIPs on lo, DSR replies via
                                                │  the router
                                                └─ ctl: weir-controller (file source)

weir-controller and weir-agent are the installed commands, each agent loads the XDP program
on its uplink (generic mode: native XDP_TX on a veth only reaches a peer that runs XDP
itself, see tests/dataplane/test_forwarding.py) and runs its BGP speaker peering with BIRD,
which merges the equal routes into one multipath kernel route, hashed on the 5-tuple.
Two Services: one Maglev, one random. What differs between the labs is the BGP timers
(LabTimers): the hold time, and BFD on both sides or not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weir.lab import manifests, traffic
from weir.lab.bird import Bird, BirdBFD, peers_of
from weir.lab.client import TalkReport, Target
from weir.lab.deployment import Deployment
from weir.lab.netns import Host, Topology, cleanup_prefix
from weir.lab.processes import AgentOptions, ControllerOptions
from weir.lab.roles import dsr_backend, no_flood
from weir.lab.wait import wait_until

PORT = 80
VIP_MAGLEV = "192.0.2.20"
VIP_RANDOM = "192.0.2.21"
ROUTER_LAN, ROUTER_UP, CLIENT = "10.95.0.1", "10.95.1.1", "10.95.1.2"
CTL_ADDR = "10.95.0.2"
LBS = {"lb1": "10.95.0.21", "lb2": "10.95.0.22", "lb3": "10.95.0.23"}
BACKENDS = {"b1": "10.95.0.31", "b2": "10.95.0.32", "b3": "10.95.0.33"}
ROUTER_ASN, NODE_ASN = 65000, 65001
DRAIN_GRACE = 4.0
RESTARTING = "lb1"  # restarts keeping its routes (graceful restart); the others drain
CONNS = 300
SEED = 4242


@dataclass(frozen=True)
class LabTimers:
    hold: int  # seconds, both sides
    keepalive: int = 0  # the nodes' keepalive time (0: a third of the hold time)
    bfd: BirdBFD | None = None  # BFD on both sides with these timers (ms)
    restart_time: int = 60  # graceful restart, negotiated on every session

    def peer_spec(self) -> dict[str, Any]:
        """The BGPPeer's spec fields for these timers."""
        spec: dict[str, Any] = {
            "holdTime": self.hold,
            "gracefulRestart": {"enabled": True, "restartTime": self.restart_time},
        }
        if self.keepalive:
            spec["keepaliveTime"] = self.keepalive
        if self.bfd is not None:
            spec["bfd"] = {
                "transmitInterval": self.bfd.min_tx_ms,
                "receiveInterval": self.bfd.min_rx_ms,
                "detectMultiplier": self.bfd.multiplier,
            }
        return spec


def lab_manifests(timers: LabTimers) -> list[dict]:
    docs = []
    for name, vip, strategy in (
        ("web", VIP_MAGLEV, "maglev"),
        ("web-random", VIP_RANDOM, "random"),
    ):
        docs.append(manifests.service(name, vip, PORT, strategy=strategy))
        docs.append(manifests.endpoint_slice(name, PORT, BACKENDS.values()))
    docs += [manifests.node(name, addr) for name, addr in LBS.items()]
    docs.append(
        manifests.bgp_peer("router", ROUTER_LAN, ROUTER_ASN, NODE_ASN, **timers.peer_spec())
    )
    return docs


@dataclass(frozen=True)
class Failover:
    """A hard failure under the client's conversations."""

    convergence: float  # seconds from the failure to the router's route without the node
    moved: int  # connections the surviving nodes took on meanwhile
    summary: dict  # summary() of the conversations


@dataclass
class Lab:
    client: Host
    bird: Bird
    weir: Deployment
    timers: LabTimers

    def start_agent(self, name: str) -> None:
        self.weir.start_agent(name, bgp_on_stop="restart" if name == RESTARTING else "drain")

    def hops(self, vip: str) -> set[str]:
        return self.bird.kernel_next_hops(f"{vip}/32")

    def wait_hops(self, vip: str, lbs: list[str], limit: float, interval: float = 0.02) -> float:
        self.bird.wait_kernel_next_hops(f"{vip}/32", [LBS[n] for n in lbs], limit, interval)
        return time.time()

    def fail_hard(self, name: str) -> float:
        """The node dies: cable pulled, agent (and its ExaBGP) killed. Returns when."""
        t = time.time()
        self.weir.fail_node(name)
        # Its ExaBGP must not outlive it (nodeagent/bgp/relay.py sees to that).
        wait_until(lambda: not self.exabgp_pids(name), 5, f"{name}'s exabgp gone")
        return t

    def fail_while_talking(self, vip: str, victim: str, limit: float) -> Failover:
        """The client talks through vip while victim fails hard; until the conversations
        flow again (those that broke excepted)."""
        survivors = [n for n in LBS if n != victim]
        talk = self.talk(vip)
        before = self.new_flows(vip)
        with ThreadPoolExecutor(1) as pool:
            # Watched from before the failure: killing the agent takes a while.
            converged = pool.submit(self.wait_hops, vip, survivors, limit, 0.01)
            t_fail = self.fail_hard(victim)
            t_conv = converged.result()
        convergence = t_conv - t_fail
        talk.wait_flowing(2 * convergence + 10)
        report = talk.stop()
        n_moved = moved(before, self.new_flows(vip), survivors)
        return Failover(convergence, n_moved, summary(report, t_fail, t_conv))

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
        """The client's conversations through one VIP, a line every 100 ms each."""
        talk = traffic.Talk(self.client, Target(vip, PORT, "lines"), CONNS, interval=0.1)
        assert talk.ready == {"ready": CONNS, "failed": 0}, talk.ready
        return talk

    def new_flows(self, vip: str) -> dict[str, int]:
        """Flows each node's data plane has taken on for vip's service so far (its
        conntrack misses: first packets, and flows moved to it from another node)."""
        return {name: self.weir.new_flows(name, f"{vip}:{PORT}/TCP") for name in LBS}


@contextmanager
def failover_lab(prefix: str, timers: LabTimers) -> Iterator[Lab]:
    cleanup_prefix(prefix)
    with Topology(prefix) as topo:
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
        peers = peers_of(
            LBS, NODE_ASN, hold_time=timers.hold, graceful_restart=True,
            bfd=timers.bfd is not None,
        )  # fmt: skip
        bird = Bird(router, workdir / "bird", ROUTER_LAN, ROUTER_ASN, peers, bfd=timers.bfd)
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
        weir.write_manifests("lab.yaml", lab_manifests(timers))
        weir.start_controller()
        lab = Lab(client, bird, weir, timers)
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
