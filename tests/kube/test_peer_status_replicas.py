"""BGPPeer status with two real weir-controller replicas and one agent on each: every replica
writes the entries of its own agents (so a node on the standby shows up), an agent leaving
its replica takes its entry along, and after a SIGKILL of the leader the new leader removes
the dead replica's entries while its own stay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from weir.common.pb import pb

from . import builders as b
from .conftest import NAMESPACE
from .fakeapi import FakeKubeAPI
from .procs import FAST_LEASE, Agent, ControllerProc

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

REFRESH = 1.0  # --peer-status-refresh: entries of a gone replica go after 3 s


def holder(fake: FakeKubeAPI) -> str:
    lease = fake.get("coordination.k8s.io/v1", "Lease", NAMESPACE, "weir-controller")
    return (lease or {}).get("spec", {}).get("holderIdentity") or ""


def nodes(fake: FakeKubeAPI) -> dict[str, Any]:
    peer = fake.get(b.WEIR, "BGPPeer", "", "router") or {}
    return (peer.get("status") or {}).get("nodes") or {}


def reporters(fake: FakeKubeAPI) -> dict[str, str]:
    return {n: e["reporter"] for n, e in nodes(fake).items()}


def established(fake: FakeKubeAPI) -> int | None:
    peer = fake.get(b.WEIR, "BGPPeer", "", "router") or {}
    return (peer.get("status") or {}).get("established")


def agent(ctl: ControllerProc, node: str) -> Agent:
    a = Agent(ctl.target, node)
    a.client.report_status(
        pb.NodeStatus(
            bgp_sessions=[pb.BGPSessionStatus(peer="router", state="established", uptime_seconds=1)]
        )
    )
    a.start()
    return a


@pytest.fixture
async def cleanup() -> AsyncIterator[list[ControllerProc | Agent]]:
    started: list[ControllerProc | Agent] = []
    yield started
    for s in reversed(started):
        await (s.stop() if isinstance(s, Agent) else s.close())


async def test_every_replica_reports_its_own_agents(
    fake: FakeKubeAPI, kubeconfig: Path, tmp_path: Path, cleanup: list
) -> None:
    for name, addr in (("lb-1", "10.0.0.1"), ("lb-2", "10.0.0.2")):
        fake.create(b.node(name, addr))
    fake.create(b.peer("router", "10.0.0.254"))
    refresh = ["--peer-status-refresh", str(REFRESH)]
    ctls = {i: ControllerProc(kubeconfig, tmp_path, i, *FAST_LEASE, *refresh) for i in ("c1", "c2")}
    for c in ctls.values():
        cleanup.append(c)
        await c.start()
    await fake.wait_until(lambda: holder(fake) in ctls, within=20)
    leader = holder(fake)
    standby = next(i for i in ctls if i != leader)

    cleanup.append(agent(ctls[leader], "lb-1"))
    on_standby = agent(ctls[standby], "lb-2")
    cleanup.append(on_standby)
    want = {"lb-1": leader, "lb-2": standby}
    await fake.wait_until(lambda: reporters(fake) == want and established(fake) == 2, within=20)
    for entry in nodes(fake).values():
        assert entry["state"] == "established" and entry["observedTime"]

    # The agent on the standby goes: so does its entry (its replica removes it).
    await on_standby.stop()
    await fake.wait_until(
        lambda: reporters(fake) == {"lb-1": leader} and established(fake) == 1, within=10
    )
    cleanup.append(agent(ctls[standby], "lb-2"))
    await fake.wait_until(lambda: reporters(fake) == want, within=10)

    # The leader dies (its agent has no other replica to go to): the standby takes the Lease
    # and removes the dead replica's entry once it is not renewed; its own entry stays.
    ctls[leader].kill()
    seen: list[dict[str, str]] = []

    def dead_entry_gone() -> bool:
        seen.append(reporters(fake))
        return reporters(fake) == {"lb-2": standby} and established(fake) == 1

    await fake.wait_until(dead_entry_gone, within=30)
    assert all(r.get("lb-2") == standby for r in seen), seen
    assert holder(fake) == standby

    # lb-1's agent comes back on the surviving replica.
    cleanup.append(agent(ctls[standby], "lb-1"))
    await fake.wait_until(
        lambda: reporters(fake) == {"lb-1": standby, "lb-2": standby} and established(fake) == 2,
        within=10,
    )
