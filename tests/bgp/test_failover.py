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

import pytest
from weir.lab.netns import kill_group
from weir.lab.wait import wait_until

from tests.bgp.failover_lab import (
    BACKENDS,
    CONNS,
    DRAIN_GRACE,
    LBS,
    RESTARTING,
    VIP_MAGLEV,
    VIP_RANDOM,
    Lab,
    LabTimers,
    failover_lab,
    moved,
    summary,
)
from tests.requirements import BIRD, requires, root

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    requires(root, BIRD),
]

PREFIX = "wbgf"
HOLD = 3  # seconds, both sides (keepalive 1 s): the shortest BGP allows


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with failover_lab(PREFIX, LabTimers(hold=HOLD, keepalive=1)) as lab:
        yield lab


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
    f = lab.fail_while_talking(VIP_MAGLEV, "lb3", HOLD + 10)
    s = f.summary
    print(f"\nmaglev, hard failure: router converged in {f.convergence:.2f} s, "
          f"{f.moved} connections moved to another node, {s}")  # fmt: skip
    assert s["broken"] == 0, s
    assert f.moved >= CONNS // 4, f"lb3's flows should have moved: {f.moved}"
    assert s["stalled"] >= CONNS // 6, f"the failure should stall lb3's flows: {s}"
    # Stalled until the route changed, plus at most one TCP retransmission backoff (which
    # is no longer than the time spent backing off so far).
    assert s["resumed_after_convergence"] <= f.convergence + 0.5, s
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
