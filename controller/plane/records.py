"""What the controller keeps of what an agent sends, bounded: an agent (or anything holding a
node certificate) must not be able to grow the controller's memory, its logs, ListAgents or
/metrics by sending long strings or long lists.

Every string is clipped and every list cut to a fixed length; a cut list of errors ends with
an entry saying how many were left out. With these bounds an agent's record is under 64 KiB,
and the servicer keeps at most a fixed number of records.
"""

from __future__ import annotations

from collections.abc import Iterable

from weir.common.logs import clip
from weir.common.pb import pb

NAME_CHARS = 253  # peer names, service ids, map names: the longest Kubernetes name
SHORT_CHARS = 64  # addresses, prefixes, session states, agent versions
MESSAGE_CHARS = 256  # one service error
ERROR_CHARS = 1024  # a whole version's error
MAX_ERRORS = 16
MAX_MAPS = 16
MAX_SESSIONS = 32  # BGP sessions: a node has a few peers
MAX_ANNOUNCED = 256  # announced prefixes: enough to show, and to tell none from some
# Health reports: frontends checked and backends seen failing. Cut lists only make the
# controller see fewer checkers or fewer failures, never take a backend out wrongly.
MAX_HEALTH_CHECKED = 2048
MAX_HEALTH_FAILING = 2048


def bounded_errors(errors: Iterable[pb.ServiceError]) -> list[pb.ServiceError]:
    """At most MAX_ERRORS errors, clipped; the last says how many more were left out."""
    out: list[pb.ServiceError] = []
    left_out = 0
    for e in errors:
        if len(out) < MAX_ERRORS:
            service_id, message = clip(e.service_id, NAME_CHARS), clip(e.message, MESSAGE_CHARS)
            out.append(pb.ServiceError(service_id=service_id, message=message))
        else:
            left_out += 1
    if left_out:
        out.append(pb.ServiceError(message=f"{left_out} more errors not kept"))
    return out


def bounded_status(status: pb.NodeStatus) -> pb.NodeStatus:
    """status with its lists cut and its strings clipped."""
    return pb.NodeStatus(
        applied_version=status.applied_version,
        dataplane_healthy=status.dataplane_healthy,
        draining=status.draining,
        routes_settled=status.routes_settled,
        maps=[
            pb.MapUsage(name=clip(m.name, NAME_CHARS), used=m.used, capacity=m.capacity)
            for m in status.maps[:MAX_MAPS]
        ],
        bgp_sessions=[
            pb.BGPSessionStatus(
                peer=clip(s.peer, NAME_CHARS),
                address=clip(s.address, SHORT_CHARS),
                state=clip(s.state, SHORT_CHARS),
                uptime_seconds=s.uptime_seconds,
                routes_sent=s.routes_sent,
                bfd_state=clip(s.bfd_state, SHORT_CHARS),
                bfd_remote_state=clip(s.bfd_remote_state, SHORT_CHARS),
                bfd_diagnostic=clip(s.bfd_diagnostic, SHORT_CHARS),
                bfd_transmit_ms=s.bfd_transmit_ms,
                bfd_receive_ms=s.bfd_receive_ms,
                bfd_detect_ms=s.bfd_detect_ms,
            )
            for s in status.bgp_sessions[:MAX_SESSIONS]
        ],
        bgp_errors=[
            pb.ObjectError(
                kind=clip(e.kind, SHORT_CHARS),
                name=clip(e.name, NAME_CHARS),
                message=clip(e.message, MESSAGE_CHARS),
            )
            for e in status.bgp_errors[:MAX_ERRORS]
        ],
        announced=[clip(p, SHORT_CHARS) for p in status.announced[:MAX_ANNOUNCED]],
        service_errors=bounded_errors(status.service_errors),
        dataplane_mode=clip(status.dataplane_mode, SHORT_CHARS),
        health_checked=[clip(f, NAME_CHARS) for f in status.health_checked[:MAX_HEALTH_CHECKED]],
        health_failing=[
            pb.BackendHealth(
                service_id=clip(f.service_id, NAME_CHARS),
                address=clip(f.address, SHORT_CHARS),
                port=f.port,
                since_unix=f.since_unix,
                reason=clip(f.reason, SHORT_CHARS),
            )
            for f in status.health_failing[:MAX_HEALTH_FAILING]
        ],
    )


def agent_errors(agents: Iterable[pb.AgentInfo]) -> list[pb.ObjectError]:
    """What connected agents report they cannot do with their BGP settings, against the
    object each problem came from, naming the node."""
    return [
        pb.ObjectError(kind=e.kind, name=e.name, message=f"node {a.node}: {e.message}")
        for a in agents
        if a.connected
        for e in a.status.bgp_errors
    ]
