"""A real weir-controller process against the fake API server, with three in-process LB
agents reporting their health checks: the leader turns a majority's report into the
BackendUnhealthy Event and the weir.dev/BackendsHealthy condition, and takes both back."""

from __future__ import annotations

from pathlib import Path

import pytest
from weir.common.pb import pb

from . import builders as b
from .fakeapi import FakeKubeAPI
from .harness import events
from .procs import Agent, ControllerProc
from .test_health_status import health

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

NODES = {"node-a": "10.0.0.1", "node-b": "10.0.0.2", "node-c": "10.0.0.3"}
CHECKED = {"weir.dev/health-check": "tcp"}
ANN = "weir.dev/health-report"


def status(fid: str, *failing: str) -> pb.NodeStatus:
    return pb.NodeStatus(
        health_checked=[fid],
        health_failing=[
            pb.BackendHealth(service_id=fid, address=a, port=8080, since_unix=1, reason="refused")
            for a in failing
        ],
    )


async def checking(fake: FakeKubeAPI, agents: list[Agent], fid: str) -> None:
    """Every agent reports fid checked (as agents do before any check can fail), and the
    controller published it on their Nodes: the checkers are known before any failure."""
    for agent in agents:
        agent.client.report_status(status(fid))

    def published() -> bool:
        nodes = [fake.get("v1", "Node", "", a.client.node) or {} for a in agents]
        return all(ANN in (n["metadata"].get("annotations") or {}) for n in nodes)

    await fake.wait_until(published, within=20)


def cluster(fake: FakeKubeAPI) -> None:
    """Three LB nodes, and a checked Service with two backends."""
    fake.create(b.pool("main", "192.0.2.0/28"))
    for name, address in NODES.items():
        fake.create(b.node(name, address, b.LB_NODE))
    fake.create(b.service("web", annotations=CHECKED))
    fake.create(b.endpoint_slice("web", "default", ["10.1.0.1", "10.1.0.2"]))


async def test_the_leader_writes_what_the_lb_nodes_see(
    fake: FakeKubeAPI, kubeconfig: Path, tmp_path: Path
) -> None:
    cluster(fake)
    ctl = ControllerProc(kubeconfig, tmp_path, "solo", "--debounce-ms", "0")
    await ctl.start()
    agents = [Agent(ctl.target, node) for node in NODES]
    for agent in agents:
        agent.start()
    try:
        for agent in agents:
            await agent.until(lambda a: len(a.vips()) == 1)
        (fid,) = agents[0].view.services  # type: ignore[union-attr]
        await fake.wait_until(lambda: (health(fake) or {}).get("status") == "True", within=20)
        await checking(fake, agents, fid)
        for agent in agents[:2]:  # two of three: a majority
            agent.client.report_status(status(fid, "10.1.0.1"))
        agents[2].client.report_status(status(fid))
        await fake.wait_until(lambda: (health(fake) or {}).get("status") == "False", within=20)
        assert health(fake)["message"] == "held out: 10.1.0.1:8080"  # type: ignore[index]
        await fake.wait_until(
            lambda: any(r == "BackendUnhealthy" for _, r, _ in events(fake, "web")), within=20
        )
        (message,) = [m for _, r, m in events(fake, "web") if r == "BackendUnhealthy"]
        assert "on 2 of 3 checking nodes: node-a (refused), node-b (refused)" in message
        for agent in agents:
            agent.client.report_status(status(fid))
        await fake.wait_until(lambda: (health(fake) or {}).get("status") == "True", within=20)
        await fake.wait_until(
            lambda: any(r == "BackendHealthy" for _, r, _ in events(fake, "web")), within=20
        )
    except BaseException:
        print(ctl.logs())
        raise
    finally:
        for agent in agents:
            await agent.stop()
        await ctl.close()
