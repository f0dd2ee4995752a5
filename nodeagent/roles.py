"""What the agent asks of a role (nodeagent.agent composes them).

A node runs the load-balancer role (nodeagent.lb_role: XDP and BGP) when its view says so,
and the backend role (nodeagent.backend_role: tc translation to local pods) when its view
has local endpoints; both may run on one node. Each role is handed every version and
decides for itself whether it has something to do; it opens its data plane the first time
it does, and keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from weir.nodeagent.dataplane import MapUsage
from weir.nodeagent.service import Desired
from weir.nodeagent.uplink import UplinkInfo


@dataclass(frozen=True)
class RoleStatus:
    maps: list[MapUsage] = field(default_factory=list)
    problem: str = ""  # why the role's data plane does not work ("": it does, or none needed)
    errors: dict[str, str] = field(default_factory=dict)  # service id -> why not (fully) applied
    reserved: dict[str, int] = field(default_factory=dict)  # map -> entries kept for updates

    @property
    def healthy(self) -> bool:
        """Its data plane is open, attached and can be read, and the uplink works."""
        return not self.problem


class Role(Protocol):
    name: str  # for logs and metrics

    @property
    def active(self) -> bool:
        """The last version gave the node this role."""
        ...

    @property
    def mode(self) -> str:
        """Its data plane as NodeStatus.dataplane_mode names it ("" while none is open)."""
        ...

    async def apply(self, desired: Desired) -> Mapping[str, int]:
        """Apply one version; returns what it did, in services, by outcome (for logs and
        metrics)."""
        ...

    def errors(self) -> dict[str, str]:
        """Service id -> why it is not (fully) applied by this role."""
        ...

    def counts(self) -> tuple[int, int, int]:
        """Services applied, failed, and applied in part."""
        ...

    async def status(self) -> RoleStatus: ...

    async def run(self) -> None:
        """Upkeep between versions, until cancelled."""
        ...

    async def close(self) -> None:
        """The agent stops: release the data plane, leaving it attached and pinned."""
        ...


class UplinkSource(Protocol):
    async def info(self) -> UplinkInfo: ...
