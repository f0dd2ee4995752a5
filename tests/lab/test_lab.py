"""The lab (python -m weir.lab): its network builds and goes away without a trace, and a short
run of the whole demo (real controller, agents, XDP, BIRD, HTTP) passes every check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from weir.lab.netns import Topology, cleanup_prefix, leftovers
from weir.lab.stack import WORKDIR
from weir.lab.topology import (
    BACKENDS,
    CLIENTS,
    NODES,
    PODS,
    PREFIX,
    ROUTER_CLIENT,
    ROUTER_SERVER,
    build,
)

from tests.requirements import BIRD, requires, root

pytestmark = [pytest.mark.root, requires(root)]
REPO = Path(__file__).resolve().parents[2]


def test_topology_builds_and_leaves_nothing_behind() -> None:
    cleanup_prefix(PREFIX, WORKDIR)
    with Topology(PREFIX) as topo:
        net = build(topo)
        topo.bpffs(topo.workdir(WORKDIR) / "lb1-bpf")
        assert set(net.nodes) == set(NODES) and set(net.backends) == set(BACKENDS)
        # Both segments work through the router: a client reaches a backend's own address.
        net.clients["c1"].run(["ping", "-c1", "-W2", ROUTER_CLIENT])
        net.backends["b1"].run(["ping", "-c1", "-W2", ROUTER_SERVER])
        net.clients["c2"].run(["ping", "-c1", "-W2", BACKENDS["b4"]])
        left = leftovers(PREFIX, WORKDIR)
        assert len(left) >= len(CLIENTS) + len(NODES) + len(BACKENDS) + 2
        assert f"directory {WORKDIR}" in left and f"mount {WORKDIR}/lb1-bpf" in left
    assert leftovers(PREFIX, WORKDIR) == []


@pytest.mark.slow
@pytest.mark.timeout(240)
@requires(BIRD)
def test_quick_lab_run_passes_every_check() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "weir.lab", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=200,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "connections succeeded" in out and "300/300" in out, out[-3000:]
    assert "FAIL" not in out, out[-3000:]
    assert_traffic_charts(out)
    assert "nothing left behind" in out
    assert leftovers(PREFIX, WORKDIR) == []


def assert_traffic_charts(out: str) -> None:
    """The charts from the agents' metrics: every backend and LB node took new flows (the
    story sends thousands), lines fit 100 columns, the shares add up to 100%."""
    lines = out.splitlines()
    charts = (("new flows per backend", [*BACKENDS, *PODS]), ("new flows per LB node", NODES))
    for title, names in charts:
        start = next(i for i, line in enumerate(lines) if title in line)
        rows = {line.split()[0]: line for line in lines[start + 1 : start + 1 + len(names)]}
        assert set(rows) == set(names), lines[start : start + 6]
        assert all(len(line) <= 100 for line in rows.values())
        flows = {n: float(r.split()[-2]) for n, r in rows.items()}
        shares = [float(r.split()[-1].rstrip("%")) for r in rows.values()]
        assert min(flows.values()) > 0 and abs(sum(shares) - 100) < 0.5, rows
