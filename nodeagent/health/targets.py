"""What a load-balancer node checks: every backend (and held-out backend) of each frontend with
a health check, as a Target with its Check. Pure: from the view's protobuf services.

Every check connects to VIP:port; the path (nodeagent.dataplane.hcpath) takes it to the
backend the way the XDP program takes a client's packet. Only TCP frontends are checked.
Encapsulated backends only when the frontend asks (HealthCheck.check_encapsulated).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from weir.common import protocols
from weir.common.pb import pb
from weir.nodeagent.service import Forwarding

Kind = Literal["tcp", "http", "https"]
_KINDS: dict[int, Kind] = {
    pb.HEALTH_CHECK_TCP: "tcp",
    pb.HEALTH_CHECK_HTTP: "http",
    pb.HEALTH_CHECK_HTTPS: "https",
}


@dataclass(frozen=True)
class Check:
    kind: Kind
    interval: float  # seconds
    timeout: float
    rise: int
    fall: int
    http_path: str = "/"
    http_status: int = 200
    host: str = ""  # the Host header and TLS server name ("": the VIP, no SNI)


@dataclass(frozen=True, order=True)
class Target:
    service_id: str
    address: str  # the backend's address and port: how reports name it
    port: int
    vip: str
    vip_port: int
    forwarding: Forwarding = "l2"
    node: str = ""  # encap: the address of the backend's node


def check_of(hc: pb.HealthCheck) -> Check | None:
    kind = _KINDS.get(hc.type)
    if kind is None:
        return None
    interval = max(hc.interval_ms, 100) / 1000
    return Check(
        kind=kind,
        interval=interval,
        timeout=min(max(hc.timeout_ms, 10) / 1000, interval),
        rise=max(hc.rise, 1),
        fall=max(hc.fall, 1),
        http_path=hc.http_path or "/",
        http_status=hc.http_status or 200,
        host=hc.host,
    )


def targets_of(services: Iterable[pb.Service]) -> Mapping[Target, Check]:
    out: dict[Target, Check] = {}
    for svc in services:
        if svc.protocol != protocols.NUMBERS["TCP"] or not svc.HasField("health_check"):
            continue
        check = check_of(svc.health_check)
        if check is None:
            continue
        pods = svc.health_check.check_encapsulated
        for b in (*svc.backends, *svc.unhealthy):
            encap = b.forwarding == pb.FORWARDING_ENCAP
            if encap and not pods:
                continue
            out[
                Target(
                    svc.id,
                    b.address,
                    b.port,
                    svc.vip,
                    svc.port,
                    "encap" if encap else "l2",
                    b.node_address if encap else "",
                )
            ] = check
    return out
