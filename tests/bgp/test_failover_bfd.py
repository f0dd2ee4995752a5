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

import pytest
from weir.lab.bird import BirdBFD
from weir.lab.processes import BIN
from weir.lab.wait import wait_until

from tests.bgp.failover_lab import CONNS, LBS, VIP_MAGLEV, Lab, LabTimers, failover_lab
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
    f = lab.fail_while_talking(VIP_MAGLEV, "lb3", 10)
    s = f.summary
    print(f"\nmaglev, hard failure, hold {HOLD} s, BFD 100 ms x 3: router converged in "
          f"{f.convergence:.3f} s, {f.moved} connections moved to another node, {s}")  # fmt: skip
    assert f.convergence < 1.0, f.convergence
    assert s["broken"] == 0, s
    assert f.moved >= CONNS // 6, f"lb3's flows should have moved: {f.moved}"
    assert s.get("resumed_after_convergence", 0) <= f.convergence + 0.5, s
    # A BFD failure is no graceful restart: the session is down, nothing kept as stale.
    detail = lab.bird.protocol_detail("lb3")
    assert "graceful restart active" not in detail, detail
    lab.restore("lb3")
    wait_until(lambda: fast_bfd_everywhere(lab), 20, "lb3's BFD back")
