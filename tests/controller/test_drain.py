"""Draining a node: the reducer marks its BGPConfig, and `weirctl node drain|undrain` on the
real weir-controller (file source: kept in memory) reaches the agent and waits for its
report."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from weir.common.pb import pb
from weir.controller.core.reduce import reduce
from weir.ctl.node_cmds import reached
from weir.nodeagent.controller_client import ControllerClient, Update

from tests.controller.controller_proc import BIN, Controller, running_controller
from tests.controller.reduce_support import FILES, node, peer, run, state_of

pytestmark = pytest.mark.timeout(90)


def drained(result_nodes: list[pb.NodeBGP]) -> dict[str, bool]:
    return {n.node: n.bgp.drain for n in result_nodes}


def test_annotation_drains_the_node() -> None:
    lb2 = node("lb-2", "172.16.0.2")
    lb2["metadata"]["annotations"] = {"weir.dev/drain": "true"}
    result = run([node("lb-1", "172.16.0.1"), lb2, peer("router")])
    assert drained(list(result.cluster.nodes)) == {"lb-1": False, "lb-2": True}
    # Peers and advertisements stay: the agent needs its sessions to withdraw on them.
    assert [p.name for p in result.cluster.nodes[1].bgp.peers] == ["router"]


def test_in_memory_drain_changes_the_state_and_the_snapshot() -> None:
    state = state_of([node("lb-1", "172.16.0.1"), peer("router")])
    before = state.generation
    state.set_drained("lb-1", True)
    assert state.generation > before
    assert drained(list(reduce(state.inputs(), FILES).cluster.nodes)) == {"lb-1": True}
    same = state.generation
    state.set_drained("lb-1", True)  # no change, no new generation
    assert state.generation == same
    state.set_drained("lb-1", False)
    assert drained(list(reduce(state.inputs(), FILES).cluster.nodes)) == {"lb-1": False}


MANIFESTS = """
apiVersion: v1
kind: Node
metadata: {name: lb-1}
status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: lb-2, annotations: {weir.dev/drain: "true"}}
status: {addresses: [{type: InternalIP, address: 10.0.0.2}]}
---
apiVersion: weir.dev/v1alpha1
kind: BGPPeer
metadata: {name: router}
spec: {peerAddress: 10.0.0.254, peerASN: 65000, localASN: 65001}
"""


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[tuple[Controller, str]]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "nodes.yaml").write_text(MANIFESTS)
    async with running_controller(manifests) as running:
        yield running


async def weirctl(target: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "weirctl"), "--controller", target, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(40):
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


class DrainingAgent:
    """A fake agent that does what the real one reports: draining with nothing announced
    when its BGPConfig says drain, else announcing its VIP."""

    def __init__(self, target: str, node_name: str) -> None:
        self.client = ControllerClient(
            target, node_name, self.handle, backoff_initial=0.05, backoff_max=0.5
        )
        self.drain_seen: list[bool] = []

    async def handle(self, update: Update) -> pb.Ack:
        drain = update.view.bgp.drain
        self.drain_seen.append(drain)
        self.client.report_status(
            pb.NodeStatus(
                applied_version=update.version,
                draining=drain,
                announced=[] if drain else ["192.0.2.10/32"],
                routes_settled=True,
                bgp_sessions=[
                    pb.BGPSessionStatus(
                        peer="router", state="established", routes_sent=0 if drain else 1
                    )
                ],
            )
        )
        return pb.Ack(version=update.version)


async def test_weirctl_node_drain_and_undrain(controller: tuple[Controller, str]) -> None:
    _, target = controller
    agent = DrainingAgent(target, "lb-1")
    task = asyncio.create_task(agent.client.run())
    try:
        async with asyncio.timeout(20):
            await agent.client.wait_version(1)
        assert agent.drain_seen == [False]

        code, out, err = await weirctl(target, "node", "drain", "lb-1", "--timeout", "20")
        assert code == 0, err
        assert "drain published in version 2" in out
        assert "node lb-1: draining, announcing nothing (version 2)" in out
        assert agent.drain_seen[-1] is True

        code, out, _ = await weirctl(target, "agents")
        assert "lb-1 (draining)" in out
        code, out, _ = await weirctl(target, "bgp", "peers")
        assert "lb-1 (draining)" in out

        code, out, err = await weirctl(target, "node", "undrain", "lb-1", "--timeout", "20")
        assert code == 0, err
        assert "node lb-1: not draining, announcing 192.0.2.10/32 (version 3)" in out
        assert agent.drain_seen[-1] is False
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_weirctl_node_drain_refusals(controller: tuple[Controller, str]) -> None:
    _, target = controller
    code, _, err = await weirctl(target, "node", "drain", "nope")
    assert code == 1 and "NOT_FOUND" in err and "nope" in err
    # lb-2 is drained by its manifest: the file is the durable form, the RPC cannot undo it.
    code, _, err = await weirctl(target, "node", "undrain", "lb-2")
    assert code == 1 and "FAILED_PRECONDITION" in err and "weir.dev/drain" in err
    # No agent for lb-2: the setting is published, weirctl does not wait for an agent.
    code, out, err = await weirctl(target, "node", "drain", "lb-2")
    assert code == 0, err
    assert "no agent connected" in out


def test_undrain_is_reached_once_the_routes_are_sent_again() -> None:
    """An agent that stopped draining but has not sent its routes yet (what it would show
    is "announcing nothing") has not reached the undrain."""

    def agent(**status: object) -> pb.AgentInfo:
        return pb.AgentInfo(
            node="lb-1", connected=True, acked_version=3,
            status=pb.NodeStatus(applied_version=3, **status),  # type: ignore[arg-type]
        )  # fmt: skip

    assert not reached(agent(draining=False, routes_settled=False), drain=False, version=3)
    assert reached(agent(draining=False, routes_settled=True, announced=["192.0.2.10/32"]),
                   drain=False, version=3)  # fmt: skip
    assert not reached(agent(draining=True, routes_settled=True), drain=False, version=3)
    assert not reached(agent(draining=False, routes_settled=True), drain=False, version=4)
