"""weirctl status and weirctl doctor against the lab (router with BIRD, three load-balancer
nodes speaking BGP, three workers with pods): the healthy lab says healthy; with one agent
stopped and one BGP peer broken, status names each with its node and reason; doctor on a
node finds everything the agent needs, the controller included."""

from __future__ import annotations

import json
import sys

import pytest
from weir.lab.stack import Stack
from weir.lab.topology import NODES, WORKERS
from weir.lab.wait import wait_until

from tests.requirements import BIRD, EXABGP, requires, root

pytestmark = [pytest.mark.root, pytest.mark.slow, requires(root, BIRD, EXABGP)]

WEIRCTL = [sys.executable, "-m", "weir.ctl.main"]


@pytest.fixture
def lab(running: Stack) -> Stack:
    return running


def status(lab: Stack) -> dict:
    target = f"127.0.0.1:{lab.weir.port}"
    out = lab.weir.ctl.run([*WEIRCTL, "--controller", target, "status", "-o", "json"], check=False)
    return json.loads(out)


def problems(report: dict) -> set[tuple[str, str]]:
    return {(p["node"], p["reason"]) for p in report["problems"]}


def test_a_healthy_lab_says_healthy(lab: Stack) -> None:
    report = wait_until(lambda: (r := status(lab))["healthy"] and r, 30, "a healthy status")
    assert report["verdict"].startswith("healthy: 6 agents (3 load balancers)"), report
    agents = {a["node"]: a for a in report["agents"]}
    assert set(agents) == set(NODES) | set(WORKERS)
    for node in NODES:
        assert agents[node]["roles"] == "load-balancer" and agents[node]["connected"]
        assert agents[node]["dataplane"] == "xdp-native" and agents[node]["lag"] == 0
    for node in WORKERS:
        assert agents[node]["roles"] == "backend" and agents[node]["dataplane"] == "tc"
    sessions = {(s["node"], s["state"]) for s in report["bgp_sessions"]}
    assert sessions == {(n, "established") for n in NODES}
    assert report["controller"]["version"] == agents["lb1"]["agent_version"]
    target = f"127.0.0.1:{lab.weir.port}"
    text = lab.weir.ctl.run([*WEIRCTL, "--controller", target, "status"])
    assert text.startswith("Weir: healthy") and "BGP PEER" in text


def test_doctor_on_a_node_finds_what_the_agent_needs(lab: Stack) -> None:
    node = lab.net.nodes["lb1"]
    argv = [
        *WEIRCTL, "--controller", f"{lab.net.ctl.addr()}:{lab.weir.port}", "doctor",
        "--interface", lab.weir.agent.interface, "--bpffs", str(lab.weir.bpffs("lb1")),
        "-o", "json",
    ]  # fmt: skip
    checks = {c["name"]: c for c in json.loads(node.run(argv))}
    assert all(c["ok"] for c in checks.values() if c["required"]), checks
    assert "XDP attached, native" in checks["XDP"]["found"]
    assert "bpf" in checks["bpffs"]["found"] and "SERVING" in checks["controller"]["found"]


def test_a_stopped_agent_and_a_broken_peer_show_up(lab: Stack) -> None:
    lab.weir.stop_agent("n2")
    lab.router.birdc("disable", "lb1")
    try:

        def both() -> dict | None:
            report = status(lab)
            found = problems(report)
            stopped = ("n2", "agent not connected") in found
            broken = any(n == "lb1" and r.startswith("BGP peer lab-router ") for n, r in found)
            return report if stopped and broken else None

        report = wait_until(both, 30, "the stopped agent and the broken peer in weirctl status")
        assert not report["healthy"] and report["verdict"].startswith("degraded: ")
        (peer,) = [r for n, r in problems(report) if n == "lb1"]
        assert not peer.endswith(" established"), peer
        # Nothing else is wrong.
        assert {n for n, _ in problems(report)} == {"n2", "lb1"}, report["problems"]
    finally:
        lab.router.birdc("enable", "lb1")
        lab.weir.start_agent("n2")
    wait_until(lambda: status(lab)["healthy"], 60, "the lab healthy again")
