"""What weirctl status says, worked out from three answers of the controller (its own
status, ListAgents, the cluster snapshot): the controller, each node's agent, BGP sessions,
pools, every problem with its node and reason, and a one-line verdict.

Pure: evaluate() takes the protobuf answers and returns a Status; weirctl/status_cmds.py asks
for them and prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from weir.common.pb import pb

MAP_FULL = 0.9  # a map this full is a problem: the next services or flows may not fit


@dataclass(frozen=True)
class Problem:
    node: str  # "" for the controller
    reason: str


@dataclass(frozen=True)
class AgentRow:
    node: str
    roles: str  # "load-balancer", "backend", both comma-separated, or "-"
    connected: bool
    agent_version: str
    acked: int
    lag: int
    dataplane: str
    maps: str  # "name used/capacity", the fullest first
    nacks: int


@dataclass(frozen=True)
class SessionRow:
    node: str
    peer: str
    address: str
    state: str
    uptime_seconds: int
    routes_sent: int


@dataclass
class Status:
    controller: pb.ControllerStatus
    version: int  # the controller's snapshot version
    agents: list[AgentRow] = field(default_factory=list)
    sessions: list[SessionRow] = field(default_factory=list)
    pools: list[pb.PoolUsage] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        if self.healthy:
            lbs = sum("load-balancer" in a.roles for a in self.agents)
            up = sum(s.state == "established" for s in self.sessions)
            return (
                f"healthy: {len(self.agents)} agents ({lbs} load balancers) at version "
                f"{self.version}, {up} BGP sessions established"
            )
        first = self.problems[0]
        where = f"{first.node}: " if first.node else ""
        more = f" and {len(self.problems) - 1} more" if len(self.problems) > 1 else ""
        return f"degraded: {where}{first.reason}{more}"


def roles(config: pb.NodeConfig | None) -> str:
    if config is None:
        return "-"
    named = [
        n
        for n, on in (
            ("load-balancer", config.load_balancer),
            ("backend", bool(config.local_endpoints)),
        )
        if on
    ]
    return ",".join(named) or "-"


def _maps(status: pb.NodeStatus) -> tuple[str, list[str]]:
    """The maps by how full they are, and the ones too full."""
    usage = sorted(
        (m for m in status.maps if m.capacity), key=lambda m: m.used / m.capacity, reverse=True
    )
    text = ", ".join(f"{m.name} {m.used}/{m.capacity}" for m in usage[:3]) or "-"
    full = [
        f"map {m.name} is {100 * m.used // m.capacity}% full"
        for m in usage
        if m.used >= MAP_FULL * m.capacity
    ]
    return text, full


def _agent_problems(a: pb.AgentInfo, version: int) -> list[str]:
    out = []
    if a.refused:
        out.append(f"agent refused: {a.refused}")
    if not a.connected:
        if not a.refused:
            out.append("agent not connected")
        return out
    if a.acked_version < version:
        out.append(f"agent has not acked version {version} (acked {a.acked_version})")
    if a.error:
        out.append(f"nack: {a.error}")
    if a.service_errors:
        first = a.service_errors[0]
        out.append(
            f"{len(a.service_errors)} services not applied (first: {first.service_id} "
            f"{first.message})"
        )
    if a.HasField("status") and not a.status.dataplane_healthy:
        out.append("data plane unhealthy")
    return out


def evaluate(
    controller: pb.ControllerStatus,
    agents: pb.ListAgentsResponse,
    snapshot: pb.ClusterSnapshot | None,
) -> Status:
    out = Status(controller, agents.version, pools=list(controller.pools))
    problems = out.problems
    if snapshot is None:
        problems.append(Problem("", "the controller has published no snapshot yet"))
    replicas = controller.replicas
    if replicas.known and replicas.ready < replicas.desired:
        problems.append(
            Problem("", f"controller: {replicas.ready}/{replicas.desired} replicas ready")
        )
    if controller.leader_election and not controller.leader:
        problems.append(Problem("", "controller: no replica holds the Lease"))
    views = {v.node: v.config for v in snapshot.node_views} if snapshot else {}
    bgp = {n.node: n.bgp for n in snapshot.nodes} if snapshot else {}
    listed = {a.node: a for a in agents.agents}
    for node in sorted(set(views) | set(listed)):
        a = listed.get(node)
        if a is None:
            problems.append(Problem(node, "no agent ever connected"))
            continue
        maps, full = _maps(a.status)
        out.agents.append(
            AgentRow(
                node=node,
                roles=roles(views.get(node)),
                connected=a.connected,
                agent_version=a.agent_version or "?",
                acked=a.acked_version,
                lag=max(0, agents.version - a.acked_version),
                dataplane=a.status.dataplane_mode or "-",
                maps=maps,
                nacks=len(a.service_errors) + (1 if a.error else 0),
            )
        )
        problems += [Problem(node, r) for r in _agent_problems(a, agents.version) + full]
        sessions = {s.peer: s for s in a.status.bgp_sessions}
        for s in a.status.bgp_sessions:
            out.sessions.append(
                SessionRow(node, s.peer, s.address, s.state, s.uptime_seconds, s.routes_sent)
            )
        if not a.connected:
            continue  # its sessions are as last reported; the node's problem is said above
        for peer in bgp.get(node, pb.BGPConfig()).peers:
            reported = sessions.get(peer.name)
            if reported is None:
                problems.append(
                    Problem(node, f"BGP peer {peer.name} ({peer.address}) not reported")
                )
            elif reported.state != "established":
                address = peer.address or reported.address
                problems.append(Problem(node, f"BGP peer {peer.name} ({address}) {reported.state}"))
    for pool in controller.pools:
        problems += [Problem("", f"pool {pool.name}: {c}") for c in pool.conditions]
        if pool.available == 0 and pool.assigned:
            problems.append(Problem("", f"pool {pool.name}: no address left"))
    return out
