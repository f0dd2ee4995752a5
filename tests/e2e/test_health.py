"""Active health checks end to end (docs/HEALTH.md), in the lab's network: three LB nodes
check the web Service's four L2 DSR backends and the shop Service's six pods (through the
encapsulation), report to the controller, which holds out what most of them see failing, in
one snapshot version for every node. Real kernel, real TCP, real agents and controller."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from weir.lab import manifests, traffic
from weir.lab.netns import Topology, cleanup_prefix
from weir.lab.stack import POD_TARGET, TARGET, Stack
from weir.lab.topology import BACKENDS, NODES, POD_VIP, PODS, PORT, VIP, build
from weir.lab.wait import wait_until

from tests.requirements import BIRD, ETHTOOL, requires, root

pytestmark = [pytest.mark.root, pytest.mark.slow, requires(root, BIRD, ETHTOOL)]

PREFIX = "whc"
INTERVAL, FALL, RISE = 0.3, 2, 2
WEB = f"{VIP}:{PORT}/TCP"
SHOP = f"{POD_VIP}:{PORT}/TCP"
CHECKS = {
    "weir.dev/health-check": "tcp",
    "weir.dev/health-check-interval": f"{int(INTERVAL * 1000)}ms",
    "weir.dev/health-check-timeout": "200ms",
    "weir.dev/health-check-fall": str(FALL),
    "weir.dev/health-check-rise": str(RISE),
}
# New flows avoid a dead backend within interval x fall, plus the report and the version.
DEADLINE = INTERVAL * FALL + 3


@pytest.fixture(scope="module")
def lab() -> Iterator[Stack]:
    cleanup_prefix(PREFIX)
    with Topology(PREFIX) as topo:
        stack = Stack(build(topo), topo.workdir(), "static")
        stack.weir.tail_lines = 40
        stack.start(progress=lambda _: None)
        path = stack.weir.manifests / "service.yaml"
        docs = list(yaml.safe_load_all(path.read_text()))
        for doc in docs:
            doc["metadata"]["annotations"].update(CHECKS)
            if doc["metadata"]["name"] == "shop":
                doc["metadata"]["annotations"]["weir.dev/health-check-pods"] = "true"
        manifests.write(path, docs)
        stack.version = stack.weir.converge(min_version=stack.version + 1).version
        wait_until(lambda: _checked_everywhere(stack), 15, "every LB node checking")
        yield stack


def _weirctl(lab: Stack, *args: str) -> Any:
    out = lab.net.ctl.run(
        [sys.executable, "-m", "weir.ctl.main", "--controller", f"127.0.0.1:{lab.weir.port}",
         *args, "-o", "json"]
    )  # fmt: skip
    return json.loads(out)


def _agents(lab: Stack) -> dict[str, dict]:
    return {a["node"]: a for a in _weirctl(lab, "agents")["agents"] if a["connected"]}


def _checked_everywhere(lab: Stack) -> bool:
    agents = _agents(lab)
    return all(
        {WEB, SHOP} <= set(agents.get(n, {}).get("status", {}).get("health_checked", []))
        for n in NODES
    )


def _health(lab: Stack) -> dict[tuple[str, str], dict]:
    return {(b["service_id"], b["address"]): b for b in _weirctl(lab, "health").get("backends", [])}


def _service(lab: Stack, fid: str) -> dict:
    (svc,) = [s for s in _weirctl(lab, "snapshot")["services"] if s["id"] == fid]
    return svc


def _held_out(lab: Stack, fid: str) -> set[str]:
    return {b["address"] for b in _service(lab, fid).get("unhealthy", [])}


def _tables(lab: Stack, vip: str = VIP) -> dict[str, list[str]]:
    return {n: lab.maglev_table(n, vip, PORT) for n in NODES}


def _same_version_and_tables(lab: Stack, vip: str = VIP) -> list[str]:
    """Every LB node acked the controller's version and holds the same table; the table."""
    state = lab.weir.converge(nodes=list(NODES))
    assert {state.acked[n] for n in NODES} == {state.version}
    tables = _tables(lab, vip)
    assert len({tuple(t) for t in tables.values()}) == 1, "the LB nodes' tables differ"
    return tables["lb1"]


def _server_pid(lab: Stack, backend: str) -> int:
    out = lab.net.backends[backend].run(["ss", "-Htlnp", f"( sport = :{PORT} )"])
    return int(out.split("pid=", 1)[1].split(",", 1)[0])


