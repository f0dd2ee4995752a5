"""A Service's active health check, from its weir.dev/health-check* annotations (docs/HEALTH.md).

Off unless `weir.dev/health-check` names a check (tcp, http or https). Encapsulated backends (pods,
whose readiness probes already cover the process) are checked only with
`weir.dev/health-check-pods: "true"`, which adds the node path (node, link, decapsulation).
A bad field falls back to its default with a warning: a typo must not take backends out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from weir.common.pb import pb
from weir.controller.core.parsing import ParseError, integer, milliseconds

ANN_HEALTH_CHECK = "weir.dev/health-check"
ANN_INTERVAL = "weir.dev/health-check-interval"
ANN_TIMEOUT = "weir.dev/health-check-timeout"
ANN_RISE = "weir.dev/health-check-rise"
ANN_FALL = "weir.dev/health-check-fall"
ANN_PATH = "weir.dev/health-check-path"
ANN_STATUS = "weir.dev/health-check-status"
ANN_PODS = "weir.dev/health-check-pods"
ANN_HOST = "weir.dev/health-check-host"

TYPES = {
    "none": pb.HEALTH_CHECK_NONE,
    "tcp": pb.HEALTH_CHECK_TCP,
    "http": pb.HEALTH_CHECK_HTTP,
    "https": pb.HEALTH_CHECK_HTTPS,
}
# A DNS name (RFC 1123): what a Host header and a TLS server name (SNI) carry.
_HOST = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
)
DEFAULT_INTERVAL_MS = 2000
DEFAULT_TIMEOUT_MS = 1000
DEFAULT_RISE = 2
DEFAULT_FALL = 3
MIN_INTERVAL_MS = 100  # the agent's cost grows with checks per second
MAX_INTERVAL_MS = 3_600_000


@dataclass(frozen=True)
class HealthCheckSpec:
    kind: str  # tcp, http or https
    interval_ms: int = DEFAULT_INTERVAL_MS
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    rise: int = DEFAULT_RISE
    fall: int = DEFAULT_FALL
    http_path: str = "/"
    http_status: int = 200
    pods: bool = False  # also check encapsulated backends
    host: str = ""  # http(s): the Host header and the TLS server name ("": the VIP, no SNI)

    def to_pb(self) -> pb.HealthCheck:
        http = self.kind in ("http", "https")
        return pb.HealthCheck(
            type=TYPES[self.kind],
            interval_ms=self.interval_ms,
            timeout_ms=self.timeout_ms,
            rise=self.rise,
            fall=self.fall,
            http_path=self.http_path if http else "",
            http_status=self.http_status if http else 0,
            check_encapsulated=self.pods,
            host=self.host if http else "",
        )


def parse_health_check(ann: Mapping[str, str], warnings: list[str]) -> HealthCheckSpec | None:
    """The check the annotations ask for, or None; each bad field adds a warning."""
    kind = ann.get(ANN_HEALTH_CHECK, "none").strip().lower()
    if kind not in TYPES:
        warnings.append(
            f"annotation {ANN_HEALTH_CHECK}: {kind!r} is not tcp, http, https or none; none"
        )
        return None
    if kind == "none":
        return None

    def field(name: str, lo: int, hi: int, default: int, *, duration: bool = False) -> int:
        try:
            if duration:
                return milliseconds(ann.get(name), name, lo, hi, default=default)
            return integer(ann.get(name), name, lo, hi, default=default)
        except ParseError as e:
            warnings.append(f"annotation {e}; {default} is used")
            return default

    interval = field(
        ANN_INTERVAL, MIN_INTERVAL_MS, MAX_INTERVAL_MS, DEFAULT_INTERVAL_MS, duration=True
    )
    default_timeout = min(DEFAULT_TIMEOUT_MS, interval)
    timeout = field(ANN_TIMEOUT, 10, MAX_INTERVAL_MS, default_timeout, duration=True)
    if timeout > interval:
        warnings.append(f"annotation {ANN_TIMEOUT}: longer than the interval; {interval}ms is used")
        timeout = interval
    path = ann.get(ANN_PATH, "/")
    if not path.startswith("/") or any(c in path for c in " \r\n\t") or len(path) > 1024:
        warnings.append(f"annotation {ANN_PATH}: not an absolute path without spaces; / is used")
        path = "/"
    pods = ann.get(ANN_PODS, "false").strip().lower() == "true"
    host = ann.get(ANN_HOST, "").strip().lower()
    if host and not _HOST.match(host):
        warnings.append(f"annotation {ANN_HOST}: not a DNS name; none is used")
        host = ""
    return HealthCheckSpec(
        kind=kind,
        interval_ms=interval,
        timeout_ms=timeout,
        rise=field(ANN_RISE, 1, 100, DEFAULT_RISE),
        fall=field(ANN_FALL, 1, 100, DEFAULT_FALL),
        http_path=path,
        http_status=field(ANN_STATUS, 100, 599, 200),
        pods=pods,
        host=host,
    )
