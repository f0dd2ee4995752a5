"""weirctl status's judgement (weir.ctl.status_model): every problem named with its node and
reason, and the verdict from them; the text and JSON outputs carry the same."""

from __future__ import annotations

import json

from weir.common.pb import pb
from weir.ctl.status_cmds import to_json, to_text
from weir.ctl.status_model import evaluate

from tests.controller.plane_support import cluster

PEER = pb.BGPPeer(name="tor", address="10.0.0.254", asn=65000)


def agent(node: str, **kw: object) -> pb.AgentInfo:
    base = dict(node=node, connected=True, acked_version=5, agent_version="0.2.0")
    base.update(kw)
    return pb.AgentInfo(**base)  # type: ignore[arg-type]


def snapshot() -> pb.ClusterSnapshot:
    snap = cluster([], lb=["lb-1", "lb-2"], configs={"w-1": pb.NodeConfig()})
    snap.nodes.add(node="lb-1", bgp=pb.BGPConfig(local_asn=65001, peers=[PEER]))
    return snap


def test_healthy() -> None:
    established = pb.BGPSessionStatus(peer="tor", address="10.0.0.254", state="established")
    agents = pb.ListAgentsResponse(
        version=5,
        agents=[
            agent("lb-1", status=pb.NodeStatus(dataplane_healthy=True, bgp_sessions=[established])),
            agent("lb-2", status=pb.NodeStatus(dataplane_healthy=True)),
            agent("w-1", status=pb.NodeStatus(dataplane_healthy=True)),
        ],
    )
    status = evaluate(pb.ControllerStatus(version="0.2.0"), agents, snapshot())
    assert status.healthy, status.problems
    assert status.verdict == (
        "healthy: 3 agents (2 load balancers) at version 5, 1 BGP sessions established"
    )


def test_every_problem_with_its_node_and_reason() -> None:
    agents = pb.ListAgentsResponse(
        version=6,
        agents=[
            agent(
                "lb-1",
                status=pb.NodeStatus(
                    dataplane_healthy=False,
                    maps=[pb.MapUsage(name="services", used=15, capacity=16)],
                    bgp_sessions=[pb.BGPSessionStatus(peer="tor", state="active")],
                ),
            ),
            agent("lb-2", connected=False, refused="agent 0.9.0 is not served", acked_version=6),
            agent(
                "w-1",
                error="cannot build the XDP program",
                status=pb.NodeStatus(dataplane_healthy=True),
            ),
        ],
    )
    controller = pb.ControllerStatus(
        version="0.2.0",
        leader_election=True,
        replicas=pb.ControllerReplicas(known=True, desired=2, ready=1),
        pools=[pb.PoolUsage(name="main", assigned=2, available=0)],
    )
    status = evaluate(controller, agents, snapshot())
    found = {(p.node, p.reason) for p in status.problems}
    assert found == {
        ("", "controller: 1/2 replicas ready"),
        ("", "controller: no replica holds the Lease"),
        ("", "pool main: no address left"),
        ("lb-1", "agent has not acked version 6 (acked 5)"),
        ("lb-1", "data plane unhealthy"),
        ("lb-1", "map services is 93% full"),
        ("lb-1", "BGP peer tor (10.0.0.254) active"),
        ("lb-2", "agent refused: agent 0.9.0 is not served"),
        ("w-1", "agent has not acked version 6 (acked 5)"),
        ("w-1", "nack: cannot build the XDP program"),
    }
    assert status.verdict == "degraded: controller: 1/2 replicas ready and 9 more"
    report = json.loads(to_json(status))
    assert not report["healthy"] and len(report["problems"]) == 10
    text = to_text(status)
    assert text.startswith("Weir: degraded") and "agent 0.9.0 is not served" in text


def test_no_snapshot_no_agents() -> None:
    status = evaluate(pb.ControllerStatus(), pb.ListAgentsResponse(), None)
    assert [p.reason for p in status.problems] == ["the controller has published no snapshot yet"]
