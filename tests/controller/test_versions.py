"""Releases: the agent's version comes from the package; a controller serves agents one minor
release older or newer (from 0.2 on), refuses the others with a reason that weirctl status
shows, and serves clients that state no release (tools speaking the protocol by hand)."""

from __future__ import annotations

import grpc
import pytest
from weir.common.pb import pb, pb_grpc
from weir.common.version import VERSION, agent_refusal, describe_range, release, served_range
from weir.nodeagent.controller_client import AGENT_VERSION

from tests.controller.plane_support import Plane, cluster, raw_hello, service

pytestmark = pytest.mark.timeout(60)

S1 = service("192.0.2.1", 80, [("10.0.0.1", 8080)])


def test_versions_come_from_the_package() -> None:
    from importlib.metadata import version

    assert VERSION == version("weir") == AGENT_VERSION
    assert release(VERSION) is not None


def test_one_minor_release_either_way() -> None:
    assert served_range("1.5.2") == ((1, 4), (1, 6))
    assert agent_refusal("1.4.9", "1.5.0") is None and agent_refusal("1.6.0", "1.5.0") is None
    assert "upgrade the agents" in (agent_refusal("1.3.0", "1.5.0") or "")
    assert "upgrade the controller first" in (agent_refusal("1.7.0", "1.5.0") or "")
    assert agent_refusal("2.5.0", "1.5.0") is not None
    # Agents before 0.2 hash views without NodeConfig: refused by any newer controller.
    assert served_range("0.2.0") == ((0, 2), (0, 3))
    assert agent_refusal("0.1.0", "0.2.0") is not None
    assert describe_range("0.3.1") == "0.2.x to 0.4.x"
    assert agent_refusal("", "0.2.0") is None and agent_refusal("dev", "0.2.0") is None


async def test_a_refused_agent_is_shown_with_its_reason() -> None:
    async with Plane(version="0.5.0") as p, p.channel() as channel:
        p.store.publish(cluster([S1], lb=["lb-1", "lb-2"]))
        stub = pb_grpc.NodePlaneStub(channel)
        call = stub.Connect()
        await call.write(pb.AgentMessage(hello=pb.Hello(node="lb-1", agent_version="0.2.0")))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "0.4.x to 0.6.x" in err.value.details()
        served, _ = await raw_hello(stub, pb.Hello(node="lb-2", agent_version="0.6.1"))
        listed = await stub.ListAgents(pb.ListAgentsRequest(), timeout=5)
        agents = {a.node: a for a in listed.agents}
        assert listed.controller_version == "0.5.0"
        assert not agents["lb-1"].connected and "upgrade the agents" in agents["lb-1"].refused
        assert agents["lb-1"].agent_version == "0.2.0" and agents["lb-1"].refused_unix > 0
        assert agents["lb-2"].connected and not agents["lb-2"].refused
        served.cancel()