def test_dead_backend_out_everywhere_in_one_version_and_back_after_rise(lab: Stack) -> None:
    held = traffic.Held(lab.net.clients["c1"], TARGET, 16)
    try:
        before = held.ping()
        others = [i for i, b in enumerate(before) if b != "b1"]
        assert others and all(not b.startswith("error") for b in before)
        os.kill(_server_pid(lab, "b1"), signal.SIGKILL)
        wait_until(lambda: BACKENDS["b1"] in _held_out(lab, WEB), DEADLINE, "b1 held out")
        table = _same_version_and_tables(lab)
        assert BACKENDS["b1"] not in table and set(table) == {
            BACKENDS[b] for b in ("b2", "b3", "b4")
        }
        entry = _health(lab)[(WEB, BACKENDS["b1"])]
        assert entry["state"] == "out"
        assert {f["node"] for f in entry["failing"]} == set(NODES)
        assert all(f["reason"] == "refused" for f in entry["failing"])
        results = traffic.burst(lab.net.clients["c2"], TARGET, count=200, concurrency=16)
        assert all(r.ok for r in results) and "b1" not in {r.backend for r in results}
        after = held.ping()  # established flows to the other backends are undisturbed
        assert [after[i] for i in others] == [before[i] for i in others]
    finally:
        held.close()
        traffic.serve(lab.net.backends["b1"], "b1", PORT)
    wait_until(lambda: BACKENDS["b1"] not in _held_out(lab, WEB), DEADLINE, "b1 back")
    assert BACKENDS["b1"] in _same_version_and_tables(lab)


def test_dsr_backend_without_the_vip_on_loopback_fails(lab: Stack) -> None:
    b3 = lab.net.backends["b3"]
    b3.run(["ip", "addr", "del", f"{VIP}/32", "dev", "lo"])
    try:
        wait_until(lambda: BACKENDS["b3"] in _held_out(lab, WEB), DEADLINE, "b3 held out")
        entry = _health(lab)[(WEB, BACKENDS["b3"])]
        assert entry["state"] == "out" and all(f["reason"] == "timeout" for f in entry["failing"])
        assert BACKENDS["b3"] not in _same_version_and_tables(lab)
    finally:
        b3.add_address(f"{VIP}/32", "lo")
    wait_until(lambda: BACKENDS["b3"] not in _held_out(lab, WEB), DEADLINE, "b3 back")


def test_one_lb_node_cut_off_from_one_backend_splits_nothing(lab: Stack) -> None:
    b2 = lab.net.backends["b2"]
    b2.nft(
        f"""
table ip cut {{
    chain in {{
        type filter hook input priority 0;
        ip saddr {NODES["lb1"]} drop
    }}
}}
"""
    )
    try:
        seen = wait_until(
            lambda: [
                f["node"] for f in _health(lab).get((WEB, BACKENDS["b2"]), {}).get("failing", [])
            ],
            DEADLINE,
            "lb1 seeing b2 failing",
        )
        assert seen == ["lb1"]
        entry = _health(lab)[(WEB, BACKENDS["b2"])]
        assert entry["state"] == "healthy" and entry["checkers"] == 3
        assert BACKENDS["b2"] not in _held_out(lab, WEB)
        assert set(_same_version_and_tables(lab)) == {BACKENDS[b] for b in BACKENDS}
    finally:
        b2.run(["nft", "delete", "table", "ip", "cut"])
    wait_until(lambda: (WEB, BACKENDS["b2"]) not in _health(lab), DEADLINE, "lb1 sees b2 again")


def test_every_backend_failing_fails_open_with_a_condition(lab: Stack) -> None:
    pids = {b: _server_pid(lab, b) for b in BACKENDS}
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    try:
        wait_until(
            lambda: WEB in _weirctl(lab, "health").get("fail_open", []), DEADLINE, "fail open"
        )
        assert not _held_out(lab, WEB)
        assert set(_same_version_and_tables(lab)) == {BACKENDS[b] for b in BACKENDS}
        errors = _weirctl(lab, "errors").get("errors", [])
        assert any(e["name"] == "web" and "fail open" in e["message"] for e in errors), errors
    finally:
        for b in BACKENDS:
            traffic.serve(lab.net.backends[b], b, PORT)
    wait_until(
        lambda: WEB not in _weirctl(lab, "health").get("fail_open", []), DEADLINE, "no fail open"
    )


def test_pods_of_a_node_whose_link_goes_down_are_out_in_seconds(lab: Stack) -> None:
    n2_pods = {addr for pod, (node, addr) in PODS.items() if node == "n2"}
    results = traffic.burst(lab.net.clients["c1"], POD_TARGET, count=60, concurrency=8)
    assert all(r.ok for r in results)
    n2 = lab.net.workers["n2"]
    n2.set_link("eth0", False)
    try:
        wait_until(lambda: n2_pods <= _held_out(lab, SHOP), DEADLINE + 2, "n2's pods held out")
        state = lab.weir.converge(nodes=list(NODES))
        assert {state.acked[n] for n in NODES} == {state.version}
        tables = _tables(lab, POD_VIP)
        assert len({tuple(t) for t in tables.values()}) == 1
        assert not n2_pods & set(tables["lb1"])
        results = traffic.burst(lab.net.clients["c1"], POD_TARGET, count=60, concurrency=8)
        assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    finally:
        n2.set_link("eth0", True)
    wait_until(lambda: not n2_pods & _held_out(lab, SHOP), 30, "n2's pods back")
