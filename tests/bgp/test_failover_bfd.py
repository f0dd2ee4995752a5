"""Failover with production BGP timers: hold time 90 s, and BFD at 100 ms x 3 on every
session (the failover lab, tests/bgp/failover_lab.py, with real agents and 300 long-lived
connections through a Maglev VIP).

A hard failure (link down, agent killed) is for the router to find: the hold timer would
take up to 90 s, BFD takes 300 ms. The router drops the node's next hop in under a second,
and no connection breaks: each stalls until the route changed plus one TCP retransmission.
Graceful restart is negotiated on every session, and the router must not take the BFD
failure for a restart (keeping the dead node's routes as stale for 60 s).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from weir.lab.bird import BirdBFD
from weir.lab.processes import BIN
from weir.lab.wait import wait_until

from tests.bgp.failover_lab import CONNS, LBS, VIP_MAGLEV, Lab, LabTimers, failover_lab, moved
from tests.bgp.failover_lab import summary as talk_summary
from tests.requirements import BIRD, requires, root

pytestmark = [pytest.mark.root, pytest.mark.slow, requires(root, BIRD)]

PREFIX = "wbgd"
HOLD = 90
BFD = BirdBFD(min_rx_ms=100, min_tx_ms=100, multiplier=3)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with failover_lab(PREFIX, LabTimers(hold=HOLD, bfd=BFD)) as lab:
        yield lab


def fast_bfd_everywhere(lab: Lab) -> bool:
    """Every node's BFD session Up at the router, at the fast interval (BIRD starts at 1 s
    and speeds up once Up)."""
    sessions = lab.bird.bfd_sessions()
    return all(
        a in sessions and sessions[a].state == "Up" and sessions[a].interval == 0.1
        for a in LBS.values()
    )


def weirctl(lab: Lab, *args: str) -> str:
    argv = [str(BIN / "weirctl"), "--controller", f"127.0.0.1:{lab.weir.port}", *args]
    return lab.weir.ctl.run(argv, timeout=30)


def test_hard_failure_leaves_the_router_in_under_a_second(lab: Lab) -> None:
    wait_until(lambda: fast_bfd_everywhere(lab), 20, "BFD up at 100 ms on every session")
    # The nodes show their BFD sessions (weirctl bgp peers: state and intervals in use).
    wait_until(
        lambda: weirctl(lab, "bgp", "peers").count("up tx/rx/detect 100/100/300 ms") == 3,
        20,
        "BFD up in weirctl bgp peers",
        0.5,
    )
    talk = lab.talk(VIP_MAGLEV)
    before = lab.new_flows(VIP_MAGLEV)
    with ThreadPoolExecutor(1) as pool:
        # Watched from before the failure: the kill itself takes a while.
        converged = pool.submit(lab.wait_hops, VIP_MAGLEV, ["lb1", "lb2"], 10, 0.01)
        t_fail = lab.fail_hard("lb3")
        t_conv = converged.result()
    convergence = t_conv - t_fail
    talk.wait_flowing(2 * convergence + 10)
    report = talk.stop()
    n_moved = moved(before, lab.new_flows(VIP_MAGLEV), ["lb1", "lb2"])
    s = talk_summary(report, t_fail, t_conv)
    print(f"\nmaglev, hard failure, hold {HOLD} s, BFD 100 ms x 3: router converged in "
          f"{convergence:.3f} s, {n_moved} connections moved to another node, {s}")  # fmt: skip
    assert convergence < 1.0, convergence
    assert s["broken"] == 0, s
    assert n_moved >= CONNS // 4, f"lb3's flows should have moved: {n_moved}"
    assert s.get("resumed_after_convergence", 0) <= convergence + 0.5, s
    # A BFD failure is no graceful restart: the session is down, nothing kept as stale.
    detail = lab.bird.protocol_detail("lb3")
    assert "graceful restart active" not in detail, detail
    lab.restore("lb3")
    wait_until(lambda: fast_bfd_everywhere(lab), 20, "lb3's BFD back")
